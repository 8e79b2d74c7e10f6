import hashlib
import io
import json
import shutil
import tarfile

import numpy as np
import pytest
from media import frame_index, write_index_video, write_tone

from spectral.decode import DecodeConfig, run_decode
from spectral.events import StrictModeError
from spectral.io.video import sample_indices
from spectral.shards import read_samples, shard_paths

CFG = DecodeConfig(num_frames=4, size=32, workers=1, splits={"train": 0.5, "val": 0.25, "test": 0.25})
SENSORS = "timestamp,magnetic_magnitude\n1,45\n2,46\n"


def make_event(root, name, label="Ruído_Ambiente", n_frames=12, rate=48_000):
    folder = root / name
    folder.mkdir(parents=True)
    metadata = {} if label is None else {"classification": label}
    (folder / "metadata.json").write_text(json.dumps(metadata), encoding="utf-8")
    write_index_video(folder / "video.mp4", n_frames)
    write_tone(folder / "audio.wav", seconds=1.0, rate=rate, channels=2)
    (folder / "sensors.csv").write_text(SENSORS, encoding="utf-8")
    return folder


@pytest.fixture
def messy_events(tmp_path):
    root = tmp_path / "events"
    for i in range(4):
        make_event(root, f"event_ok{i}", n_frames=10 + i)
    make_event(root, "event_unlabeled", label=None)
    make_event(root, "event_badlabel", label="Poltergeist")
    folder = make_event(root, "event_truncated")
    video = (folder / "video.mp4").read_bytes()
    (folder / "video.mp4").write_bytes(video[: len(video) // 3])
    folder = make_event(root, "event_badaudio")
    (folder / "audio.wav").write_bytes(b"RIFF....WAVEjunk")
    folder = make_event(root, "event_novideo")
    (folder / "video.mp4").unlink()
    folder = make_event(root, "event_emptyaudio")
    (folder / "audio.wav").write_bytes(b"")
    (root / "notes").mkdir()
    return root


def digest(directory):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def test_every_event_is_accounted_for_with_a_reason(messy_events, tmp_path):
    report = run_decode(messy_events, tmp_path / "out", CFG)
    saved = json.loads((tmp_path / "out" / "report.json").read_text(encoding="utf-8"))
    names = sorted(p.name for p in messy_events.iterdir())
    assert sorted(saved["accepted"] + [r["event"] for r in saved["rejected"]]) == names
    assert saved["accepted"] == [f"event_ok{i}" for i in range(4)]
    reasons = {r["event"]: r["reason"] for r in saved["rejected"]}
    assert "unlabeled" in reasons["event_unlabeled"]
    assert "Poltergeist" in reasons["event_badlabel"]
    assert reasons["event_truncated"].startswith("event_truncated/video.mp4: cannot decode video")
    assert reasons["event_badaudio"].startswith("event_badaudio/audio.wav: cannot decode audio")
    assert reasons["event_novideo"] == "event_novideo/video.mp4: file is missing"
    assert reasons["event_emptyaudio"] == "event_emptyaudio/audio.wav: file is empty"
    assert "must start with 'event_'" in reasons["notes"]
    assert report["seconds"] > 0 and "seconds" not in saved


def test_shards_hold_exact_frames_audio_and_labels(messy_events, tmp_path):
    run_decode(messy_events, tmp_path / "out", CFG)
    samples = [s for split in ("train", "val", "test") for s in read_samples(shard_paths(tmp_path / "out", split))]
    assert sorted(s["__key__"] for s in samples) == [f"event_ok{i}" for i in range(4)]
    for sample in samples:
        n = 10 + int(sample["__key__"][-1])
        frames, audio, meta = sample["frames.npy"], sample["audio.npy"], sample["json"]
        assert frames.shape == (4, 32, 32, 3) and frames.dtype == np.uint8
        assert [frame_index(f) for f in frames] == sample_indices(n, 4).tolist()
        assert audio.shape == (220_500,) and audio.dtype == np.int16
        assert meta["label"] == 0 and meta["label_name"] == "Ruído_Ambiente" and meta["video"]["backend"] == "pyav"
        assert meta["audio"]["sample_rate"] == 48_000 and meta["split"] in ("train", "val", "test")


def test_tar_members_have_fixed_metadata(messy_events, tmp_path):
    run_decode(messy_events, tmp_path / "out", CFG)
    for shard in (tmp_path / "out").glob("*.tar"):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                assert (member.mtime, member.uname, member.gname, member.mode) == (0, "spectral", "spectral", 0o444)


def test_rerun_and_parallel_workers_give_identical_bytes(messy_events, tmp_path):
    run_decode(messy_events, tmp_path / "a", CFG)
    run_decode(messy_events, tmp_path / "a", CFG)  # rerun into the same folder
    run_decode(messy_events, tmp_path / "b", DecodeConfig(**{**CFG.__dict__, "workers": 2}))
    assert digest(tmp_path / "a") == digest(tmp_path / "b")


def test_decord_backend_samples_the_same_frames(messy_events, tmp_path):
    run_decode(messy_events, tmp_path / "a", CFG)
    run_decode(messy_events, tmp_path / "b", DecodeConfig(**{**CFG.__dict__, "backend": "decord"}))
    for shard in (tmp_path / "a").glob("*.tar"):
        a = {s["__key__"]: s for s in read_samples([shard])}
        b = {s["__key__"]: s for s in read_samples([tmp_path / "b" / shard.name])}
        assert a.keys() == b.keys()
        for key in a:
            assert [frame_index(f) for f in a[key]["frames.npy"]] == [frame_index(f) for f in b[key]["frames.npy"]]
            assert np.abs(a[key]["frames.npy"].astype(int) - b[key]["frames.npy"]).mean() < 2
            assert b[key]["json"]["video"]["backend"] == "decord"


def test_strict_mode_stops_at_first_rejection_and_leaves_no_partial_shard(messy_events, tmp_path):
    with pytest.raises(StrictModeError, match="event_badaudio"):
        run_decode(messy_events, tmp_path / "out", DecodeConfig(**{**CFG.__dict__, "strict": True}))
    assert not list((tmp_path / "out").glob("*.tmp"))
    assert not (tmp_path / "out" / "report.json").exists()


def test_adding_events_never_moves_old_ones_between_splits(messy_events, tmp_path):
    def split_of(out):
        return {s["__key__"]: s["json"]["split"] for p in out.glob("*.tar") for s in read_samples([p])}

    run_decode(messy_events, tmp_path / "a", CFG)
    for i in range(4, 8):
        make_event(messy_events, f"event_ok{i}")
    shutil.rmtree(messy_events / "event_truncated")
    run_decode(messy_events, tmp_path / "b", CFG)
    before, after = split_of(tmp_path / "a"), split_of(tmp_path / "b")
    assert all(after[k] == v for k, v in before.items())


def test_shards_rotate_at_maxcount(messy_events, tmp_path):
    report = run_decode(messy_events, tmp_path / "out", DecodeConfig(**{**CFG.__dict__, "maxcount": 1}))
    total = sum(len(v) for v in report["shards"].values())
    assert total == report["accepted_count"]
    with tarfile.open(tmp_path / "out" / report["shards"]["train"][0]) as tar:
        sample = np.load(io.BytesIO(tar.extractfile(next(m for m in tar if m.name.endswith("frames.npy"))).read()))
    assert sample.shape == (4, 32, 32, 3)
