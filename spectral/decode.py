"""The decode stage: raw event folders → per-split WebDataset shards of frames + audio.

Pixels and waveforms are decoded once here so that every later stage streams compact
arrays instead of re-opening media files. Every input folder ends up either in a shard
or in report.json's rejections with the reason; one bad file never stops the run unless
`strict` is set, but more than `max_rejected_fraction` rejected fails the stage (after the
report is written): that many bad events means a bug or a wrong folder. Whatever had to be
repaired on the way (undecodable frames, NaN or saturated audio) is recorded per event.
Missing-modality policy: an event needs all three files (the fusion model has no path for
an absent modality), so a missing or undecodable one rejects it.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path

import numpy as np
from tqdm import tqdm

from spectral.events import (
    AUDIO_FILE,
    CLASS_NAMES,
    DEFAULT_MAX_REJECTED_FRACTION,
    VIDEO_FILE,
    EventError,
    MediaError,
    StrictModeError,
    check_rejections,
    display_name,
    find_event_folders,
    load_event,
)
from spectral.io.audio import AudioInfo, load_audio, to_pcm16
from spectral.io.video import VideoInfo, load_video
from spectral.keys import sample_key
from spectral.splits import SPLITS, assign_split


@dataclass(frozen=True)
class DecodeConfig:
    """decode.* and video.* params; defaults match params.yaml."""

    num_frames: int = 16
    size: int = 224
    backend: str = "pyav"
    interpolation: str = "bicubic"
    splits: dict[str, float] = field(default_factory=lambda: {"train": 0.7, "val": 0.15, "test": 0.15})
    maxcount: int = 200
    maxsize: int = 500_000_000
    workers: int = 2
    strict: bool = False
    max_rejected_fraction: float = DEFAULT_MAX_REJECTED_FRACTION


def media_warnings(video: VideoInfo, audio: AudioInfo) -> list[str]:
    """What decoding had to repair in an event, in words; stored in the shard and returned by predict."""
    warnings = []
    if video.repeated_frames:
        warnings.append(f"video: {video.repeated_frames} sampled frame(s) could not be decoded; "
                        f"an earlier frame stands in")
    if video.corrupt_frames:
        warnings.append(f"video: {video.corrupt_frames} sampled frame(s) decoded with damage (error-concealed)")
    if audio.repaired_samples:
        warnings.append(f"audio: {audio.repaired_samples} sample(s) held NaN/inf and were replaced")
    if audio.clipped_samples:
        warnings.append(f"audio: {audio.clipped_samples} sample(s) at full scale (clipped recording)")
    return warnings


def decode_event(folder: Path, num_frames: int, size: int, backend: str, interpolation: str,
                 labelled: bool = True) -> dict:
    """One validated event as a shard sample; raises EventError naming the file at fault.

    `labelled=False` (prediction) ignores the event's label entirely."""
    event = load_event(folder, labelled=labelled)
    try:
        frames, video_info = load_video(str(event.video), num_frames, size, backend, interpolation)
    except Exception as err:  # any decoder failure is a property of this file, not of the run
        raise MediaError(event.name, VIDEO_FILE, f"cannot decode video: {err}") from None
    try:
        waveform, audio_info = load_audio(str(event.audio))
    except Exception as err:
        raise MediaError(event.name, AUDIO_FILE, f"cannot decode audio: {err}") from None
    meta = {
        "event": event.name,
        "label": event.label,
        "label_name": CLASS_NAMES[event.label] if event.label is not None else None,
        "video": {**asdict(video_info), "backend": backend, "sampled_frames": num_frames},
        "audio": asdict(audio_info),
        "warnings": media_warnings(video_info, audio_info),
    }
    return {"__key__": sample_key(event.name), "frames.npy": frames, "audio.npy": to_pcm16(waveform), "json": meta}


def _as_npy_bytes(sample: dict) -> dict:
    """Arrays serialised where they were made: a worker then hands the writer bytes, the cheapest thing to pickle."""
    def encode(value):
        if not isinstance(value, np.ndarray):
            return value
        buffer = io.BytesIO()
        np.save(buffer, value, allow_pickle=False)
        return buffer.getvalue()

    return {key: encode(value) for key, value in sample.items()}


