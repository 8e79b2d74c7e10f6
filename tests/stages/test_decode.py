import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from media import frame_index, make_event

import spectral.io.event
from spectral.events import MachineFailure, StrictModeError, TooManyRejectionsError
from spectral.io.frames import load_frames, stored_frames
from spectral.io.video import sample_indices
from spectral.runtime.keys import event_name
from spectral.runtime.reuse import output_files
from spectral.runtime.shards import raw_samples, read_samples, shard_paths
from spectral.stages.decode import DecodeConfig, run_decode
from spectral.stages.sensors import run_sensors

# the messy fixture is mostly bad events on purpose, so it lifts the rejection limit
CFG = DecodeConfig(num_frames=4, size=32, audio_seconds=5.0, workers=1, missing_modality="reject",
                   splits={"train": 0.5, "val": 0.25, "test": 0.25}, max_rejected_fraction=1.0, frame_format="npy")
DECODABLE = ["event_badlabel", *(f"event_ok{i}" for i in range(4)), "event_unlabeled"]  # decode reads no labels
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
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in output_files(directory)}


def test_every_event_is_accounted_for_with_a_reason(messy_events, tmp_path):
    report = run_decode(messy_events, tmp_path / "out", CFG)
    saved = json.loads((tmp_path / "out" / "report.json").read_text(encoding="utf-8"))
    names = sorted(p.name for p in messy_events.iterdir())
    assert sorted(saved["accepted"] + [r["event"] for r in saved["rejected"]]) == names
    assert saved["accepted"] == DECODABLE
    reasons = {r["event"]: r["reason"] for r in saved["rejected"]}
    assert reasons["event_truncated"].startswith("event_truncated/video.mp4: cannot decode video")
    assert reasons["event_badaudio"].startswith("event_badaudio/audio.wav: cannot decode audio")
    assert reasons["event_novideo"] == "event_novideo/video.mp4: file is missing"
    assert reasons["event_emptyaudio"] == "event_emptyaudio/audio.wav: file is empty"
    assert "must start with 'event_'" in reasons["notes"]
    assert report["seconds"] > 0 and "seconds" not in saved


def test_keep_mode_keeps_events_missing_video_or_audio_and_names_what_is_missing(messy_events, tmp_path):
    """missing_modality: keep — the same messy folder: an event with at least one of video and audio comes
    through without the other (no member for it), listed under `incomplete` with the reason; one with
    neither is still rejected; events that have both are byte-identical to reject mode's."""
    both_missing = messy_events / "event_truncated"
    (both_missing / "audio.wav").unlink()
    report = run_decode(messy_events, tmp_path / "keep", replace(CFG, missing_modality="keep"))
    assert report["incomplete"] == {"event_badaudio": ["audio"], "event_emptyaudio": ["audio"],
                                    "event_novideo": ["video"]}
    reasons = {r["event"]: r["reason"] for r in report["rejected"]}
    assert reasons["event_truncated"].startswith("event_truncated: neither video nor audio decodes")
    samples = {event_name(s["__key__"]): s for p in sorted((tmp_path / "keep").glob("*.tar"))
               for s in read_samples([p])}
    assert "audio.npy" not in samples["event_emptyaudio"] and "frames.npy" in samples["event_emptyaudio"]
    assert "frames.npy" not in samples["event_novideo"] and "audio.npy" in samples["event_novideo"]
    assert samples["event_novideo"]["json"]["missing"] == {"video": "event_novideo/video.mp4: file is missing"}
    rejecting = run_decode(messy_events, tmp_path / "reject", CFG)
    reference = {event_name(s["__key__"]): s for p in sorted((tmp_path / "reject").glob("*.tar"))
                 for s in read_samples([p])}
    for name in rejecting["accepted"]:
        np.testing.assert_array_equal(samples[name]["frames.npy"], reference[name]["frames.npy"])
        np.testing.assert_array_equal(samples[name]["audio.npy"], reference[name]["audio.npy"])


def test_shards_hold_exact_frames_audio_and_no_labels(messy_events, tmp_path):
    run_decode(messy_events, tmp_path / "out", CFG)
    samples = [s for split in ("train", "val", "test") for s in read_samples(shard_paths(tmp_path / "out", split))]
    assert sorted(s["__key__"] for s in samples) == DECODABLE
    assert all(s["json"]["warnings"] == [] for s in samples)
    for sample in samples:
        if not sample["__key__"].startswith("event_ok"):
            continue
        n = 10 + int(sample["__key__"][-1])
        frames, audio, meta = sample["frames.npy"], sample["audio.npy"], sample["json"]
        assert frames.shape == (4, 32, 32, 3) and frames.dtype == np.uint8
        assert [frame_index(f) for f in frames] == sample_indices(n, 4).tolist()
        assert audio.shape == (220_500,) and audio.dtype == np.int16
        assert "label" not in meta and meta["video"]["backend"] == "pyav"
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
    assert json.loads((tmp_path / "out" / "report.json").read_text(encoding="utf-8"))["complete"] is False


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


