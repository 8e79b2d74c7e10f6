"""Incremental decode, sensors and embed: an archive that grows, changes and shrinks between runs
must give byte-for-byte the outputs of a clean run, redoing only what changed."""

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from media import make_event, write_tone

from spectral.events import StrictModeError
from spectral.runtime.incremental import CLEAN_RUN_ENV, plan_shards
from spectral.runtime.reuse import output_files
from spectral.stages.decode import DecodeConfig, run_decode
from spectral.stages.embed import EmbedConfig, run_embed
from spectral.stages.sensors import run_sensors

SPLITS = {"train": 0.6, "val": 0.2, "test": 0.2}
CFG = DecodeConfig(num_frames=2, size=32, audio_seconds=5.0, workers=1, missing_modality="reject", splits=SPLITS,
                   shard_events=3, max_shard_events=6)
REPO = Path(__file__).resolve().parents[2]


def digests(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in output_files(directory)}


def stamps(directory: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in directory.glob("*.tar")}


@pytest.fixture
def archive(tmp_path):
    root = tmp_path / "events"
    for day in range(1, 13):
        make_event(root, f"event_2026-11-{day:02d}", n_frames=6)
    return root


def test_shard_boundaries_depend_only_on_names_and_move_locally():
    names = [f"event_{random.Random(i).getrandbits(48):012x}" for i in range(400)]
    before = plan_shards(names, 8, 64)
    assert [n for shard in before for n in shard] == sorted(names)
    assert max(map(len, before)) <= 64 and 25 <= len(before) <= 80
    added = "event_" + "7" * 12
    after = plan_shards([*names, added], 8, 64)
    changed = [shard for shard in after if shard not in before]
    assert len(changed) <= 2 and any(added in shard for shard in changed)  # the new one's shard (split at most)
    # time-stamped names: new events land in the last shard only
    stamped = [f"event_2026-11-{d:02d}T{h:02d}" for d in range(1, 29) for h in range(24)]
    grown = plan_shards([*stamped, "event_2026-11-29T00", "event_2026-11-29T01"], 8, 64)
    old = plan_shards(stamped, 8, 64)
    assert grown[: len(old) - 1] == old[:-1]


def test_decode_and_sensors_reuse_what_is_unchanged_and_match_a_clean_run(archive, tmp_path):
    out, table = tmp_path / "decoded", tmp_path / "sensors.parquet"
    run_decode(archive, out, CFG)
    run_sensors(archive, table, SPLITS)
    before, before_bytes = stamps(out), digests(out)
    # the archive grows by time-stamped events, one recording changes, one is removed, one relabelled
    make_event(archive, "event_2026-11-13", n_frames=6)
    make_event(archive, "event_2026-11-14", n_frames=6)
    write_tone(archive / "event_2026-11-03" / "audio.wav", seconds=1.0, rate=44_100, channels=1)
    shutil.rmtree(archive / "event_2026-11-05")
    (archive / "event_2026-11-07" / "metadata.json").write_text('{"classification": "Anomalia_Correlacionada"}')
    (archive / "event_2026-11-08" / "sensors.csv").write_text("timestamp,magnetic_magnitude\n1,60\n2,61\n")
    (out / "notes.tar").write_text("a user's file in the output folder")

    report = run_decode(archive, out, CFG)
    sensors = run_sensors(archive, table, SPLITS)
    assert report["reuse"]["events_decoded"] == 3  # two new, one changed: relabelling decodes nothing
    assert report["reuse"]["shards_kept"] >= 1
    assert sensors["reused"] == sensors["accepted_count"] - 3  # two new, one changed sensors.csv
    unchanged = {name for name in before if digests(out).get(name) == before_bytes[name]}
    assert len(unchanged) == report["reuse"]["shards_kept"] >= 1
    assert all(stamps(out)[name] == before[name] for name in unchanged)  # not even rewritten
    assert (out / "notes.tar").exists()
    (out / "notes.tar").unlink()

    clean_out, clean_table = tmp_path / "clean", tmp_path / "clean.parquet"
    run_decode(archive, clean_out, CFG)
    run_sensors(archive, clean_table, SPLITS)
    assert digests(out) == digests(clean_out)
    assert table.read_bytes() == clean_table.read_bytes()
    report_a = json.loads((tmp_path / "sensors_report.json").read_text())
    report_b = json.loads((tmp_path / "clean_report.json").read_text())
    assert report_a == report_b


