"""4:2:0 frames: turned plane by plane, and the one conversion to RGB reads the colour matrix."""

import numpy as np

from spectral.io.yuv420 import Yuv420Frames

BT601, BT709 = 5, 1  # FFmpeg's AVColorSpace values (smpte170m, bt709)


def planes(frames: Yuv420Frames) -> tuple[np.ndarray, np.ndarray]:
    n, s = len(frames), frames.size
    flat = frames.data.reshape(n, -1)
    return flat[:, :s * s].reshape(n, s, s), flat[:, s * s:].reshape(n, 2, s // 2, s // 2)


def test_frames_turn_plane_by_plane():
    frames = Yuv420Frames(np.random.default_rng(0).integers(16, 236, (3, 48, 32), dtype=np.uint8), BT709)
    luma, chroma = planes(frames)
    turned = frames.rotated(1)
    turned_luma, turned_chroma = planes(turned)
    np.testing.assert_array_equal(turned_luma, np.rot90(luma, 1, axes=(1, 2)))
    np.testing.assert_array_equal(turned_chroma, np.rot90(chroma, 1, axes=(2, 3)))
    np.testing.assert_array_equal(turned.rotated(3).data, frames.data)
    assert frames.rotated(4) is frames and turned.colorspace == BT709


def test_rgb_follows_the_colour_matrix():
    """Full red in BT.709 (Y 63, U 102, V 240) is full red only through the BT.709 matrix; an untagged frame reads as
    BT.601, as swscale does."""
    data = np.concatenate([np.full((1, 32, 32), 63), np.full((1, 8, 32), 102), np.full((1, 8, 32), 240)], axis=1)
    bt709, bt601, untagged = (Yuv420Frames(data.astype(np.uint8), tag).rgb()[0, 8, 8] for tag in (BT709, BT601, 2))
    assert bt709[0] >= 253 and bt709[1] <= 2 and bt709[2] <= 2
    assert bt601[0] < 240 and untagged.tolist() == bt601.tolist()
