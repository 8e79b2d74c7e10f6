"""What modality dropout buys: the exported model with a branch absent vs a no-dropout model with that
branch replaced by its training mean, on the same events with paired bootstrap intervals.

Choose `train.modality_dropout` with `--split val`; report the chosen model with the default test split.

The baseline is trained in this run, on the demo's cached shards, with the same recipe and seed,
`train.modality_dropout` all zero and its checkpoint chosen on all-modality val_loss (it has no
absent-modality path to select for); the candidate is the pipeline's models/model.pt. A modality
"missing" means, for the candidate, its learned absent embedding (what `spectral predict` does); for
the baseline, the training-set mean of that branch's embedding (the best a model without an absent
embedding can do). The issue's bar: the candidate loses at most half the baseline's macro-F1.

    python bench/modality_dropout.py [--split val|test] [--model models/model.pt] [--embeddings data/embeddings]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import yaml
from common import write_result

from spectral.data import CachedShardDataModule
from spectral.evaluation import bootstrap_draws, macro_f1_draws, percentile_interval
from spectral.models.artifact import load_model
from spectral.models.modalities import MODALITIES
from spectral.posthoc import branch_outputs
from spectral.training import TrainConfig, train


def _f1(model, parts, present, labels, draws) -> tuple[float, np.ndarray]:
    with torch.no_grad():
        preds = model.classify(*parts, present).argmax(dim=1).numpy()
    point = macro_f1_draws(preds, labels, 4, np.arange(labels.size)[None, :])[0]
    return float(point), macro_f1_draws(preds, labels, 4, draws)


def train_model(embeddings: Path, sensors: Path, params: dict, rates: dict[str, float], out: Path,
                monitor: str | None = None) -> float:
    """Train with the pipeline's recipe and these dropout rates into out/model.pt; returns seconds."""
    cfg = replace(TrainConfig(**params["train"]), modality_dropout=rates, logger="none",
                  monitor=monitor or params["train"]["monitor"])
    started = time.perf_counter()
    train(embeddings, sensors, out, cfg, weights=params["video"]["weights"], dvclive_dir=out / "live")
    return time.perf_counter() - started


def measure(model_path: Path, embeddings: Path, sensors: Path, params: dict, split: str = "test") -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        # the baseline never meets an absent embedding, so it is selected on all-modality val_loss
        train_seconds = train_model(embeddings, sensors, params, dict.fromkeys(MODALITIES, 0.0), Path(tmp),
                                    monitor="val_loss")
        baseline, _ = load_model(Path(tmp) / "model.pt")
    return compare(baseline, model_path, embeddings, sensors, split) | {
        "baseline_train_seconds": round(train_seconds, 1), "candidate_dropout": params["train"]["modality_dropout"]}


def compare(baseline, model_path: Path, embeddings: Path, sensors: Path, split: str = "test") -> dict:
    candidate, _ = load_model(model_path)
    data = CachedShardDataModule(embeddings, sensors, batch_size=32)
    data.setup()
    rows = {}
    outputs = {}
    for name, model in (("baseline", baseline), ("candidate", candidate)):
        train_parts, _, _ = branch_outputs(model, data.loader("train"))
        test_parts, present, labels = branch_outputs(model, data.loader(split))
        outputs[name] = (train_parts, test_parts, present, labels)
    labels = outputs["candidate"][3]
    draws = bootstrap_draws(labels.size)
    base_train, base_test, base_present, _ = outputs["baseline"]
    cand_test, cand_present = outputs["candidate"][1], outputs["candidate"][2]
    base_all, base_all_draws = _f1(baseline, base_test, base_present, labels, draws)
    cand_all, cand_all_draws = _f1(candidate, cand_test, cand_present, labels, draws)
    rows["all"] = {"baseline": round(base_all, 4), "baseline_interval": percentile_interval(base_all_draws),
                   "candidate": round(cand_all, 4), "candidate_interval": percentile_interval(cand_all_draws)}
    for i, modality in enumerate(MODALITIES):
        replaced = [part if j != i else train_part.mean(dim=0, keepdim=True).expand_as(part)
                    for j, (part, train_part) in enumerate(zip(base_test, base_train, strict=True))]
        base_f1, base_draws = _f1(baseline, replaced, base_present, labels, draws)
        mask = cand_present.clone()
        mask[:, i] = False
        cand_f1, cand_draws = _f1(candidate, cand_test, mask, labels, draws)
        base_drop, cand_drop = base_all_draws - base_draws, cand_all_draws - cand_draws
        rows[f"without {modality}"] = {
            "baseline": round(base_f1, 4), "baseline_drop": round(base_all - base_f1, 4),
            "baseline_drop_interval": percentile_interval(base_drop),
            "candidate": round(cand_f1, 4), "candidate_drop": round(cand_all - cand_f1, 4),
            "candidate_drop_interval": percentile_interval(cand_drop),
            # > 0: the candidate lost less than half of what the baseline lost (paired over the same draws)
            "half_baseline_drop_minus_candidate_drop": percentile_interval(0.5 * base_drop - cand_drop),
        }
    return {"split": split, "events": int(labels.size), "rows": rows, "candidate": str(model_path),
            "baseline": "same recipe and seed, train.modality_dropout all 0"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("models/model.pt"))
    parser.add_argument("--embeddings", type=Path, default=Path("data/embeddings"))
    parser.add_argument("--sensors", type=Path, default=Path("data/sensors.parquet"))
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--split", choices=("val", "test"), default="test")
    args = parser.parse_args()
    params = yaml.safe_load(args.params.read_text(encoding="utf-8"))
    result = measure(args.model, args.embeddings, args.sensors, params, args.split)
    print(f"macro-F1 on {result['events']} {result['split']} events, 95 % paired bootstrap intervals")
    print(f"{'':<18}{'no dropout, mean':>20}{'drop':>22}{'dropout, absent':>18}{'drop':>22}{'half-drop margin':>22}")
    for name, row in result["rows"].items():
        if name == "all":
            print(f"{name:<18}{row['baseline']:>20.3f}{'':>22}{row['candidate']:>18.3f}")
            continue
        margin = row["half_baseline_drop_minus_candidate_drop"]
        print(f"{name:<18}{row['baseline']:>20.3f}{row['baseline_drop']:>8.3f} {row['baseline_drop_interval']!s:>13}"
              f"{row['candidate']:>18.3f}{row['candidate_drop']:>8.3f} {row['candidate_drop_interval']!s:>13}"
              f"{margin!s:>22}")
    write_result("modality_dropout" if args.split == "test" else "modality_dropout_val", result)


if __name__ == "__main__":
    main()
