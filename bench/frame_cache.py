"""What each frame-cache format costs in bytes and moves in the embeddings, against raw `npy`.

Frames are the decode stage's (demo generator, 640x480 clips, sampled and resized in 4:2:0 as
params.yaml says); embeddings are the packaged EfficientNet-Lite0's, fp32. Drift = relative L2 of
a frame's embedding against the same frame's raw (npy) embedding; bf16 inference on the raw frames
is the yardstick the growing-archive issue set. One more row: the same frames scaled straight to
RGB in one swscale pass, what 4:2:0 scaling gives up. Also real photographs (scikit-image), where
JPEG errors are larger than on generated frames.

    python bench/frame_cache.py [--events 8] [--frames 16]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import av
import numpy as np
import torch
from common import write_result
from PIL import Image
from skimage import data as skimage_data

from spectral.io.event import decode_event
from spectral.io.frames import Frames, rgb, stored_frames
from spectral.io.frames import encode_frames as store
from spectral.io.video import SWS_FILTERS, sample_indices
from spectral.io.yuv420 import Yuv420Frames
from spectral.stages.embed import EmbedConfig, build_encoder, encode_frames
from spectral.stages.synth import SynthConfig, generate

FORMATS = [("h264", 95), ("jpeg", 95), ("jpeg", 90), ("npy", 95)]


def drift(encoder, device, reference: torch.Tensor, frames: np.ndarray) -> dict:
    embeddings = encode_frames(encoder, torch.from_numpy(frames), device)
    relative = ((embeddings - reference).norm(dim=1) / reference.norm(dim=1)).numpy()
    return {"rms": round(float(np.sqrt((relative ** 2).mean())), 4), "max": round(float(relative.max()), 4)}


def one_pass_rgb(video: Path, num_frames: int) -> np.ndarray:
    """The sampled frames scaled straight from the decoded frame to 224x224 RGB, in one exact swscale pass."""
    with av.open(str(video)) as container:
        decoded = list(container.decode(video=0))
    return np.stack([decoded[i].reformat(format="rgb24", width=224, height=224, interpolation=SWS_FILTERS["bicubic"],
                                         threads=1).to_ndarray() for i in sample_indices(len(decoded), num_frames)])


def measure(frames: Frames, one_pass: np.ndarray | None = None) -> dict:
    fp32, _, device = build_encoder(EmbedConfig(precision="fp32"))
    bf16, _, _ = build_encoder(EmbedConfig(precision="bf16"))
    raw = rgb(frames)
    reference = encode_frames(fp32, torch.from_numpy(raw), device)
    rows = {"bf16 inference (raw frames)": {"bytes_per_frame": raw[0].nbytes,
                                            "drift": drift(bf16, device, reference, raw)}}
    if one_pass is not None:
        rows["one-pass RGB resize"] = {"bytes_per_frame": raw[0].nbytes,
                                       "drift": drift(fp32, device, reference, one_pass)}
    for frame_format, quality in FORMATS:
        members = store(frames, frame_format, quality)
        size = sum(len(v) if isinstance(v, bytes) else v.nbytes for v in members.values())
        name = f"{frame_format} q{quality}" if frame_format == "jpeg" else frame_format
        rows[name] = {"bytes_per_frame": size // len(raw), "ratio_vs_npy": round(raw.nbytes / size, 2),
                      "drift": drift(fp32, device, reference, stored_frames(frames, frame_format, quality))}
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=8)
    parser.add_argument("--frames", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folders = generate(Path(tmp), args.events, seed=0, cfg=SynthConfig(), workers=2)
        kept = [decode_event(f, args.frames, 224, "pyav", "bicubic")["frames.npy"] for f in folders]
        (matrix,) = {k.colorspace for k in kept}  # the generator's clips share one: a bench of one Yuv420Frames
        frames = Yuv420Frames(np.concatenate([k.data for k in kept]), matrix)
        one_pass = np.concatenate([one_pass_rgb(f / "video.mp4", args.frames) for f in folders])
    photos = np.stack([np.asarray(Image.fromarray(p).resize((224, 224), Image.Resampling.BICUBIC))
                       for p in (skimage_data.coffee(), skimage_data.astronaut(), skimage_data.chelsea())])
    result = {"demo_frames": {"what": f"{args.events} demo-generator events x {args.frames} frames",
                              "rows": measure(frames, one_pass)},
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
