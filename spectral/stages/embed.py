"""The embed stage: decoded frame shards → per-frame frozen-backbone embeddings, computed once.

The spec freezes EfficientNet yet runs it on every training step; frozen means it can be
run once per frame and cached. Output shards mirror the input shards one to one (same
names, same `__key__`s) and carry everything training needs besides the sensor table:
fp16 per-frame embeddings [num_frames, D] (pooling over time stays a model choice), the
int16 waveform and the metadata.

The shard is the unit of reuse and of batching. Frames are packed into large batches, but
a batch never spans two shards, so an output shard is a function of its input shard alone
(whatever the loader workers): manifest.json records each one's key (the input shard's
sha256 from the decode report, the embed recipe and this stage's code), an unchanged
shard is neither recomputed nor rewritten, and bf16 kernels see the batches of a clean run.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader
from tqdm import tqdm

from spectral.io.frames import is_frame_member, load_frames
from spectral.models.backbone import BackboneInfo, FrameEncoder, create_backbone
from spectral.runtime.devices import PRECISIONS, resolve_device, resolve_precision
from spectral.runtime.distributed import SINGLE_PROCESS, Ranks, assign_by_size
from spectral.runtime.incremental import digest
from spectral.runtime.params import build_config, check_choice
from spectral.runtime.reuse import StageOutputs, Verifier, key_changes, key_parts, key_salt, read_complete_index
from spectral.runtime.shards import AtomicTarWriter
from spectral.runtime.splits import SPLITS

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"
# what shapes the embeddings besides our code and the recipe: frames decoded back (FFmpeg in PyAV, Pillow),
# the backbone (timm) and its kernels (torch), arrays and the tar writer
LIBRARIES = ("av", "numpy", "pillow", "timm", "torch", "webdataset")
REUSE_RULES = ("recipe", "same_device")


@dataclass(frozen=True)
class EmbedConfig:
    """embed.* and video.backbone/weights params; the defaults are params.yaml's (tests/runtime/test_params.py)."""

    backbone: str = "tf_efficientnet_lite0"
    weights: str = "packaged"
    device: str = "auto"
    precision: str = "auto"
    channels_last: bool = True
    batch_frames: int = 64
    num_workers: int = 1
    compile: bool = False
    cpu_threads: int = 2
    reuse: str = "recipe"  # or same_device: reuse only shards this device, kernels and thread count made

    @classmethod
    def from_params(cls, params: dict) -> EmbedConfig:
        return build_config(cls, params, "embed", elsewhere={"backbone": "video.backbone", "weights": "video.weights"})

    def __post_init__(self) -> None:
        check_choice("embed.reuse", self.reuse, REUSE_RULES)
        check_choice("embed.precision", self.precision, ("auto", *PRECISIONS))


def _kernel_description(device: torch.device) -> str:
    """The kernel family that computed the embeddings: torch version and CUDA arch or CPU ISA level."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return f"torch {torch.__version__}, cuda sm_{major}{minor}"
    return f"torch {torch.__version__}, cpu {torch.backends.cpu.get_cpu_capability()}"


def build_encoder(cfg: EmbedConfig, local_rank: int = 0) -> tuple[FrameEncoder, BackboneInfo, torch.device]:
    """The frozen encoder on its device: with several ranks on a machine, GPU `local_rank`."""
    device = resolve_device(cfg.device, local_rank)
    if device.type == "cpu":
        # Measured: the same frames give embeddings that differ by ~1e-5 (and in fp16 bytes) at 1 vs 2
        # intra-op threads. A fixed count makes the bytes the same on a 2-core and a 64-core machine
        # (same ISA) and at any number of ranks; scale a CPU run with processes, not threads.
        _check_cpu_oversubscription(cfg.cpu_threads)
        torch.set_num_threads(cfg.cpu_threads)
    backbone, info = create_backbone(cfg.backbone, cfg.weights)
    encoder = FrameEncoder(backbone, info, resolve_precision(cfg.precision, device), cfg.channels_last)
    encoder = encoder.to(device).eval()
    if cfg.compile:  # static shapes: run_embed pads each shard's last batch to batch_frames when compiling
        encoder.backbone = torch.compile(encoder.backbone, dynamic=False)
    return encoder, info, device


def _check_cpu_oversubscription(threads: int) -> None:
    """Multi-threaded ranks that outnumber the cores spin in OpenMP barriers: measured on 2 cores, 2 ranks
    x 2 threads took minutes for what 2 x 1 did in seconds. Refuse that rather than crawl; one process
    with more threads than cores (a 1-core container) is only warned about."""
    ranks_here = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    cores = len(os.sched_getaffinity(0))
    if threads == 1 or ranks_here * threads <= cores:
        return
    advice = (f"{ranks_here} process(es) x embed.cpu_threads={threads} threads exceed the {cores} core(s) this "
              f"process may use; use fewer distributed.embed_processes, or embed.cpu_threads: 1 (which changes "
              f"the CPU embedding bytes, so the stage recomputes)")
    if ranks_here > 1:
        raise ValueError(f"embed: {advice}")
    log.warning("embed: %s", advice)


@torch.inference_mode()
def encode_frames(encoder: FrameEncoder, frames: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Embeddings of a uint8 frame batch, float32 on the CPU."""
    return encoder(frames.to(device, non_blocking=True)).cpu()


