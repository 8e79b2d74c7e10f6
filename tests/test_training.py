import json

import numpy as np
import polars as pl
import pytest
import torch

from spectral.evaluation import classification_metrics, evaluate
from spectral.inference import Predictor
from spectral.models.artifact import load_model
from spectral.training import TrainConfig, inverse_frequency_weights, train


@pytest.fixture(scope="module")
def trained(embedded, sensor_table, tmp_path_factory):
    out = tmp_path_factory.mktemp("model")
    cfg = TrainConfig(max_epochs=4, batch_size=4, precision="32-true", early_stopping_patience=10)
    summary = train(embedded, sensor_table, out, cfg, weights="packaged", dvclive_dir=out / "dvclive")
    return out, summary


def test_short_training_reduces_loss_and_writes_metrics(trained):
    out, summary = trained
    log = pl.read_csv(out / "csv_logs" / "metrics.csv").filter(pl.col("train_loss_epoch").is_not_null())
    losses = log["train_loss_epoch"].to_list()
    assert len(losses) == 4 and losses[-1] < losses[0]
    assert summary["epochs_run"] == 4 and summary["model_bytes"] < 100e6
    dvclive = json.loads((out / "dvclive" / "metrics.json").read_text())
    assert "val" in dvclive and "train" in dvclive


def test_artifact_round_trips_with_weights_only(trained):
    out, _ = trained
    payload = torch.load(out / "model.pt", weights_only=True)
    assert payload["format"] == "spectral-model/1"
    model, config = load_model(out / "model.pt")
    assert config["class_names"][3] == "Forma_Humanoide_Potencial" and len(config["sensor_features"]) == 15
    assert config["backbone"]["weights"].startswith("packaged:") and config["video"]["num_frames"] == 4
    assert model.video.frame_encoder is not None


def test_predict_schema_and_error_object_for_a_corrupt_event(trained, tiny_events, tmp_path):
    out, _ = trained
    broken = tmp_path / "event_broken"
    broken.mkdir()
    for f in (tiny_events / "event_00000").iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / "video.mp4").write_bytes(b"\x00" * 100)
    folders = [tiny_events / "event_00000", broken, tiny_events / "event_00001", tmp_path / "event_missing"]
    results = list(Predictor(out / "model.pt").predict(folders, batch_size=2))
    assert [r["event"] for r in results] == ["event_00000", "event_broken", "event_00001", "event_missing"]
    ok = results[0]
    assert set(ok) == {"event", "class", "confidence", "probabilities"}
    assert abs(sum(ok["probabilities"].values()) - 1) < 1e-4 and ok["confidence"] == max(ok["probabilities"].values())
    assert results[1]["error"].startswith("event_broken/video.mp4: cannot decode video")
    assert "does not exist" in results[3]["error"]


def test_evaluate_writes_metrics_ablation_and_plots(trained, embedded, sensor_table, tmp_path):
    out, _ = trained
    metrics = evaluate(out / "model.pt", embedded, sensor_table, tmp_path / "m.json", tmp_path / "plots")
    assert set(metrics["ablation"]) == {"all", "without_video", "without_audio", "without_sensors",
                                        "only_video", "only_audio", "only_sensors"}
    assert metrics["ablation"]["all"]["accuracy"] == metrics["accuracy"]
    for name in ("confusion.csv", "reliability.csv", "confusion_matrix.png", "reliability.png"):
        assert (tmp_path / "plots" / name).stat().st_size > 0


def test_classification_metrics_known_answer():
    probabilities = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    labels = np.array([0, 1, 1, 1])
    metrics = classification_metrics(probabilities, labels, ["a", "b"])
    assert metrics["accuracy"] == 0.75 and metrics["confusion_matrix"] == [[1, 0], [1, 2]]
    assert metrics["per_class"]["a"] == {"precision": 0.5, "recall": 1.0, "f1": 0.6667, "support": 1}
    assert metrics["ece"] == pytest.approx(0.25 * (0.1 + 0.2 + 0.3 + 0.6))  # one sample per bin: |acc - conf|


def test_class_weights_only_when_imbalanced():
    assert inverse_frequency_weights(torch.tensor([0, 1, 2, 3] * 5).numpy(), 4, "auto") is None
    weights = inverse_frequency_weights(torch.tensor([0] * 12 + [1, 2, 3]).numpy(), 4, "auto")
    assert weights[0] < 1 < weights[1]
    assert inverse_frequency_weights(torch.tensor([0] * 12 + [1]).numpy(), 4, "none") is None
