"""`spectral predict` latency per event from a raw folder (decode + features + full model), p50/p95.

    python bench/predict.py --model models/model.pt [--events 20] [--device cpu]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from common import write_result

from spectral.inference import Predictor
from spectral.stages.synth import SynthConfig, generate


def one_at_a_time_ms(predictor: Predictor, folders: list[Path]) -> list[float]:
    """Latency of each event from its raw folder, one call each, after two warm-up events."""
    list(predictor.predict(folders[:2], batch_size=1))
    latencies = []
    for folder in folders[2:]:
        started = time.perf_counter()
        result = next(predictor.predict([folder], batch_size=1))
        latencies.append((time.perf_counter() - started) * 1000)
        if "class" not in result:
            raise RuntimeError(f"predict failed: {result}")
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, default=Path("models/model.pt"))
    parser.add_argument("--events", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    predictor = Predictor(args.model, device=args.device)
    with tempfile.TemporaryDirectory() as tmp:
        folders = generate(Path(tmp), args.events + 2, seed=123, cfg=SynthConfig(), workers=2)
        latencies = one_at_a_time_ms(predictor, folders)
        started = time.perf_counter()
        list(predictor.predict(folders[2:], batch_size=8))
        batched_ms = (time.perf_counter() - started) * 1000 / args.events
    p50, p95 = np.percentile(latencies, [50, 95])
    video = predictor.config["video"]
    print(f"{'latency per event (raw folder)':<34}{'ms':>8}")
    print(f"{'p50, one event at a time':<34}{p50:>8.1f}")
    print(f"{'p95, one event at a time':<34}{p95:>8.1f}")
    print(f"{'mean, batches of 8':<34}{batched_ms:>8.1f}")
    print(f"goal < 200 ms; {video['num_frames']} frames/event, device {args.device}")
    write_result(f"predict_{args.device}", {
        "device": args.device, "frames_per_event": video["num_frames"], "events": args.events,
        "p50_ms": round(float(p50), 1), "p95_ms": round(float(p95), 1), "batched_mean_ms": round(batched_ms, 1),
        "model_bytes": args.model.stat().st_size,
    })


if __name__ == "__main__":
    main()