def test_jpeg_frame_cache_is_compact_and_close_to_the_raw_frames(messy_events, tmp_path):
    run_decode(messy_events, tmp_path / "npy", CFG)
    run_decode(messy_events, tmp_path / "jpeg", DecodeConfig(**{**CFG.__dict__, "frame_format": "jpeg"}))
    for shard in (tmp_path / "npy").glob("*.tar"):
        raw = {s["__key__"]: s for s in read_samples([shard])}
        for sample in raw_samples(tmp_path / "jpeg" / shard.name):
            assert sorted(k for k in sample if k.endswith(".jpg")) == [f"f{i:04d}.jpg" for i in range(4)]
            frames = load_frames(sample)
            exact = raw[sample["__key__"]]["frames.npy"]
            assert frames.shape == exact.shape and frames.dtype == np.uint8
            assert np.abs(frames.astype(int) - exact).mean() < 3
            assert [frame_index(f) for f in frames] == [frame_index(f) for f in exact]
            np.testing.assert_array_equal(stored_frames(exact, "jpeg", 95), frames)  # what predict feeds the model


def test_more_rejections_than_the_limit_fail_the_stage_after_writing_the_report(messy_events, tmp_path):
    message = r"5 of 11 events rejected \(45%\), more than decode.max_rejected_fraction=0.4"
    with pytest.raises(TooManyRejectionsError, match=message):
        run_decode(messy_events, tmp_path / "out", DecodeConfig(**{**CFG.__dict__, "max_rejected_fraction": 0.4}))
    report = json.loads((tmp_path / "out" / "report.json").read_text(encoding="utf-8"))
    assert report["rejected_count"] == 5 and report["accepted_count"] == 6


def test_users_event_names_survive_with_their_exact_name(tmp_path):
    names = ["event_2026.11.27_porão", "event_sala de estar 01", "event_50%.v2", "event_日本"]
    for name in names:
        make_event(tmp_path / "events", name)
    report = run_decode(tmp_path / "events", tmp_path / "out", CFG)
    assert sorted(report["accepted"]) == sorted(names)
    samples = [s for split in ("train", "val", "test") for s in read_samples(shard_paths(tmp_path / "out", split))]
    assert sorted(event_name(s["__key__"]) for s in samples) == sorted(names)
    assert all(s["frames.npy"].shape == (4, 32, 32, 3) for s in samples)  # not torn between key and extension
    assert sorted(s["json"]["event"] for s in samples) == sorted(names)


def test_repaired_and_clipped_audio_is_recorded_in_the_shard(tmp_path):
    import soundfile as sf

    folder = make_event(tmp_path / "events", "event_damaged")
    wave = np.full(44_100, 0.25, dtype=np.float32)
    wave[100:103] = np.nan
    wave[200:250] = 1.0
    sf.write(folder / "audio.wav", wave, 44_100, subtype="FLOAT")
    run_decode(tmp_path / "events", tmp_path / "out", CFG)
    (sample,) = [s for p in (tmp_path / "out").glob("*.tar") for s in read_samples([p])]
    audio = sample["json"]["audio"]
    assert (audio["repaired_samples"], audio["clipped_samples"]) == (3, 50)
    assert sample["json"]["warnings"] == ["audio: 3 sample(s) held NaN/inf and were replaced",
                                          "audio: 50 sample(s) at full scale (clipped recording)"]
    report = json.loads((tmp_path / "out" / "report.json").read_text(encoding="utf-8"))
    assert report["warnings"] == {"event_damaged": sample["json"]["warnings"]}


def test_a_folder_name_that_is_not_utf8_is_rejected_not_fatal(tmp_path):
    """A Latin-1 name (an old Windows zip) reaches Python as surrogates, which no UTF-8 writer accepts:
    it must become one rejection with a printable name, not a crash of the whole run."""
    import os

    from spectral.stages.sensors import run_sensors

    make_event(tmp_path / "events", "event_ok")
    latin = make_event(tmp_path / "events", "event_latin")
    os.rename(latin, os.path.join(os.fsencode(tmp_path / "events"), b"event_por\xe3o"))
    report = run_decode(tmp_path / "events", tmp_path / "out", CFG)
    assert report["accepted"] == ["event_ok"]
    assert report["rejected"] == [{"event": "event_por\\xe3o",
                                   "reason": "event_por\\xe3o: folder name is not valid UTF-8 (undecodable bytes "
                                             "shown as \\xNN); rename the folder"}]
    sensors = run_sensors(tmp_path / "events", tmp_path / "s.parquet", CFG.splits, max_rejected_fraction=1.0)
    assert [r["event"] for r in sensors["rejected"]] == ["event_por\\xe3o"]


