import csv
import errno
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import soundfile as sf
import torch
import yaml
from media import upright_marker_frame, write_rotated_video
from torch import nn
from torchmetrics.classification import MulticlassF1Score

import spectral.inference
import spectral.stages.train
from spectral.data import CachedShardDataModule
from spectral.events import MachineFailure
from spectral.features.sensors import SENSOR_FEATURES
from spectral.inference import Predictor
from spectral.io.audio import from_pcm16
from spectral.io.frames import load_frames
from spectral.models.artifact import load_model
from spectral.models.modalities import describe, presence_patterns
from spectral.runtime.keys import event_name
from spectral.runtime.shards import read_samples, shard_paths
from spectral.stages.decode import DecodeConfig, run_decode
from spectral.stages.embed import EmbedConfig, run_embed
from spectral.stages.evaluate import bootstrap_intervals, classification_metrics, evaluate
from spectral.stages.sensors import run_sensors
from spectral.stages.train import SpectralLightningModule, TrainConfig, inverse_frequency_weights, train

PROJECT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def trained(embedded, sensor_table, tmp_path_factory):
    out = tmp_path_factory.mktemp("model")
    cfg = TrainConfig(max_epochs=4, batch_size=4, precision="32-true", early_stopping_patience=10)
    summary = train(embedded, sensor_table, out, cfg, dvclive_dir=out / "dvclive")
    return out, summary


def test_short_training_reduces_loss_and_writes_metrics(trained):
    out, summary = trained
    log = pl.read_csv(out / "csv_logs" / "metrics.csv").filter(pl.col("train_loss_epoch").is_not_null())
    losses = log["train_loss_epoch"].to_list()
    assert len(losses) == 4 and losses[-1] < losses[0]
    assert summary["epochs_run"] == 4 and summary["model_bytes"] < 100e6
    dvclive = json.loads((out / "dvclive" / "metrics.json").read_text())
    assert "val" in dvclive and "train" in dvclive


def cached_split(embedded, sensor_table, split="test"):
    """(names, embeddings, waveforms, sensor features, labels) read straight from the shards and the
    Parquet table: an independent path from the DataModule that training and evaluation use."""
    rows = {r["event"]: r for r in pl.read_parquet(sensor_table).iter_rows(named=True)}
    names, parts = [], [[], [], [], []]
    for sample in read_samples(shard_paths(embedded, split)):
        name = event_name(sample["__key__"])
        names.append(name)
        sensors = [np.nan if rows[name][f] is None else rows[name][f] for f in SENSOR_FEATURES]
        for store, value in zip(parts, (sample["emb.npy"].astype(np.float32), from_pcm16(sample["audio.npy"]),
                                        np.array(sensors, np.float32), rows[name]["label"]), strict=True):
            store.append(value)
    return names, *(torch.from_numpy(np.stack(p)) for p in parts[:3]), np.array(parts[3])


