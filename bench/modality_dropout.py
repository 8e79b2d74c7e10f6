"""What modality dropout buys: the exported model with a branch absent vs models trained without it, with
that branch replaced by its training mean, on the same events with paired bootstrap intervals.

Choose `train.modality_dropout` with `--split val`, reading the "candidate, no pattern bias" column there (the
pattern bias is fitted on those validation events, which flatters the candidate); report the chosen
recipe with the default test split.

Two baselines are trained in this run, per seed, on the demo's cached shards, each with its checkpoint
chosen on all-modality val_loss (neither has an absent-modality path to select for):
- "no dropout": the pipeline's recipe with `train.modality_dropout` all zero (it keeps the per-branch
  heads of `train.branch_loss`, which alone make a model lean less on any one branch);
- "plain": the recipe before missing modalities were trained for: no dropout and no branch heads.
The candidate is the pipeline's models/model.pt (or the same recipe at another seed), also scored without
its per-pattern class bias (spectral.models.posthoc) to show what that adds. A modality "missing" means, for
the candidate, its learned absent embedding (what `spectral predict` does); for a
baseline, the training-set mean of that branch's embedding (the best a model without an absent
embedding can do). The issue's bar: the candidate loses at most half a baseline's macro-F1.

    python bench/modality_dropout.py [--split val|test] [--seeds 42 1 2 3 4] [--model models/model.pt]
"""

from __future__ import annotations

import copy
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import yaml
from common import pipeline_outputs_parser, write_result

from spectral.data import CachedShardDataModule
from spectral.models.artifact import load_model
from spectral.models.modalities import MODALITIES
from spectral.models.posthoc import branch_outputs
from spectral.stages.evaluate import bootstrap_draws, macro_f1_draws, percentile_interval
from spectral.stages.train import TrainConfig, train


def _f1(model, parts, present, labels, draws) -> tuple[float, np.ndarray]:
    with torch.no_grad():
        preds = model.classify(*parts, present).argmax(dim=1).numpy()
    point = macro_f1_draws(preds, labels, 4, np.arange(labels.size)[None, :])[0]
    return float(point), macro_f1_draws(preds, labels, 4, draws)


def train_model(embeddings: Path, sensors: Path, params: dict, overrides: dict, out: Path) -> float:
    """Train the pipeline's recipe with these train.* overrides into out/model.pt; returns seconds."""
    cfg = replace(TrainConfig.from_params(params), logger="none", **overrides)
    started = time.perf_counter()
    train(embeddings, sensors, out, cfg, dvclive_dir=out / "live")
    return time.perf_counter() - started


UNBIASED = "candidate, no pattern bias"
NO_DROPOUT = {"modality_dropout": dict.fromkeys(MODALITIES, 0.0), "monitor": "val_loss"}
BASELINES = {"no dropout": NO_DROPOUT, "plain": {**NO_DROPOUT, "branch_loss": 0.0}}


def measure(model_path: Path, embeddings: Path, sensors: Path, params: dict, split: str = "test",
            seeds: tuple[int, ...] = (), baselines: dict[str, dict] = BASELINES) -> dict:
    """Per training seed, the baselines and a candidate trained with it (the pipeline's own seed uses
    `model_path` as its candidate); how much a model relies on one modality changes from seed to seed,
    so the verdict is the mean drop over the seeds."""
    runs, seconds = {}, {name: [] for name in baselines}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds or (params["train"]["seed"],):
            seeded = {**params, "train": {**params["train"], "seed": seed}}
            trained = {}
            for name, overrides in baselines.items():
                out = Path(tmp) / f"{name}{seed}"
                seconds[name].append(train_model(embeddings, sensors, seeded, overrides, out))
                trained[name], _ = load_model(out / "model.pt")
            candidate = model_path
            if seed != params["train"]["seed"]:
                candidate = Path(tmp) / f"candidate{seed}"
                train_model(embeddings, sensors, seeded, {}, candidate)
                candidate = candidate / "model.pt"
            runs[seed] = compare(trained, candidate, embeddings, sensors, split)
    rows = [name for name in next(iter(runs.values()))["rows"] if name != "all"]
    mean = {row: {model: round(float(np.mean([run["rows"][row][model]["drop"] for run in runs.values()])), 4)
                  for model in ("candidate", UNBIASED, *baselines)} for row in rows}
    return {"split": split, "seeds": list(runs), "mean_drop_over_seeds": mean, "runs": runs,
            "baselines": {name: {"overrides": overrides, "train_seconds": round(float(np.mean(seconds[name])), 1)}
                          for name, overrides in baselines.items()},
            "candidate_dropout": params["train"]["modality_dropout"]}


