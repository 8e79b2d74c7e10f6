"""The decode stage: raw event folders → per-split WebDataset shards of frames + audio.

Pixels and waveforms are decoded once here so that every later stage streams compact
arrays instead of re-opening media files. Every input folder ends up either in a shard
or in report.json's rejections with the reason; one bad file never stops the run unless
`strict` is set, but more than `max_rejected_fraction` rejected, or (per modality) rejected or
kept without it, fails the stage after the report is written: that many means a bug or a
wrong folder. Only a file's own faults are recorded (spectral.io.errors); a failure of the
machine is retried once and then stops the stage. Whatever had to be repaired on the way
(undecodable frames, NaN or saturated audio) is recorded per event.

The stage is incremental (spectral.runtime.incremental, spectral.runtime.reuse): report.json doubles as the
index of what each shard holds, the key it was made from, and its size and sha256. A shard
whose key is unchanged and whose file verifies is left untouched on disk; a shard that must
be rewritten copies its unchanged events from verified old shards and decodes only new or
changed ones. The result is byte-identical to a clean run.
Labels are not decoded (the sensors stage's table carries them), so relabelling re-decodes
nothing. An event needs video.mp4 and audio.wav here; a missing or undecodable one rejects it, or
with `missing_modality: keep` is left out of the sample and named (training masks it).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import multiprocessing
import tarfile
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import numpy as np
from tqdm import tqdm

from spectral.events import (
    DEFAULT_MAX_REJECTED_FRACTION,
    EventError,
    StrictModeError,
    attempt_twice,
    check_link_policy,
    check_losses,
    check_missing_policy,
    display_name,
    find_event_folders,
    time_budget,
)
from spectral.io.audio import TARGET_RATE, audio_samples
from spectral.io.event import DECODED_FILES, KEPT_MISSING, decode_event
from spectral.io.frames import check_format, encode_frames
from spectral.io.video import check_backend, check_size
from spectral.runtime.distributed import SINGLE_PROCESS, Ranks, assign_by_size
from spectral.runtime.incremental import (
    digest,
    file_key,
    plan_shards,
    shard_file_name,
)
from spectral.runtime.keys import sample_key
from spectral.runtime.lifecycle import die_with_parent
from spectral.runtime.params import build_config
from spectral.runtime.reuse import StageOutputs, key_changes, key_parts, key_salt
from spectral.runtime.splits import SPLITS, assign_split

REPORT = "report.json"
# what shapes the shards' bytes besides our code: demuxing/decoding and scaling (FFmpeg in PyAV), JPEG (Pillow),
# audio reading and resampling (libsndfile, libsoxr), arrays and the tar writer
LIBRARIES = ("av", "numpy", "pillow", "soundfile", "soxr", "webdataset")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DecodeConfig:
    """decode.*, video.num_frames/size/interpolation, audio.seconds, splits and the missing-file and link
    policies; the defaults are params.yaml's (tests/runtime/test_params.py)."""

    num_frames: int = 8
    size: int = 224
    audio_seconds: float = 2.0
    backend: str = "pyav"
    interpolation: str = "bicubic"
    splits: dict[str, float] = field(default_factory=lambda: {"train": 0.4, "val": 0.3, "test": 0.3})
    frame_format: str = "h264"
    jpeg_quality: int = 95
    shard_events: int = 16
    max_shard_events: int = 64
    workers: int = 2
    strict: bool = False
    max_rejected_fraction: float = DEFAULT_MAX_REJECTED_FRACTION
    missing_modality: str = "keep"  # keep: an event without usable video or audio is kept, that modality masked
    links_outside_events: str = "refuse"  # follow: read links that resolve outside the events folder and DVC cache
    event_timeout_s: float = 300.0  # per event and attempt; a time-out is retried once, then stops the stage

    @classmethod
    def from_params(cls, params: dict) -> DecodeConfig:
        return build_config(cls, params, "decode", elsewhere={
            "num_frames": "video.num_frames", "size": "video.size", "interpolation": "video.interpolation",
            "audio_seconds": "audio.seconds", "splits": "splits", "missing_modality": "missing_modality",
            "links_outside_events": "links_outside_events"})

    def __post_init__(self) -> None:
        check_missing_policy(self.missing_modality)
        check_link_policy(self.links_outside_events)
        check_size(self.size)

    def sample_config(self) -> dict:
        """What a decoded sample's bytes depend on (with the media and the code): its reuse key."""
        config = {key: getattr(self, key) for key in ("num_frames", "size", "audio_seconds", "backend", "interpolation",
                                                      "splits", "missing_modality", "links_outside_events",
                                                      "frame_format", "jpeg_quality")}
        if self.frame_format != "jpeg":  # the quality changes no byte of h264/npy shards
            config["jpeg_quality"] = None
        return config

    def data_config(self) -> dict:
        """What the stage's outputs depend on: workers and strictness must not change their hash."""
        return {**self.sample_config(), "shard_events": self.shard_events, "max_shard_events": self.max_shard_events}


