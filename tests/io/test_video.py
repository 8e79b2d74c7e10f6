import numpy as np
import pytest
from media import CODECS, frame_index, upright_marker_frame, write_index_video, write_rotated_video

from spectral.io.video import _assemble, load_video, read_frames_decord, read_frames_pyav, sample_indices


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
    kept = {0: np.zeros((2, 2, 3), np.uint8), 5: np.ones((2, 2, 3), np.uint8)}
    frames, repeated = _assemble(kept, np.array([0, 5, 7, 9]))
    assert repeated == 2 and [int(f.max()) for f in frames] == [0, 1, 1, 1]


def test_clean_clip_reports_every_frame_decoded(tmp_path):
    path = write_index_video(tmp_path / "clip.mp4", 30)
    _, info = read_frames_pyav(str(path), 4)
    assert (info.decoded_frames, info.repeated_frames, info.corrupt_frames) == (30, 0, 0)
