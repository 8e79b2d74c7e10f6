"""What each frame-cache format costs in bytes and moves in the embeddings, against raw `npy`.

Frames are the decode stage's (demo generator, 640x480 clips, sampled and resized as params.yaml
says); embeddings are the packaged EfficientNet-Lite0's, fp32. Drift = relative L2 of a frame's
embedding against the same frame's raw (npy) embedding; bf16 inference on the raw frames is the
yardstick the growing-archive issue set. Also real photographs (scikit-image), where JPEG errors
are larger than on generated frames.

    python bench/frame_cache.py [--events 8] [--frames 16]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from common import write_result
from PIL import Image
from skimage import data as skimage_data

from spectral.io.event import decode_event
from spectral.io.frames import encode_frames as store
from spectral.io.frames import stored_frames
from spectral.stages.embed import EmbedConfig, build_encoder, encode_frames
from spectral.stages.synth import SynthConfig, generate

FORMATS = [("h264", 95), ("jpeg", 95), ("jpeg", 90), ("npy", 95)]


def drift(encoder, device, reference: torch.Tensor, frames: np.ndarray) -> dict:
    embeddings = encode_frames(encoder, torch.from_numpy(frames), device)
    relative = ((embeddings - reference).norm(dim=1) / reference.norm(dim=1)).numpy()
    return {"rms": round(float(np.sqrt((relative ** 2).mean())), 4), "max": round(float(relative.max()), 4)}


def measure(frames: np.ndarray) -> dict:
    fp32, _, device = build_encoder(EmbedConfig(precision="fp32"))
    bf16, _, _ = build_encoder(EmbedConfig(precision="bf16"))
    reference = encode_frames(fp32, torch.from_numpy(frames), device)
    rows = {"bf16 inference (raw frames)": {"bytes_per_frame": frames[0].nbytes,
                                            "drift": drift(bf16, device, reference, frames)}}
    for frame_format, quality in FORMATS:
        members = store(frames, frame_format, quality)
        size = sum(len(v) if isinstance(v, bytes) else v.nbytes for v in members.values())
        name = f"{frame_format} q{quality}" if frame_format == "jpeg" else frame_format
        rows[name] = {"bytes_per_frame": size // len(frames), "ratio_vs_npy": round(frames.nbytes / size, 2),
                      "drift": drift(fp32, device, reference, stored_frames(frames, frame_format, quality))}
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=8)
    parser.add_argument("--frames", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folders = generate(Path(tmp), args.events, seed=0, cfg=SynthConfig(), workers=2)
        frames = np.concatenate([decode_event(f, args.frames, 224, "pyav", "bicubic")["frames.npy"] for f in folders])
    photos = np.stack([np.asarray(Image.fromarray(p).resize((224, 224), Image.Resampling.BICUBIC))
                       for p in (skimage_data.coffee(), skimage_data.astronaut(), skimage_data.chelsea())])
    result = {"demo_frames": {"what": f"{args.events} demo-generator events x {args.frames} frames",
                              "rows": measure(frames)},
              "real_photos": {"what": "scikit-image coffee, astronaut, chelsea at 224x224 (no temporal redundancy)",
                              "rows": measure(photos)}}
    for part in result.values():
        print(f"\n{part['what']}\n{'cache':<30}{'bytes/frame':>12}{'x smaller':>10}{'drift rms':>10}{'max':>8}")
        for name, row in part["rows"].items():
            print(f"{name:<30}{row['bytes_per_frame']:>12}{row.get('ratio_vs_npy', 1.0):>10}"
                  f"{row['drift']['rms']:>10}{row['drift']['max']:>8}")
    write_result("frame_cache", result)


if __name__ == "__main__":
    main()