def _frames_as_tensor(sample: dict) -> dict:
    """Decode only the frames (JPEG or npy); audio and metadata pass through as the original bytes. An
    event decode kept without video (`missing_modality: keep`) has frames None and gets no embeddings."""
    has_frames = any(is_frame_member(key) for key in sample)
    return {**sample, "frames": torch.from_numpy(load_frames(sample)) if has_frames else None}


def _loader(shards: list[Path], num_workers: int, pin_memory: bool) -> DataLoader:
    """Streams decoded samples; frames stay uint8 until they reach the device."""
    # nodesplitter=None: under torchrun the shards are already this rank's share (run_embed assigns them)
    dataset = wds.WebDataset([str(p) for p in shards], shardshuffle=False, nodesplitter=None,
                             empty_check=False).map(_frames_as_tensor)
    return DataLoader(dataset, batch_size=None, num_workers=min(num_workers, len(shards)), pin_memory=pin_memory)


class _ShardBatcher:
    """Cuts one shard's frames into batches of exactly `batch_frames` across its event boundaries."""

    def __init__(self, encode: Callable[[torch.Tensor], torch.Tensor], batch_frames: int) -> None:
        self.encode, self.batch_frames = encode, batch_frames
        self.pending: deque[dict] = deque()
        self.waiting: list[torch.Tensor] = []
        self.encoded: list[torch.Tensor] = []
        self.n_waiting = self.n_encoded = self.seen = 0

    def _finished(self) -> Iterator[tuple[dict, torch.Tensor | None]]:
        while self.pending:
            frames = self.pending[0]["frames"]
            if frames is None:  # kept without video: in order, nothing to encode
                yield self.pending.popleft(), None
                continue
            if self.n_encoded < len(frames):
                return
            rows = torch.cat(self.encoded)
            self.encoded, self.n_encoded = [rows[len(frames):]], self.n_encoded - len(frames)
            yield self.pending.popleft(), rows[:len(frames)]

    def _encode(self, count: int) -> None:
        block = torch.cat(self.waiting)
        self.waiting, self.n_waiting = [block[count:]], self.n_waiting - count
        self.encoded.append(self.encode(block[:count]))
        self.n_encoded += count

    def add(self, sample: dict) -> Iterator[tuple[dict, torch.Tensor | None]]:
        self.seen += 1
        self.pending.append(sample)
        if sample["frames"] is None:
            yield from self._finished()
            return
        self.waiting.append(sample["frames"])
        self.n_waiting += len(sample["frames"])
        while self.n_waiting >= self.batch_frames:
            self._encode(self.batch_frames)
            yield from self._finished()

    def flush(self) -> Iterator[tuple[dict, torch.Tensor]]:
        if self.n_waiting:
            self._encode(self.n_waiting)
        yield from self._finished()


def embed_stream(samples: Iterator[dict], encode: Callable[[torch.Tensor], torch.Tensor], batch_frames: int,
                 shard_events: dict[str, int] | None = None) -> Iterator[tuple[dict, torch.Tensor]]:
    """(sample, its [n, D] embeddings), in input order within each shard (`__url__`).

    Frames are cut into batches of exactly `batch_frames` across event boundaries, so the
    backbone runs at one large, static shape (what GPUs and torch.compile want) whatever the
    frames per event; only a shard's last batch is smaller. Each shard is batched on its own,
    so loader workers interleaving shards never change a batch; a shard's last batch is run
    when its `shard_events[url]`-th sample arrives (or when the stream ends).
    """
    batchers: dict[str | None, _ShardBatcher] = {}
    for sample in samples:
        url = sample.get("__url__")
        batcher = batchers.setdefault(url, _ShardBatcher(encode, batch_frames))
        yield from batcher.add(sample)
        if shard_events is not None and batcher.seen == shard_events.get(url):
            yield from batchers.pop(url).flush()
    for batcher in batchers.values():
        yield from batcher.flush()


