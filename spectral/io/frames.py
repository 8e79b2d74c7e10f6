"""How sampled frames are stored in decode shards: lossless H.264 by default, JPEG or raw `npy` by choice.

Raw uint8 RGB frames cost 150 KB each (23 MB per 150-frame event), which every `dvc push` and
`pull` moves. The default, `h264`, is lossless H.264 (qp 0) inside the pinned PyAV of the frames
as decoding scaled them: 4:2:0 (libx264, the source's matrix in the stream's VUI) from PyAV,
RGB (libx264rgb) from decord. The model sees exactly the decoded pixels (no embedding drift at
all) and consecutive frames compress against each other (bench/README.md). One encoder thread
and fixed options make its bytes reproducible; x264's own C paths give the same bytes as its
SIMD ones (tests/io/test_frames.py). `jpeg` (libjpeg-turbo in the pinned Pillow, integer DCT) is ~6x
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

from spectral.io.yuv420 import Yuv420Frames

FORMATS = ("h264", "jpeg", "npy")
_LOSSLESS = ("h264", "npy")
_NPY_MEMBER = "frames.npy"
_H264_MEMBER = "frames.h264"  # raw Annex B stream: no container, so no muxer version or timestamps in the bytes
# lossless, one thread. ultrafast: the cheapest preset (veryfast: 1.7x smaller shards, 2.4x the encode time, which
# would make the decode stage ~2x slower than decoding alone)
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


Frames = np.ndarray | Yuv420Frames  # uint8 RGB [N, H, W, 3], or 4:2:0 as PyAV decoding scaled them


def rgb(frames: Frames) -> np.ndarray:
    """uint8 RGB [N, H, W, 3] of either kind of frames."""
    return frames.rgb() if isinstance(frames, Yuv420Frames) else frames


def h264_lossless(frames: Frames, x264_params: str = "") -> bytes:
    """Frames as a lossless H.264 stream (`x264_params` is for tests: `asm=0`)."""
    buffer = io.BytesIO()
    options = {**_X264_OPTIONS, "x264-params": ":".join(filter(None, [_X264_OPTIONS["x264-params"], x264_params]))}
    yuv = isinstance(frames, Yuv420Frames)
    with av.open(buffer, "w", format="h264") as container:
        stream = container.add_stream("libx264" if yuv else "libx264rgb", rate=30, options=options)
        # rgb24 and bgr24 input give the same bytes (x264 stores planar G, B, R either way); rgb24 needs no copy
        stream.width, stream.height = (frames.size, frames.size) if yuv else (frames.shape[2], frames.shape[1])
        stream.pix_fmt = "yuv420p" if yuv else "rgb24"
        stream.thread_count = 1
        if yuv:
            stream.codec_context.colorspace = frames.colorspace  # written to the VUI, read back as the frames' tag
        for index in range(len(frames)):
            frame = frames.frame(index) if yuv else av.VideoFrame.from_ndarray(np.ascontiguousarray(frames[index]),
                                                                               format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return buffer.getvalue()


def _decode_h264(data: bytes) -> list[av.VideoFrame]:
    """Every frame of a raw H.264 stream, on one thread and without a demuxer: opening the stream as a file
    probes it by decoding its first frames an extra time (3-5 ms a clip of 16 frames, bench/decode.py
    --profile), and the loader's processes, not FFmpeg's threads, are what share the cores."""
    decoder = av.CodecContext.create("h264", "r")
    decoder.thread_count = 1
    packets = [*decoder.parse(data), *decoder.parse(None), None]  # parse(None) hands over the last frame
    return [frame for packet in packets for frame in decoder.decode(packet)]


def _from_h264(data: bytes) -> np.ndarray:
    """RGB frames of a lossless stream: 4:2:0 ones through the one conversion (Yuv420Frames.rgb), RGB ones
    (x264 codes planar G, B, R) as PyAV returns them, without swscale."""
    decoded = _decode_h264(data)
    layouts = {frame.format.name for frame in decoded}
    if layouts == {"gbrp"}:
        return np.stack([frame.to_ndarray() for frame in decoded])
    if layouts != {"yuv420p"}:
        raise ValueError(f"frames.h264 holds {', '.join(sorted(layouts)) or 'no'} frames, not lossless 4:2:0 or "
                         f"RGB (gbrp)")
    return Yuv420Frames.decoded(decoded).rgb()


def encode_frames(frames: Frames, frame_format: str, quality: int) -> dict[str, bytes | np.ndarray]:
    """Shard members for frames: `frames.h264`, `frames.npy` (RGB), or `f0000.jpg`, `f0001.jpg`, …"""
    check_format(frame_format, quality)
    if frame_format == "h264":
        return {_H264_MEMBER: h264_lossless(frames)}
    if frame_format == "npy":
        return {_NPY_MEMBER: rgb(frames)}
    return {_JPEG_MEMBER.format(index=i): _jpeg(frame, quality) for i, frame in enumerate(rgb(frames))}


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


def stored_frames(frames: Frames, frame_format: str, quality: int) -> np.ndarray:
    """The frames as a shard round trip returns them: what the model saw in training. `h264` and `npy` give
    back exactly their frames' RGB, matrix included (tests/io/test_frames.py), so only `jpeg` is encoded and
    decoded again: predict does not pay for an x264 encode that changes nothing."""
    check_format(frame_format, quality)
    if frame_format in _LOSSLESS:
        return rgb(frames)
    return load_frames(encode_frames(frames, frame_format, quality))
