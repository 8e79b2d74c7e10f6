"""The decode benchmark: the decode stage against decoding every frame with FFmpeg, at 150 of 150 and 16 of 150 frames.

Clips (the same ones for every row of a set, made by this script):
- `synth 640x480`: the demo generator's clips (5 s, 30 fps, one keyframe per clip);
- `phone 640x480, 1 s GOP` and `phone 1920x1080, 2 s GOP`: the same scenes with sensor-like grain, re-encoded
  as phones write them (H.264 High, B-frames, an IDR every 30 / 60 frames).

Rows, in one run per set: PyAV's single-thread decode of every frame (the baseline of every ratio), `ffmpeg -threads 1
-f null` when the CLI is installed, the spec's cv2 loader (one seek per sampled frame; on the first `--spec-clips`
clips, it is quadratic in the GOP), and the decode stage with 1 and 2 workers: its own seconds (startup excluded)
and `spectral decode` as a command (startup included). `--profile` prints where a frame's time goes in the stage.

    python bench/decode.py [--events 24] [--profile]
    python bench/decode.py --events 2 --sets synth --seconds 1 --spec-clips 1   # smoke size
"""

from __future__ import annotations

import argparse
import io
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np
from common import write_result

from spectral.io.audio import load_audio
from spectral.io.frames import h264_lossless, load_frames
from spectral.io.video import SWS_FILTERS, probe_video, read_frames_pyav, sample_indices
from spectral.io.yuv420 import Yuv420Frames
from spectral.stages.decode import DecodeConfig, run_decode
from spectral.stages.synth import SynthConfig, generate

FRAME_COUNTS = (150, 16)


@dataclass(frozen=True)
class ClipSet:
    name: str
    width: int
    height: int
    gop: int | None  # None: the synth clips as generated


SETS = {"synth": ClipSet("synth 640x480", 640, 480, None),
        "phone640": ClipSet("phone 640x480, 1 s GOP", 640, 480, 30),
        "phone1080": ClipSet("phone 1920x1080, 2 s GOP", 1920, 1080, 60)}


def phone_like(source: Path, target: Path, clip: ClipSet, grain: np.ndarray) -> None:
    """Re-encode a synth clip as a phone would: scaled to the set's size, grain that changes every frame,
    libx264 High with B-frames and an IDR every `clip.gop` frames."""
    with av.open(str(source)) as src, av.open(str(target), "w") as dst:
        stream = dst.add_stream("libx264", rate=30, options={"preset": "veryfast", "crf": "23", "bf": "3",
                                                             "g": str(clip.gop), "x264-params": "scenecut=0"})
        stream.width, stream.height, stream.pix_fmt = clip.width, clip.height, "yuv420p"
        for k, frame in enumerate(src.decode(video=0)):
            rgb = frame.to_ndarray(format="rgb24", width=clip.width, height=clip.height)
            noisy = np.clip(rgb.astype(np.int16) + grain[k % len(grain)], 0, 255).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(noisy, format="rgb24")):
                dst.mux(packet)
        for packet in stream.encode():
            dst.mux(packet)


def make_events(root: Path, synth: Path, clip: ClipSet) -> Path:
    if clip.gop is None:
        return synth
    events = root / f"events_{clip.width}_{clip.gop}"
    shutil.copytree(synth, events)
    rng = np.random.default_rng(0)
    grain = rng.normal(0, 6, (4, clip.height, clip.width, 1)).astype(np.int16)
    for folder in sorted(events.iterdir()):
        phone_like(synth / folder.name / "video.mp4", folder / "video.mp4", clip, grain)
    return events


def timed(work: Callable[[], object]) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def full_decode(videos: list[Path]) -> None:
    for path in videos:
        with av.open(str(path)) as container:
            container.streams.video[0].thread_count = 1
            for _ in container.decode(video=0):
                pass


def ffmpeg_cli(videos: list[Path]) -> float | None:
    if not shutil.which("ffmpeg"):
        return None
    return timed(lambda: [subprocess.run(["ffmpeg", "-v", "error", "-threads", "1", "-i", str(p), "-f", "null", "-"],
                                         check=True) for p in videos])


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


