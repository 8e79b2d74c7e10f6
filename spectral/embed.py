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
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader
from tqdm import tqdm

from spectral.models.backbone import BackboneInfo, FrameEncoder, create_backbone
from spectral.shards import AtomicTarWriter, shard_paths
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


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """`auto`: bf16 where the hardware runs it natively (measured fastest here), else fp16 on GPU, else fp32."""
    names = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    if precision != "auto":
        return names[precision]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported() \
        else torch.float32


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


def _batched_events(samples: Iterator[dict], batch_frames: int) -> Iterator[list[dict]]:
    """Groups of whole events holding about `batch_frames` frames, so the backbone sees large batches."""
    group, count = [], 0
    for sample in samples:
        group.append(sample)
        count += sample["frames"].shape[0]
        if count >= batch_frames:
            yield group
            group, count = [], 0
    if group:
        yield group


def run_embed(decoded_dir: Path, out_dir: Path, cfg: EmbedConfig) -> dict:
    """Embed every decoded shard; writes mirrored shards + manifest.json, returns manifest plus throughput."""
    decoded_dir, out_dir = Path(decoded_dir), Path(out_dir)
    report_path = decoded_dir / "report.json"
    if not report_path.is_file():
        raise FileNotFoundError(f"{report_path} not found: {decoded_dir} is not the output of the decode stage")
    decode_config = json.loads(report_path.read_text(encoding="utf-8"))["config"]
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in [*out_dir.glob("*.tar"), *out_dir.glob("*.tar.tmp")]:
        stale.unlink()
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
        for group in _batched_events(iter(_loader(shards, cfg.num_workers, device.type == "cuda")), cfg.batch_frames):
            frames = torch.cat([s["frames"] for s in group])
            batch_started = time.perf_counter()
            embeddings = encode_frames(encoder, frames, device)
            seconds += time.perf_counter() - batch_started
            offset = 0
            for sample in group:
                url, n = sample["__url__"], sample["frames"].shape[0]
                if url not in writers:
                    writers[url] = AtomicTarWriter(out_dir / Path(url).name)
                writers[url].write({
                    "__key__": sample["__key__"],
                    "emb.npy": embeddings[offset : offset + n].numpy().astype(np.float16),
                    "audio.npy": sample["audio.npy"],
                    "json": sample["json"],
                })
                offset += n
                counts[json.loads(sample["json"])["split"]] += 1
            frames_done += frames.shape[0]
            progress.update(frames.shape[0])
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
        "precision": str(encoder.precision).removeprefix("torch."),
        "device_type": device.type,
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