def _shard_sample(sample: dict, cfg: DecodeConfig) -> dict:
    """The sample as shard member bytes, serialised where it was made: a worker then hands the
    writer bytes, the cheapest thing to pickle, and reused samples compare byte for byte."""
    def encode(value):
        if isinstance(value, np.ndarray):
            buffer = io.BytesIO()
            np.save(buffer, value, allow_pickle=False)
            return buffer.getvalue()
        if isinstance(value, dict):
            return json.dumps(value).encode("utf-8")
        return value

    frames = sample.pop("frames.npy", None)
    sample["json"]["split"] = assign_split(sample["json"]["event"], cfg.splits)
    members = {**sample, **(encode_frames(frames, cfg.frame_format, cfg.jpeg_quality) if frames is not None else {})}
    return {key: encode(value) for key, value in members.items()}


Result = tuple[str, dict | None, str | None]  # (name, sample, rejection reason)


def _decode_or_reason(folder: Path, cfg: DecodeConfig) -> Result:
    """An event's sample, or the reason its files cannot give one; a failure of the machine (I/O, memory: not
    a property of the files) is retried once and then raises MachineFailure, which stops the stage."""
    def decode() -> dict:
        with time_budget(cfg.event_timeout_s, f"decoding {display_name(folder.name)}"):  # a hung read, never recorded
            sample = decode_event(folder, cfg.num_frames, cfg.size, cfg.backend, cfg.interpolation,
                                  cfg.audio_seconds, keep_missing=cfg.missing_modality == "keep",
                                  links_inside=cfg.links_outside_events == "refuse")
        if len(missing := sample["json"].get("missing", {})) == len(DECODED_FILES):  # nothing left to shard
            raise EventError(folder.name, None, f"neither video nor audio decodes ({missing['video']}; "
                                                f"{missing['audio']})")
        return sample

    try:
        return folder.name, _shard_sample(attempt_twice("decode", folder.name, decode), cfg), None
    except EventError as err:  # a property of the files: the same inputs give the same rejection
        return display_name(folder.name), None, str(err)


def _ready() -> None:
    """Nothing: a worker that unpickles this task has imported the decode module, so it is ready."""


@contextlib.contextmanager
def _decode_workers(workers: int) -> Iterator[tuple[ProcessPoolExecutor | None, list[Future]]]:
    """(pool, one `_ready` future per worker) when `workers > 1`: the processes start at once, so spawning
    them and their imports overlap the writer's own start-up. On the way out, work not yet started is
    dropped (after an error nothing more is wanted from it)."""
    if workers <= 1:
        yield None, []
        return
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=die_with_parent)
    try:
        # the executor starts a process for each task no idle worker can take
        yield pool, [pool.submit(_ready) for _ in range(workers)]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _ordered_results(folders: list[Path], cfg: DecodeConfig, pool: ProcessPoolExecutor | None) -> Iterator[Result]:
    """Results in input order; parallel workers never change the output bytes.

    A rolling window of `4 x workers` events is in flight, so memory stays bounded by the
    window, not the dataset, and no worker idles while the writer waits on a slow event.
    """
    if pool is None or not folders:
        yield from (_decode_or_reason(folder, cfg) for folder in folders)
        return
    remaining = iter(folders)
    in_flight = deque(pool.submit(_decode_or_reason, f, cfg) for f in islice(remaining, cfg.workers * 4))
    while in_flight:
        result = in_flight.popleft().result()
        for folder in islice(remaining, 1):
            in_flight.append(pool.submit(_decode_or_reason, folder, cfg))
        yield result


