"""Training throughput on the cached shards vs the spec's loop, on the same events and frame count.

The spec's loop decodes each mp4 with per-frame cv2 seeks and runs the frozen backbone on
every frame at every step; ours streams cached embeddings. Same fusion model, optimiser,
batch size and precision in both; only where the video features come from differs.

    python bench/train.py [--events 16] [--frames 150] [--steps 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import write_result
from decode import spec_cv2_loader

from spectral.data import CachedShardDataModule
from spectral.events import load_event
from spectral.features.sensors import SENSOR_FEATURES, sensor_features
from spectral.io.audio import load_audio
from spectral.models.fusion import SpectralFusionModel
from spectral.stages.decode import DecodeConfig, run_decode
from spectral.stages.embed import EmbedConfig, build_encoder, run_embed
from spectral.stages.sensors import run_sensors
from spectral.stages.synth import SynthConfig, generate

SPLITS = {"train": 1.0, "val": 0.0, "test": 0.0}


def step(model, optimizer, video, audio, sensors, labels) -> None:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = torch.nn.functional.cross_entropy(model(video, audio, sensors), labels)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=16)
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=2, help="steps timed for the spec loop (it is slow)")
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        events = Path(tmp) / "events"
        generate(events, args.events, seed=0, cfg=SynthConfig(), workers=2)
        run_decode(events, Path(tmp) / "decoded", DecodeConfig(num_frames=args.frames, workers=2, splits=SPLITS))
        run_sensors(events, Path(tmp) / "sensors.parquet", SPLITS)
        run_embed(Path(tmp) / "decoded", Path(tmp) / "emb", EmbedConfig())
        encoder, _, _ = build_encoder(EmbedConfig())
        model = SpectralFusionModel(len(SENSOR_FEATURES), frame_encoder=encoder)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)

        folders = sorted(events.iterdir())
        started = time.perf_counter()
        for i in range(args.steps):
            batch = [folders[(i * args.batch_size + j) % len(folders)] for j in range(args.batch_size)]
            # the spec's dataset: cv2 seeks + float frames, audio, sensors; backbone on every frame
            frames = np.stack([spec_cv2_loader(str(f / "video.mp4"), args.frames) for f in batch])
            video = torch.from_numpy((frames * 255).round().astype(np.uint8))
            audio = torch.from_numpy(np.stack([load_audio(f / "audio.wav")[0] for f in batch]))
            sensors = torch.from_numpy(np.stack([sensor_features(f / "sensors.csv") for f in batch]).astype(np.float32))
            labels = torch.tensor([load_event(f).label for f in batch])
            step(model, optimizer, video, audio, sensors, labels)
        spec_sps = args.steps * args.batch_size / (time.perf_counter() - started)

        data = CachedShardDataModule(Path(tmp) / "emb", Path(tmp) / "sensors.parquet", batch_size=args.batch_size)
        data.setup("fit")
        started, samples = time.perf_counter(), 0
        for video, audio, sensors, _, labels in data.train_dataloader():
            step(model, optimizer, video, audio, sensors, labels)
            samples += labels.shape[0]
        cached_sps = samples / (time.perf_counter() - started)
    ratio = cached_sps / spec_sps
    print(f"{'training loop':<44}{'samples/s':>10}")
    print(f"{'spec: cv2 seeks + backbone every step':<44}{spec_sps:>10.3f}")
    print(f"{'cached embedding shards':<44}{cached_sps:>10.2f}")
    print(f"ratio {ratio:.0f}x at {args.frames} frames/event (goal >= 100x)")
    write_result(f"train_{args.frames}frames", {
        "frames_per_event": args.frames, "batch_size": args.batch_size, "precision": "bf16 autocast",
        "spec_loop_samples_per_s": round(spec_sps, 4), "cached_samples_per_s": round(cached_sps, 2),
        "ratio": round(ratio, 1),
    })


if __name__ == "__main__":
    main()