def _decode_or_reason(folder: Path, cfg: DecodeConfig) -> tuple[str, dict | None, str | None]:
    try:
        sample = decode_event(folder, cfg.num_frames, cfg.size, cfg.backend, cfg.interpolation)
        return folder.name, _as_npy_bytes(sample), None
    except EventError as err:
        return display_name(folder.name), None, str(err)
    except Exception as err:  # never let one event kill a 10,000-event run
        name = display_name(folder.name)
        return name, None, f"{name}: unexpected error {type(err).__name__}: {err}"


def _ordered_results(folders: list[Path], cfg: DecodeConfig) -> Iterator[tuple[str, dict | None, str | None]]:
    """Results in input order; parallel workers never change the output bytes.

    A rolling window of `4 x workers` events is in flight, so memory stays bounded by the
    window, not the dataset, and no worker idles while the writer waits on a slow event.
    """
    if cfg.workers <= 1:
        yield from (_decode_or_reason(folder, cfg) for folder in folders)
        return
    remaining = iter(folders)
    with ProcessPoolExecutor(cfg.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        in_flight = deque(pool.submit(_decode_or_reason, f, cfg) for f in islice(remaining, cfg.workers * 4))
        while in_flight:
            result = in_flight.popleft().result()
            for folder in islice(remaining, 1):
                in_flight.append(pool.submit(_decode_or_reason, folder, cfg))
            yield result


def run_decode(events_dir: Path, out_dir: Path, cfg: DecodeConfig) -> dict:
    """Decode every event folder under events_dir into out_dir; writes report.json, returns it plus timing."""
    # Imported here, not at module level: webdataset pulls in torch (1 s), and every spawned
    # decode worker imports this module; workers only decode, the writer lives in this process.
    from spectral.shards import ShardWriter, remove_shards

    started = time.perf_counter()
    folders = find_event_folders(events_dir)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_shards(out_dir)
    (out_dir / "report.json").unlink(missing_ok=True)
    accepted: list[str] = []
    rejected: list[dict] = []
    warnings: dict[str, list[str]] = {}
    per_split = dict.fromkeys(SPLITS, 0)
    writers = {name: ShardWriter(out_dir, name, cfg.maxcount, cfg.maxsize) for name in SPLITS}
    try:
        results = tqdm(_ordered_results(folders, cfg), total=len(folders), desc="decode", unit="event")
        for name, sample, reason in results:
            if sample is None:
                rejected.append({"event": name, "reason": reason})
                if cfg.strict:
                    raise StrictModeError(f"strict mode: {reason}")
                continue
            split = assign_split(name, cfg.splits)
            sample["json"]["split"] = split
            writers[split].write(sample)
            per_split[split] += 1
            accepted.append(name)
            if sample["json"]["warnings"]:
                warnings[name] = sample["json"]["warnings"]
    except BaseException:
        for writer in writers.values():
            writer.abort()
        raise
    shards = {name: [p.name for p in writer.close()] for name, writer in writers.items()}
    report = {
        "stage": "decode",
        "events_dir": str(events_dir),
        "inputs": len(folders),
        "accepted_count": len(accepted),
        "rejected_count": len(rejected),
        "per_split": per_split,
        "policy": "an event needs metadata.json with a known classification, video.mp4, audio.wav and sensors.csv; "
                  "a missing, empty or undecodable file rejects the event",
        # only what shapes the data: workers and strictness must not change the output's hash
        "config": {k: v for k, v in asdict(cfg).items() if k not in ("workers", "strict", "max_rejected_fraction")},
        "shards": shards,
        "accepted": accepted,
        "rejected": rejected,
        "warnings": warnings,
    }
    # Timing stays out of report.json: the stage's outputs must be byte-identical across runs.
    report_path = out_dir / "report.json"
    report_path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    check_rejections("decode", len(rejected), len(folders), cfg.max_rejected_fraction, report_path)
    return {**report, "seconds": round(time.perf_counter() - started, 3)}