@dataclass
class _Shard:
    """One planned shard and, once made, its index entry (what report.json records for reuse)."""

    split: str
    file: str
    key: str
    event_keys: dict[str, str]          # every planned member (accepted or not) → its event key
    accepted: list[str] = field(default_factory=list)
    rejected: dict[str, str] = field(default_factory=dict)
    warnings: dict[str, list[str]] = field(default_factory=dict)
    sha256: str | None = None           # None: every member was rejected, so no file was written
    size: int | None = None

    def entry(self) -> dict:
        return {"file": self.file, "key": self.key, "sha256": self.sha256, "size": self.size,
                "events": {display_name(name): key for name, key in self.event_keys.items()},
                "accepted": self.accepted, "rejected": self.rejected, "warnings": self.warnings}

    @classmethod
    def from_entry(cls, split: str, entry: dict) -> _Shard:
        return cls(split, entry["file"], entry["key"], entry["events"], entry["accepted"], entry["rejected"],
                   entry["warnings"], entry["sha256"], entry["size"])


def _previous_shards(report: dict | None) -> dict[str, _Shard]:
    """The last run's index by file name. Files are verified before use (spectral.runtime.reuse)."""
    if report is None:
        return {}
    try:
        shards = [_Shard.from_entry(split, entry) for split, entries in report["index"].items() for entry in entries]
    except (KeyError, TypeError, AttributeError):  # a damaged index: rebuild everything
        return {}
    return {s.file: s for s in shards}


def _index(shards: list[_Shard]) -> dict:
    """report.json's reuse index: each split's shards in plan order."""
    return {"index": {split: [s.entry() for s in shards if s.split == split] for split in SPLITS}}


class _OldSamples:
    """Random access to the samples of the previous run's shards, by event key."""

    def __init__(self, out_dir: Path, previous: dict[str, _Shard]) -> None:
        self.out_dir = out_dir
        self.location = {previous[file].event_keys[name]: (file, name)
                         for file in previous for name in previous[file].accepted}
        self.rejection = {shard.event_keys[name]: reason for shard in previous.values()
                          for name, reason in shard.rejected.items()}
        self.warnings = {shard.event_keys[name]: shard.warnings.get(name, [])
                         for shard in previous.values() for name in shard.accepted}
        self._open: dict[str, tuple[tarfile.TarFile, dict[str, list[tarfile.TarInfo]]]] = {}

    def forget(self, file: str) -> None:
        """Stop copying from a shard that failed verification: its events are decoded again."""
        self.location = {key: where for key, where in self.location.items() if where[0] != file}

    def sample(self, event_key: str) -> dict:
        file, name = self.location[event_key]
        if file not in self._open:
            tar = tarfile.open(self.out_dir / file)
            members: dict[str, list[tarfile.TarInfo]] = {}
            for member in tar.getmembers():
                members.setdefault(member.name.partition(".")[0], []).append(member)
            self._open[file] = (tar, members)
        tar, members = self._open[file]
        return {"__key__": sample_key(name),
                **{m.name.partition(".")[2]: tar.extractfile(m).read() for m in members[sample_key(name)]}}

    def close(self) -> None:
        for tar, _ in self._open.values():
            tar.close()


def _key_parts(cfg: DecodeConfig) -> dict:
    return key_parts(__file__, cfg.sample_config(), LIBRARIES + (("decord",) if cfg.backend == "decord" else ()))


