import hashlib
import json

import av
import numpy as np
import polars as pl
import pytest
import soundfile as sf

from spectral.events import CLASS_NAMES, load_event
from spectral.features.sensors import SENSOR_FEATURES, sensor_features
from spectral.stages.synth import SynthConfig, generate


def tree_digest(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_bytes_whatever_the_workers(tmp_path):
    cfg = SynthConfig(fps=10, duration_s=1.0, width=128, height=48)
    generate(tmp_path / "a", 3, seed=5, cfg=cfg, workers=1)
    generate(tmp_path / "b", 3, seed=5, cfg=cfg, workers=2)
    generate(tmp_path / "c", 3, seed=6, cfg=cfg, workers=1)
    assert tree_digest(tmp_path / "a") == tree_digest(tmp_path / "b")
    assert tree_digest(tmp_path / "a") != tree_digest(tmp_path / "c")


def test_files_are_real_media_with_requested_shapes(tiny_events):
    folder = sorted(tiny_events.iterdir())[0]
    event = load_event(folder)
    with av.open(str(event.video)) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        assert stream.codec_context.name == "h264"
    assert len(frames) == 20 and frames[0].shape == (64, 128, 3)
    audio, rate = sf.read(event.audio)
    assert rate == 44_100 and audio.shape == (88_200,) and sf.info(event.audio).subtype == "PCM_16"
    table = pl.read_csv(event.sensors)
    assert table.height == 100 and "humanoid_detected" in table.columns
    metadata = json.loads((folder / "metadata.json").read_text(encoding="utf-8"))
    assert metadata["classification"] in CLASS_NAMES


def test_class_signatures_differ_as_designed(tmp_path):
    """Interference oscillates the magnetometer; correlated/humanoid events spike magnetometer and audio together."""
    root = tmp_path / "ev"
    generate(root, 40, seed=3, cfg=SynthConfig(fps=5, duration_s=5.0, width=128, height=32, label_noise=0.0))
    by_class = {c: [] for c in range(4)}
    for folder in sorted(root.iterdir()):
        by_class[load_event(folder).label].append(sensor_features(folder / "sensors.csv"))
    feature = {name: i for i, name in enumerate(SENSOR_FEATURES)}

    def mean(c, name):
        return float(np.mean([f[feature[name]] for f in by_class[c]]))

    assert all(len(v) >= 3 for v in by_class.values())
    assert mean(1, "magnetic_std") > 2 * mean(0, "magnetic_std")
    assert mean(1, "bluetooth_mean") > 2 * mean(0, "bluetooth_mean")
    for c in (2, 3):
        assert mean(c, "corr_magnetic_audio") > mean(0, "corr_magnetic_audio") + 0.2
    assert mean(3, "humanoid_any") > mean(2, "humanoid_any")


def test_video_sizes_that_break_bit_exact_encoding_are_refused():
    for width in (64, 96, 320):
        with pytest.raises(ValueError, match="multiple of 128"):
            SynthConfig(width=width, height=64)


def test_the_ood_sets_writer_refuses_them_too(tmp_path):
    from spectral.stages.ood import _write_video

    with pytest.raises(ValueError, match="multiple of 128"):
        _write_video(tmp_path / "video.mp4", [np.zeros((240, 320, 3), np.uint8)] * 2, 30)


@pytest.mark.parametrize("stage", ["synth", "ood"])
def test_generated_video_is_x264s_c_code_alone_the_same_bytes_on_every_cpu(stage, tmp_path, monkeypatch):
    """x264's SIMD paths (chosen per CPU) encode lossy H.264 to other bytes than its C code: the demo's clips
    differed between an AVX2 and an AVX-512 machine. Each generator's clip must be the C code's bytes: the same
    event written again with every libx264 stream forced to `asm=0` is byte-identical."""
    from spectral.stages.ood import write_ood_event
    from spectral.stages.synth import write_event

    def write(folder):
        if stage == "synth":
            write_event(folder, 0, 3, SynthConfig(fps=10, duration_s=1.0, width=256, height=192))
        else:
            write_ood_event(folder, 0, 2, seconds=1.0, fps=10)
        return (folder / "video.mp4").read_bytes()

    shipped = write(tmp_path / "shipped")
    add_stream = av.container.OutputContainer.add_stream

    def c_only(self, codec, rate=None, options=None, **kwargs):
        return add_stream(self, codec, rate=rate, options={**(options or {}), "x264-params": "asm=0"}, **kwargs)

    monkeypatch.setattr(av.container.OutputContainer, "add_stream", c_only)
    assert write(tmp_path / "c_only") == shipped
