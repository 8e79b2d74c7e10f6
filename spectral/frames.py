"""How sampled frames are stored in decode shards: JPEG by default, raw `npy` when exactness matters.

Raw uint8 frames cost 150 KB each (23 MB per 150-frame event), which every `dvc push` and
`pull` moves. JPEG through the libjpeg-turbo inside the pinned Pillow is 6-9x smaller on
real footage and its output is the same on every x86-64 machine: the accurate integer DCT,
integer colour conversion and fixed Huffman tables are bit-exact across its SIMD paths
(`tests/test_golden.py` checks with SIMD disabled). Whatever reads frames for the model —
the embed stage from shards, `spectral predict` from a video — goes through
`stored_frames`/`load_frames`, so training and serving see the same pixels.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

FORMATS = ("jpeg", "npy")
_NPY_MEMBER = "frames.npy"
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


def encode_frames(frames: np.ndarray, frame_format: str, quality: int) -> dict[str, bytes | np.ndarray]:
    """Shard members for uint8 frames [N, H, W, 3]: `frames.npy`, or `f0000.jpg`, `f0001.jpg`, …"""
    check_format(frame_format, quality)
    if frame_format == "npy":
        return {_NPY_MEMBER: frames}
    return {_JPEG_MEMBER.format(index=i): _jpeg(frame, quality) for i, frame in enumerate(frames)}


def is_frame_member(extension: str) -> bool:
    return extension == _NPY_MEMBER or (extension.startswith("f") and extension.endswith(".jpg"))


def load_frames(sample: dict) -> np.ndarray:
    """uint8 frames [N, H, W, 3] from a raw shard sample (member bytes) in either format."""
    if _NPY_MEMBER in sample:
        value = sample[_NPY_MEMBER]
        return value if isinstance(value, np.ndarray) else np.load(io.BytesIO(value), allow_pickle=False)
    names = sorted(k for k in sample if is_frame_member(k))
    if not names:
        raise KeyError(f"sample {sample.get('__key__')!r} has no frames (neither frames.npy nor f0000.jpg…)")
    return np.stack([np.asarray(Image.open(io.BytesIO(sample[name])).convert("RGB")) for name in names])


def stored_frames(frames: np.ndarray, frame_format: str, quality: int) -> np.ndarray:
    """The frames as a shard round trip returns them: what the model saw in training."""
    return load_frames(encode_frames(frames, frame_format, quality))