def test_exported_model_gives_the_best_checkpoints_logits(trained, embedded, sensor_table):
    out, summary = trained
    payload = torch.load(out / "model.pt", weights_only=True)
    assert payload["format"] == "spectral-model/5"
    model, config = load_model(out / "model.pt")
    assert config["class_names"][3] == "Forma_Humanoide_Potencial" and len(config["sensor_features"]) == 15
    assert config["backbone"]["weights"].startswith("packaged:") and config["video"]["num_frames"] == 4
    best = SpectralLightningModule.load_from_checkpoint(out / "checkpoints" / summary["best_checkpoint"],
                                                        map_location="cpu").eval()
    _, video, audio, sensors, _ = cached_split(embedded, sensor_table, "val")
    with torch.no_grad():
        torch.testing.assert_close(model(video, audio, sensors), best.model(video, audio, sensors), rtol=0, atol=0)
    fitted = summary["posthoc"]
    assert float(model.temperature) == pytest.approx(fitted["temperature"], abs=1e-4) and bool(model.ood.fitted)
    assert float(model.label_noise) == pytest.approx(fitted["label_noise"], abs=1e-5)
    assert torch.isfinite(model.ood.threshold).all() and len(fitted["ood_thresholds"]) == 7
    biases = fitted["pattern_bias"]  # None where validation has too few events: no bias
    assert len(biases) == 6 and "all" not in biases and not model.pattern_bias[-1].any()
    for index, pattern in enumerate(presence_patterns()[:-1]):
        assert model.pattern_bias[index].tolist() == pytest.approx(biases[describe(pattern)] or [0.0] * 4)
    provenance = config["provenance"]
    assert len(provenance["embeddings_sha256"]) == 64 and len(provenance["sensors_sha256"]) == 64
    assert len(provenance["code"]["code_sha256"]) == 64 and provenance == summary["provenance"]
    training_py = Path(spectral.stages.train.__file__)
    git_blob = subprocess.run(["git", "hash-object", str(training_py)], capture_output=True, text=True).stdout.strip()
    assert provenance["code"]["git_blobs"]["spectral/stages/train.py"] == git_blob
    assert config["train_precision"] == "32-true"


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
    assert set(ok) == {"event", "class", "confidence", "probabilities", "missing", "missing_reasons", "ood_score",
                       "in_distribution", "warnings"}
    assert abs(sum(ok["probabilities"].values()) - 1) < 1e-4 and ok["confidence"] == max(ok["probabilities"].values())
    assert ok["missing"] == [] and isinstance(ok["in_distribution"], bool) and ok["ood_score"] >= 0
    # an undecodable video is an absent modality: classified from audio and sensors, with the reason
    assert results[1]["missing"] == ["video"] and results[1]["class"] in results[1]["probabilities"]
    assert results[1]["missing_reasons"]["video"].startswith("event_broken/video.mp4: cannot decode video")
    assert "does not exist" in results[3]["error"]
    assert results[4]["probabilities"] == results[2]["probabilities"]  # labels are ignored entirely


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
        for name, probability in result["probabilities"].items():
            assert abs(probability - float(row[name])) < 1e-4
    # the tiny test split is small: the validation events, through the same cached path, too
    model, _ = load_model(out / "model.pt")
    names, video, audio, sensors, _ = cached_split(embedded, sensor_table, "val")
    cached = model.predict(video, audio, sensors)["probabilities"]
    raw = torch.tensor([list(r["probabilities"].values())
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
        assert results[name]["class"] in results[name]["probabilities"], name
    assert results["event_x.270"]["warnings"] == ["audio: 5 sample(s) held NaN/inf and were replaced"]
    (imputed,) = results["event_poucos_sensores"]["warnings"]
    assert imputed.startswith("sensors: imputed accel_norm_mean, gyro_norm_mean")


def test_evaluate_writes_metrics_ablation_and_plots(trained, embedded, sensor_table, tmp_path):
    out, _ = trained
    metrics = evaluate(out / "model.pt", embedded, sensor_table, tmp_path / "m.json", tmp_path / "plots")
    patterns = ["without video", "without audio", "without sensors", "only video", "only audio", "only sensors"]
    assert sorted(metrics["ablation"]) == sorted(["all", *patterns, *(f"{p} (training mean)" for p in patterns)])
    # the same numbers from the shards read directly, not through evaluation's data module and branches
    model, _ = load_model(out / "model.pt")
    _, video, audio, sensors, labels = cached_split(embedded, sensor_table)
    with torch.no_grad():
        preds = model(video, audio, sensors).argmax(dim=1).numpy()
    assert metrics["test_events"] == labels.size > 0
    assert metrics["accuracy"] == round(float((preds == labels).mean()), 4) == metrics["ablation"]["all"]["accuracy"]
    confusion = np.zeros((4, 4), dtype=int)
    np.add.at(confusion, (labels, preds), 1)
    assert metrics["confusion_matrix"] == confusion.tolist()
    for name in ("confusion.csv", "reliability_before.csv", "reliability_after.csv", "ablation.csv",
                 "confusion_matrix.png", "reliability.png"):
        assert (tmp_path / "plots" / name).stat().st_size > 0
    low, high = metrics["intervals"]["accuracy"]
    assert low <= metrics["accuracy"] <= high


def test_classification_metrics_known_answer():
    probabilities = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    labels = np.array([0, 1, 1, 1])
    metrics = classification_metrics(probabilities, labels, ["a", "b"])
    assert metrics["accuracy"] == 0.75 and metrics["confusion_matrix"] == [[1, 0], [1, 2]]
    assert metrics["per_class"]["a"] == {"precision": 0.5, "recall": 1.0, "f1": 0.6667, "support": 1}
    assert metrics["ece"] == pytest.approx(0, abs=1e-9) and len(metrics["reliability"]) == 1  # one bin of 4


def test_calibration_bins_hold_at_least_ten_events_known_answer():
    """20 events: 10 at confidence 0.6 of which 3 right, 10 at 0.9 all right → bins of 10, ECE 0.5*0.3 + 0.5*0.1."""
    probabilities = np.array([[0.6, 0.4]] * 10 + [[0.9, 0.1]] * 10)
    labels = np.array([0] * 3 + [1] * 7 + [0] * 10)
    metrics = classification_metrics(probabilities, labels, ["a", "b"])
    assert [b["count"] for b in metrics["reliability"]] == [10, 10]
    assert metrics["ece"] == pytest.approx(0.2)


def test_bootstrap_intervals_cover_the_estimate_and_narrow_with_more_events():
    rng = np.random.default_rng(1)
    widths = []
    for n in (40, 400):
        labels = rng.integers(0, 4, n)
        preds = np.where(rng.random(n) < 0.8, labels, (labels + 1) % 4)  # ~80 % right
        intervals = bootstrap_intervals(preds, labels, 4)
        assert intervals == bootstrap_intervals(preds, labels, 4)  # seeded: same predictions, same bytes
        low, high = intervals["accuracy"]
        assert low <= (preds == labels).mean() <= high and intervals["macro_f1"][0] < intervals["macro_f1"][1]
        widths.append(high - low)
    assert widths[1] < widths[0] / 2  # ~1/sqrt(n): 10x the events, ~3x narrower
    assert bootstrap_intervals(labels, labels, 4)["accuracy"] == [1.0, 1.0]


def test_class_weights_only_when_imbalanced():
    assert inverse_frequency_weights(torch.tensor([0, 1, 2, 3] * 5).numpy(), 4, "auto") is None
    weights = inverse_frequency_weights(torch.tensor([0] * 12 + [1, 2, 3]).numpy(), 4, "auto")
    assert weights[0] < 1 < weights[1]
    assert inverse_frequency_weights(torch.tensor([0] * 12 + [1]).numpy(), 4, "none") is None


def test_ddp_on_two_cpu_processes_with_uneven_shards_matches_one_process(tiny_events, tmp_path):
    """`train.devices: 2` on the CPU (gloo) over deliberately uneven shards, as the stage script runs it:
    it must finish (equal batches per rank; a hang is what uneven WebDataset streams give), and the
    validation metrics it logged for its best checkpoint must be one process's evaluation of that
    checkpoint over every validation event once: loss within 1e-5, accuracy and macro-F1 exactly."""
    decoded, embedded, sensor_table = tmp_path / "decoded", tmp_path / "embeddings", tmp_path / "sensors.parquet"
    splits = {"train": 0.55, "val": 0.3, "test": 0.15}  # 12 / 3 / 1 events here
    report = run_decode(tiny_events, decoded, DecodeConfig(num_frames=2, size=64, workers=1, shard_events=2,
                                                           max_shard_events=4, splits=splits))
    run_sensors(tiny_events, sensor_table, splits)
    index = json.loads((decoded / "report.json").read_text())["index"]
    train_shard_sizes = [len(entry["accepted"]) for entry in index["train"]]
    assert len(train_shard_sizes) >= 2 and max(train_shard_sizes) >= 2 * min(train_shard_sizes), train_shard_sizes
    assert report["per_split"]["val"] % 2 == 1  # odd: the ranks' validation shares differ by one event
    run_embed(decoded, embedded, EmbedConfig(batch_frames=16, num_workers=0))
    params = yaml.safe_load((PROJECT / "params.yaml").read_text(encoding="utf-8"))
    params["train"].update(devices=2, accelerator="cpu", precision="32-true", max_epochs=3, batch_size=2,
                           logger="none", class_weights="balanced")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    result = subprocess.run([sys.executable, str(PROJECT / "pipeline" / "train.py"), str(embedded),
                             str(sensor_table), "models"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(PROJECT), "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-4000:]
    summary = json.loads((tmp_path / "models" / "train_summary.json").read_text())
    assert summary["devices"] == 2 and summary["class_weights"] is not None
    logged = summary["best_val_metrics"]
    module = SpectralLightningModule.load_from_checkpoint(
        tmp_path / "models" / "checkpoints" / summary["best_checkpoint"], map_location="cpu").eval()
    data = CachedShardDataModule(embedded, sensor_table, batch_size=100)
    data.setup()
    (video, audio, sensors, present, labels), = list(data.loader("val"))
    assert len(labels) == report["per_split"]["val"] and present.all()
    with torch.no_grad():
        logits = module(video, audio, sensors, present)
    weights = module.criterion.weight[labels]
    loss = float((nn.functional.cross_entropy(logits, labels, reduction="none") * weights).sum() / weights.sum())
    predicted = logits.argmax(dim=1)
    assert abs(logged["val_loss"] - loss) < 1e-5
    assert logged["val_acc"] == pytest.approx(float((predicted == labels).float().mean()), abs=1e-6)
    assert logged["val_f1"] == pytest.approx(float(MulticlassF1Score(4, average="macro")(predicted, labels)), abs=1e-6)


def test_every_rank_gets_the_same_number_of_training_batches_and_each_validation_event_once(embedded, sensor_table):
    data = CachedShardDataModule(embedded, sensor_table, batch_size=2)
    data.setup()
    for world in (2, 3):
        train = [len(data.loader("train", shuffle=True, ranks=(world, rank))) for rank in range(world)]
        assert len(set(train)) == 1
    val = data.used_events("val")
    seen = [val[i] for rank in range(2) for i in data.loader("val", ranks=(2, rank)).sampler]
    assert sorted(seen) == sorted(val) and len(val) == 2
    with pytest.raises(ValueError, match="the val split has 2 event"):
        data.loader("val", ranks=(3, 0))


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
        assert result["class"] in result["probabilities"] and abs(sum(result["probabilities"].values()) - 1) < 1e-4
        assert isinstance(result["in_distribution"], bool) and np.isfinite(result["ood_score"])
    assert results["event_no_audio"]["probabilities"] == results["event_empty_audio"]["probabilities"]
    assert results["event_no_audio"]["probabilities"] != results["event_00000"]["probabilities"]
    assert results["event_nothing"]["error"].startswith("event_nothing: no modality could be read")


def test_modality_dropout_is_the_expectation_over_one_absent_modality():
    present = torch.tensor([[True, True, True], [True, False, False]])  # the second event has only video
    variants = spectral.stages.train.dropout_variants(present, torch.tensor([0.2, 0.1, 0.3]))
    assert [w for w, _ in variants] == pytest.approx([0.4, 0.2, 0.1, 0.3])
    masks = [m.tolist() for _, m in variants]
    assert masks[0] == present.tolist()
    assert masks[1] == [[False, True, True], [True, False, False]]  # never left without any modality
    assert masks[3] == [[True, True, False], [True, False, False]]
    assert len(spectral.stages.train.dropout_variants(present, torch.tensor([0.0, 0.2, 0.0]))) == 2
    with pytest.raises(ValueError, match="sum to less than 1"):
        TrainConfig(modality_dropout={"video": 0.5, "audio": 0.4, "sensors": 0.1})
    with pytest.raises(ValueError, match="modality_dropout"):
        TrainConfig(modality_dropout={"video": 0.2})


def test_the_training_loss_with_modality_dropout_is_the_weighted_sum_of_its_variants():
    torch.manual_seed(0)
    module = SpectralLightningModule(len(SENSOR_FEATURES), 1280, modality_dropout={"video": 0.3, "audio": 0.0,
                                                                                     "sensors": 0.2}).eval()
    video, audio, sensors = torch.randn(4, 2, 1280), torch.randn(4, 22_050) * 0.1, torch.randn(4, 15)
    present, labels = torch.ones(4, 3, dtype=torch.bool), torch.tensor([0, 1, 2, 3])
    module.log = lambda *args, **kwargs: None  # no trainer attached
    with torch.no_grad():
        loss = module._step((video, audio, sensors, present, labels), "train")
        ce = [nn.functional.cross_entropy(module.model(video, audio, sensors, mask), labels)
              for mask in (present, torch.tensor([[False, True, True]] * 4), torch.tensor([[True, True, False]] * 4))]
    assert float(loss) == pytest.approx(float(0.5 * ce[0] + 0.3 * ce[1] + 0.2 * ce[2]), rel=1e-5)



def test_branch_heads_add_each_branchs_own_loss_on_the_events_that_have_it():
    torch.manual_seed(0)
    module = SpectralLightningModule(len(SENSOR_FEATURES), 1280, branch_loss=0.5).eval()
    plain = SpectralLightningModule(len(SENSOR_FEATURES), 1280).eval()
    plain.load_state_dict(module.state_dict())
    video, audio, sensors = torch.randn(4, 2, 1280), torch.randn(4, 22_050) * 0.1, torch.randn(4, 15)
    present, labels = torch.ones(4, 3, dtype=torch.bool), torch.tensor([0, 1, 2, 3])
    present[0, 1] = False  # no audio for the first event: the audio head never sees its placeholder
    module.log = plain.log = lambda *args, **kwargs: None
    with torch.no_grad():
        total = module._step((video, audio, sensors, present, labels), "train")
        base = plain._step((video, audio, sensors, present, labels), "train")
        parts = module.model.branch_embeddings(video, audio, sensors)
        heads = [nn.functional.cross_entropy(module.branch_heads[0](parts[0]), labels),
                 nn.functional.cross_entropy(module.branch_heads[1](parts[1][1:]), labels[1:]),
                 nn.functional.cross_entropy(module.branch_heads[2](parts[2]), labels)]
    assert float(total) == pytest.approx(float(base + 0.5 * sum(heads) / 3), rel=1e-5)
    exported = {k for k in module.model.state_dict()}
    assert not any("branch_heads" in k for k in exported)  # training only: not in the exported model


def test_evaluate_scores_an_ood_set_and_writes_the_headline(trained, embedded, sensor_table, tmp_path):
    from spectral.stages.ood import generate_ood

    out, _ = trained
    ood_dir = tmp_path / "ood"
    generate_ood(ood_dir, 4, seed=0)
    metrics = evaluate(out / "model.pt", embedded, sensor_table, tmp_path / "m.json", tmp_path / "plots",
                       headline_path=tmp_path / "headline.json", ood_dir=ood_dir, card_path=tmp_path / "card.md",
                       events_source="data/demo_events")
    ood = metrics["ood"]
    assert ood["ood_events"] == 4 and ood["test_events"] == metrics["test_events"]
    assert 0 <= ood["auroc"] <= 1 and set(ood["alternatives_auroc"]) == {"max_softmax", "energy"}
    assert sum(g["events"] for g in ood["groups"].values()) == 4
    assert set(ood["one_modality_ood"]) == {"video", "audio", "sensors"}
    headline = json.loads((tmp_path / "headline.json").read_text())
    assert headline["ood_auroc"] == ood["auroc"] and headline["nll"] == metrics["calibration"]["after"]["nll"]
    calibration = metrics["calibration"]
    assert calibration["after"]["ece"] == metrics["ece"] and calibration["temperature"] > 0
    for name in ("before", "after"):
        with open(tmp_path / "plots" / f"reliability_{name}.csv", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        assert [float(row["accuracy"]) for row in rows] == [b["accuracy"] for b in calibration[name]["reliability"]]
    with open(tmp_path / "plots" / "ood_scores.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    groups = [row["group"] for row in rows]
    assert groups.count("test split") == metrics["test_events"] and groups.count("OOD set") == 4
    # above 0 (the threshold) exactly the events the flag calls out of distribution
    flagged = sum(float(row["log10_score_over_threshold"]) > 0 for row in rows if row["group"] == "test split")
    assert abs(flagged / metrics["test_events"] - ood["false_alarm_rate"]) < 0.02
    card = (tmp_path / "card.md").read_text(encoding="utf-8")
    assert f"| accuracy | {metrics['accuracy']:.3f} |" in card and "**synthetic** demo events" in card
    assert f"AUROC {ood['auroc']:.3f}" in card and "| only audio |" in card


def test_calibration_benchmark_scores_each_choice_against_recorded_and_true_classes(trained, embedded, sensor_table,
                                                                                  tiny_events, monkeypatch):
    """bench/calibration.py's per-seed measurement on the tiny model: the three calibrations fitted on
    validation, scored on test against the recorded labels and the generator's true classes."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "bench"))
    from calibration import CALIBRATIONS, measure_seed

    out, _ = trained
    result = measure_seed(out / "model.pt", embedded, sensor_table, tiny_events)
    assert result["test_events"] > 0 and result["test_flipped_labels"] is not None
    assert len(result["test_flipped"]["ranks"]) == result["test_flipped_labels"]
    assert (result["none"]["temperature"], result["none"]["label_noise"]) == (1.0, 0.0)
    assert result["temperature"]["label_noise"] == 0.0 and result["temperature"]["temperature"] > 0
    for name in CALIBRATIONS:
        for target in ("test", "test_true_class"):
            assert set(result[name][target]) == {"nll", "brier", "ece"} and result[name][target]["nll"] > 0


def test_modality_dropout_benchmark_compares_the_candidate_with_each_trained_baseline(trained, embedded,
                                                                                     sensor_table, monkeypatch):
    """bench/modality_dropout.py at tiny size: both baselines trained with their overrides, every row scored
    for the candidate and each baseline, drops consistent with the rows, the verdict intervals present."""
    from dataclasses import asdict

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "bench"))
    from modality_dropout import BASELINES, measure

    out, _ = trained
    recipe = asdict(TrainConfig(max_epochs=1, batch_size=4, precision="32-true", branch_loss=0.3))
    params = {"train": recipe, "video": {"weights": "packaged"}}
    result = measure(out / "model.pt", embedded, sensor_table, params, "test")
    json.dumps(result)  # what write_result stores
    assert result["seeds"] == [42] and set(result["baselines"]) == set(BASELINES) == {"no dropout", "plain"}
    assert result["baselines"]["plain"]["overrides"]["branch_loss"] == 0.0
    rows = result["runs"][42]["rows"]
    assert set(rows) == {"all", "without video", "without audio", "without sensors"}
    assert set(rows["all"]) == {"candidate", "candidate, no pattern bias", *BASELINES}
    for name in ("without video", "without audio", "without sensors"):
        for model in rows["all"]:
            cell = rows[name][model]
            assert cell["drop"] == pytest.approx(rows["all"][model]["f1"] - cell["f1"], abs=2e-4)
            assert result["mean_drop_over_seeds"][name][model] == cell["drop"]
            assert len(cell["drop_interval"]) == 2
        assert all(len(rows[name][model]["half_drop_minus_candidate_drop"]) == 2 for model in BASELINES)


def test_flipped_label_ranks_known_answer(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "bench"))
    from calibration import flipped_label_ranks

    logits = np.array([[5.0, 0.0], [1.0, 0.0], [3.0, 0.0], [0.1, 0.0]])  # confidence order: 0, 2, 1, 3
    ranks = flipped_label_ranks(logits, np.array([False, True, False, True]))
    assert ranks == {"ranks": [2, 3], "events_above_all": 2, "chance_none_above": round(1 / 6, 4)}


def test_auroc_and_calibration_known_answers():
    from spectral.stages.evaluate import auroc, bootstrap_draws, calibration_table

    assert auroc(np.array([0.0, 1.0]), np.array([2.0, 3.0])) == 1.0
    assert auroc(np.array([2.0, 3.0]), np.array([0.0, 1.0])) == 0.0
    assert auroc(np.array([1.0, 1.0]), np.array([1.0])) == 0.5
    logits = np.log(np.array([[0.9, 0.1]] * 10 + [[0.6, 0.4]] * 10))  # 0.9 all right, 0.6: 3 of 10 right
    labels = np.array([0] * 10 + [0] * 3 + [1] * 7)
    table = calibration_table(logits, labels, 1.0, 0.0, bootstrap_draws(20))
    assert table["before"] == table["after"] and table["before"]["ece"] == pytest.approx(0.2)
    assert table["change_interval"] == {"nll": [0.0, 0.0], "brier": [0.0, 0.0], "ece": [0.0, 0.0]}
    softened = calibration_table(logits, labels, 2.0, 0.0, bootstrap_draws(20))  # 0.9 → 0.75: closer to 100 % right
    assert softened["after"]["nll"] != softened["before"]["nll"] and softened["change_interval"]["nll"][0] != 0
    floored = calibration_table(logits, labels, 1.0, 0.1, bootstrap_draws(20))  # 0.9 → 0.9·0.9 + 0.1·0.1 = 0.82
    assert floored["after"]["reliability"][-1]["bin_confidence"] == pytest.approx(0.82)
    expected_nll = -(10 * np.log(0.9) + 3 * np.log(0.6) + 7 * np.log(0.4)) / 20
    assert table["before"]["nll"] == pytest.approx(expected_nll, abs=1e-4)
    expected_brier = (10 * 2 * 0.1**2 + 3 * 2 * 0.4**2 + 7 * 2 * 0.6**2) / 20
    assert table["before"]["brier"] == pytest.approx(expected_brier, abs=1e-4)


def test_events_kept_without_a_modality_reach_training_masked(tiny_events, tmp_path, monkeypatch):
    """missing_modality: keep through decode, sensors, embed and the data module: an event without audio,
    one with an undecodable video and one without sensors are trained on with that modality masked
    (zeros / NaN placeholders, False in the mask), counted in the training summary; reject mode leaves
    them out with their reasons."""
    events = tmp_path / "events"
    shutil.copytree(tiny_events, events)
    (events / "event_00000" / "audio.wav").unlink()
    (events / "event_00001" / "video.mp4").write_bytes(b"\x00" * 64)
    (events / "event_00002" / "sensors.csv").write_bytes(b"")
    decoded, embedded, table = tmp_path / "decoded", tmp_path / "embedded", tmp_path / "sensors.parquet"
    splits = {"train": 0.6, "val": 0.4, "test": 0.0}
    run_decode(events, decoded, DecodeConfig(num_frames=2, size=64, workers=1, splits=splits,
                                             missing_modality="keep"))
    sensors_report = run_sensors(events, table, splits, missing_modality="keep")
    assert sensors_report["incomplete"] == ["event_00002"] and sensors_report["rejected_count"] == 0
    run_embed(decoded, embedded, EmbedConfig(batch_frames=3, num_workers=0))
    data = CachedShardDataModule(embedded, table, batch_size=64)
    data.setup()
    missing = [data.missing_modalities(split) for split in ("train", "val")]
    assert {m: sorted(a[m] + b[m]) for a, b in [missing] for m in a} == {
        "video": ["event_00001"], "audio": ["event_00000"], "sensors": ["event_00002"]}
    batches = [next(iter(data.loader(split))) for split in ("train", "val")]
    video, audio, sensors, present = (torch.cat([b[i] for b in batches]) for i in range(4))
    names = data.used_events("train") + data.used_events("val")
    assert len(names) == 16
    masks = {name: row.tolist() for name, row in zip(names, present, strict=True)}
    assert masks["event_00000"] == [True, False, True] and masks["event_00001"] == [False, True, True]
    assert masks["event_00002"] == [True, True, False] and masks["event_00004"] == [True, True, True]
    row = names.index("event_00000")
    assert not audio[row].any() and torch.isnan(sensors[names.index("event_00002")]).all()
    assert not video[names.index("event_00001")].any() and video.shape[1:] == (2, 1280)
    with torch.no_grad():
        module = SpectralLightningModule(len(SENSOR_FEATURES), 1280).eval()
        assert torch.isfinite(module(video, audio, sensors, present)).all()
    # and they train: modality dropout, branch heads, then the OOD statistics of every modality pattern
    cfg = TrainConfig(max_epochs=1, batch_size=8, precision="32-true", logger="none", branch_loss=0.3,
                      modality_dropout={"video": 0.15, "audio": 0.15, "sensors": 0.15}, monitor="val_robust_loss")
    loads, torch_load = [], torch.load

    def recording_load(*args, **kwargs):
        loads.append(kwargs.get("weights_only"))
        return torch_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    summary = train(embedded, table, tmp_path / "model", cfg, dvclive_dir=tmp_path / "live")
    assert loads and set(loads) == {True}  # the best checkpoint, a pickle, is read without running code
    counts = summary["missing_modalities"]
    assert sum(counts[split][m] for split in counts for m in counts[split]) == 3
    rejecting = run_sensors(events, tmp_path / "reject.parquet", splits)
    # reject mode: sensors rejects what it can see (a missing audio.wav, an empty sensors.csv); the
    # undecodable video is decode's rejection
    assert [r["event"] for r in rejecting["rejected"]] == ["event_00000", "event_00002"]


def test_a_member_missing_without_decode_saying_so_is_an_error_not_a_masked_modality(embedded, sensor_table,
                                                                                       tmp_path):
    """Only decode's `missing_modality: keep` may leave a member out, and it records why in the sample's json;
    a shard that lacks one otherwise (a bug, a hand-edited file) must stop training, not train masked."""
    import tarfile

    copy = tmp_path / "embeddings"
    shutil.copytree(embedded, copy)
    shard = shard_paths(copy, "train")[0]
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    dropped = next(m.name for m, _ in members if m.name.endswith(".emb.npy"))
    with tarfile.open(shard, "w") as tar:
        for member, data in members:
            if member.name != dropped:
                tar.addfile(member, io.BytesIO(data))
    manifest = json.loads((copy / "manifest.json").read_text())  # the edit is recorded: only the member lacks
    manifest["index"][shard.name]["size"] = shard.stat().st_size
    (copy / "manifest.json").write_text(json.dumps(manifest))
    data = CachedShardDataModule(copy, sensor_table)
    data.setup()
    dataset = data.datasets["train"]
    position = dataset.names.index(event_name(dropped.split(".")[0]))
    with pytest.raises(KeyError, match="did not record it missing"):
        dataset[position]
