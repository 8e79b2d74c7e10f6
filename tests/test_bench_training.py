"""bench/calibration.py and bench/modality_dropout.py measured on the tiny model."""

import json
from pathlib import Path

import numpy as np
import pytest

from spectral.stages.train import TrainConfig

BENCH = str(Path(__file__).resolve().parents[1] / "bench")


def test_calibration_benchmark_scores_each_choice_against_recorded_and_true_classes(trained, embedded, sensor_table,
                                                                                  tiny_events, monkeypatch):
    """bench/calibration.py's per-seed measurement on the tiny model: the three calibrations fitted on
    validation, scored on test against the recorded labels and the generator's true classes."""
    monkeypatch.syspath_prepend(BENCH)
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

    monkeypatch.syspath_prepend(BENCH)
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
    monkeypatch.syspath_prepend(BENCH)
    from calibration import flipped_label_ranks

    logits = np.array([[5.0, 0.0], [1.0, 0.0], [3.0, 0.0], [0.1, 0.0]])  # confidence order: 0, 2, 1, 3
    ranks = flipped_label_ranks(logits, np.array([False, True, False, True]))
    assert ranks == {"ranks": [2, 3], "events_above_all": 2, "chance_none_above": round(1 / 6, 4)}