def _plan(folders: list[Path], cfg: DecodeConfig, salt: str, ranks: Ranks) -> tuple[list[_Shard], list[_Shard]]:
    """Every shard this run's outputs consist of, before anything is decoded, and the ones this rank
    makes (whole shards, balanced by event count), keyed: a rank hashes only its own shards' inputs."""
    links_inside = cfg.links_outside_events == "refuse"
    split_of = {folder.name: assign_split(folder.name, cfg.splits) for folder in folders}
    by_name = {folder.name: folder for folder in folders}
    shards = [_Shard(split, shard_file_name(split, members), "", dict.fromkeys(members, ""))
              for split in SPLITS
              for members in plan_shards([n for n, its in split_of.items() if its == split],
                                         cfg.shard_events, cfg.max_shard_events)]
    owners = assign_by_size([len(s.event_keys) for s in shards], ranks.world_size)
    mine = [s for s, owner in zip(shards, owners, strict=True) if owner == ranks.rank]
    progress = tqdm(total=sum(len(s.event_keys) for s in mine), desc=ranks.label("decode: hashing inputs"),
                    unit="event", leave=False)
    for shard in mine:
        for name in shard.event_keys:
            shard.event_keys[name] = attempt_twice("decode", name, lambda name=name: digest(
                salt, name, *(file_key(by_name[name] / f, links_inside) for f in DECODED_FILES)))
            progress.update()
        shard.key = digest(shard.split, shard.event_keys)
    progress.close()
    return shards, mine


def run_decode(events_dir: Path, out_dir: Path, cfg: DecodeConfig, ranks: Ranks = SINGLE_PROCESS) -> dict:
    """Decode the event folders under events_dir into out_dir, reusing what an earlier run made from
    the same inputs; writes report.json, returns it plus timing and reuse counts (of all ranks).

    Under torchrun (`ranks` from spectral.runtime.distributed.stage_ranks) each rank makes whole shards of
    the plan and rank 0 writes the report once every rank has reported its shards."""
    with _decode_workers(cfg.workers) as (pool, ready):
        return _decode_into_shards(events_dir, out_dir, cfg, ranks, pool, ready)