def compare(baselines: dict, model_path: Path, embeddings: Path, sensors: Path, split: str = "test") -> dict:
    """Rows `all` and `without <modality>`, each with the candidate's and every baseline's macro-F1; the
    `without` rows add the drop from `all` and, per baseline, the paired interval of half its drop minus
    the candidate's (> 0: the candidate lost less than half of what that baseline lost)."""
    candidate, _ = load_model(model_path)
    unbiased = copy.deepcopy(candidate)  # what the class bias per modality pattern (spectral.models.posthoc) adds
    unbiased.pattern_bias.zero_()
    data = CachedShardDataModule(embeddings, sensors, batch_size=32)
    data.setup()
    models = {"candidate": candidate, UNBIASED: unbiased, **baselines}
    outputs = {name: (branch_outputs(model, data.loader("train"))[0], *branch_outputs(model, data.loader(split)))
               for name, model in models.items() if name != UNBIASED}
    outputs[UNBIASED] = outputs["candidate"]  # the bias acts after the branches: same embeddings
    labels = outputs["candidate"][3]
    draws = bootstrap_draws(labels.size)
    full = {name: _f1(model, outputs[name][1], outputs[name][2], labels, draws) for name, model in models.items()}
    rows = {"all": {name: {"f1": round(f1, 4), "interval": percentile_interval(f1_draws)}
                    for name, (f1, f1_draws) in full.items()}}
    for i, modality in enumerate(MODALITIES):
        row = {}
        for name, model in models.items():
            train_parts, parts, present, _ = outputs[name]
            if name in ("candidate", UNBIASED):
                present = present.clone()
                present[:, i] = False
            else:
                parts = [part if j != i else train_part.mean(dim=0, keepdim=True).expand_as(part)
                         for j, (part, train_part) in enumerate(zip(parts, train_parts, strict=True))]
            f1, f1_draws = _f1(model, parts, present, labels, draws)
            drop_draws = full[name][1] - f1_draws
            row[name] = {"f1": round(f1, 4), "drop": round(full[name][0] - f1, 4),
                         "drop_interval": percentile_interval(drop_draws), "drop_draws": drop_draws}
        drops = {name: cell.pop("drop_draws") for name, cell in row.items()}
        for name in baselines:
            row[name]["half_drop_minus_candidate_drop"] = percentile_interval(0.5 * drops[name] - drops["candidate"])
        rows[f"without {modality}"] = row
    return {"split": split, "events": int(labels.size), "rows": rows, "candidate": str(model_path),
            "baselines": list(baselines)}


def main() -> None:
    parser = pipeline_outputs_parser(__doc__)
    parser.add_argument("--split", choices=("val", "test"), default="test")
    parser.add_argument("--seeds", type=int, nargs="*", default=[], help="training seeds (default: params' seed)")
    args = parser.parse_args()
    params = yaml.safe_load(args.params.read_text(encoding="utf-8"))
    result = measure(args.model, args.embeddings, args.sensors, params, args.split, tuple(args.seeds))
    names = ["candidate", UNBIASED, *result["baselines"]]
    print(f"macro-F1 on {next(iter(result['runs'].values()))['events']} {args.split} events (drop from all "
          f"modalities); candidate: dropout {result['candidate_dropout']}, a missing branch = its absent "
          f"embedding; baselines ({', '.join(result['baselines'])}): a missing branch = its training mean")
    print(f"{'seed':<6}{'':<17}" + "".join(f"{name:>28}" for name in names))
    for seed, run in result["runs"].items():
        for row_name, row in run["rows"].items():
            cells = [f"{row[n]['f1']:.3f}" + (f" ({row[n]['drop']:+.3f})" if "drop" in row[n] else " " * 9)
                     for n in names]
            print(f"{seed:<6}{row_name:<17}" + "".join(f"{cell:>28}" for cell in cells))
    for row_name, row in result["mean_drop_over_seeds"].items():
        print(f"{'mean':<6}{row_name:<17}" + "".join(f"{'drop ' + format(row[n], '.3f'):>28}" for n in names))
    write_result("modality_dropout" if args.split == "test" else "modality_dropout_val", result)


if __name__ == "__main__":
    main()
