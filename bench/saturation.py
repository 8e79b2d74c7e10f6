"""Where a saturated softmax comes from, and which remedy removes it: test split vs OOD set, per branch.

For a model and each group of events (train, val and test from the cached shards; the OOD set through
`spectral predict`'s path) it reports, per branch, the embedding's L2 norm and how far it leaves the range
the training embeddings span (share of dimensions outside, largest excess in units of that range); the
raw inputs (log-mel dB, standardised sensor features at the ±10 clamp); the logit gap between the first
two classes after the temperature, and the same gap with one branch replaced by its training mean (which
branch drives it); and the calibrated output: events at the 1 - ε ceiling, distinct probability vectors
to six decimals, accuracy, macro-F1, ECE, NLL, and the AUROC of 1 - max p as an OOD score (OOD set vs test).

With --candidates it first trains the pipeline's recipe with each set of train.* overrides and reports
each: the remedy is chosen on the validation rows, the test and OOD rows are what it then costs and buys.

    python bench/saturation.py [--model models/model.pt] [--ood data/ood_events]
    python bench/saturation.py --candidates "cross-entropy:" "logit_norm 0.1:logit_norm=0.1"
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
import yaml
from common import pipeline_outputs_parser, write_result
from modality_dropout import train_model

from spectral.data import CachedShardDataModule
from spectral.events import find_event_folders
from spectral.inference import Predictor
from spectral.models.artifact import load_model
from spectral.models.fusion import SpectralFusionModel
from spectral.models.modalities import MODALITIES
from spectral.stages.evaluate import answer_spread, auroc, calibration_scores, classification_metrics


@torch.no_grad()
def _collect(model: SpectralFusionModel, batches) -> dict:
    """Branch embeddings, presence, labels (-1 where unknown) and raw-input summaries of every event."""
    parts: list[list[torch.Tensor]] = [[], [], []]
    masks, labels, db_max, db_mean, clamped, flagged = [], [], [], [], [], []
    for video, audio, sensors, present, *label in batches:
        embeddings = model.branch_embeddings(video, audio, sensors)
        for store, emb in zip(parts, embeddings, strict=True):
            store.append(emb)
        masks.append(present)
        scores = model.ood.score(model.fused(embeddings, present, bounded=False), present)
        flagged.append(~model.ood.in_distribution(scores, present))
        labels.append(label[0] if label else torch.full((len(present),), -1))
        log_mel = model.audio.log_mel(audio).flatten(1)
        db_max.append(log_mel.max(dim=1).values)
        db_mean.append(log_mel.mean(dim=1))
        standardized = (torch.nan_to_num(sensors, nan=0.0) - model.sensors.mean) / model.sensors.std
        clamped.append((standardized.abs() >= 10).float().mean(dim=1))
    return {"parts": [torch.cat(p) for p in parts], "present": torch.cat(masks), "labels": torch.cat(labels).numpy(),
            "db_max": torch.cat(db_max), "db_mean": torch.cat(db_mean), "sensor_clamped": torch.cat(clamped),
            "flagged": torch.cat(flagged)}


def _ood_batches(model: SpectralFusionModel, config: dict, folders: list[Path], batch_size: int = 8):
    predictor = Predictor.for_model(model, config)
    for start in range(0, len(folders), batch_size):
        yield predictor.tensors([predictor.prepare(f) for f in folders[start:start + batch_size]])


def _quantiles(values: torch.Tensor | np.ndarray) -> dict[str, float]:
    values = torch.as_tensor(values).double()
    return {"median": round(float(values.median()), 3), "p95": round(float(torch.quantile(values, 0.95)), 3),
            "max": round(float(values.max()), 3)}


@torch.no_grad()
def _calibrated_gap(model: SpectralFusionModel, parts: list[torch.Tensor], present: torch.Tensor) -> torch.Tensor:
    logits = model.classify(*parts, present).double() / model.temperature.double()
    top = logits.topk(2, dim=1).values
    return top[:, 0] - top[:, 1]


@torch.no_grad()
def summarize(model: SpectralFusionModel, group: dict, train: dict) -> dict:
    parts, present = group["parts"], group["present"]
    branches = {}
    for i, modality in enumerate(MODALITIES):
        seen = train["parts"][i][train["present"][:, i]]
        low, high = seen.min(dim=0).values, seen.max(dim=0).values
        emb = parts[i][present[:, i]]
        excess = torch.maximum(emb - high, low - emb).clamp_min(0) / (high - low).clamp_min(1e-6)
        branches[modality] = {"events": int(present[:, i].sum()), "norm": _quantiles(emb.norm(dim=1)),
                              "outside_training_range": round(float((excess > 0).float().mean()), 4),
                              "max_excess_in_ranges": round(float(excess.max()), 2)}
    probabilities = model.calibrate(model.logits(model.fused(parts, present), present).double()).numpy()
    confidence = probabilities.max(axis=1)
    spread = answer_spread(probabilities, float(model.label_noise))  # what evaluate reports, defined once
    means = [p[train["present"][:, i]].mean(dim=0, keepdim=True) for i, p in enumerate(train["parts"])]
    swapped = {m: round(float(_calibrated_gap(model, [means[j].expand_as(p) if j == i else p
                                                       for j, p in enumerate(parts)], present).median()), 2)
               for i, m in enumerate(MODALITIES)}
    summary = {
        "events": int(present.shape[0]), "branches": branches,
        "log_mel_db_max": _quantiles(group["db_max"]), "log_mel_db_mean": _quantiles(group["db_mean"]),
        "sensor_features_at_clamp": round(float(group["sensor_clamped"].mean()), 4),
        "logit_gap": _quantiles(_calibrated_gap(model, parts, present)),
        "logit_gap_with_training_mean_for": swapped,
        "confidence": _quantiles(confidence),
        "at_ceiling": spread["at_ceiling"],
        "distinct_vectors": spread["distinct_probability_vectors"],
        "flagged_out_of_distribution": round(float(group["flagged"].float().mean()), 4),
        "max_p": confidence,
    }
    labels = group["labels"]
    if (labels >= 0).all():
        metrics = classification_metrics(probabilities, labels, [str(k) for k in range(probabilities.shape[1])])
        summary |= {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"], "ece": metrics["ece"],
                    "nll": round(float(calibration_scores(probabilities, labels)["nll"].mean()), 4)}
    return summary


def measure(model_path: Path, embeddings: Path, sensors: Path, ood: Path) -> dict:
    model, config = load_model(model_path)
    data = CachedShardDataModule(embeddings, sensors, batch_size=32,
                                 max_left_out_fraction=config["train"]["max_left_out_fraction"])
    data.setup("test")
    groups = {"train": _collect(model, data.loader("train")), "val": _collect(model, data.loader("val")),
              "test": _collect(model, data.test_dataloader()),
              "ood": _collect(model, _ood_batches(model, config, find_event_folders(ood)))}
    result = {name: summarize(model, group, groups["train"]) for name, group in groups.items()}
    result["max_softmax_auroc"] = round(auroc(1 - result["test"]["max_p"], 1 - result["ood"]["max_p"]), 4)
    for name in groups:
        del result[name]["max_p"]
    result["temperature"], result["label_noise"] = float(model.temperature), float(model.label_noise)
    return result


ROWS = [("events", lambda r: r["events"]), ("accuracy", lambda r: r.get("accuracy", "")),
        ("macro-F1", lambda r: r.get("macro_f1", "")), ("ECE", lambda r: r.get("ece", "")),
        ("NLL", lambda r: r.get("nll", "")), ("confidence med/p95/max", lambda r: r["confidence"]),
        ("at the 1-ε ceiling", lambda r: r["at_ceiling"]), ("distinct vectors", lambda r: r["distinct_vectors"]),
        ("flagged OOD", lambda r: r["flagged_out_of_distribution"]),
        ("logit gap / T", lambda r: r["logit_gap"]), ("log-mel dB max", lambda r: r["log_mel_db_max"]),
        ("sensor feats at ±10", lambda r: r["sensor_features_at_clamp"])]
ROWS += [(f"{m} norm", lambda r, m=m: r["branches"][m]["norm"]) for m in MODALITIES]
ROWS += [(f"{m} outside range", lambda r, m=m: (r["branches"][m]["outside_training_range"],
                                                r["branches"][m]["max_excess_in_ranges"])) for m in MODALITIES]
ROWS += [(f"gap, {m} := mean", lambda r, m=m: r["logit_gap_with_training_mean_for"][m]) for m in MODALITIES]


def print_table(name: str, result: dict) -> None:
    groups = ("train", "val", "test", "ood")
    print(f"\n{name}: T {result['temperature']:.4f}, ε {result['label_noise']:.5f}, "
          f"AUROC of 1 - max p (OOD set vs test) {result['max_softmax_auroc']:.4f}")
    print(f"{'':24}" + "".join(f"{g:>26}" for g in groups))
    for label, get in ROWS:
        cells = [get(result[g]) for g in groups]
        text = ["/".join(str(v) for v in c.values()) if isinstance(c, dict) else
                "/".join(str(v) for v in c) if isinstance(c, tuple) else str(c) for c in cells]
        print(f"{label:24}" + "".join(f"{t:>26}" for t in text))


def _overrides(text: str) -> tuple[str, dict]:
    name, _, pairs = text.partition(":")
    return name, {k: yaml.safe_load(v) for k, v in (p.split("=", 1) for p in pairs.split(",") if p)}


def main() -> None:
    parser = pipeline_outputs_parser(__doc__)
    parser.add_argument("--ood", type=Path, default=Path("data/ood_events"))
    parser.add_argument("--candidates", nargs="+", metavar="NAME:KEY=VALUE,...",
                        help="train the recipe with these train.* overrides and compare (empty overrides: as is)")
    parser.add_argument("--name", default="saturation", help="bench/results/<name>.json")
    args = parser.parse_args()
    results = {}
    if args.candidates:
        params = yaml.safe_load(args.params.read_text(encoding="utf-8"))
        with tempfile.TemporaryDirectory() as tmp:
            for text in args.candidates:
                name, overrides = _overrides(text)
                out = Path(tmp) / name.replace(" ", "_")
                seconds = train_model(args.embeddings, args.sensors, params, overrides, out)
                results[name] = {"overrides": overrides, "train_seconds": round(seconds, 1),
                                 **measure(out / "model.pt", args.embeddings, args.sensors, args.ood)}
                print_table(name, results[name])
    else:
        results[str(args.model)] = measure(args.model, args.embeddings, args.sensors, args.ood)
        print_table(str(args.model), results[str(args.model)])
    command = "python bench/saturation.py" + (" --candidates " + " ".join(f'"{c}"' for c in args.candidates)
                                              if args.candidates else "")
    write_result(args.name, {"command": command, "models": results})


if __name__ == "__main__":
    main()