def stage_cli(events: Path, out: Path, frames: int, workers: int) -> float:
    """`spectral decode` as users run it, in its own process: startup included."""
    return timed(lambda: subprocess.run(
        [sys.executable, "-m", "spectral", "decode", str(events), str(out), "--params", "none",
         "-S", f"video.num_frames={frames}", "-S", "audio.seconds=5", "-S", f"decode.workers={workers}"],
        check=True, capture_output=True))


def demuxed_rgb(data: bytes) -> np.ndarray:
    """A shard's frames read back as a file: av.open probes the raw stream (decoding its first frames) and
    FFmpeg picks its own thread count. The loader's way without those, for comparison."""
    with av.open(io.BytesIO(data), format="h264") as container:
        decoded = list(container.decode(video=0))
    return Yuv420Frames(np.stack([frame.to_ndarray() for frame in decoded]), decoded[0].colorspace).rgb()


def profile(events: Path, frames: int, clip_frames: int) -> dict:
    """Milliseconds per sampled frame of each part of the stage's work, measured one part at a time."""
    videos = sorted(events.glob("*/video.mp4"))
    wanted = set(sample_indices(clip_frames, frames).tolist())
    decoded = []

    def read_all() -> None:
        decoded.extend(read_frames_pyav(str(v), frames, 224, as_yuv=True)[0] for v in videos)

    def decode_only() -> None:
        for v in videos:
            with av.open(str(v)) as container:
                container.streams.video[0].thread_count = 1
                for index, _ in enumerate(container.decode(video=0)):
                    if index >= max(wanted):
                        break

    def resize_only() -> None:
        from av.video.reformatter import VideoReformatter
        scaler = VideoReformatter()
        for v in videos:
            with av.open(str(v)) as container:
                container.streams.video[0].thread_count = 1
                for index, frame in enumerate(container.decode(video=0)):
                    if index in wanted:
                        scaler.reformat(frame, format="yuv420p", width=224, height=224,
                                        interpolation=SWS_FILTERS["bicubic"], threads=1)

    sampled = frames * len(videos)
    parts = {"demux + decode + resize (the stage's reader)": timed(read_all)}
    parts["  of which: decode up to the last sampled frame, no skipping"] = timed(decode_only)
    parts["  of which: decode + swscale 4:2:0 resize, no skipping"] = timed(resize_only)
    stored: list[bytes] = []
    parts["lossless H.264 encode of the 224x224 4:2:0 frames"] = timed(
        lambda: stored.extend(h264_lossless(f) for f in decoded))
    # one clip's frames alive at a time, as in the loader: memory is reused, not freshly faulted in per clip
    parts["reading them back to RGB (the embed loader: `load_frames`)"] = timed(
        lambda: [load_frames({"frames.h264": data}).shape for data in stored])
    parts["  the same through a demuxer (av.open probes each stream)"] = timed(
        lambda: [demuxed_rgb(data).shape for data in stored])
    parts["4:2:0 to RGB (what the embed stage and predict do)"] = timed(lambda: [f.rgb() for f in decoded])
    parts["audio decode + resample"] = timed(lambda: [load_audio(str(v.parent / "audio.wav"), length=5 * 16_000)
                                                      for v in videos])
    cfg = DecodeConfig(num_frames=frames, audio_seconds=5.0, workers=1)
    with tempfile.TemporaryDirectory() as tmp:
        parts["the whole stage (1 worker, startup excluded)"] = run_decode(events, Path(tmp) / "out", cfg)["seconds"]
    return {name: round(seconds / sampled * 1000, 4) for name, seconds in parts.items()}


