"""Embed-stage throughput (reading shards included) vs the model-only forward pass, as a ratio.

Same batch size, precision and device in one run; goal >= 0.9 (the input pipeline never
starves the model). Runs unchanged on a GPU box (`--device cuda`), recording the card's name.

    python bench/embed.py [--events 24] [--frames 16] [--device auto] [--precision auto]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from common import write_result

from spectral.decode import DecodeConfig, run_decode
from spectral.embed import EmbedConfig, build_encoder, encode_frames, run_embed
from spectral.synth import SynthConfig, generate


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=24)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--batch-frames", type=int, default=64)
    parser.add_argument("--num-workers", type=int, default=1)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--events-dir", type=Path, help="reuse existing events instead of generating")
    args = parser.parse_args()
    cfg = EmbedConfig(device=args.device, precision=args.precision, batch_frames=args.batch_frames,
                      num_workers=args.num_workers, compile=args.compile)
    with tempfile.TemporaryDirectory() as tmp:
        events = args.events_dir or Path(tmp) / "events"
        if not args.events_dir:
            generate(events, args.events, seed=0, cfg=SynthConfig(fps=10, duration_s=2.0), workers=2)
        run_decode(events, Path(tmp) / "decoded", DecodeConfig(num_frames=args.frames, workers=2))
        encoder, info, device = build_encoder(cfg)
        frames = torch.randint(0, 256, (args.batch_frames, 224, 224, 3), dtype=torch.uint8)
        encode_frames(encoder, frames, device)  # warm-up (and compile)
        run_embed(Path(tmp) / "decoded", Path(tmp) / "warm", cfg)  # warm-up of the stage path too
        stage = run_embed(Path(tmp) / "decoded", Path(tmp) / "embeddings", cfg)["throughput"]
        total = stage["frames"]
        batches = max(1, total // args.batch_frames)
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(batches):
            encode_frames(encoder, frames, device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        model_fps = batches * args.batch_frames / (time.perf_counter() - started)
    ratio = stage["stage_frames_per_s"] / model_fps
    print(f"{'path':<40}{'frames/s':>10}")
    print(f"{'model-only forward (in-memory batch)':<40}{model_fps:>10.1f}")
    print(f"{'embed stage (shards -> shards)':<40}{stage['stage_frames_per_s']:>10.1f}")
    print(f"ratio stage/model = {ratio:.3f} (goal >= 0.9); device {stage['device']}, "
          f"precision {encoder.precision}, batch {args.batch_frames}")
    write_result(f"embed_{stage['device'].replace(' ', '_')}", {
        "device": stage["device"], "precision": str(encoder.precision), "batch_frames": args.batch_frames,
        "frames": total, "model_only_frames_per_s": round(model_fps, 1),
        "stage_frames_per_s": stage["stage_frames_per_s"], "ratio_stage_vs_model": round(ratio, 3),
        "backbone": info.name, "weights": info.weights, "embedding_bytes_per_frame": info.embedding_dim * 2,
    })


if __name__ == "__main__":
    main()
