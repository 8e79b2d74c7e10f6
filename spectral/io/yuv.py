"""Bit-exact yuv420p frames for the H.264 the demo and OOD generators write (the same bytes on every x86-64 CPU)."""

from __future__ import annotations

import av
import numpy as np

RGB_TO_YUV = np.array([[0.257, 0.504, 0.098], [-0.148, -0.291, 0.439], [0.439, -0.368, -0.071]], np.float32)
YUV_OFFSETS = (16.0, 128.0, 128.0)


def weighted_channels(rgb: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """rgb[..., 0] * w0 + rgb[..., 1] * w1 + rgb[..., 2] * w2, one IEEE multiply and add at a time.

    Not `rgb @ weights`: a float32 matmul goes to BLAS, whose kernel (chosen per CPU, e.g. by
    OPENBLAS_CORETYPE) decides FMA use and summation order, and so the rounding of every pixel:
    measured, it changed the generated video's bytes from one machine to another. Elementwise
    ufuncs round the same on every x86-64 CPU.
    """
    return rgb[..., 0] * weights[0] + rgb[..., 1] * weights[1] + rgb[..., 2] * weights[2]


def yuv_planes(rgb: np.ndarray) -> list[np.ndarray]:
    """Offset-free BT.601 Y (full size) and U, V (2x2-averaged) planes of an RGB image.

    Offset-free planes are linear in RGB, so per-frame brightness is one multiply and
    objects are painted straight into the planes: no per-frame colour conversion.
    """
    block = (rgb[0::2, 0::2] + rgb[1::2, 0::2] + rgb[0::2, 1::2] + rgb[1::2, 1::2]) * 0.25
    return [weighted_channels(rgb, RGB_TO_YUV[0]), weighted_channels(block, RGB_TO_YUV[1]),
            weighted_channels(block, RGB_TO_YUV[2])]


def check_bit_exact_size(width: int, height: int) -> None:
    """Refuse a size single-threaded x264 does not encode to the same bytes every time.

    x264 reads chroma rows in whole 64-byte SIMD words, past the end of the last row when the chroma
    width (half the width) is not a multiple of 64: there FFmpeg's frame buffer is uninitialised, and
    identical frames gave different bytes from process to process under load (measured at widths 64 and
    320, earlier at 96; never at 128, 384 or 640).
    """
    if width % 128 or height % 4 or height < 16:
        raise ValueError(f"video width must be a multiple of 128 and height a multiple of 4, got {width}x{height}")


def add_bit_exact_h264(container: av.container.OutputContainer, fps: int, crf: int, width: int,
                       height: int) -> av.video.stream.VideoStream:
    """A lossy yuv420p H.264 stream whose bytes depend only on its frames: one thread, FFmpeg's bitexact flags,
    and x264's C code alone (`asm=0`). x264's CPU-specific paths are not bit-exact with each other in lossy
    encoding: measured on one AVX-512 machine, SIMD and C-only gave different bytes for every demo clip, and
    the demo's 500 clips differed between an AVX2 and an AVX-512 machine. C only costs ~3x the encode time."""
    check_bit_exact_size(width, height)
    stream = container.add_stream("libx264", rate=fps, options={"preset": "veryfast", "crf": str(crf),
                                                                "x264-params": "asm=0"})
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    stream.codec_context.thread_count = 1
    stream.codec_context.flags |= av.codec.context.Flags.bitexact
    return stream


def yuv420p_frame(planes: list[np.ndarray], pts: int) -> av.VideoFrame:
    """An FFmpeg yuv420p frame ([Y; U; V] rows of width w).

    Handing FFmpeg rgb24 instead was measured to give different encoded bytes for identical
    frames (swscale); building yuv420p here keeps the encoder's input bit-exact.
    """
    y, u, v = (np.clip(np.rint(p + offset), 0, 255).astype(np.uint8) for p, offset in zip(planes, YUV_OFFSETS,
                                                                                          strict=True))
    width = y.shape[1]
    frame = av.VideoFrame.from_ndarray(np.concatenate([y, u.reshape(-1, width), v.reshape(-1, width)]),
                                       format="yuv420p")
    frame.pts = pts
    return frame
