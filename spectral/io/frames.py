"""How sampled frames are stored in decode shards: lossless H.264 by default, JPEG or raw `npy` by choice.

Raw uint8 frames cost 150 KB each (23 MB per 150-frame event), which every `dvc push` and
`pull` moves. The default, `h264`, is lossless RGB H.264 (libx264rgb, qp 0) inside the
pinned PyAV: the model sees exactly the decoded pixels (no embedding drift at all) and
consecutive frames compress against each other — measured 9.6x smaller than raw on 150-frame
synth events. One encoder thread and fixed options make
its bytes reproducible; x264's own C paths give the same bytes as its SIMD ones
(tests/io/test_frames.py). `jpeg` (libjpeg-turbo in the pinned Pillow, integer DCT) is ~6x
smaller per frame on real footage but lossy, and measured EfficientNet embeddings move more
under q95 JPEG than under bf16 (bench/README.md). Whatever reads frames for the model — the embed
stage from shards, `spectral predict` from a video — goes through `stored_frames` /
`load_frames`, so training and serving see the same pixels.
"""

from __future__ import annotations

import io

import av
import numpy as np
from PIL import Image

FORMATS = ("h264", "jpeg", "npy")
_NPY_MEMBER = "frames.npy"
_H264_MEMBER = "frames.h264"  # raw Annex B stream: no container, so no muxer version or timestamps in the bytes
# lossless RGB, one thread. ultrafast: 9.6x smaller than raw at 1.0 ms/frame (224x224) on 150-frame synth
# events; veryfast 16.6x at 2.4 ms, which would make the decode stage ~2x slower than decoding alone
_X264_OPTIONS = {"qp": "0", "preset": "ultrafast", "x264-params": "cpu-independent=1"}
_JPEG_MEMBER = "f{index:04d}.jpg"  # one tar member per frame: any WebDataset tool can read them


def check_format(frame_format: str, quality: int) -> None:
    if frame_format not in FORMATS:
        raise ValueError(f"decode.frame_format must be one of {', '.join(FORMATS)}, got {frame_format!r}")
    if not 1 <= quality <= 100:
        raise ValueError(f"decode.jpeg_quality must be within 1..100, got {quality}")


def _jpeg(frame: np.ndarray, quality: int) -> bytes:
    buffer = io.BytesIO()
    # Pillow's defaults pinned explicitly: 4:2:0 chroma, baseline, no optimised tables, no EXIF
    Image.fromarray(frame).save(buffer, "JPEG", quality=quality, subsampling=2, optimize=False, progressive=False)
    return buffer.getvalue()


def h264_lossless(frames: np.ndarray, x264_params: str = "") -> bytes:
    """uint8 RGB frames [N, H, W, 3] as a lossless H.264 stream (`x264_params` is for tests: `asm=0`)."""
    buffer = io.BytesIO()
    options = {**_X264_OPTIONS, "x264-params": ":".join(filter(None, [_X264_OPTIONS["x264-params"], x264_params]))}
    with av.open(buffer, "w", format="h264") as container:
        stream = container.add_stream("libx264rgb", rate=30, options=options)
        # rgb24 and bgr24 input give the same bytes (x264 stores planar G, B, R either way); rgb24 needs no copy
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "rgb24"
        stream.thread_count = 1
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
        container.mux(stream.encode())
    return buffer.getvalue()


def _from_h264(data: bytes) -> np.ndarray:
    """The frames of a lossless RGB stream: x264 codes planar G, B, R, which PyAV returns as [H, W, 3] RGB
    without swscale (1.7 ms a 224x224 frame through an rgb24 conversion, 0.6 ms without; same bytes)."""
    with av.open(io.BytesIO(data), format="h264") as container:
        frames = []
        for frame in container.decode(video=0):
            if frame.format.name != "gbrp":
                raise ValueError(f"frames.h264 holds {frame.format.name} frames, not lossless RGB (gbrp)")
            frames.append(frame.to_ndarray())
        return np.stack(frames)


def encode_frames(frames: np.ndarray, frame_format: str, quality: int) -> dict[str, bytes | np.ndarray]:
    """Shard members for uint8 frames [N, H, W, 3]: `frames.h264`, `frames.npy`, or `f0000.jpg`, `f0001.jpg`, …"""
    check_format(frame_format, quality)
    if frame_format == "npy":
        return {_NPY_MEMBER: frames}
    if frame_format == "h264":
        return {_H264_MEMBER: h264_lossless(frames)}
    return {_JPEG_MEMBER.format(index=i): _jpeg(frame, quality) for i, frame in enumerate(frames)}


def is_frame_member(extension: str) -> bool:
    return extension in (_NPY_MEMBER, _H264_MEMBER) or (extension.startswith("f") and extension.endswith(".jpg"))


def load_frames(sample: dict) -> np.ndarray:
    """uint8 frames [N, H, W, 3] from a raw shard sample (member bytes) in either format."""
    if _NPY_MEMBER in sample:
        value = sample[_NPY_MEMBER]
        return value if isinstance(value, np.ndarray) else np.load(io.BytesIO(value), allow_pickle=False)
    if _H264_MEMBER in sample:
        return np.ascontiguousarray(_from_h264(sample[_H264_MEMBER]))
    names = sorted(k for k in sample if is_frame_member(k))
    if not names:
        raise KeyError(f"sample {sample.get('__key__')!r} has no frames (frames.h264, frames.npy or f0000.jpg…)")
    return np.stack([np.asarray(Image.open(io.BytesIO(sample[name])).convert("RGB")) for name in names])


def stored_frames(frames: np.ndarray, frame_format: str, quality: int) -> np.ndarray:
    """The frames as a shard round trip returns them: what the model saw in training."""
    return load_frames(encode_frames(frames, frame_format, quality))
