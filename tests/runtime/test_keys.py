import re

import pytest

from spectral.runtime.keys import event_name, sample_key

NAMES = ["event_00001", "event_2026.11.27_porão", "event_sala de estar", "event_50%.v2", "event_%2E", "event_日本.",
         "event_..", "event_a%25b"]


@pytest.mark.parametrize("name", NAMES)
def test_key_round_trips_and_has_no_dot(name):
    key = sample_key(name)
    assert "." not in key and event_name(key) == name


def test_webdataset_splits_members_into_the_same_key():
    """WebDataset's own rule (first dot of the basename) recovers our key from every member name."""
    from webdataset.tariterators import base_plus_ext

    for name in NAMES:
        for extension in ("frames.npy", "json", "emb.npy"):
            key, ext = base_plus_ext(f"{sample_key(name)}.{extension}")
            assert (key, ext) == (sample_key(name), extension)
    assert re.fullmatch(r"event_2026%2E11%2E27_porão", sample_key("event_2026.11.27_porão"))


def test_distinct_names_never_share_a_key():
    assert len({sample_key(n) for n in NAMES}) == len(NAMES)
