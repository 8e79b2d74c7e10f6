"""The embed stage: decoded frame shards → per-frame frozen-backbone embeddings, computed once.

The spec freezes EfficientNet yet runs it on every training step; frozen means it can be
run once per frame and cached. Output shards mirror the input shards one to one (same
names, same `__key__`s) and carry everything training needs besides the sensor table:
fp16 per-frame embeddings [num_frames, D] (pooling over time stays a model choice), the
int16 waveform and the metadata. Frames from many events are packed into large batches.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader
from tqdm import tqdm

from spectral.devices import resolve_device, resolve_precision
from spectral.models.backbone import BackboneInfo, FrameEncoder, create_backbone
from spectral.shards import AtomicTarWriter, remove_shards, shard_paths
from spectral.splits import SPLITS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbedConfig:
    """embed.* and video.backbone/weights params; defaults match params.yaml."""

    backbone: str = "tf_efficientnet_lite0"
    weights: str = "packaged"
    device: str = "auto"
    precision: str = "auto"
    channels_last: bool = True
    batch_frames: int = 64
    num_workers: int = 1
    compile: bool = False


def _kernel_description(device: torch.device) -> str:
    """The kernel family that computed the embeddings: torch version and CUDA arch or CPU ISA level."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return f"torch {torch.__version__}, cuda sm_{major}{minor}"
    return f"torch {torch.__version__}, cpu {torch.backends.cpu.get_cpu_capability()}"


def build_encoder(cfg: EmbedConfig) -> tuple[FrameEncoder, BackboneInfo, torch.device]:
    backbone, info = create_backbone(cfg.backbone, cfg.weights)
    device = resolve_device(cfg.device)
    encoder = FrameEncoder(backbone, info, resolve_precision(cfg.precision, device), cfg.channels_last)
    encoder = encoder.to(device).eval()
    if cfg.compile:
        encoder.backbone = torch.compile(encoder.backbone)
    return encoder, info, device


@torch.inference_mode()
def encode_frames(encoder: FrameEncoder, frames: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Embeddings of a uint8 frame batch, float32 on the CPU."""
    return encoder(frames.to(device, non_blocking=True)).cpu()


def _frames_as_tensor(sample: dict) -> dict:
    """Decode only the frames; audio and metadata pass through as the original bytes."""
    return {**sample, "frames": torch.from_numpy(np.load(io.BytesIO(sample["frames.npy"])))}


def _loader(shards: list[Path], num_workers: int, pin_memory: bool) -> DataLoader:
    """Streams decoded samples; frames stay uint8 until they reach the device."""
    dataset = wds.WebDataset([str(p) for p in shards], shardshuffle=False, empty_check=False).map(_frames_as_tensor)
    return DataLoader(dataset, batch_size=None, num_workers=min(num_workers, len(shards)), pin_memory=pin_memory)


def embed_stream(samples: Iterator[dict], encode: Callable[[torch.Tensor], torch.Tensor],
                 batch_frames: int) -> Iterator[tuple[dict, torch.Tensor]]:
    """(sample, its [n, D] embeddings) in input order.

    Frames are cut into batches of exactly `batch_frames` across event boundaries (only the
    last batch is smaller), so the backbone runs at one large, static shape (what GPUs and
    torch.compile want) whatever the frames per event.
    """
    pending: deque[dict] = deque()
    waiting: list[torch.Tensor] = []
    encoded: list[torch.Tensor] = []
    n_waiting = n_encoded = 0

    def finished() -> Iterator[tuple[dict, torch.Tensor]]:
        nonlocal encoded, n_encoded
        while pending and n_encoded >= len(pending[0]["frames"]):
            n = len(pending[0]["frames"])
            rows = torch.cat(encoded)
            encoded, n_encoded = [rows[n:]], n_encoded - n
            yield pending.popleft(), rows[:n]

    for sample in samples:
        pending.append(sample)
        waiting.append(sample["frames"])
        n_waiting += len(sample["frames"])
        while n_waiting >= batch_frames:
            block = torch.cat(waiting)
            waiting, n_waiting = [block[batch_frames:]], n_waiting - batch_frames
            encoded.append(encode(block[:batch_frames]))
            n_encoded += batch_frames
            yield from finished()
    if n_waiting:
        encoded.append(encode(torch.cat(waiting)))
        n_encoded += n_waiting
    yield from finished()


def run_embed(decoded_dir: Path, out_dir: Path, cfg: EmbedConfig) -> dict:
    """Embed every decoded shard; writes mirrored shards + manifest.json, returns manifest plus throughput."""
    decoded_dir, out_dir = Path(decoded_dir), Path(out_dir)
    report_path = decoded_dir / "report.json"
    if not report_path.is_file():
        raise FileNotFoundError(f"{report_path} not found: {decoded_dir} is not the output of the decode stage")
    decode_config = json.loads(report_path.read_text(encoding="utf-8"))["config"]
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_shards(out_dir)
    encoder, info, device = build_encoder(cfg)
    counts = dict.fromkeys(SPLITS, 0)
    frames_done, seconds = 0, 0.0
    started = time.perf_counter()
    shards = [p for split in SPLITS for p in shard_paths(decoded_dir, split)]
    # One output shard per input shard, same name: webdataset gives each loader worker whole
    # shards, so every output shard receives its samples in input order whatever num_workers is.
    writers: dict[str, AtomicTarWriter] = {}
    progress = tqdm(desc="embed", unit="frame")
    try:
        def timed_encode(frames: torch.Tensor) -> torch.Tensor:
            nonlocal seconds, frames_done
            started_batch = time.perf_counter()
            embeddings = encode_frames(encoder, frames, device)
            seconds += time.perf_counter() - started_batch
            frames_done += len(frames)
            progress.update(len(frames))
            return embeddings

        samples = iter(_loader(shards, cfg.num_workers, device.type == "cuda"))
        for sample, embeddings in embed_stream(samples, timed_encode, cfg.batch_frames):
            url = sample["__url__"]
            if url not in writers:
                writers[url] = AtomicTarWriter(out_dir / Path(url).name)
            writers[url].write({
                "__key__": sample["__key__"],
                "emb.npy": embeddings.numpy().astype(np.float16),
                "audio.npy": sample["audio.npy"],
                "json": sample["json"],
            })
            counts[json.loads(sample["json"])["split"]] += 1
    except BaseException:
        for writer in writers.values():
            writer.abort()
        raise
    for writer in writers.values():
        writer.close()
    progress.close()
    elapsed = time.perf_counter() - started
    manifest = {
        "stage": "embed",
        "backbone": info.to_dict(),
        # how frames were sampled and resized: inference on raw events must do the same
        "video": {key: decode_config[key] for key in ("num_frames", "size", "interpolation", "backend")},
        # what the embedding bytes depend on besides the frames and weights: they are shared by
        # pulling from a DVC remote, not recomputed, on machines where these differ
        "precision": str(encoder.precision).removeprefix("torch."),
        "device_type": device.type,
        "kernels": _kernel_description(device),
        "channels_last": cfg.channels_last,
        "per_split": counts,
        "embedding_dtype": "float16",
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    throughput = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "frames": frames_done,
        "stage_seconds": round(elapsed, 3),
        "stage_frames_per_s": round(frames_done / elapsed, 2) if elapsed else None,
        "model_frames_per_s": round(frames_done / seconds, 2) if seconds else None,
        "config": asdict(cfg),
    }
    log.info("embedded %d frames: %s", frames_done, throughput)
    return {**manifest, "throughput": throughput}