def run_embed(decoded_dir: Path, out_dir: Path, cfg: EmbedConfig, ranks: Ranks = SINGLE_PROCESS) -> dict:
    """Embed the decoded shards whose embeddings are not already in out_dir; writes mirrored shards +
    manifest.json (also the reuse index), returns the manifest plus throughput and reuse counts.

    Under torchrun each rank embeds whole shards (balanced by event count) on its own device, and
    rank 0 writes the manifest once every rank has reported what it wrote."""
    decoded_dir, out_dir = Path(decoded_dir), Path(out_dir)
    report = read_complete_index(decoded_dir / "report.json")
    decoded = Verifier.open(decoded_dir)  # decode's own stamps: read-only here
    outputs = StageOutputs("embed", out_dir, MANIFEST, ranks)
    encoder, info, device = build_encoder(cfg, ranks.local_rank)
    recipe = {
        "backbone": info.to_dict(),
        # how frames were sampled, resized and stored: inference on raw events must do the same
        "video": {key: report["config"][key]
                  for key in ("num_frames", "size", "interpolation", "backend", "frame_format", "jpeg_quality")},
        # the audio window decode trimmed or padded every waveform to; training and inference use it
        "audio": report["audio"],
        # what the embedding values depend on besides the frames and weights (the reuse key): a shard made
        # with the same recipe is reused on any machine
        "precision": str(encoder.precision).removeprefix("torch."),
        "channels_last": cfg.channels_last,
        "embedding_dtype": "float16",
    }
    # how this run computes them: kernels and threads move the values by ~1e-5 (bench/drift.py), so they are
    # recorded with each shard, not keyed on, unless embed.reuse is same_device
    made_by = {
        "device_type": device.type,
        "kernels": _kernel_description(device),
        "cpu_threads": cfg.cpu_threads if device.type == "cpu" else None,
        "batch_frames": cfg.batch_frames,
        "compile": cfg.compile,
    }
    setups = ranks.gather((recipe, made_by))
    if any(other != (recipe, made_by) for other in setups):  # one run, one way of computing
        raise RuntimeError(f"embed ranks disagree on how embeddings are made (different GPUs or software?): "
                           f"{[s for s in setups if s != (recipe, made_by)][0]} vs rank {ranks.rank}'s "
                           f"{(recipe, made_by)}")
    # the weights are keyed by their digest, not by where they were loaded from (a path differs between machines)
    keyed = {**recipe, "backbone": {k: v for k, v in recipe["backbone"].items() if k != "weights"}}
    parts = key_parts(__file__, keyed, LIBRARIES)
    changes = key_changes(outputs.previous, parts)
    salt = key_salt("embed", parts)
    inputs = [(split, entry) for split in SPLITS for entry in report["index"][split] if entry["sha256"]]
    keys = {entry["file"]: digest(salt, entry["sha256"]) for _, entry in inputs}
    event_counts = {entry["file"]: len(entry["accepted"]) for _, entry in inputs}
    previous = _previous_index(outputs.previous)
    verifier = outputs.verifier
    # rank 0 verifies (one read of each shard, not one per rank); the others wait for its answer
    kept = ranks.broadcast({file for file, key in keys.items() if previous.get(file, {}).get("key") == key
                            and (cfg.reuse == "recipe" or previous[file].get("made_by") == made_by)
                            and verifier.reusable(file, previous[file])} if ranks.is_main else None)
    if cfg.reuse == "same_device" and ranks.is_main and (elsewhere := sum(
            previous.get(file, {}).get("key") == key and previous[file].get("made_by") != made_by
            for file, key in keys.items())):
        log.warning("embed: %d shard(s) were made on another device, kernel family or thread count; "
                    "embed.reuse: same_device recomputes them here", elsewhere)
    outputs.publish_kept({"key_parts": parts, "index": {file: previous[file] for file in sorted(kept)}})
    todo = [entry for _, entry in inputs if entry["file"] not in kept]
    owners = assign_by_size([len(entry["accepted"]) for entry in todo], ranks.world_size)
    to_embed = [entry for entry, owner in zip(todo, owners, strict=True) if owner == ranks.rank]
    if changes and todo and ranks.is_main:
        log.warning("embed: %s; recomputing %d of %d shards", "; ".join(changes), len(todo), len(keys))
    # a damaged input must not become embeddings: decode repairs it on its next run (every rank stops together)
    problems = [f"{decoded_dir / entry['file']}: {problem}" for entry in to_embed
                if (problem := decoded.problem(entry["file"], entry)) is not None]
    if problems := [problem for rank_problems in ranks.gather(problems) for problem in rank_problems]:
        raise ValueError(f"{problems[0]}; rerun the decode stage (it verifies its shards and rewrites a damaged "
                         f"one)")
    shard_events = {str(decoded_dir / entry["file"]): event_counts[entry["file"]] for entry in to_embed}
    index = {}
    frames_done, seconds = 0, 0.0
    started = time.perf_counter()
    writers: dict[str, AtomicTarWriter] = {}
    progress = tqdm(total=sum(shard_events.values()) * report["config"]["num_frames"], desc=ranks.label("embed"),
                    unit="frame")

    def timed_encode(frames: torch.Tensor) -> torch.Tensor:
        nonlocal seconds, frames_done
        started_batch = time.perf_counter()
        if cfg.compile and len(frames) < cfg.batch_frames:  # one shape: compiled once, whoever runs it
            padding = frames.new_zeros((cfg.batch_frames - len(frames), *frames.shape[1:]))
            embeddings = encode_frames(encoder, torch.cat([frames, padding]), device)[:len(frames)]
        else:
            embeddings = encode_frames(encoder, frames, device)
        seconds += time.perf_counter() - started_batch
        frames_done += len(frames)
        progress.update(len(frames))
        return embeddings

    with progress, ExitStack() as unfinished:  # an error removes every shard not yet committed
        samples = iter(_loader(list(map(Path, shard_events)), cfg.num_workers, device.type == "cuda")
                       if shard_events else ())
        for sample, embeddings in embed_stream(samples, timed_encode, cfg.batch_frames, dict(shard_events)):
            url = sample["__url__"]
            if url not in writers:
                writers[url] = unfinished.enter_context(AtomicTarWriter(out_dir / Path(url).name))
            record = {"__key__": sample["__key__"], "json": sample["json"]}
            if embeddings is not None:
                record["emb.npy"] = embeddings.numpy().astype(np.float16)
            if "audio.npy" in sample:  # absent when decode kept the event without audio
                record["audio.npy"] = sample["audio.npy"]
            writers[url].write(record)
            shard_events[url] -= 1
            if shard_events[url] == 0:  # the shard is complete: publish it and record it in the index
                file = writers.pop(url).commit().name
                index[file] = {"key": keys[file], "events": event_counts[file], "made_by": made_by,
                               **verifier.written(file)}
        if writers or any(shard_events.values()):
            raise RuntimeError(f"decoded shards ended early (missing samples): {sorted(writers)}; rerun decode")
    reports = ranks.gather((index, frames_done, seconds))
    index = {file: previous[file] for file in kept}
    for rank_index, _, _ in reports:
        index.update(rank_index)
    per_split = {split: sum(event_counts[e["file"]] for s, e in inputs if s == split) for split in SPLITS}
    index = {file: index[file] for file in keys}
    every_made_by = sorted({json.dumps(entry.get("made_by"), sort_keys=True) for entry in index.values()})
    manifest = {**recipe, "per_split": per_split, "made_by": [json.loads(m) for m in every_made_by],
                "key_parts": parts, "index": index}
    removed, recomputed = outputs.finish(manifest, set(keys))
    elapsed = time.perf_counter() - started
    manifest = {"stage": "embed", "complete": True, **manifest}
    frames_all = sum(frames for _, frames, _ in reports)
    model_rates = [frames / busy for _, frames, busy in reports if busy]
    throughput = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "processes": ranks.world_size,
        "frames": frames_all,
        "stage_seconds": round(elapsed, 3),
        "stage_frames_per_s": round(frames_all / elapsed, 2) if elapsed and frames_all else None,
        # the forward passes alone, summed over ranks (each rank's frames / its time in the model)
        "model_frames_per_s": round(sum(model_rates), 2) if model_rates else None,
        "reuse": {"shards_kept": len(kept), "shards_written": len(todo), "shards_removed": len(removed),
                  "recomputed": recomputed, "key_changes": changes},
        "config": asdict(cfg),
    }
    log.info("embedded %d frames: %s", frames_done, throughput)
    return {**manifest, "throughput": throughput}


def _previous_index(manifest: dict | None) -> dict[str, dict]:
    """The last run's index (file → {key, events, size, sha256}); each file is verified before reuse."""
    index = manifest.get("index") if manifest else None
    return {file: entry for file, entry in index.items() if isinstance(entry, dict) and "key" in entry} \
        if isinstance(index, dict) else {}
