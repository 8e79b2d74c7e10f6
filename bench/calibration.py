"""Which calibration the exported model should carry: none, temperature scaling alone, or temperature with
a label-noise floor (spectral.models.calibration), each fitted on the validation split by NLL and scored
on the test split, for several training seeds (one seed's test split is too few events to rank them).

Seeds other than the pipeline's are trained in this run with the pipeline's recipe (train.* params);
the pipeline's own seed uses models/model.pt. Where the events come from the demo's generator, the
generator's true class (metadata.json `synthetic.true_class`) also scores each calibration against the
truth rather than the flipped labels.

    python bench/calibration.py [--seeds 42 1 2 3 4] [--model models/model.pt]
"""

from __future__ import annotations

import json
import tempfile
from math import comb
from pathlib import Path

import numpy as np
import torch
import yaml
from common import pipeline_outputs_parser, write_result
from modality_dropout import train_model

from spectral.data import CachedShardDataModule
from spectral.models.artifact import load_model
from spectral.models.posthoc import branch_outputs, fit_calibration
from spectral.stages.evaluate import calibrated, calibration_scores, reliability_bins

CALIBRATIONS = ("none", "temperature", "temperature + label noise")


def _scores(probabilities: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    scores = calibration_scores(probabilities, labels)
    return {"nll": round(float(scores["nll"].mean()), 4), "brier": round(float(scores["brier"].mean()), 4),
            "ece": round(float(reliability_bins(scores["confidence"], scores["correct"])[1]), 4)}


def _true_labels(events: list[str], events_dir: Path, class_names: list[str]) -> np.ndarray | None:
    truth = []
    for event in events:
        path = events_dir / event / "metadata.json"
        synthetic = json.loads(path.read_text(encoding="utf-8")).get("synthetic", {}) if path.exists() else {}
        if "true_class" not in synthetic:
            return None
        truth.append(class_names.index(synthetic["true_class"]))
    return np.array(truth)


def flipped_label_ranks(logits: np.ndarray, flipped: np.ndarray) -> dict:
    """Where the mislabeled test events sit among the uncalibrated confidences (0 = most confident),
    and the chance that none would sit above the highest of them were they placed at random: a floor
    for label noise lowers every top confidence, and only mislabeled events up there make that pay."""
    confidence = calibrated(logits, 1.0, 0.0).max(axis=1)
    ranks = np.flatnonzero(flipped[np.argsort(-confidence, kind="stable")])
    n, k = flipped.size, int(ranks.min()) if ranks.size else flipped.size
    return {"ranks": ranks.tolist(), "events_above_all": k,
            "chance_none_above": round(comb(n - k, ranks.size) / comb(n, ranks.size), 4) if ranks.size else None}


def measure_seed(model_path: Path, embeddings: Path, sensors: Path, events_dir: Path) -> dict:
    model, config = load_model(model_path)
    data = CachedShardDataModule(embeddings, sensors, batch_size=32)
    data.setup()
    logits, labels = {}, {}
    for split in ("val", "test"):
        parts, present, labels[split] = branch_outputs(model, data.loader(split))
        with torch.no_grad():
            logits[split] = model.classify(*parts, present).double()
    fits = {"none": (1.0, 0.0),
            "temperature": fit_calibration(logits["val"], torch.from_numpy(labels["val"]), label_noise=False),
            "temperature + label noise": fit_calibration(logits["val"], torch.from_numpy(labels["val"]))}
    truth = _true_labels(data.used_events("test"), events_dir, config["class_names"])
    result = {"val_events": int(labels["val"].size), "test_events": int(labels["test"].size),
              "test_flipped_labels": None if truth is None else int((truth != labels["test"]).sum())}
    if truth is not None:
        result["test_flipped"] = flipped_label_ranks(logits["test"].numpy(), truth != labels["test"])
    for name, (temperature, label_noise) in fits.items():
        probabilities = calibrated(logits["test"].numpy(), temperature, label_noise)
        result[name] = {"temperature": round(temperature, 4), "label_noise": round(label_noise, 5),
                        "test": _scores(probabilities, labels["test"])}
        if truth is not None:
            result[name]["test_true_class"] = _scores(probabilities, truth)
    return result


def main() -> None:
    parser = pipeline_outputs_parser(__doc__)
    parser.add_argument("--seeds", type=int, nargs="*", default=[42, 1, 2, 3, 4])
    args = parser.parse_args()
    params = yaml.safe_load(args.params.read_text(encoding="utf-8"))
    events_dir = Path(params["data"]["events"])
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            model_path = args.model
            if seed != params["train"]["seed"]:
                seeded = {**params, "train": {**params["train"], "seed": seed}}
                train_model(args.embeddings, args.sensors, seeded, params["train"]["modality_dropout"],
                            Path(tmp) / str(seed))
                model_path = Path(tmp) / str(seed) / "model.pt"
            runs[seed] = measure_seed(model_path, args.embeddings, args.sensors, events_dir)
    targets = ["test"] + (["test_true_class"] if all("test_true_class" in r["none"] for r in runs.values()) else [])
    mean = {target: {name: {metric: round(float(np.mean([r[name][target][metric] for r in runs.values()])), 4)
                            for metric in ("nll", "brier", "ece")} for name in CALIBRATIONS} for target in targets}
    first = next(iter(runs.values()))
    print(f"fitted on {first['val_events']} validation events, scored on {first['test_events']} test events; "
          f"ECE over equal-mass bins of >= 10 events")
    if flipped := first.get("test_flipped"):
        print(f"test labels flipped by the generator: {first['test_flipped_labels']}, none among the "
              f"{flipped['events_above_all']} most confident events of seed {args.seeds[0]} "
              f"(chance at random {flipped['chance_none_above']})")
    print(f"{'seed':<6}{'calibration':<27}{'T':>7}{'noise':>8}" + "".join(
        f"{target + ' ' + metric:>22}" for target in targets for metric in ("nll", "brier", "ece")))
    for seed, run in runs.items():
        for name in CALIBRATIONS:
            row = run[name]
            print(f"{seed:<6}{name:<27}{row['temperature']:>7.3f}{row['label_noise']:>8.4f}" + "".join(
                f"{row[target][metric]:>22.4f}" for target in targets for metric in ("nll", "brier", "ece")))
    for name in CALIBRATIONS:
        print(f"{'mean':<6}{name:<27}{'':>15}" + "".join(
            f"{mean[target][name][metric]:>22.4f}" for target in targets for metric in ("nll", "brier", "ece")))
    write_result("calibration", {"seeds": list(runs), "mean_over_seeds": mean, "runs": runs,
                                 "recipe": {k: params["train"][k] for k in ("modality_dropout", "monitor",
                                                                           "branch_loss")}})


if __name__ == "__main__":
    main()
