"""`spectral predict` (spectral.inference) on raw event folders: schema, errors, orientation, missing modalities."""

import csv
import errno
import shutil
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
from cached import cached_split
from media import upright_marker_frame, write_rotated_video

import spectral.inference
import spectral.stages.train
from spectral.events import MachineFailure
from spectral.inference import Predictor
from spectral.io.frames import load_frames
from spectral.models.artifact import load_model
from spectral.runtime.keys import event_name
from spectral.runtime.shards import read_samples
from spectral.stages.decode import DecodeConfig, run_decode
from spectral.stages.embed import EmbedConfig, run_embed
from spectral.stages.evaluate import evaluate
from spectral.stages.ood import write_ood_event


def test_predict_schema_and_error_object_for_a_corrupt_event(trained, tiny_events, tmp_path):
    out, _ = trained
    broken = tmp_path / "event_broken"
    broken.mkdir()
    for f in (tiny_events / "event_00000").iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / "video.mp4").write_bytes(b"\x00" * 100)
    folders = [tiny_events / "event_00000", broken, tiny_events / "event_00001", tmp_path / "event_missing"]
    relabelled = tmp_path / "event_relabelled"
    shutil.copytree(tiny_events / "event_00001", relabelled)
    (relabelled / "metadata.json").write_text('{"classification": "Fantasma"}', encoding="utf-8")
    folders.append(relabelled)
    results = list(Predictor(out / "model.pt").predict(folders, batch_size=2))
    assert [r["event"] for r in results] == ["event_00000", "event_broken", "event_00001", "event_missing",
                                             "event_relabelled"]
    ok = results[0]
    assert set(ok) == {"event", "decision", "class", "confidence", "probabilities", "model_probabilities", "missing",
                       "missing_reasons", "ood_score", "ood_threshold", "warnings"}
    assert abs(sum(ok["model_probabilities"].values()) - 1) < 1e-4
    assert ok["missing"] == [] and ok["decision"] in ("classified", "out_of_distribution") and ok["ood_score"] >= 0
    # an undecodable video is an absent modality: classified from audio and sensors, with the reason
    assert results[1]["missing"] == ["video"] and results[1]["class"] in results[1]["model_probabilities"]
    assert results[1]["missing_reasons"]["video"].startswith("event_broken/video.mp4: cannot decode video")
    assert "does not exist" in results[3]["error"]
    assert results[4]["model_probabilities"] == results[2]["model_probabilities"]  # labels are ignored entirely


def test_predict_refuses_a_backend_that_cannot_be_imported_before_any_event(trained, monkeypatch):
    """Not "video missing" on every answer: the setup is broken, and the predictor says so when it starts."""
    model, config = load_model(trained[0] / "model.pt")
    monkeypatch.setitem(sys.modules, "decord", None)
    with pytest.raises(RuntimeError, match="decord cannot be imported"):
        Predictor.for_model(model, {**config, "video": {**config["video"], "backend": "decord"}})


def test_predict_retries_an_io_error_and_never_answers_sensors_missing_for_it(trained, tiny_events, monkeypatch):
    real, calls = spectral.inference.sensor_features, []

    def failing(path, times):
        calls.append(path)
        if calls.count(path) <= times:
            raise OSError(errno.EIO, "Input/output error")
        return real(path)

    predictor = Predictor(trained[0] / "model.pt")
    folder = tiny_events / "event_00000"
    (expected,) = predictor.predict([folder])
    monkeypatch.setattr(spectral.inference, "sensor_features", lambda path: failing(path, 1))
    assert list(predictor.predict([folder])) == [expected]  # retried once: the same answer
    calls.clear()
    monkeypatch.setattr(spectral.inference, "sensor_features", lambda path: failing(path, 2))
    with pytest.raises(MachineFailure, match="predict: event_00000 failed twice with OSError"):
        list(predictor.predict([folder]))


