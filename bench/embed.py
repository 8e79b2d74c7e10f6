"""Embed-stage throughput (reading shards included) vs the model-only forward pass, as a ratio.

Same batch size, precision and device in one run; goal >= 0.9 (the input pipeline never
starves the model). Runs unchanged on a GPU box (`--device cuda`), recording the card's name.

`--ranks N` also runs the embed stage script as 1 process and as N torchrun ranks on the same
decoded shards (on CPU with the same total threads: 1 x T vs N x T/N; on GPUs one GPU per
rank) and reports the throughput ratio: what spreading a stage over processes buys here.

    python bench/embed.py [--events 24] [--frames 16] [--device auto] [--precision auto] [--ranks 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from common import write_result

from spectral.stages.decode import DecodeConfig, run_decode
from spectral.stages.embed import EmbedConfig, build_encoder, encode_frames, run_embed
from spectral.stages.synth import SynthConfig, generate


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
    parser.add_argument("--ranks", type=int, default=1, help="also compare the stage at 1 vs N torchrun ranks")
    parser.add_argument("--cpu-threads", type=int, default=2, help="CPU: threads of the 1-process run, split "
                                                                   "over the ranks of the N-process run")
    args = parser.parse_args()
    cfg = EmbedConfig(device=args.device, precision=args.precision, batch_frames=args.batch_frames,
                      num_workers=args.num_workers, compile=args.compile, cpu_threads=args.cpu_threads)
    with tempfile.TemporaryDirectory() as tmp:
        events = args.events_dir or Path(tmp) / "events"
        if not args.events_dir:
            generate(events, args.events, seed=0, cfg=SynthConfig(fps=10, duration_s=2.0), workers=2)
        run_decode(events, Path(tmp) / "decoded", DecodeConfig(num_frames=args.frames, workers=2))
        encoder, info, device = build_encoder(cfg)
        frames = torch.randint(0, 256, (args.batch_frames, 224, 224, 3), dtype=torch.uint8)
        encode_frames(encoder, frames, device)  # warm-up (and compile)
        run_embed(Path(tmp) / "decoded", Path(tmp) / "warm", cfg)  # warm-up of the stage path too
        runs = [run_embed(Path(tmp) / "decoded", Path(tmp) / f"embeddings_{i}", cfg)["throughput"] for i in range(3)]
        own_ratios = [run["stage_frames_per_s"] / run["model_frames_per_s"] for run in runs]
        stage = runs[int(np.argsort(own_ratios)[1])]  # the median run
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
        scaling = rank_scaling(Path(tmp), args, cfg) if args.ranks > 1 else None
    ratio = stage["stage_frames_per_s"] / model_fps
    print(f"{'path':<40}{'frames/s':>10}")
    print(f"{'model-only forward (in-memory batch)':<40}{model_fps:>10.1f}")
    print(f"{'embed stage (shards -> shards)':<40}{stage['stage_frames_per_s']:>10.1f}")
    print(f"the stage's frames/s over its own model-only seconds, 3 runs: "
          f"{', '.join(f'{r:.3f}' for r in own_ratios)} (median {float(np.median(own_ratios)):.3f}; goal >= 0.9)")
    print(f"ratio stage/model = {ratio:.3f} (goal >= 0.9); device {stage['device']}, "
          f"precision {encoder.precision}, batch {args.batch_frames}")
    write_result(f"embed_{stage['device'].replace(' ', '_')}", {
        "device": stage["device"], "precision": str(encoder.precision), "batch_frames": args.batch_frames,
        "frames": total, "model_only_frames_per_s": round(model_fps, 1),
        "stage_frames_per_s": stage["stage_frames_per_s"], "ratio_stage_vs_model": round(ratio, 3),
        "num_workers": args.num_workers,
        "stage_vs_own_model_seconds": {"runs": [round(r, 3) for r in own_ratios],
                                       "median": round(float(np.median(own_ratios)), 3)},
        "backbone": info.name, "weights": info.weights, "embedding_bytes_per_frame": info.embedding_dim * 2,
        **({"ranks": scaling} if scaling else {}),
    })


def rank_scaling(tmp: Path, args: argparse.Namespace, cfg: EmbedConfig) -> dict:
    """The stage script (`pipeline/embed.py`) as 1 process and as `--ranks` torchrun ranks, on the same shards."""
    project = Path(__file__).resolve().parents[1]
    params = yaml.safe_load((project / "params.yaml").read_text(encoding="utf-8"))
    runs = {}
    for ranks in (1, args.ranks):
        cwd = tmp / f"ranks{ranks}"
        cwd.mkdir()
        embed = {**params["embed"], "device": cfg.device, "precision": cfg.precision, "batch_frames": cfg.batch_frames,
                 "num_workers": cfg.num_workers, "compile": cfg.compile,
                 "cpu_threads": max(1, args.cpu_threads // ranks)}
        run_params = {**params, "embed": embed, "distributed": {**params["distributed"], "embed_processes": ranks}}
        (cwd / "params.yaml").write_text(yaml.safe_dump(run_params, sort_keys=False), encoding="utf-8")
        started = time.perf_counter()
        subprocess.run([sys.executable, str(project / "pipeline" / "embed.py"), str(tmp / "decoded"), "embeddings"],
                       cwd=cwd, check=True, env={**os.environ, "PYTHONPATH": str(project)},
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wall = time.perf_counter() - started
        metrics = json.loads((cwd / "metrics" / "embed.json").read_text(encoding="utf-8"))
        runs[ranks] = {"threads_per_rank": embed["cpu_threads"], "stage_frames_per_s": metrics["stage_frames_per_s"],
                       "model_frames_per_s": metrics["model_frames_per_s"], "wall_s_with_startup": round(wall, 2)}
    one, many = runs[1], runs[args.ranks]
    ratio = many["stage_frames_per_s"] / one["stage_frames_per_s"]
    print(f"{'ranks':<8}{'threads/rank':>14}{'stage frames/s':>16}{'wall s (startup incl.)':>24}")
    for ranks, run in runs.items():
        print(f"{ranks:<8}{run['threads_per_rank']:>14}{run['stage_frames_per_s']:>16.1f}{run['wall_s_with_startup']:>24.1f}")
    print(f"ratio {args.ranks} ranks / 1 rank = {ratio:.2f}")
    return {"1": one, str(args.ranks): many, f"ratio_{args.ranks}_vs_1": round(ratio, 3)}


if __name__ == "__main__":
    main()