@pytest.fixture
def six_events(tmp_path):
    root = tmp_path / "events"
    for i in range(6):
        make_event(root, f"event_{i:02d}", n_frames=6)
    return root


KEEP = replace(CFG, missing_modality="keep", max_rejected_fraction=0.5)


def test_a_backend_that_cannot_be_imported_fails_before_any_event(six_events, tmp_path, monkeypatch):
    """A missing decoder is a broken setup: recording every event "without video" would keep them so until
    their bytes change."""
    monkeypatch.setitem(sys.modules, "decord", None)  # `import decord` raises ImportError
    with pytest.raises(RuntimeError, match="decord cannot be imported"):
        run_decode(six_events, tmp_path / "out", replace(KEEP, backend="decord"))
    assert not (tmp_path / "out" / "report.json").exists()


def test_an_io_error_is_retried_once_and_a_second_one_fails_the_stage_recording_nothing(six_events, tmp_path,
                                                                                         monkeypatch):
    real_load_video, calls = spectral.io.event.load_video, []

    def flaky(path, *args, failures=1, **kwargs):
        calls.append(path)
        if "event_03" in path and calls.count(path) <= failures:
            raise OSError(errno.EIO, "Input/output error")
        return real_load_video(path, *args, **kwargs)

    monkeypatch.setattr(spectral.io.event, "load_video", flaky)
    report = run_decode(six_events, tmp_path / "once", KEEP)
    assert report["incomplete"] == {} and report["accepted_count"] == 6
    clean = run_decode(six_events, tmp_path / "clean", KEEP)
    assert digest(tmp_path / "once") == digest(tmp_path / "clean") and clean["rejected"] == []

    calls.clear()
    monkeypatch.setattr(spectral.io.event, "load_video", lambda path, *args, **kwargs: flaky(path, *args, failures=2,
                                                                                             **kwargs))
    with pytest.raises(MachineFailure, match=r"decode: event_03 failed twice with OSError: \[Errno 5\]"):
        run_decode(six_events, tmp_path / "twice", KEEP)
    index = json.loads((tmp_path / "twice" / "report.json").read_text())
    assert index["complete"] is False and "event_03" not in json.dumps(index)  # nothing recorded about it


def test_keep_mode_counts_events_kept_without_a_modality_against_the_rejection_limit(six_events, tmp_path):
    for folder in sorted(six_events.iterdir()):
        (folder / "video.mp4").write_bytes(b"\x00\x01 not a video " * 64)
    with pytest.raises(TooManyRejectionsError,
                       match=r"decode: 6 of 6 events without their video \(rejected, or kept without it\)"):
        run_decode(six_events, tmp_path / "out", KEEP)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["rejected"] == [] and len(report["incomplete"]) == 6
    reason = report["warnings"]["event_00"][0]
    assert "cannot decode video: InvalidDataError" in reason  # the library's invalid-data error, by name


DECODE_SCRIPT = """
import sys
from dataclasses import replace
from pathlib import Path
from spectral.stages.decode import DecodeConfig, run_decode
if __name__ == "__main__":
    cfg = DecodeConfig(num_frames=4, size=32, workers=1, splits={"train": 1.0, "val": 0.0, "test": 0.0},
                       missing_modality="keep", frame_format="npy")
    run_decode(Path(sys.argv[1]), Path(sys.argv[2]), cfg)
"""