def test_predict_on_raw_events_agrees_with_evaluate(trained, tiny_events, embedded, sensor_table, tmp_path):
    """Raw folders through `spectral predict` vs evaluate's per-event predictions on the cached shards: the same
    classes, and probabilities within the fp16 embedding cache's rounding (measured here: 1.5e-6 at most)."""
    out, _ = trained
    evaluate(out / "model.pt", embedded, sensor_table, tmp_path / "m.json", tmp_path / "plots")
    rows = list(csv.DictReader(open(tmp_path / "plots" / "predictions.csv", encoding="utf-8")))
    names = [r["event"] for r in rows]
    assert sorted(names) == sorted(cached_split(embedded, sensor_table)[0]) and names
    predictor = Predictor(out / "model.pt")
    results = list(predictor.predict([tiny_events / n for n in names], batch_size=3))
    assert [r["event"] for r in results] == names and all("error" not in r for r in results)
    assert [r["class"] for r in results] == [r["predicted"] for r in rows]
    for result, row in zip(results, rows, strict=True):
        for name, probability in result["model_probabilities"].items():
            assert abs(probability - float(row[name])) < 1e-4
    # the tiny test split is small: the validation events, through the same cached path, too
    model, _ = load_model(out / "model.pt")
    names, video, audio, sensors, _ = cached_split(embedded, sensor_table, "val")
    cached = model.predict(video, audio, sensors)["probabilities"]
    raw = torch.tensor([list(r["model_probabilities"].values())
                        for r in predictor.predict([tiny_events / n for n in names], batch_size=3)])
    assert raw.argmax(dim=1).tolist() == cached.argmax(dim=1).tolist() and len(names) > 1
    assert (raw - cached).abs().max() < 1e-4


@pytest.mark.parametrize("degrees", [90, 180, 270])
def test_predict_sees_phone_video_upright(trained, tiny_events, tmp_path, degrees):
    """The same scene stored upright, and stored turned with a display matrix as phones do: predict must
    prepare the same frames (up to x264 noise) and so the same probabilities."""
    out, _ = trained
    predictor = Predictor(out / "model.pt")
    upright = upright_marker_frame(width=128, height=64)
    clips = {}
    for name, rotation in (("event_upright", 0), ("event_phone", degrees)):
        folder = tmp_path / name
        shutil.copytree(tiny_events / "event_00001", folder)
        write_rotated_video(folder / "video.mp4", rotation, n_frames=8, upright=upright)
        clips[name] = predictor.prepare(folder).frames.astype(int)
    assert np.abs(clips["event_upright"] - clips["event_phone"]).mean() < 3
    assert clips["event_phone"][:, :40, :40].mean() > 200  # the marker is top-left, as a player shows it
    first, second = predictor.predict([tmp_path / "event_upright", tmp_path / "event_phone"])
    assert first["class"] == second["class"]