def test_a_config_change_recomputes_everything(archive, tmp_path):
    out = tmp_path / "decoded"
    run_decode(archive, out, CFG)
    changed = DecodeConfig(**{**CFG.__dict__, "num_frames": 3})
    report = run_decode(archive, out, changed)
    assert report["reuse"]["events_copied"] == 0 and report["reuse"]["shards_kept"] == 0
    run_decode(archive, tmp_path / "clean", changed)
    assert digests(out) == digests(tmp_path / "clean")
    # shard size only regroups: samples are copied, nothing is decoded again
    regrouped = DecodeConfig(**{**changed.__dict__, "shard_events": 2})
    assert run_decode(archive, out, regrouped)["reuse"]["events_decoded"] == 0
    run_decode(archive, tmp_path / "clean2", regrouped)
    assert digests(out) == digests(tmp_path / "clean2")


def test_clean_run_switch_and_only_the_stages_own_files_are_deleted(archive, tmp_path, monkeypatch):
    out = tmp_path / "decoded"
    out.mkdir()
    (out / "train-0123456789abcdef.tar").write_bytes(b"a stale shard of this stage")
    for users in ("train-000001.tar", "images-000042.tar", "notes.tar"):  # look like shards; not the stage's
        (out / users).write_bytes(b"someone else's")
    run_decode(archive, out, CFG)
    assert not (out / "train-0123456789abcdef.tar").exists()
    assert all((out / users).exists() for users in ("train-000001.tar", "images-000042.tar", "notes.tar"))
    monkeypatch.setenv(CLEAN_RUN_ENV, "1")
    assert run_decode(archive, out, CFG)["reuse"]["events_decoded"] == 12


def test_embed_reuses_unchanged_shards_and_matches_a_clean_run(archive, tmp_path):
    decoded, embedded = tmp_path / "decoded", tmp_path / "embedded"
    cfg = EmbedConfig(batch_frames=3, num_workers=0)
    run_decode(archive, decoded, CFG)
    run_embed(decoded, embedded, cfg)
    before = stamps(embedded)
    make_event(archive, "event_2026-11-13", n_frames=6)
    run_decode(archive, decoded, CFG)
    result = run_embed(decoded, embedded, EmbedConfig(batch_frames=3, num_workers=2))  # workers: same bytes
    assert result["throughput"]["reuse"]["shards_written"] == 1
    assert all(stamps(embedded)[name] == before[name] for name in before if name in stamps(embedded))
    run_embed(decoded, tmp_path / "clean", cfg)
    assert digests(embedded) == digests(tmp_path / "clean")


KILLED_RUN = """
import sys
from pathlib import Path
from spectral.stages.decode import DecodeConfig, run_decode
if __name__ == "__main__":
    cfg = DecodeConfig(num_frames=2, size=32, workers=1, splits={splits!r}, shard_events=3, max_shard_events=6)
    run_decode(Path(sys.argv[1]), Path(sys.argv[2]), cfg)
"""


def test_a_run_killed_mid_stage_leaves_the_next_run_correct(archive, tmp_path):
    out = tmp_path / "decoded"
    run_decode(archive, out, CFG)
    first = set(stamps(out))
    for i in range(12):
        make_event(archive, f"event_2026-12-{i + 1:02d}", n_frames=6)
        write_tone(archive / f"event_2026-11-{i + 1:02d}" / "audio.wav", seconds=1.0, rate=22_050, channels=1)
    script = tmp_path / "run.py"
    script.write_text(KILLED_RUN.format(splits=SPLITS))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([sys.executable, str(script), str(archive), str(out)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        if set(stamps(out)) - first:  # it has published a rewritten shard and is still going
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    assert process.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    assert json.loads((out / "report.json").read_text())["complete"] is False
    run_decode(archive, out, CFG)
    run_decode(archive, tmp_path / "clean", CFG)
    assert digests(out) == digests(tmp_path / "clean")


def test_strict_mode_fails_on_a_rejection_kept_from_an_earlier_run(archive, tmp_path):
    broken = archive / "event_2026-11-02" / "video.mp4"
    broken.write_bytes(broken.read_bytes()[:200])
    out = tmp_path / "decoded"
    assert run_decode(archive, out, CFG)["rejected_count"] == 1
    make_event(archive, "event_2026-11-30", n_frames=6)
    with pytest.raises(StrictModeError, match="event_2026-11-02"):
        run_decode(archive, out, DecodeConfig(**{**CFG.__dict__, "strict": True}))