def test_a_fifo_or_a_link_to_a_device_as_media_is_refused_without_being_read(six_events, tmp_path):
    os.unlink(six_events / "event_01" / "video.mp4")
    os.mkfifo(six_events / "event_01" / "video.mp4")  # opened for reading, it blocks for ever
    os.unlink(six_events / "event_02" / "audio.wav")
    os.symlink("/dev/zero", six_events / "event_02" / "audio.wav")  # read, it never ends
    script = tmp_path / "decode.py"
    script.write_text(DECODE_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    subprocess.run([sys.executable, str(script), str(six_events), str(tmp_path / "out")], env=env, check=True,
                   timeout=120, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["incomplete"] == {"event_01": ["video"], "event_02": ["audio"]}
    assert "video.mp4: not a regular file (a FIFO): refused without reading it" in report["warnings"]["event_01"][0]
    assert "audio.wav: not a regular file (a device)" in report["warnings"]["event_02"][0]


def test_links_outside_the_events_folder_are_refused_unless_followed(six_events, tmp_path):
    outside = tmp_path / "elsewhere"
    shutil.move(six_events / "event_04", outside / "event_04")
    (six_events / "event_04").symlink_to(outside / "event_04", target_is_directory=True)  # the whole event
    shutil.move(six_events / "event_05" / "video.mp4", outside / "video.mp4")
    (six_events / "event_05" / "video.mp4").symlink_to(outside / "video.mp4")  # one recording
    (six_events / "event_03" / "audio.wav").rename(six_events / "event_03" / "take2.wav")
    (six_events / "event_03" / "audio.wav").symlink_to("take2.wav")  # a link inside the folder is fine
    report = run_decode(six_events, tmp_path / "refuse", KEEP)
    assert report["accepted"] == ["event_00", "event_01", "event_02", "event_03", "event_05"]
    assert report["rejected"][0]["reason"].startswith("event_04: a link outside the events folder and its DVC cache")
    assert report["incomplete"] == {"event_05": ["video"]}
    sensors = run_sensors(six_events, tmp_path / "sensors.parquet", CFG.splits, missing_modality="keep")
    assert [r["event"] for r in sensors["rejected"]] == ["event_04"]
    followed = run_decode(six_events, tmp_path / "follow", replace(KEEP, links_outside_events="follow"))
    assert followed["rejected"] == [] and followed["incomplete"] == {}


def test_dvc_add_with_symlink_cache_keeps_every_recording(six_events, tmp_path):
    """`dvc add` with cache.type: symlink turns each recording into a link into .dvc/cache: still inside."""
    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    shutil.move(six_events, project / "data" / "recordings")
    dvc = str(Path(sys.executable).parent / "dvc")
    for command in (["git", "init", "-q"], [dvc, "init", "-q"], [dvc, "config", "cache.type", "symlink"],
                    [dvc, "add", "-q", "data/recordings"]):
        subprocess.run(command, cwd=project, check=True, capture_output=True)
    assert (project / "data" / "recordings" / "event_00" / "video.mp4").is_symlink()
    report = run_decode(project / "data" / "recordings", tmp_path / "out", KEEP)
    assert report["accepted_count"] == 6 and report["incomplete"] == {}
    sensors = run_sensors(project / "data" / "recordings", tmp_path / "s.parquet", CFG.splits)
    assert sensors["accepted_count"] == 6


def test_an_event_past_its_time_budget_is_retried_then_stops_the_stage(six_events, tmp_path, monkeypatch):
    real_load_video = spectral.io.event.load_video

    def hung(path, *args, **kwargs):
        if "event_02" in path:
            time.sleep(30)
        return real_load_video(path, *args, **kwargs)

    monkeypatch.setattr(spectral.io.event, "load_video", hung)
    started = time.monotonic()
    with pytest.raises(MachineFailure, match=r"event_02 failed twice with EventTimeout: decoding event_02 took "
                                             r"longer than its 0.5 s time budget"):
        run_decode(six_events, tmp_path / "out", replace(KEEP, event_timeout_s=0.5))
    assert time.monotonic() - started < 20


def test_a_folder_or_a_socket_named_as_media_is_a_property_of_the_event(six_events, tmp_path):
    import socket

    (six_events / "event_01" / "audio.wav").unlink()
    (six_events / "event_01" / "audio.wav").mkdir()
    (six_events / "event_02" / "video.mp4").unlink()
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(six_events / "event_02" / "video.mp4"))
    try:
        report = run_decode(six_events, tmp_path / "out", KEEP)
    finally:
        server.close()
    assert report["incomplete"] == {"event_01": ["audio"], "event_02": ["video"]}
    assert "not a regular file (a socket)" in report["warnings"]["event_02"][0]


def test_a_link_that_changes_side_is_decided_again(six_events, tmp_path):
    """The refusal is part of the key, and its reason names no path: the same bytes under any checkout."""
    video = six_events / "event_03" / "video.mp4"
    outside = tmp_path / "outside.mp4"
    shutil.copy(video, outside)
    kept = video.with_name("same.mp4")
    video.rename(kept)
    video.symlink_to(outside)  # identical bytes, outside: refused
    refused = run_decode(six_events, tmp_path / "out", KEEP)
    assert refused["incomplete"] == {"event_03": ["video"]} and str(tmp_path) not in json.dumps(refused["warnings"])
    video.unlink()
    video.symlink_to("same.mp4")  # identical bytes, inside: decoded, as a clean run would
    again = run_decode(six_events, tmp_path / "out", KEEP)
    assert again["incomplete"] == {}
    run_decode(six_events, tmp_path / "clean", KEEP)
    assert digest(tmp_path / "out") == digest(tmp_path / "clean")


def test_decode_workers_start_without_torch_or_polars() -> None:
    """Every spawned decode worker imports the stage module: torch (webdataset's) and polars (tables) would add
    ~1.2 s to each worker's start, for code a worker never runs."""
    code = "import sys, spectral.stages.decode; print(sorted({'torch', 'polars', 'webdataset'} & set(sys.modules)))"
    loaded = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.strip()
    assert loaded == "[]"
