"""Real media files made by the tests themselves: clips whose frame k encodes k, WAVs in many formats."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import soundfile as sf

CODECS = {  # codec → container extension
    "libx264": "mp4",
    "libx265": "mp4",
    "libvpx-vp9": "webm",
    "mpeg4": "avi",
}


def index_frame(k: int, width: int, height: int) -> np.ndarray:
    """Left half bright 8*(k % 32), right half 8*(k // 32): a decoded frame reveals its index (k < 1024)."""
    frame = np.empty((height, width, 3), dtype=np.uint8)
    frame[:, : width // 2] = 8 * (k % 32)
    frame[:, width // 2 :] = 8 * (k // 32)
    return frame


def frame_index(frame: np.ndarray) -> int:
    quarter = frame.shape[1] // 4
    low = float(frame[:, :quarter].mean()) / 8
    high = float(frame[:, -quarter:].mean()) / 8
    return int(round(low)) + 32 * int(round(high))


def write_index_video(path: Path, n_frames: int, width: int = 64, height: int = 48, fps: float = 10,
                      codec: str = "libx264") -> Path:
    path = Path(path)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if codec == "libx265":
            stream.options = {"x265-params": "log-level=error"}
        for k in range(n_frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(index_frame(k, width, height), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_tone(path: Path, seconds: float = 1.0, rate: int = 44_100, channels: int = 1, subtype: str = "PCM_16",
               frequency: float = 440.0, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    mono = amplitude * np.sin(2 * np.pi * frequency * t)
    data = np.repeat(mono[:, None], channels, axis=1)
    sf.write(str(path), data, rate, subtype=subtype)
    return mono


def upright_marker_frame(width: int = 64, height: int = 128) -> np.ndarray:
    """A portrait frame, dark, with a bright block in its top-left corner: shows which way is up."""
    frame = np.full((height, width, 3), 16, dtype=np.uint8)
    frame[: height // 4, : width // 4] = 240
    return frame


def write_rotated_video(path: Path, degrees: int, n_frames: int = 5, upright: np.ndarray | None = None,
                        codec: str = "libx264", container_format: str | None = None) -> Path:
    """What a phone writes: the coded frames are `upright` turned clockwise by `degrees`, and the
    container's display matrix says to turn them back (counter-clockwise `degrees`) for display.
    `container_format` (e.g. "webm") writes that container whatever the file is called."""
    upright = upright_marker_frame() if upright is None else upright
    coded = np.ascontiguousarray(np.rot90(upright, -(degrees // 90)))
    with av.open(str(path), "w", format=container_format) as container:
        stream = container.add_stream(codec, rate=10)
        stream.width, stream.height, stream.pix_fmt = coded.shape[1], coded.shape[0], "yuv420p"
        if codec == "libx265":
            stream.options = {"x265-params": "log-level=error"}
        if degrees:
            stream.set_display_rotation(degrees)
        for _ in range(n_frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(coded, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return Path(path)


SENSORS = "timestamp,magnetic_magnitude\n1,45\n2,46\n"


def make_event(root, name, label="Ruído_Ambiente", n_frames=12, rate=48_000):
    """A complete event folder of real media; `label=None` writes metadata without a classification."""
    folder = root / name
    folder.mkdir(parents=True)
    metadata = {} if label is None else {"classification": label}
    (folder / "metadata.json").write_text(json.dumps(metadata), encoding="utf-8")
    write_index_video(folder / "video.mp4", n_frames)
    write_tone(folder / "audio.wav", seconds=1.0, rate=rate, channels=2)
    (folder / "sensors.csv").write_text(SENSORS, encoding="utf-8")
    return folder


GOP_CLIPS = {  # name → (codec, container extension, encoder options): the reordering and restart points of real files
    "h264_bframes_closed_gop": ("libx264", "mp4", {"bf": "3", "g": "12", "x264-params": "b-pyramid=normal:scenecut=0"}),
    "h264_open_gop": ("libx264", "mp4", {"bf": "3", "g": "12", "x264-params": "open-gop=1:scenecut=0"}),
    "h264_annexb_ts": ("libx264", "ts", {"bf": "2", "g": "10"}),
    "hevc_open_gop": ("libx265", "mp4", {"x265-params": "log-level=error:keyint=12:min-keyint=12:bframes=3"}),
    "hevc_closed_gop": ("libx265", "mkv", {"x265-params": "log-level=error:keyint=10:open-gop=0:bframes=2"}),
    "vp9_altref": ("libvpx-vp9", "webm", {"g": "12", "auto-alt-ref": "1", "lag-in-frames": "8", "deadline": "realtime",
                                          "cpu-used": "8"}),
    "mpeg4_bframes": ("mpeg4", "avi", {"bf": "2", "g": "12"}),
    "mjpeg_intra": ("mjpeg", "mkv", {}),
}


def moving_texture(k: int, width: int, height: int) -> np.ndarray:
    """A fixed random texture shifted by k pixels: motion the encoder predicts from other frames."""
    texture = np.random.default_rng(7).integers(0, 256, (height, 2 * width + 64, 3), dtype=np.uint8)
    return np.ascontiguousarray(texture[:, k % (width + 64): k % (width + 64) + width])


def write_gop_video(path: Path, n_frames: int, clip: str, width: int = 64, height: int = 48, fps: int = 30,
                    variable_rate: bool = False) -> Path:
    """A clip of `GOP_CLIPS[clip]` kind with several restart points; `variable_rate` spaces frames irregularly,
    as phones do under load (timestamps in ms, gaps of 20-50 ms)."""
    codec, _, options = GOP_CLIPS[clip]
    path = Path(path)
    gaps = np.random.default_rng(3).integers(20, 51, n_frames) if variable_rate else None
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps, options=dict(options))
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        if variable_rate:
            stream.codec_context.time_base = Fraction(1, 1000)
        stream.thread_count = 1
        for k in range(n_frames):
            frame = av.VideoFrame.from_ndarray(moving_texture(k, width, height), format="rgb24")
            if variable_rate:
                frame.pts, frame.time_base = int(gaps[:k].sum()), Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