def bench_set(clip: ClipSet, events: Path, work: Path, spec_clips: int) -> dict:
    videos = sorted(events.glob("*/video.mp4"))
    every_frame = sum(probe_video(str(v)).total_frames for v in videos)
    baseline = timed(lambda: full_decode(videos))
    row: dict = {"clips": len(videos), "frames_per_clip": every_frame // len(videos),
                 "bytes_per_clip": sum(v.stat().st_size for v in videos) // len(videos),
                 "pyav_full_decode": {"seconds": round(baseline, 3), "frames_per_s": round(every_frame / baseline, 1)},
                 "ffmpeg_cli": None, "sampled": {}}
    cli = ffmpeg_cli(videos)
    if cli is not None:
        row["ffmpeg_cli"] = {"seconds": round(cli, 3), "frames_per_s": round(every_frame / cli, 1)}
    for frames in FRAME_COUNTS:
        sampled = frames * len(videos)
        spec_s = timed(lambda frames=frames: [spec_cv2_loader(str(v), frames) for v in videos[:spec_clips]])
        runs = {}
        for workers in (1, 2):
            cfg = DecodeConfig(num_frames=frames, audio_seconds=5.0, workers=workers)
            runs[f"stage, {workers} worker(s)"] = run_decode(events, work / f"out_{frames}_{workers}", cfg)["seconds"]
            runs[f"`spectral decode`, {workers} worker(s), startup included"] = stage_cli(
                events, work / f"cli_{frames}_{workers}", frames, workers)
        shutil.rmtree(work)
        work.mkdir()
        scale = baseline / len(videos)  # seconds of a full decode per clip
        row["sampled"][str(frames)] = {
            "spec_cv2_loader": {"clips": spec_clips, "frames_per_s": round(frames * spec_clips / spec_s, 1),
                                "ratio_vs_full_decode": round(scale * spec_clips / spec_s, 3)},
            **{name: {"seconds": round(seconds, 3), "sampled_frames_per_s": round(sampled / seconds, 1),
                      "ratio_vs_full_decode": round(baseline / seconds, 3)} for name, seconds in runs.items()},
            "workers_1_to_2": round(runs["stage, 1 worker(s)"] / runs["stage, 2 worker(s)"], 3)}
    return row


def print_set(name: str, row: dict) -> None:
    print(f"\n{name}: {row['clips']} clips, {row['frames_per_clip']} frames, {row['bytes_per_clip']:,} bytes each; "
          f"PyAV full decode {row['pyav_full_decode']['frames_per_s']:,} frames/s")
    print(f"{'sampled':>8}  {'reader':<56}{'sampled frames/s':>18}{'x full decode':>15}")
    for frames, runs in row["sampled"].items():
        label = f"{frames}/{row['frames_per_clip']}"
        for reader, result in runs.items():
            if isinstance(result, dict):
                rate = result.get("sampled_frames_per_s", result.get("frames_per_s"))
                print(f"{label:>8}  {reader:<56}{rate:>18,}{result['ratio_vs_full_decode']:>15}")
        print(f"{label:>8}  {'stage: 2 workers over 1':<56}{'':>18}{runs['workers_1_to_2']:>15}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=24)
    parser.add_argument("--sets", nargs="+", choices=sorted(SETS), default=["synth", "phone640", "phone1080"])
    parser.add_argument("--seconds", type=float, default=5.0, help="clip length (the spec: 5 s at 30 fps)")
    parser.add_argument("--spec-clips", type=int, default=4, help="clips the (slow) spec loader reads")
    parser.add_argument("--profile", action="store_true", help="also print where a frame's time goes in the stage")
    parser.add_argument("--output", type=Path, help="where the JSON goes (default bench/results/decode.json)")
    args = parser.parse_args()
    result: dict = {"sets": {}, "profile_ms_per_sampled_frame": {}}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        synth = root / "synth"
        generate(synth, args.events, seed=0, cfg=SynthConfig(duration_s=args.seconds), workers=2)
        for key in args.sets:
            clip = SETS[key]
            events = make_events(root, synth, clip)
            (root / "work").mkdir(exist_ok=True)
            row = bench_set(clip, events, root / "work", min(args.spec_clips, args.events))
            result["sets"][clip.name] = row
            print_set(clip.name, row)
            if args.profile:
                result["profile_ms_per_sampled_frame"][clip.name] = {
                    str(f): profile(events, f, row["frames_per_clip"]) for f in FRAME_COUNTS}
                for frames, parts in result["profile_ms_per_sampled_frame"][clip.name].items():
                    print(f"\nwhere a sampled frame's time goes, {clip.name}, {frames} of {row['frames_per_clip']}, ms")
                    for part, ms in parts.items():
                        print(f"  {part:<64}{ms:>9.3f}")
    write_result("decode", result, args.output)


if __name__ == "__main__":
    main()