def test_a_zoo_of_user_recordings_goes_through_decode_embed_and_predict(trained, tiny_events, tmp_path):
    """Formats and names the generator never makes: HEVC portrait phone video, VP9 in a file called
    video.mp4, a 270-degree clip, 24-bit 48 kHz stereo, 8-bit 8 kHz, float WAV with NaN, a truncated clip,
    a sensors.csv with two columns, a label without accents. Every valid event comes through under its
    own name, upright, with what was repaired in its warnings; the broken one is a reason, not a crash."""
    out, _ = trained
    zoo = tmp_path / "zoo"
    upright = upright_marker_frame(width=128, height=64)
    specs = {  # name: (video codec, container, rotation, wav rate, wav subtype)
        "event_2026.11.27_porão": ("libx265", "mp4", 90, 48_000, "PCM_24"),
        "event_sala de estar 3": ("libvpx-vp9", "webm", 0, 8_000, "PCM_U8"),
        "event_x.270": ("libx264", "mp4", 270, 44_100, "FLOAT"),
        "event_poucos_sensores": ("libx264", "mp4", 0, 44_100, "PCM_16"),
        "event_cortado": ("libx264", "mp4", 0, 44_100, "PCM_16"),
    }
    for name, (codec, container, degrees, rate, subtype) in specs.items():
        folder = zoo / name
        shutil.copytree(tiny_events / "event_00000", folder)
        (folder / "metadata.json").write_text('{"classification": "ruido_ambiente"}', encoding="utf-8")
        write_rotated_video(folder / "video.mp4", degrees, n_frames=12, upright=upright, codec=codec,
                            container_format=container)
        wave = np.tile((0.3 * np.sin(np.arange(rate) / 7.0))[:, None], (1, 2 if rate == 48_000 else 1))
        if subtype == "FLOAT":
            wave[10:15] = np.nan
        sf.write(folder / "audio.wav", wave, rate, subtype=subtype)
    video = zoo / "event_cortado" / "video.mp4"
    video.write_bytes(video.read_bytes()[: video.stat().st_size // 2])
    (zoo / "event_poucos_sensores" / "sensors.csv").write_text("timestamp,magnetic_magnitude\n1,45\n2,47\n3,44\n")

    decoded = tmp_path / "decoded"
    report = run_decode(zoo, decoded, DecodeConfig(num_frames=4, workers=1, max_rejected_fraction=1.0,
                                                          missing_modality="reject"))
    assert sorted(report["accepted"]) == sorted(set(specs) - {"event_cortado"})
    (rejection,) = report["rejected"]
    assert rejection["reason"].startswith("event_cortado/video.mp4: cannot decode video")
    samples = {event_name(s["__key__"]): s for p in decoded.glob("*.tar") for s in read_samples([p])}
    for name, sample in samples.items():
        frames = load_frames(sample)
        assert frames[:, :40, :40].mean() > 180 and frames[:, 120:, 120:].mean() < 60, name  # upright
        assert sample["json"]["video"]["rotation"] == specs[name][2] and "label" not in sample["json"]
    assert samples["event_x.270"]["json"]["audio"]["repaired_samples"] == 5
    embedded = tmp_path / "embedded"
    run_embed(decoded, embedded, EmbedConfig(batch_frames=6))
    assert sorted(event_name(s["__key__"]) for p in embedded.glob("*.tar") for s in read_samples([p])) == \
        sorted(samples)

    results = {r["event"]: r for r in Predictor(out / "model.pt").predict(sorted(zoo.iterdir()), batch_size=2)}
    assert set(results) == set(specs)
    # decode rejects the truncated clip; predict classifies the event from its audio and sensors and says so
    assert results["event_cortado"]["missing"] == ["video"]
    reason = results["event_cortado"]["missing_reasons"]["video"]
    assert reason.startswith("event_cortado/video.mp4: cannot decode video")
    for name in samples:
        assert results[name]["class"] in results[name]["model_probabilities"], name
    assert results["event_x.270"]["warnings"] == ["audio: 5 sample(s) held NaN/inf and were replaced"]
    (imputed,) = results["event_poucos_sensores"]["warnings"]
    assert imputed.startswith("sensors: imputed accel_norm_mean, gyro_norm_mean")


def test_predict_classifies_events_with_missing_modalities_and_says_which(trained, tiny_events, tmp_path):
    """No audio.wav, an empty one, an undecodable one, no sensors.csv, only sensors: a class, probabilities,
    `missing` with the reason, the OOD score and flag. Nothing readable at all is an error object."""
    out, _ = trained
    source = tiny_events / "event_00000"

    def event(name, drop=(), empty=(), garbage=()):
        folder = tmp_path / name
        shutil.copytree(source, folder)
        for file in drop:
            (folder / file).unlink()
        for file in empty:
            (folder / file).write_bytes(b"")
        for file in garbage:
            (folder / file).write_bytes(b"RIFF\x00\x00garbage" * 10)
        return folder

    folders = [event("event_no_audio", drop=["audio.wav"]), event("event_empty_audio", empty=["audio.wav"]),
               event("event_bad_audio", garbage=["audio.wav"]), event("event_no_sensors", drop=["sensors.csv"]),
               event("event_only_sensors", drop=["audio.wav", "video.mp4"]),
               event("event_nothing", drop=["audio.wav", "video.mp4", "sensors.csv"]), source]
    results = {r["event"]: r for r in Predictor(out / "model.pt").predict(folders, batch_size=3)}
    expected = {"event_no_audio": (["audio"], "event_no_audio/audio.wav: file is missing"),
                "event_empty_audio": (["audio"], "event_empty_audio/audio.wav: file is empty"),
                "event_bad_audio": (["audio"], "event_bad_audio/audio.wav: cannot decode audio"),
                "event_no_sensors": (["sensors"], "event_no_sensors/sensors.csv: file is missing"),
                "event_only_sensors": (["video", "audio"], "event_only_sensors/video.mp4: file is missing")}
    for name, (missing, reason) in expected.items():
        result = results[name]
        assert result["missing"] == missing, result
        assert result["missing_reasons"][missing[0]].startswith(reason)
        probabilities = result["model_probabilities"]
        assert result["class"] in probabilities and abs(sum(probabilities.values()) - 1) < 1e-4
        assert result["decision"] in ("classified", "out_of_distribution") and np.isfinite(result["ood_score"])
    assert results["event_no_audio"]["model_probabilities"] == results["event_empty_audio"]["model_probabilities"]
    assert results["event_no_audio"]["model_probabilities"] != results["event_00000"]["model_probabilities"]
    assert results["event_nothing"]["error"].startswith("event_nothing: no modality could be read")


@pytest.fixture(scope="module")
def unfamiliar_events(tmp_path_factory):
    """Media the demo generator never makes (the ood stage's): a photo filmed by a moving camera with speech-like
    audio and the sensors of a walk; FFmpeg's testsrc2 with a pure tone and a magnet next to the phone."""
    root = tmp_path_factory.mktemp("unfamiliar")
    folders = [root / f"event_unfamiliar_{index}" for index in (0, 14)]
    for index, folder in zip((0, 14), folders, strict=True):
        write_ood_event(folder, 0, index)
    return folders


def test_an_event_like_the_training_data_is_classified_with_its_confidence(trained, tiny_events):
    model, _ = load_model(trained[0] / "model.pt")
    results = list(Predictor(trained[0] / "model.pt").predict(sorted(tiny_events.iterdir())))
    classified = [r for r in results if r["decision"] == "classified"]
    assert len(classified) >= len(results) // 2, [r["decision"] for r in results]
    for result in classified:
        assert result["ood_score"] <= result["ood_threshold"]
        assert result["probabilities"] == result["model_probabilities"]
        assert result["confidence"] == max(result["probabilities"].values())
        assert result["class"] == max(result["probabilities"], key=result["probabilities"].get)


def test_media_unlike_the_training_data_is_out_of_distribution_without_a_confidence(trained, unfamiliar_events):
    results = list(Predictor(trained[0] / "model.pt").predict(unfamiliar_events))
    for result in results:
        assert result["decision"] == "out_of_distribution", result
        assert result["ood_score"] > result["ood_threshold"]
        assert result["confidence"] is None and result["probabilities"] is None
        # the class is still there for whoever wants it, with the model's own numbers under their own name
        assert result["class"] == max(result["model_probabilities"], key=result["model_probabilities"].get)


def test_answers_are_not_saturated_on_unfamiliar_media_or_training_data(trained, tiny_events, unfamiliar_events):
    """No answer at the 1 - ε ceiling (softmax(z/T) = 1 to six decimals), and two different unfamiliar events get
    different answers: a saturated softmax gives every far-away input one and the same vector."""
    model, _ = load_model(trained[0] / "model.pt")
    ceiling = round(1 - float(model.label_noise), 6)
    results = list(Predictor(trained[0] / "model.pt").predict([*sorted(tiny_events.iterdir()), *unfamiliar_events]))
    vectors = [np.array(list(r["model_probabilities"].values())) for r in results]
    assert max(v.max() for v in vectors) < ceiling, [v.max() for v in vectors]
    first, second = vectors[-2:]
    assert np.abs(first - second).max() > 1e-3, (first, second)
