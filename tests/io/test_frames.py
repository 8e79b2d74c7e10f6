"""The frame cache formats: exact where they claim to be, and the same bytes whatever the CPU."""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from skimage import data as skimage_data

from spectral.io.frames import encode_frames, h264_lossless, load_frames, stored_frames


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


def test_h264_bytes_do_not_depend_on_the_cpu_paths(photos):
    """x264 with its assembly off (plain C) must write the bytes its SIMD paths write."""
    assert h264_lossless(photos) == h264_lossless(photos, "asm=0")


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
