import numpy as np
import pytest
from media import (
    CODECS,
    GOP_CLIPS,
    frame_index,
    upright_marker_frame,
    write_gop_video,
    write_index_video,
    write_rotated_video,
)

from spectral.io.video import SampledFrames, load_video, read_frames_decord, read_frames_pyav, sample_indices


def test_sample_indices_are_uniform_and_repeat_for_short_clips():
    assert sample_indices(150, 4).tolist() == [0, 50, 99, 149]
    assert sample_indices(3, 5).tolist() == [0, 0, 1, 2, 2]
    with pytest.raises(ValueError):
        sample_indices(0, 4)


@pytest.mark.parametrize("codec", sorted(CODECS))
def test_exact_frames_for_each_codec_and_container(tmp_path, codec):
    path = write_index_video(tmp_path / f"clip.{CODECS[codec]}", 30, codec=codec)
    frames, info = read_frames_pyav(str(path), 4)
    assert info.total_frames == 30 and frames.shape == (4, 48, 64, 3)
    assert [frame_index(f) for f in frames] == sample_indices(30, 4).tolist()


@pytest.mark.parametrize("n_frames,fps,size", [(7, 24, (80, 60)), (45, 29.97, (48, 64)), (3, 60, (100, 30))])
def test_short_clips_odd_fps_and_aspect_ratios(tmp_path, n_frames, fps, size):
    path = write_index_video(tmp_path / "clip.mp4", n_frames, width=size[0], height=size[1], fps=fps)
    frames, info = load_video(str(path), 8, 32)
    assert frames.shape == (8, 32, 32, 3) and frames.dtype == np.uint8
    assert [frame_index(f) for f in frames] == sample_indices(n_frames, 8).tolist()
    assert info.width == size[0] and info.height == size[1]


@pytest.mark.parametrize("codec", ["libx264", "mpeg4"])
def test_pyav_and_decord_agree_at_native_size(tmp_path, codec):
    path = write_index_video(tmp_path / f"clip.{CODECS[codec]}", 25, codec=codec)
    pyav_frames, _ = read_frames_pyav(str(path), 6)
    decord_frames, _ = read_frames_decord(str(path), 6)
    np.testing.assert_array_equal(pyav_frames, decord_frames)


