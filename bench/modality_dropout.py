"""What modality dropout buys: the exported model with a branch absent vs a no-dropout model with that
branch replaced by its training mean, on the same events with paired bootstrap intervals.

Choose `train.modality_dropout` with `--split val`; report the chosen model with the default test split.

The baseline is trained in this run, on the demo's cached shards, with the same recipe and seed,
`train.modality_dropout` all zero and its checkpoint chosen on all-modality val_loss (it has no
absent-modality path to select for); the candidate is the pipeline's models/model.pt. A modality
"missing" means, for the candidate, its learned absent embedding (what `spectral predict` does); for
the baseline, the training-set mean of that branch's embedding (the best a model without an absent
embedding can do). The issue's bar: the candidate loses at most half the baseline's macro-F1.

    python bench/modality_dropout.py [--split val|test] [--seeds 42 1 2] [--model models/model.pt]
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import yaml
from common import pipeline_outputs_parser, write_result

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


def measure(model_path: Path, embeddings: Path, sensors: Path, params: dict, split: str = "test",
            seeds: tuple[int, ...] = ()) -> dict:
    """Per training seed, a baseline and a candidate trained with it (the pipeline's own seed uses
    `model_path` as its candidate); how much a model relies on one modality changes from seed to seed,
    so the verdict is the mean drop over the seeds."""
    runs, seconds = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds or (params["train"]["seed"],):
            seeded = {**params, "train": {**params["train"], "seed": seed}}
            # the baseline never meets an absent embedding, so it is selected on all-modality val_loss
            seconds.append(train_model(embeddings, sensors, seeded, dict.fromkeys(MODALITIES, 0.0),
                                       Path(tmp) / f"baseline{seed}", monitor="val_loss"))
            candidate = model_path
            if seed != params["train"]["seed"]:
                candidate = Path(tmp) / f"candidate{seed}"
                train_model(embeddings, sensors, seeded, params["train"]["modality_dropout"], candidate)
                candidate = candidate / "model.pt"
            baseline, _ = load_model(Path(tmp) / f"baseline{seed}" / "model.pt")
            runs[seed] = compare(baseline, candidate, embeddings, sensors, split)
    rows = next(iter(runs.values()))["rows"]
    mean = {name: {key: round(float(np.mean([run["rows"][name][key] for run in runs.values()])), 4)
                   for key in ("baseline_drop", "candidate_drop")} for name in rows if name != "all"}
    return {"split": split, "seeds": list(runs), "mean_drop_over_seeds": mean, "runs": runs,
            "baseline_train_seconds": round(float(np.mean(seconds)), 1),
            "candidate_dropout": params["train"]["modality_dropout"]}


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
    parser = pipeline_outputs_parser(__doc__)
    parser.add_argument("--split", choices=("val", "test"), default="test")
    parser.add_argument("--seeds", type=int, nargs="*", default=[], help="training seeds (default: params' seed)")
    args = parser.parse_args()
    params = yaml.safe_load(args.params.read_text(encoding="utf-8"))
    result = measure(args.model, args.embeddings, args.sensors, params, args.split, tuple(args.seeds))
    print(f"macro-F1 on {next(iter(result['runs'].values()))['events']} {args.split} events, 95 % paired bootstrap "
          f"intervals; baseline: no dropout, a missing branch = its training mean; candidate: dropout "
          f"{result['candidate_dropout']}, a missing branch = its absent embedding")
    print(f"{'seed':<6}{'':<17}{'baseline':>10}{'drop':>8}{'candidate':>11}{'drop':>8}   "
          f"0.5 x baseline drop - candidate drop")
    for seed, run in result["runs"].items():
        for name, row in run["rows"].items():
            if name == "all":
                print(f"{seed:<6}{name:<17}{row['baseline']:>10.3f}{'':>8}{row['candidate']:>11.3f}")
                continue
            print(f"{seed:<6}{name:<17}{row['baseline']:>10.3f}{row['baseline_drop']:>8.3f}{row['candidate']:>11.3f}"
                  f"{row['candidate_drop']:>8.3f}   {row['half_baseline_drop_minus_candidate_drop']}")
    for name, row in result["mean_drop_over_seeds"].items():
        print(f"{'mean':<6}{name:<17}{'':>10}{row['baseline_drop']:>8.3f}{'':>11}{row['candidate_drop']:>8.3f}")
    write_result("modality_dropout" if args.split == "test" else "modality_dropout_val", result)


if __name__ == "__main__":
    main()
