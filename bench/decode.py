"""Decode-stage throughput vs the spec's per-frame cv2 seek loader and vs FFmpeg's own decode.

Same clips, same frame count, one run, ratios printed and written to bench/results/decode_<N>frames.json.
The FFmpeg limit is `ffmpeg -threads 1 -i clip -f null -` when the ffmpeg CLI is installed, and
PyAV decoding every frame single-threaded (same FFmpeg libraries) otherwise; the JSON says which.

    python bench/decode.py [--events 24] [--frames 150]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import cv2
import numpy as np
from common import write_result

from spectral.stages.decode import DecodeConfig, run_decode
from spectral.stages.synth import SynthConfig, generate


def spec_cv2_loader(path: str, num_frames: int) -> np.ndarray:
    """The spec's SpectralDataset._load_video: one seek per frame, cv2 resize, float normalisation."""
    cap = cv2.VideoCapture(path)
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    frames = []
    for idx in np.linspace(0, total - 1, num_frames).astype(np.int64):
        cap.set(cv2.CAP_PROP_POS_FRAMES, int(idx))
        ok, frame = cap.read()
        if ok:
            frames.append(cv2.resize(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB), (224, 224)).astype("float32") / 255.0)
    cap.release()
    return np.stack(frames)


def ffmpeg_limit(paths: list[Path]) -> tuple[float, str]:
    started = time.perf_counter()
    if shutil.which("ffmpeg"):
        for p in paths:
            subprocess.run(["ffmpeg", "-v", "error", "-threads", "1", "-i", str(p), "-f", "null", "-"], check=True)
        return time.perf_counter() - started, "ffmpeg -threads 1 -i clip -f null -"
    for p in paths:
        with av.open(str(p)) as container:
            for _ in container.decode(container.streams.video[0]):
                pass
    return time.perf_counter() - started, "PyAV full single-thread decode (no ffmpeg CLI)"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=24)
    parser.add_argument("--frames", type=int, default=150, help="frames sampled per clip (spec: 150)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        events = Path(tmp) / "events"
        generate(events, args.events, seed=0, cfg=SynthConfig(), workers=2)
        videos = sorted(events.glob("*/video.mp4"))
        total_frames = args.events * args.frames

        started = time.perf_counter()
        for v in videos:
            spec_cv2_loader(str(v), args.frames)
        spec_s = time.perf_counter() - started
        limit_s, limit_name = ffmpeg_limit(videos)
        rows = {}
        for backend in ("pyav", "decord"):
            cfg = DecodeConfig(num_frames=args.frames, audio_seconds=5.0, backend=backend, workers=1)
            report = run_decode(events, Path(tmp) / f"decoded_{backend}", cfg)
            rows[backend] = report["seconds"]
        for workers in (1, 2):  # as users run it: `spectral decode` in its own process, startup included
            started = time.perf_counter()
            subprocess.run([sys.executable, "-m", "spectral", "decode", str(events), f"{tmp}/cli_{workers}",
                            "--params", "none", "-S", f"video.num_frames={args.frames}", "-S", "audio.seconds=5",
                            "-S", f"decode.workers={workers}"], check=True, capture_output=True)
            rows[f"spectral decode CLI, {workers} worker(s)"] = round(time.perf_counter() - started, 3)
        shard_bytes = sum(p.stat().st_size for p in (Path(tmp) / "decoded_pyav").glob("*.tar"))

    result = {
        "clips": f"{args.events} synthetic events, H.264 640x480 30 fps 5 s, {args.frames} frames sampled each",
        "spec_cv2_seek_loader": {"seconds": round(spec_s, 3), "frames_per_s": round(total_frames / spec_s, 1)},
        "ffmpeg_limit": {"how": limit_name, "seconds": round(limit_s, 3),
                         "frames_per_s": round(args.events * 150 / limit_s, 1)},
        "decode_stage": {},
        "shard_bytes_per_event": shard_bytes // args.events,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    print(f"{'loader':<36}{'events/s':>10}{'frames/s':>10}{'x spec':>9}{'x ffmpeg':>10}")
    print(f"{'spec cv2 seek loader':<36}{args.events / spec_s:>10.2f}{total_frames / spec_s:>10.1f}{1.0:>9.2f}"
          f"{limit_s / spec_s:>10.2f}")
    for name, seconds in rows.items():
        result["decode_stage"][name] = {
            "seconds": seconds, "events_per_s": round(args.events / seconds, 2),
            "frames_per_s": round(total_frames / seconds, 1),
            "ratio_vs_spec": round(spec_s / seconds, 2), "ratio_vs_ffmpeg": round(limit_s / seconds, 3),
        }
        print(f"{'stage ' + name:<36}{args.events / seconds:>10.2f}{total_frames / seconds:>10.1f}"
              f"{spec_s / seconds:>9.2f}{limit_s / seconds:>10.2f}")
    print(f"{'ffmpeg limit':<36}{args.events / limit_s:>10.2f}{args.events * 150 / limit_s:>10.1f}"
          f"{spec_s / limit_s:>9.2f}{1.0:>10.2f}   ({limit_name})")
    print(f"shard bytes/event {result['shard_bytes_per_event']:,}")
    write_result(f"decode_{args.frames}frames", result)


if __name__ == "__main__":
    main()