def test_resize_is_antialiased(tmp_path):
    """A 1-pixel checkerboard averages to grey when antialiased; point sampling would alias to black/white."""
    import av

    path = tmp_path / "checker.mp4"
    board = ((np.indices((256, 256)).sum(axis=0) % 2) * 255).astype(np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264rgb", rate=10, options={"crf": "0"})
        stream.width, stream.height, stream.pix_fmt = 256, 256, "rgb24"
        for packet in stream.encode(av.VideoFrame.from_ndarray(np.stack([board] * 3, axis=-1), format="rgb24")):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    for backend in ("pyav", "decord"):
        frames, _ = load_video(str(path), 1, 32, backend=backend)
        assert abs(float(frames.mean()) - 127.5) < 10 and frames.std() < 20, backend


def test_truncated_and_garbage_files_raise(tmp_path):
    good = write_index_video(tmp_path / "clip.mp4", 30)
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00" * 1000)
    with pytest.raises(Exception):  # noqa: B017 - any decoder error; decode_event wraps it with the file name
        read_frames_pyav(str(garbage), 4)
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(Exception):  # noqa: B017
        read_frames_pyav(str(truncated), 4)


@pytest.mark.parametrize("backend", ["pyav", "decord"])
@pytest.mark.parametrize("degrees", [0, 90, 180, 270])
def test_phone_rotation_is_honoured_so_frames_come_out_upright(tmp_path, backend, degrees):
    path = write_rotated_video(tmp_path / "portrait.mp4", degrees)
    reader = read_frames_pyav if backend == "pyav" else read_frames_decord
    native, info = reader(str(path), 3)
    assert info.rotation == degrees
    expected = upright_marker_frame()
    assert native.shape == (3, *expected.shape)
    assert np.abs(native.astype(int) - expected).mean() < 4  # upright, as a player shows it
    resized, _ = load_video(str(path), 3, 32, backend=backend)
    assert resized[:, :8, :8].mean() > 200 and resized[:, 16:, 16:].mean() < 40  # marker stays top-left


def test_frames_that_could_not_be_decoded_are_counted_not_hidden():
    sampled = SampledFrames(np.array([0, 5, 7, 9]))
    sampled.put(0, np.zeros((2, 2, 3), np.uint8))
    sampled.put(5, np.ones((2, 2, 3), np.uint8))
    frames, repeated = sampled.finish()
    assert repeated == 2 and [int(f.max()) for f in frames] == [0, 1, 1, 1]
    late = SampledFrames(np.array([0, 0, 3]))  # nothing decoded before the first good frame: it stands in
    late.put(3, np.full((2, 2, 3), 7, np.uint8))
    frames, repeated = late.finish()
    assert repeated == 2 and [int(f.max()) for f in frames] == [7, 7, 7]


def test_clean_clip_reports_every_frame_decoded(tmp_path):
    path = write_index_video(tmp_path / "clip.mp4", 30)
    _, info = read_frames_pyav(str(path), 30)
    assert (info.decoded_frames, info.repeated_frames, info.corrupt_frames) == (30, 0, 0)


def full_sequential_decode(path) -> np.ndarray:
    """Every frame, front to back, no skipping: what sampled frames must equal."""
    import av

    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


@pytest.mark.parametrize("variable_rate", [False, True], ids=["cfr", "vfr"])
@pytest.mark.parametrize("clip", sorted(GOP_CLIPS))
def test_sampled_frames_equal_a_full_sequential_decode(tmp_path, clip, variable_rate):
    """Skipping reference-free frames and jumping to restart points never changes a kept frame: on B-frames,
    open and closed GOPs, HEVC, VP9 hidden frames, intra-only MJPEG, Annex B, variable frame rate."""
    path = write_gop_video(tmp_path / f"clip.{GOP_CLIPS[clip][1]}", 60, clip, variable_rate=variable_rate)
    reference = full_sequential_decode(path)
    assert len(reference) == 60
    for wanted in (1, 5, 16, 60, 75):
        frames, info = read_frames_pyav(str(path), wanted)
        indices = sample_indices(60, wanted)
        np.testing.assert_array_equal(frames, reference[indices], err_msg=f"{clip}: {wanted} of 60")
        assert info.total_frames == 60 and info.repeated_frames == 0 and info.corrupt_frames == 0


@pytest.mark.parametrize("clip", ["h264_bframes_closed_gop", "hevc_open_gop", "vp9_altref", "mjpeg_intra"])
def test_sampling_decodes_fewer_frames_than_the_clip_holds(tmp_path, clip):
    """The work saved is real: 5 of 60 frames from a clip with a restart point every 12 frames."""
    path = write_gop_video(tmp_path / f"clip.{GOP_CLIPS[clip][1]}", 60, clip)
    _, info = read_frames_pyav(str(path), 5)
    assert info.decoded_frames < 40, info


FORCED_CPU_FLAGS = """
import ctypes, hashlib, sys
import av
from av.video.reformatter import Interpolation, VideoReformatter
if sys.argv[2] == "off":  # FFmpeg's plain C paths: what any x86-64 CPU computes
    ctypes.CDLL(next(line.split()[-1] for line in open("/proc/self/maps") if "libavutil" in line)).av_force_cpu_flags(0)
from spectral.io.video import read_frames_pyav
kept, _ = read_frames_pyav(sys.argv[1], 16, 224, as_yuv=True)  # what the shards store, then what the model sees
frames = kept.data.tobytes() + kept.rgb().tobytes()
with av.open(sys.argv[1]) as container:
    first = next(container.decode(video=0))
fast = VideoReformatter().reformat(first, format="rgb24", width=224, height=224,
                                   interpolation=Interpolation.FAST_BILINEAR).to_ndarray()
print(hashlib.sha256(frames).hexdigest(), hashlib.sha256(fast.tobytes()).hexdigest())
"""


def test_decoded_and_resized_bytes_do_not_depend_on_ffmpegs_cpu_paths(tmp_path):
    """FFmpeg with every CPU flag forced off (av_force_cpu_flags(0): no SIMD in the decoder or swscale) gives
    the 4:2:0 frames and their RGB the SIMD run gives. Its non-exact fast bilinear scaler does change, which shows
    the flags bite."""
    import subprocess
    import sys

    path = write_gop_video(tmp_path / "clip.mp4", 60, "h264_bframes_closed_gop", width=320, height=240)
    runs = [subprocess.run([sys.executable, "-c", FORCED_CPU_FLAGS, str(path), flags], check=True,
                           capture_output=True, text=True).stdout.split() for flags in ("on", "off")]
    assert runs[0][0] == runs[1][0]
    assert runs[0][1] != runs[1][1]


def test_an_odd_size_is_a_clear_error(tmp_path):
    path = write_index_video(tmp_path / "clip.mp4", 5)
    with pytest.raises(ValueError, match="video.size must be even"):
        load_video(str(path), 2, 31)


def write_flat_clip(path, pix_fmt: str, codec: str = "libx264") -> None:
    """Two flat colour fields, white and a saturated red, coded as `pix_fmt` (yuvj420p: full range, as many phones
    and webcams record; rgb24: an RGB-coded source)."""
    import av

    image = np.zeros((96, 128, 3), np.uint8)
    image[:, :64] = 255
    image[:, 64:] = (200, 30, 60)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=10, options={"qp": "0"})
        stream.width, stream.height, stream.pix_fmt = 128, 96, pix_fmt
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        for packet in stream.encode(frame if pix_fmt == "rgb24" else frame.reformat(format=pix_fmt)):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.mark.parametrize("pix_fmt,codec", [("yuv420p", "libx264"), ("yuvj420p", "libx264"),
                                           ("rgb24", "libx264rgb")], ids=["limited", "full_range", "rgb"])
def test_scaled_frames_keep_the_sources_colours(tmp_path, pix_fmt, codec):
    """Kept 4:2:0 frames are limited range: a full-range or RGB-coded source is converted while scaling, not
    read back with the wrong range (which stretched the red field by ~13 levels)."""
    path = tmp_path / "flat.mp4"
    write_flat_clip(path, pix_fmt, codec)
    frames, _ = read_frames_pyav(str(path), 1, 32)
    assert np.abs(frames[0, 16, 8].astype(int) - 255).max() <= 3
    assert np.abs(frames[0, 16, 24].astype(int) - (200, 30, 60)).max() <= 3


def test_a_matrix_swscale_refuses_is_read_as_bt601(tmp_path):
    """swscale refuses BT.2020 constant-luminance frames (EOPNOTSUPP, which a stage would take for the machine's
    failure and stop on); such a clip is kept with the default matrix instead."""
    import av

    path = tmp_path / "bt2020cl.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.codec_context.colorspace = 10  # AVCOL_SPC_BT2020_CL, written to the VUI
        for _ in range(3):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.full((72, 64), 100, np.uint8),
                                                                   format="yuv420p")))
        container.mux(stream.encode())
    kept, _ = read_frames_pyav(str(path), 2, 32, as_yuv=True)
    assert kept.colorspace == 2 and kept.rgb().shape == (2, 32, 32, 3)
