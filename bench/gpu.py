"""The prepared GPU run (bench/gpu.sh): the pipeline's stages at the spec's 150 frames on this machine's GPUs.

Offline and self-contained: it makes its own events in a temporary project, runs the stage scripts
as `dvc repro` would, and records, with the card's name:
- decode stage frames/s with every core, and the cores it would take to keep the embed stage fed;
- embed stage frames/s at bf16 + channels_last, eager and `torch.compile`d, against the model-only
  forward of the same encoder in the same run (ratio goal >= 0.9); with several GPUs, one rank each;
- `spectral predict` latency per raw event at 150 frames (spec: < 200 ms);
- bench/serve.py against the trained model, batches of 8 and of 1 (what dynamic batching buys on the card);
- training time on 1 GPU and, where two are present, DDP on 2 (its best validation metrics too).
Writes bench/results/gpu_<card>.json. About 10 minutes on one modern GPU.

    bash bench/gpu.sh                         # what to run on a GPU machine
    python bench/gpu.py --allow-cpu --events 6 --frames 4   # a smoke run of the script itself, on a CPU
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from common import write_result
from predict import one_at_a_time_ms

from spectral.inference import Predictor
from spectral.stages.embed import EmbedConfig, build_encoder, encode_frames

PROJECT = Path(__file__).resolve().parents[1]


def stage(cwd: Path, script: str, *args: str) -> float:
    """Run one stage script as DVC would (cwd = the project, params.yaml there); its wall seconds."""
    started = time.perf_counter()
    result = subprocess.run([sys.executable, str(PROJECT / "pipeline" / script), *args], cwd=cwd,
                            env={**os.environ, "PYTHONPATH": str(PROJECT)}, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{script} failed:\n{result.stderr[-3000:]}")
    return round(time.perf_counter() - started, 2)


def set_params(cwd: Path, changes: dict) -> None:
    path = cwd / "params.yaml"
    params = yaml.safe_load(path.read_text(encoding="utf-8"))
    for section, values in changes.items():
        params[section] = {**params[section], **values}
    path.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")


def model_only_frames_per_s(cfg: EmbedConfig, size: int, seconds: float = 10.0) -> float:
    """The encoder alone on one in-memory uint8 batch, after warm-up (and compilation)."""
    encoder, _, device = build_encoder(cfg)
    frames = torch.randint(0, 256, (cfg.batch_frames, size, size, 3), dtype=torch.uint8)
    for _ in range(3):
        encode_frames(encoder, frames, device)
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    synchronize()
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        encode_frames(encoder, frames, device)
        count += len(frames)
    synchronize()
    return count / (time.perf_counter() - started)


def predict_latency(model: Path, folders: list[Path], device: str) -> dict:
    latencies = one_at_a_time_ms(Predictor(model, device=device), folders)
    p50, p95 = np.percentile(latencies, [50, 95])
    return {"events": len(latencies), "p50_ms": round(float(p50), 1), "p95_ms": round(float(p95), 1)}


def serve_runs(cwd: Path, folders: list[Path]) -> dict:
    """bench/serve.py against this run's model: batches of 8 (the GPU default) and of 1, so the ratio at
    concurrency 16 is what batching buys on this card."""
    runs = {}
    for batch in (8, 1):
        output = cwd / f"serve_{batch}.json"
        subprocess.run([sys.executable, str(PROJECT / "bench" / "serve.py"), "--model",
                        str(cwd / "models" / "model.pt"), "--demo-events", str(folders[0].parent), "--levels", "1",
                        "16", "--soak", "500", "--mixed", "100", "--batch", str(batch), "--output", str(output)],
                       check=True, cwd=PROJECT / "bench")
        runs[f"batch_{batch}"] = json.loads(output.read_text(encoding="utf-8"))
    runs["batching_gain_at_16"] = round(runs["batch_8"]["concurrency"]["16"]["events_per_s"]
                                        / runs["batch_1"]["concurrency"]["16"]["events_per_s"], 3)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=48)
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--allow-cpu", action="store_true", help="smoke-run the script without a GPU")
    args = parser.parse_args()
    gpus = torch.cuda.device_count()
    if not gpus and not args.allow_cpu:
        sys.exit("no CUDA device visible: this benchmark is for a GPU machine (--allow-cpu to smoke-test it)")
    device = "cuda" if gpus else "cpu"
    card = torch.cuda.get_device_name(0) if gpus else "cpu"
    cores = len(os.sched_getaffinity(0))
    result: dict = {"card": card, "gpus": gpus, "frames_per_event": args.frames, "events": args.events, "seconds": {}}
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        (cwd / "params.yaml").write_text((PROJECT / "params.yaml").read_text(encoding="utf-8"), encoding="utf-8")
        set_params(cwd, {"synth": {"events": args.events, "workers": cores, "duration_s": 5.0},  # the spec's 5 s
                         "audio": {"seconds": 5.0},
                         "video": {"num_frames": args.frames},
                         "decode": {"workers": cores},
                         "embed": {"device": device, "precision": "bf16", "channels_last": True,
                                   "num_workers": min(4, cores)},
                         "distributed": {"embed_processes": max(1, gpus)},
                         "train": {"max_epochs": args.epochs, "accelerator": "gpu" if gpus else "cpu",
                                   "devices": 1, "logger": "none"}})
        seconds = result["seconds"]
        seconds["synth"] = stage(cwd, "synth.py", "events")
        seconds["decode"] = stage(cwd, "decode.py", "events", "decoded")
        decoded = json.loads((cwd / "metrics" / "decode.json").read_text(encoding="utf-8"))
        decode_fps = decoded["accepted_count"] * args.frames / decoded["seconds"]  # the stage's own seconds
        result["decode"] = {"workers": cores, "frames_per_s": round(decode_fps, 1),
                            "frames_per_s_per_core": round(decode_fps / cores, 1)}
        seconds["sensors"] = stage(cwd, "sensors.py", "events", "sensors.parquet")
        embed = {}
        for compiled in (False, True) if gpus else (False,):  # the CPU smoke run skips compilation
            set_params(cwd, {"embed": {"compile": compiled}})
            out = f"embeddings_{'compiled' if compiled else 'eager'}"
            seconds[f"embed_{'compiled' if compiled else 'eager'}"] = stage(cwd, "embed.py", "decoded", out)
            metrics = json.loads((cwd / "metrics" / "embed.json").read_text(encoding="utf-8"))
            params = yaml.safe_load((cwd / "params.yaml").read_text(encoding="utf-8"))
            cfg = EmbedConfig(**params["embed"])
            model_fps = model_only_frames_per_s(cfg, params["video"]["size"]) * max(1, gpus)
            embed["compiled" if compiled else "eager"] = {
                "stage_frames_per_s": metrics["stage_frames_per_s"], "ranks": metrics["processes"],
                "model_only_frames_per_s": round(model_fps, 1),
                "ratio_stage_vs_model": round(metrics["stage_frames_per_s"] / model_fps, 3)}
        result["embed"] = embed
        best_embed = max(run["stage_frames_per_s"] for run in embed.values())
        result["decode"]["cores_to_feed_embed"] = round(best_embed / result["decode"]["frames_per_s_per_core"], 1)
        embeddings = "embeddings_compiled" if gpus else "embeddings_eager"
        seconds["train_1gpu"] = stage(cwd, "train.py", embeddings, "sensors.parquet", "models")
        summary = json.loads((cwd / "models" / "train_summary.json").read_text(encoding="utf-8"))
        result["train_1gpu"] = {"epochs": summary["epochs_run"] + 1, "best_val_metrics": summary["best_val_metrics"]}
        folders = sorted(p for p in (cwd / "events").iterdir() if re.fullmatch(r"event_\d+", p.name))
        result["predict"] = predict_latency(cwd / "models" / "model.pt", folders[:22], device)
        result["serve"] = serve_runs(cwd, folders)
        if gpus >= 2:
            set_params(cwd, {"train": {"devices": 2}})
            seconds["train_ddp_2gpu"] = stage(cwd, "train.py", embeddings, "sensors.parquet", "models_ddp")
            ddp = json.loads((cwd / "models_ddp" / "train_summary.json").read_text(encoding="utf-8"))
            result["train_ddp_2gpu"] = {"devices": ddp["devices"], "best_val_metrics": ddp["best_val_metrics"]}
    print(f"{'GPU run on':<34}{card} x {gpus}")
    for name, run in embed.items():
        print(f"{'embed stage, ' + name:<34}{run['stage_frames_per_s']:>10.1f} frames/s "
              f"(model-only {run['model_only_frames_per_s']:.1f}, ratio {run['ratio_stage_vs_model']:.2f})")
    print(f"{'decode stage, ' + str(cores) + ' workers':<34}{result['decode']['frames_per_s']:>10.1f} frames/s "
          f"({result['decode']['cores_to_feed_embed']} cores would keep the fastest embed fed)")
    print(f"{'predict p50 / p95 (goal < 200 ms)':<34}{result['predict']['p50_ms']:>10.1f} / "
          f"{result['predict']['p95_ms']:.1f} ms at {args.frames} frames")
    print(f"{'serve, concurrency 16, batch 8 / 1':<34}{result['serve']['batching_gain_at_16']:>10.2f}x")
    print("stage seconds:", json.dumps(seconds))
    if gpus:  # a CPU smoke run is not a GPU result
        write_result(f"gpu_{re.sub(r'[^A-Za-z0-9]+', '_', card)}", result)


if __name__ == "__main__":
    main()
