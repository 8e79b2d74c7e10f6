"""The evaluate stage: metrics with intervals, calibration, OOD, the ablation, plots and the model card."""

import csv
import json

import numpy as np
import pytest
import torch
from cached import cached_split

from spectral.models.artifact import load_model
from spectral.stages.evaluate import bootstrap_intervals, classification_metrics, evaluate


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
