"""Sampled frames kept in the source's own 4:2:0 from decoding until the model needs RGB.

Scaling and storing 4:2:0 planes is half the samples of RGB: measured, the decode stage's
resize and lossless encode cost about half (bench/decode.py --profile), and shards shrink.
RGB is made in one place, `Yuv420Frames.rgb`, so a shard round trip and a direct read agree.
"""

from __future__ import annotations

from dataclasses import dataclass

import av
import numpy as np
from av.video.reformatter import Interpolation, VideoReformatter

_UNSPECIFIED = 2  # FFmpeg's AVCOL_SPC_UNSPECIFIED: swscale reads it as BT.601
# matrices swscale converts with (FFmpeg's AVColorSpace: BT.709, FCC, BT.470BG, SMPTE 170M and 240M, BT.2020 NCL;
# it refuses BT.2020 CL, 10)
MATRICES = frozenset({1, 4, 5, 6, 7, 9})
# bilinear chroma across and down (without FULL_CHR_H_INT swscale repeats chroma across: rotated clips would differ)
_TO_RGB = Interpolation.BILINEAR | Interpolation.FULL_CHR_H_INT | Interpolation.BITEXACT | Interpolation.ACCURATE_RND


def kept_matrix(colorspace: int) -> int:
    """The matrix frames are kept in: the source's where swscale knows it; else (RGB-coded sources, unspecified)
    unspecified, which reads as BT.601."""
    return int(colorspace) if colorspace in MATRICES else _UNSPECIFIED


@dataclass(frozen=True)
class Yuv420Frames:
    """Square sampled frames kept in 4:2:0, as the source codes them: half the samples of RGB to scale and store.

    `data` is FFmpeg's yuv420p layout, uint8 [N, 3S/2, S]: the S×S luma plane, then the S/2×S/2 U and V planes,
    flattened in rows of S; limited range. `colorspace` is the matrix (FFmpeg's AVColorSpace, `kept_matrix`),
    which turning the frames into RGB needs and lossless storage carries (the H.264 stream's VUI).
    """

    data: np.ndarray
    colorspace: int = _UNSPECIFIED

    def __len__(self) -> int:
        return len(self.data)

    @property
    def size(self) -> int:
        return self.data.shape[2]

    def frame(self, index: int) -> av.VideoFrame:
        frame = av.VideoFrame.from_ndarray(self.data[index], format="yuv420p")
        frame.colorspace = self.colorspace
        return frame

    def rgb(self) -> np.ndarray:
        """uint8 [N, S, S, 3], the pixels the model sees: swscale's exact C arithmetic (the same on every CPU,
        tests/io/test_video.py), bilinear chroma, the matrix of `colorspace`, limited range as for any yuv420p.

        Every reader of kept frames converts here, from frames built by `frame` alone: swscale also reads
        a frame's chroma siting, which a decoder sets and `from_ndarray` does not, so converting decoded
        frames directly would differ from converting the same planes here."""
        scaler = VideoReformatter()
        out = np.empty((len(self), self.size, self.size, 3), np.uint8)  # filled in place: one array, no stack
        for i in range(len(self)):
            out[i] = scaler.reformat(self.frame(i), format="rgb24", interpolation=_TO_RGB, threads=1).to_ndarray()
        return out

    @classmethod
    def decoded(cls, frames: list[av.VideoFrame]) -> Yuv420Frames:
        """Decoded yuv420p frames (a lossless shard stream) as kept frames, in the matrix their stream carries."""
        data = np.empty((len(frames), frames[0].height * 3 // 2, frames[0].width), np.uint8)  # yuv420p's layout
        for i, frame in enumerate(frames):
            data[i] = frame.to_ndarray()
        return cls(data, frames[0].colorspace)

    def rotated(self, quarter_turns: int) -> Yuv420Frames:
        """The frames turned counter-clockwise by quarter turns, plane by plane (a square stays a square)."""
        if quarter_turns % 4 == 0:
            return self
        n, s = len(self), self.size
        flat = self.data.reshape(n, -1)
        luma, chroma = flat[:, :s * s].reshape(n, s, s), flat[:, s * s:].reshape(n, 2, s // 2, s // 2)
        turned = [np.rot90(luma, quarter_turns, axes=(1, 2)), np.rot90(chroma, quarter_turns, axes=(2, 3))]
        data = np.concatenate([part.reshape(n, -1) for part in turned], axis=1).reshape(self.data.shape)
        return Yuv420Frames(data, self.colorspace)