def _decode_into_shards(events_dir: Path, out_dir: Path, cfg: DecodeConfig, ranks: Ranks,
                        pool: ProcessPoolExecutor | None, ready: list[Future]) -> dict:
    # Imported here, not at module level: webdataset pulls in torch (1 s), and every spawned
    # decode worker imports this module; workers only decode, the writer lives in this process.
    from spectral.runtime.shards import AtomicTarWriter

    for worker in ready:
        worker.result()  # a worker that cannot start (a broken install) fails the stage here, loudly
    started = time.perf_counter()  # after the start-up (imports, worker processes): the stage's own seconds
    check_format(cfg.frame_format, cfg.jpeg_quality)
    check_backend(cfg.backend)  # a decoder that cannot be imported fails here, before any event is touched
    # one listing, rank 0's: events arriving mid-run (a growing archive) must not give ranks different plans
    folders = ranks.broadcast(find_event_folders(events_dir) if ranks.is_main else None)
    out_dir = Path(out_dir)
    outputs = StageOutputs("decode", out_dir, REPORT, ranks)
    verifier = outputs.verifier
    parts = _key_parts(cfg)
    changes = key_changes(outputs.previous, parts)
    plan, mine = _plan(folders, cfg, key_salt("decode", parts), ranks)
    previous = _previous_shards(outputs.previous)

    def reusable(file: str) -> bool:
        old_shard = previous[file]
        return old_shard.sha256 is None or verifier.reusable(file, {"size": old_shard.size, "sha256": old_shard.sha256})

    kept = {s.file for s in mine if s.file in previous and previous[s.file].key == s.key and reusable(s.file)}
    mine = [previous[s.file] if s.file in kept else s for s in mine]
    every_kept = {s.file: s for kept_by_rank in ranks.gather([s for s in mine if s.file in kept]) for s in kept_by_rank}
    outputs.publish_kept({"key_parts": parts, **_index([every_kept[s.file] for s in plan if s.file in every_kept])})
    old = _OldSamples(out_dir, previous)
    by_name = {folder.name: folder for folder in folders}
    if cfg.strict and (reasons := [r for s in mine if s.file in kept for r in s.rejected.values()]):
        raise StrictModeError(f"strict mode: {reasons[0]}")
    to_write = [s for s in mine if s.file not in kept]
    sources = {old.location[key][0] for s in to_write for key in s.event_keys.values() if key in old.location}
    for file in sorted(sources - kept):  # a damaged old shard is not copied from: its events are decoded again
        if not reusable(file):
            old.forget(file)
    to_decode = [by_name[name] for s in to_write for name, key in s.event_keys.items()
                 if key not in old.location and key not in old.rejection]
    if changes and to_decode:
        log.warning("%s; recomputing %d events", ranks.label("decode: " + "; ".join(changes)), len(to_decode))
    results = _ordered_results(to_decode, cfg, pool)
    progress = tqdm(total=len(to_decode), desc=ranks.label("decode"), unit="event")
    try:
        for shard in to_write:
            with AtomicTarWriter(out_dir / shard.file) as writer:
                for name, key in shard.event_keys.items():
                    if key in old.location:
                        writer.write(old.sample(key))
                        reason, warnings = None, old.warnings[key]
                    elif key in old.rejection:
                        reason = old.rejection[key]
                    else:
                        result_name, sample, reason = next(results)  # raises MachineFailure: nothing recorded
                        progress.update()
                        if result_name != display_name(name):
                            raise RuntimeError(f"decode results out of order: {result_name} for {name}")
                        if sample is not None:
                            writer.write(sample)
                            warnings = json.loads(sample["json"])["warnings"]
                    if reason is not None:
                        if cfg.strict:
                            raise StrictModeError(f"strict mode: {reason}")
                        shard.rejected[display_name(name)] = reason
                        continue
                    shard.accepted.append(name)
                    if warnings:
                        shard.warnings[name] = warnings
            if writer.path is not None:
                record = verifier.written(shard.file)
                shard.sha256, shard.size = record["sha256"], record["size"]
    finally:
        progress.close()
        old.close()
    decoded = len(to_decode)
    reports = ranks.gather((mine, decoded, sum(len(s.event_keys) for s in to_write) - decoded))
    made = {s.file: s for rank_shards, *_ in reports for s in rank_shards}
    shards = [made[s.file] for s in plan]
    accepted = sorted(name for s in shards for name in s.accepted)
    rejected = sorted(({"event": name, "reason": reason} for s in shards for name, reason in s.rejected.items()),
                      key=lambda r: r["event"])
    report = {
        "events_dir": str(events_dir),
        "inputs": len(folders),
        "accepted_count": len(accepted),
        "rejected_count": len(rejected),
        "per_split": {split: sum(len(s.accepted) for s in shards if s.split == split) for split in SPLITS},
        "policy": "an event needs video.mp4 and audio.wav (labels are read by the sensors stage); a missing, "
                  "empty or undecodable one rejects the event" if cfg.missing_modality == "reject" else
                  "an event needs video.mp4 or audio.wav (labels are read by the sensors stage); a missing, empty "
                  "or undecodable one is left out of the sample, listed in `incomplete` (training masks it)",
        "config": cfg.data_config(),
        "audio": {"sample_rate": TARGET_RATE, "samples": audio_samples(cfg.audio_seconds)},  # every waveform's shape
        "shards": {split: [s.file for s in shards if s.split == split and s.sha256] for split in SPLITS},
        "accepted": accepted,
        "rejected": rejected,
        "warnings": {name: w for s in shards for name, w in s.warnings.items()},
        # the index keeps each event's warnings through reuse, so the kept-without list is read back from them
        "incomplete": {name: kept for s in shards for name, w in s.warnings.items()
                       if (kept := [m for m in ("video", "audio") if any(x.startswith(m + KEPT_MISSING) for x in w)])},
        "key_parts": parts,  # what every event's key holds besides its files: the next run says what changed
    }
    # Timing and reuse counts stay out of report.json: the outputs must be byte-identical to a clean run.
    removed, recomputed = outputs.finish({**report, **_index(shards)}, {s.file for s in shards if s.sha256})
    kept_without = {modality: sum(modality in lacking for lacking in report["incomplete"].values())
                    for modality in ("video", "audio")}
    check_losses("decode", len(rejected), kept_without, len(folders), cfg.max_rejected_fraction, out_dir / REPORT)
    return {**report, "seconds": round(time.perf_counter() - started, 3), "processes": ranks.world_size,
            "reuse": {"shards_kept": len(every_kept), "shards_written": len(plan) - len(every_kept),
                      "shards_removed": len(removed), "events_decoded": sum(r[1] for r in reports),
                      "events_copied": sum(r[2] for r in reports), "recomputed": recomputed,
                      "key_changes": changes}}
