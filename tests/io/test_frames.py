"""The frame cache formats: exact where they claim to be, and the same bytes whatever the CPU."""

import hashlib
import os
import subprocess
import sys

import av
import numpy as np
import pytest
from PIL import Image
from skimage import data as skimage_data

from spectral.io.frames import encode_frames, h264_lossless, load_frames, stored_frames
from spectral.io.yuv420 import MATRICES, Yuv420Frames

BT601, BT709 = 5, 1  # FFmpeg's AVColorSpace values (smpte170m, bt709)


@pytest.fixture(scope="module")
def photos() -> np.ndarray:
    """Real photographs (scikit-image's), resized as decode resizes frames."""
    images = [skimage_data.coffee(), skimage_data.astronaut(), skimage_data.chelsea()]
    return np.stack([np.asarray(Image.fromarray(p).resize((224, 224), Image.Resampling.BICUBIC)) for p in images])


def test_h264_is_lossless_and_smaller_than_raw(photos):
    stored = encode_frames(photos, "h264", 95)
    np.testing.assert_array_equal(load_frames(stored), photos)
    np.testing.assert_array_equal(stored_frames(photos, "h264", 95), photos)
    assert len(stored["frames.h264"]) < photos.nbytes  # three unrelated photos: intra coding only


def test_h264_bytes_do_not_depend_on_the_cpu_paths(photos, photos_420):
    """x264 with its assembly off (plain C) must write the bytes its SIMD paths write."""
    assert h264_lossless(photos) == h264_lossless(photos, "asm=0")
    assert h264_lossless(photos_420) == h264_lossless(photos_420, "asm=0")


def yuv420(photos: np.ndarray, colorspace: int) -> Yuv420Frames:
    frames = [av.VideoFrame.from_ndarray(p, format="rgb24").reformat(format="yuv420p", dst_colorspace=colorspace)
              for p in photos]
    return Yuv420Frames(np.stack([f.to_ndarray() for f in frames]), colorspace)


@pytest.fixture(scope="module")
def photos_420(photos) -> Yuv420Frames:
    """The photos as PyAV decoding keeps frames: 4:2:0, tagged BT.709 as phone video is."""
    return yuv420(photos, BT709)


def test_420_frames_are_stored_losslessly_with_their_colour_matrix(photos, photos_420):
    """The stream carries the source's matrix (its VUI): read back as BT.601, the default of an untagged stream,
    these BT.709 photos would shift colour (measured: ~10 levels on saturated pixels)."""
    stored = encode_frames(photos_420, "h264", 95)
    np.testing.assert_array_equal(load_frames(stored), photos_420.rgb())
    assert np.abs(photos_420.rgb().astype(int) - photos).mean() < 3  # the photos, through 4:2:0
    as_bt601 = Yuv420Frames(photos_420.data, BT601).rgb()
    assert np.abs(as_bt601.astype(int) - photos).mean() > 3
    assert len(stored["frames.h264"]) < len(encode_frames(photos, "h264", 95)["frames.h264"]) * 0.6


@pytest.mark.parametrize("matrix", sorted(MATRICES | {2}))
def test_every_kept_matrix_comes_back_from_h264(photos, matrix):
    """`stored_frames` trusts h264 to give back its frames' RGB without the round trip: so must the stream, for
    every matrix frames are kept in (the VUI carries it; the decoder's tag picks the conversion)."""
    frames = yuv420(photos, matrix)
    np.testing.assert_array_equal(load_frames(encode_frames(frames, "h264", 95)), frames.rgb())
    np.testing.assert_array_equal(stored_frames(frames, "h264", 95), frames.rgb())


def test_420_frames_are_stored_as_the_rgb_they_mean(photos_420):
    np.testing.assert_array_equal(stored_frames(photos_420, "npy", 95), photos_420.rgb())
    assert np.abs(stored_frames(photos_420, "jpeg", 95).astype(int) - photos_420.rgb()).mean() < 3


def test_jpeg_bytes_do_not_depend_on_the_cpu_paths(photos):
    """libjpeg-turbo with SIMD disabled (JSIMD_FORCENONE) must write the same bytes."""
    code = ("import sys, hashlib, numpy as np; from spectral.io.frames import encode_frames; "
            "f = np.load(sys.argv[1]); m = encode_frames(f, 'jpeg', 95); "
            "print(hashlib.sha256(b''.join(m[k] for k in sorted(m))).hexdigest())")
    path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"photos-{os.getpid()}.npy")
    np.save(path, photos)
    try:
        runs = [subprocess.run([sys.executable, "-c", code, path], env={**os.environ, **extra}, check=True,
                               capture_output=True, text=True).stdout for extra in ({}, {"JSIMD_FORCENONE": "1"})]
    finally:
        os.unlink(path)
    assert runs[0] == runs[1] and len(runs[0]) == 65


def test_unknown_format_is_a_clear_error(photos):
    with pytest.raises(ValueError, match="frame_format must be one of h264, jpeg, npy"):
        encode_frames(photos, "webp", 95)


def test_420_h264_bytes_are_the_same_in_concurrent_processes(photos_420, tmp_path):
    """x264 once gave other bytes for identical frames from process to process under load, at widths whose chroma
    rows are not whole 64-byte words (spectral.io.yuv.check_bit_exact_size); 224 has 112-sample chroma rows."""
    np.save(tmp_path / "planes.npy", photos_420.data)
    code = ("import sys, hashlib, numpy as np; from spectral.io.frames import h264_lossless; "
            "from spectral.io.yuv420 import Yuv420Frames; "
            "print(hashlib.sha256(h264_lossless(Yuv420Frames(np.load(sys.argv[1]), 1))).hexdigest())")
    runs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "planes.npy")], stdout=subprocess.PIPE,
                             text=True) for _ in range(4)]
    digests = {run.communicate()[0].strip() for run in runs}
    assert digests == {hashlib.sha256(h264_lossless(photos_420)).hexdigest()}
