"""Held-out evaluation: metrics with intervals, calibration, modality ablation, and plots DVC can render.

Validation picked the checkpoint, so the test split is the honest number — and a small split
is a noisy one: accuracy and macro-F1 come with percentile-bootstrap 95 % intervals over the
test events, so a change can be told from another draw of the same data. Calibration error
uses equal-mass bins of at least 10 events (equal-width bins holding one or two events made
ECE mostly noise). The ablation replaces one branch's embedding by its training-set mean (the
model sees "an average video", say) and measures what is lost, which is how we prove the
classes need fusion. The few headline numbers go to their own file, DVC's metrics, so
`dvc exp show` compares experiments at a glance; the detail stays in metrics/evaluate.json.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from spectral.data import CachedShardDataModule  # noqa: E402
from spectral.models.artifact import load_model  # noqa: E402
from spectral.models.calibration import calibrated_probabilities  # noqa: E402
from spectral.models.card import model_card  # noqa: E402
from spectral.models.fusion import SpectralFusionModel  # noqa: E402
from spectral.models.modalities import MODALITIES, describe, pattern_index, presence_patterns  # noqa: E402
from spectral.models.posthoc import branch_outputs, pattern_mask  # noqa: E402

MIN_EVENTS_PER_BIN = 10
MAX_BINS = 10
BOOTSTRAP_RESAMPLES = 2000
log = logging.getLogger(__name__)


def _confusion(preds: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    return np.bincount(labels * k + preds, minlength=k * k).reshape(k, k)


def _per_class(confusion: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall and F1 per class; 0 where undefined (no predictions or no events of the class).
    `confusion` may be a stack [..., k, k]: the last axis is the class."""
    tp = np.diagonal(confusion, axis1=-2, axis2=-1).astype(np.float64)
    predicted, actual = confusion.sum(axis=-2), confusion.sum(axis=-1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
    total = precision + recall
    f1 = np.divide(2 * precision * recall, total, out=np.zeros_like(tp), where=total > 0)
    return precision, recall, f1


def reliability_bins(confidence: np.ndarray, correct: np.ndarray) -> tuple[list[dict], float]:
    """Equal-mass bins by confidence (at least MIN_EVENTS_PER_BIN events each, at most MAX_BINS bins)
    and the expected calibration error over them."""
    bins = max(1, min(MAX_BINS, confidence.size // MIN_EVENTS_PER_BIN))
    reliability, ece = [], 0.0
    for members in np.array_split(np.argsort(confidence, kind="stable"), bins):
        if members.size:
            ece += members.size / confidence.size * abs(correct[members].mean() - confidence[members].mean())
            reliability.append({"bin_confidence": round(float(confidence[members].mean()), 4),
                                "accuracy": round(float(correct[members].mean()), 4), "count": int(members.size)})
    return reliability, ece


def bootstrap_draws(n: int, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> np.ndarray:
    """[resamples, n] event indices. Every statistic of one evaluation uses the same draws, so differences
    between two rows (an ablation's drop, calibration before vs after) are paired."""
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def percentile_interval(values: np.ndarray, level: float = 0.95) -> list[float]:
    return [round(float(v), 4) for v in np.percentile(values, [100 * (1 - level) / 2, 100 * (1 + level) / 2])]


def macro_f1_draws(preds: np.ndarray, labels: np.ndarray, k: int, draws: np.ndarray) -> np.ndarray:
    """Macro-F1 of each resample: one confusion matrix per row of `draws`, counted in one bincount."""
    cells = labels[draws] * k + preds[draws] + (k * k) * np.arange(len(draws))[:, None]
    confusions = np.bincount(cells.ravel(), minlength=len(draws) * k * k).reshape(len(draws), k, k)
    return _per_class(confusions)[2].mean(axis=-1)


def bootstrap_intervals(preds: np.ndarray, labels: np.ndarray, k: int, resamples: int = BOOTSTRAP_RESAMPLES,
                        level: float = 0.95, seed: int = 0) -> dict:
    """Percentile-bootstrap intervals of accuracy and macro-F1 over the test events: the spread another
    draw of a test split this size would show. Fixed seed, so the same predictions give the same bytes."""
    draws = bootstrap_draws(labels.size, resamples, seed)
    accuracy = (preds[draws] == labels[draws]).mean(axis=1)
    return {"accuracy": percentile_interval(accuracy, level),
            "macro_f1": percentile_interval(macro_f1_draws(preds, labels, k, draws), level),
            "level": level, "resamples": resamples, "method": "percentile bootstrap over test events, seed 0"}


def classification_metrics(probabilities: np.ndarray, labels: np.ndarray, class_names: list[str]) -> dict:
    """Accuracy, macro-F1, per-class precision/recall/F1, confusion matrix, calibration (equal-mass bins)."""
    k = len(class_names)
    preds = probabilities.argmax(axis=1)
    confusion = _confusion(preds, labels, k)
    precision, recall, f1 = _per_class(confusion)
    per_class = {name: {"precision": round(float(precision[i]), 4), "recall": round(float(recall[i]), 4),
                        "f1": round(float(f1[i]), 4), "support": int(confusion[i].sum())}
                 for i, name in enumerate(class_names)}
    correct = preds == labels
    reliability, ece = reliability_bins(probabilities.max(axis=1), correct)
    return {
        "accuracy": round(float(correct.mean()), 4) if labels.size else 0.0,
        "macro_f1": round(float(f1.mean()), 4),
        "ece": round(float(ece), 4),
        "per_class": per_class,
        "confusion_matrix": confusion.tolist(),
        "reliability": reliability,
    }


def calibration_scores(probabilities: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """Per event: negative log-likelihood, Brier score (squared error of the probability vector), and
    confidence and correctness for ECE; means over events are the reported numbers."""
    picked = probabilities[np.arange(labels.size), labels]
    onehot = np.eye(probabilities.shape[1])[labels]
    return {"nll": -np.log(np.clip(picked, 1e-12, None)), "brier": ((probabilities - onehot) ** 2).sum(axis=1),
            "confidence": probabilities.max(axis=1), "correct": probabilities.argmax(axis=1) == labels}


def calibration_table(logits: np.ndarray, labels: np.ndarray, temperature: float, label_noise: float,
                      draws: np.ndarray) -> dict:
    """NLL, Brier and ECE of the softmax before and after calibration, each with its bootstrap interval
    (the same draws, so before and after are paired), and both reliability curves."""
    table: dict = {"temperature": round(temperature, 4), "label_noise": round(label_noise, 5)}
    resampled = {}
    for name, t, floor in (("before", 1.0, 0.0), ("after", temperature, label_noise)):
        scores = calibration_scores(calibrated(logits, t, floor), labels)
        reliability, ece = reliability_bins(scores["confidence"], scores["correct"])
        resampled[name] = {"nll": scores["nll"][draws].mean(axis=1), "brier": scores["brier"][draws].mean(axis=1),
                           "ece": np.array([reliability_bins(scores["confidence"][d], scores["correct"][d])[1]
                                            for d in draws])}
        table[name] = {"nll": round(float(scores["nll"].mean()), 4), "brier": round(float(scores["brier"].mean()), 4),
                       "ece": round(float(ece), 4), "reliability": reliability}
        table[name] |= {f"{k}_interval": percentile_interval(v) for k, v in resampled[name].items()}
    # after - before over the same resamples: below zero throughout means scaling helped beyond the noise
    table["change_interval"] = {k: percentile_interval(resampled["after"][k] - resampled["before"][k])
                                for k in ("nll", "brier", "ece")}
    return table


def calibrated(logits: np.ndarray, temperature: float, label_noise: float) -> np.ndarray:
    return calibrated_probabilities(torch.from_numpy(logits).double(), temperature, label_noise).numpy()


@torch.no_grad()
def _logits(model: SpectralFusionModel, parts: list[torch.Tensor], present: torch.Tensor) -> np.ndarray:
    return model.classify(*parts, present).double().numpy()


def ablation_table(model: SpectralFusionModel, test_parts: list[torch.Tensor], present: torch.Tensor,
                   train_means: list[torch.Tensor], labels: np.ndarray, class_names: list[str],
                   draws: np.ndarray) -> dict:
    """Accuracy/macro-F1 with every modality pattern: a missing branch as the model meets it in use (its
    learned "absent" embedding) and, as the baseline a model without one would need, replaced by its
    training-set mean. macro_f1_drop is paired with "all" over the same bootstrap draws."""
    k = len(class_names)
    all_preds = _logits(model, test_parts, present).argmax(axis=1)
    all_f1 = macro_f1_draws(all_preds, labels, k, draws)

    def row(preds: np.ndarray) -> dict:
        f1 = _per_class(_confusion(preds, labels, k))[2].mean()
        drops = all_f1 - macro_f1_draws(preds, labels, k, draws)
        return {"accuracy": round(float((preds == labels).mean()), 4), "macro_f1": round(float(f1), 4),
                "macro_f1_drop": round(float(_per_class(_confusion(all_preds, labels, k))[2].mean() - f1), 4),
                "macro_f1_drop_interval": percentile_interval(drops)}

    table = {}
    for pattern in presence_patterns()[::-1]:  # all, then without one, then only one
        name = describe(pattern)
        table[name] = row(_logits(model, test_parts, pattern_mask(present, pattern)).argmax(axis=1))
        if name != "all":
            replaced = [p if keep else mean.expand_as(p)
                        for keep, p, mean in zip(pattern, test_parts, train_means, strict=True)]
            table[f"{name} (training mean)"] = row(_logits(model, replaced, present).argmax(axis=1))
    return table


def auroc(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
    """P(an OOD event scores above an in-distribution one), ties counted half (Mann-Whitney U)."""
    if not in_scores.size or not out_scores.size:
        return float("nan")
    greater = (out_scores[:, None] > in_scores[None, :]).mean()
    ties = (out_scores[:, None] == in_scores[None, :]).mean()
    return float(greater + 0.5 * ties)


def ood_scores(model: SpectralFusionModel, parts: list[torch.Tensor], present: torch.Tensor) -> dict[str, np.ndarray]:
    """The exported detector's score and two alternatives measured against it: 1 - the calibrated
    probabilities' max and the energy score -T·logsumexp(logits / T) (Liu et al., NeurIPS 2020)."""
    with torch.no_grad():
        raw = model.logits(model.fused(parts, present), present).double()
        logits = raw / model.temperature.double()
        distance = model.ood.score(model.fused(parts, present, bounded=False), present)
        probabilities = model.calibrate(raw)
        return {"mahalanobis": distance.double().numpy(), "probabilities": probabilities.numpy(),
                "max_softmax": (1 - probabilities.max(dim=1).values).numpy(),
                "energy": (-model.temperature.double() * torch.logsumexp(logits, dim=1)).numpy(),
                "in_distribution": model.ood.in_distribution(distance, present).numpy(),
                "threshold": model.ood.threshold[pattern_index(present)].double().numpy()}


def ood_table(test: dict[str, np.ndarray], ood: dict[str, np.ndarray], groups: list[str],
              draws: np.ndarray) -> dict:
    """AUROC of each score (test split = in-distribution, OOD set = positives), with a bootstrap interval
    for the exported detector's, its false-alarm rate on the test split and detection rate per OOD group."""
    rng = np.random.default_rng(1)
    ood_draws = rng.integers(0, len(groups), size=(draws.shape[0], len(groups)))
    score = test["mahalanobis"]
    table = {
        "score": "mahalanobis",
        "auroc": round(auroc(score, ood["mahalanobis"]), 4),
        "auroc_interval": percentile_interval(np.array([auroc(score[d], ood["mahalanobis"][o])
                                                        for d, o in zip(draws, ood_draws, strict=True)])),
        "false_alarm_rate": round(float(1 - test["in_distribution"].mean()), 4),
        "detection_rate": round(float(1 - ood["in_distribution"].mean()), 4),
        "ood_events": len(groups), "test_events": int(score.size),
        "alternatives_auroc": {name: round(auroc(test[name], ood[name]), 4) for name in ("max_softmax", "energy")},
        "groups": {},
    }
    names = np.array(groups)
    for group in sorted(set(groups)):
        members = names == group
        table["groups"][group] = {"events": int(members.sum()),
                                  "auroc": round(auroc(score, ood["mahalanobis"][members]), 4),
                                  "detection_rate": round(float(1 - ood["in_distribution"][members].mean()), 4)}
    return table


def answer_spread(probabilities: np.ndarray, label_noise: float) -> dict:
    """What the calibrated answers look like: how many distinct probability vectors (to the six decimals an
    answer carries), median and largest confidence, and how many sit at the 1 - ε ceiling (softmax saturated)."""
    confidence = probabilities.max(axis=1)
    return {"events": int(len(probabilities)),
            "distinct_probability_vectors": len({tuple(row) for row in np.round(probabilities, 6)}),
            "median_confidence": round(float(np.median(confidence)), 4),
            "max_confidence": round(float(confidence.max()), 6),
            "at_ceiling": int((np.round(confidence, 6) >= round(1 - label_noise, 6)).sum())}


def selective_accuracy(preds: np.ndarray, labels: np.ndarray, in_distribution: np.ndarray) -> dict:
    """Accuracy of the test events the OOD flag lets through as "classified", and how many that is."""
    kept = in_distribution.astype(bool)
    return {"kept": int(kept.sum()), "kept_fraction": round(float(kept.mean()), 4),
            "accuracy_kept": round(float((preds[kept] == labels[kept]).mean()), 4) if kept.any() else None,
            "accuracy_all": round(float((preds == labels).mean()), 4)}


def _plot_confusion(confusion: list[list[int]], class_names: list[str], path: Path) -> None:
    matrix = np.array(confusion)
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    ax.imshow(matrix, cmap="Blues")
    short = [n.replace("_", "\n") for n in class_names]
    ax.set_xticks(range(len(short)), short, fontsize=8)
    ax.set_yticks(range(len(short)), short, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    for (i, j), v in np.ndenumerate(matrix):
        ax.text(j, i, str(v), ha="center", va="center", color="white" if v > matrix.max() / 2 else "black")
    ax.set_title("Test confusion matrix")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_reliability(calibration: dict, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    for name, style in (("before", "s:"), ("after", "o-")):
        rows = calibration[name]["reliability"]
        ax.plot([r["bin_confidence"] for r in rows], [r["accuracy"] for r in rows], style,
                label=f"{name} calibration (ECE {calibration[name]['ece']:.3f})")
    ax.set_xlabel("confidence (equal-mass bins, ≥ 10 test events each)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"Reliability (T = {calibration['temperature']:.2f}, "
                 f"label noise {calibration.get('label_noise', 0.0):.1%})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def format_report(metrics: dict) -> str:
    """The evaluation as short tables for a terminal: headline, per class, calibration, OOD, ablation."""
    intervals = metrics["intervals"]
    low_high = {name: " [{:.3f}, {:.3f}]".format(*intervals[name]) for name in ("accuracy", "macro_f1")}
    lines = [f"test accuracy {metrics['accuracy']:.3f}{low_high['accuracy']}, "
             f"macro-F1 {metrics['macro_f1']:.3f}{low_high['macro_f1']}, "
             f"ECE {metrics['ece']:.3f} on {metrics['test_events']} events",
             f"[...]: {intervals['level']:.0%} bootstrap intervals over the test events", "",
             f"{'class':<28}{'precision':>10}{'recall':>8}{'F1':>7}{'n':>5}"]
    for name, row in metrics["per_class"].items():
        lines.append(f"{name:<28}{row['precision']:>10.3f}{row['recall']:>8.3f}{row['f1']:>7.3f}{row['support']:>5}")
    calibration, change = metrics["calibration"], metrics["calibration"]["change_interval"]
    lines += ["", f"calibration (temperature {calibration['temperature']:.3f}, label noise "
                  f"{calibration['label_noise']:.1%}, fitted on validation)",
              f"{'':<8}{'NLL':>22}{'Brier':>22}{'ECE':>22}"]
    for name in ("before", "after"):
        row = calibration[name]
        lines.append(f"{name:<8}" + "".join(f"{row[k]:>7.3f} [{row[k + '_interval'][0]:.3f}, "
                                             f"{row[k + '_interval'][1]:.3f}]" for k in ("nll", "brier", "ece")))
    lines.append(f"{'change':<8}" + "".join(f"{'':>7} [{change[k][0]:+.3f}, {change[k][1]:+.3f}]"
                                            for k in ("nll", "brier", "ece")) + "  (after - before, paired)")
    if ood := metrics.get("ood"):
        lines += ["", f"out-of-distribution ({ood['score']}): AUROC {ood['auroc']:.3f} "
                      f"[{ood['auroc_interval'][0]:.3f}, {ood['auroc_interval'][1]:.3f}] on {ood['ood_events']} OOD vs "
                      f"{ood['test_events']} test events; flagged: {ood['detection_rate']:.0%} of OOD, "
                      f"{ood['false_alarm_rate']:.0%} of test (false alarms)",
                  "  other scores' AUROC: " + ", ".join(f"{k} {v:.3f}" for k, v in ood["alternatives_auroc"].items())]
        for group, row in ood["groups"].items():
            lines.append(f"  {group:<44} n={row['events']:<4} AUROC {row['auroc']:.3f}  "
                         f"flagged {row['detection_rate']:.0%}")
        for modality, row in ood["one_modality_ood"].items():
            lines.append(f"  {'test events with only their ' + modality + ' from the OOD set':<51} AUROC "
                         f"{row['auroc']:.3f}  flagged {row['detection_rate']:.0%}")
        selective = ood["selective"]
        kept_accuracy = "-" if selective["accuracy_kept"] is None else f"{selective['accuracy_kept']:.3f}"
        lines.append(f"  decision \"classified\" on {selective['kept']} of {ood['test_events']} test events "
                     f"({selective['kept_fraction']:.0%}): accuracy {kept_accuracy} "
                     f"(all: {selective['accuracy_all']:.3f})")
        for name, spread in ood["answers"].items():
            lines.append(f"  answers on the {name + ':':<11} {spread['distinct_probability_vectors']} distinct "
                         f"probability vectors of {spread['events']}, confidence median "
                         f"{spread['median_confidence']:.3f}, max {spread['max_confidence']:.4f}, "
                         f"{spread['at_ceiling']} at the 1 - ε ceiling")
    header = "modalities (missing = learned absent embedding" if calibration else "ablation (missing = training mean"
    lines += ["", f"{header + ')':<48}{'accuracy':>9}{'macro-F1':>10}{'F1 drop [95 %]':>22}"]
    for name, row in metrics["ablation"].items():
        drop = (f"{row['macro_f1_drop']:>8.3f} [{row['macro_f1_drop_interval'][0]:.3f}, "
                f"{row['macro_f1_drop_interval'][1]:.3f}]" if "macro_f1_drop" in row else "")
        lines.append(f"{name:<48}{row['accuracy']:>9.3f}{row['macro_f1']:>10.3f}{drop:>22}")
    if biases := metrics["pattern_bias"]:
        lines += ["class bias added to the logits without a modality (fitted on validation; "
                  + ", ".join(name[:4] for name in metrics["per_class"]) + "):"]
        lines += [f"  {name:<46}" + " ".join(f"{b:+.2f}" for b in bias) for name, bias in biases.items() if any(bias)]
    return "\n".join(lines)


def headline(metrics: dict) -> dict:
    """The few numbers to compare experiments by (DVC's metrics file); flat, so every tool shows them."""
    intervals = metrics["intervals"]
    numbers = {"accuracy": metrics["accuracy"], "accuracy_low": intervals["accuracy"][0],
               "accuracy_high": intervals["accuracy"][1], "macro_f1": metrics["macro_f1"],
               "macro_f1_low": intervals["macro_f1"][0], "macro_f1_high": intervals["macro_f1"][1],
               "ece": metrics["ece"], "nll": metrics["calibration"]["after"]["nll"]}
    if ood := metrics.get("ood"):
        numbers |= {"ood_auroc": ood["auroc"], "ood_false_alarm": ood["false_alarm_rate"]}
    return numbers | {"test_events": metrics["test_events"]}


def ood_event_parts(model: SpectralFusionModel, config: dict, folders: list[Path],
                    batch_size: int = 8) -> tuple[list[torch.Tensor], torch.Tensor, list[str]]:
    """Branch embeddings of the OOD set through `spectral predict`'s own path (raw media → decode → model),
    their presence masks, and each event's group (metadata.json's `ood.group`)."""
    from spectral.events import read_metadata
    from spectral.inference import Predictor

    predictor = Predictor.for_model(model, config)
    parts: list[list[torch.Tensor]] = [[], [], []]
    masks = []
    for start in range(0, len(folders), batch_size):
        batch = [predictor.prepare(folder) for folder in folders[start:start + batch_size]]
        frames, audio, sensors, present = predictor.tensors(batch)
        with torch.no_grad():
            for store, emb in zip(parts, model.branch_embeddings(frames, audio, sensors), strict=True):
                store.append(emb)
        masks.append(present)
    groups = [read_metadata(folder).get("ood", {}).get("group", "unknown") for folder in folders]
    return [torch.cat(p) for p in parts], torch.cat(masks), groups


def one_modality_ood(model: SpectralFusionModel, test_parts: list[torch.Tensor], test_present: torch.Tensor,
                     ood_parts: list[torch.Tensor], test_scores: np.ndarray) -> dict:
    """Events unfamiliar in one modality only: test event i with its branch m replaced by OOD event i's
    (cycling through the OOD set), the others left as recorded. AUROC against the test split and the
    share flagged, per modality: which branches the flag actually listens to."""
    n = test_present.shape[0]
    pick = torch.arange(n) % ood_parts[0].shape[0]
    table = {}
    for i, modality in enumerate(MODALITIES):
        hybrid = [ood[pick] if j == i else part
                  for j, (part, ood) in enumerate(zip(test_parts, ood_parts, strict=True))]
        scores = ood_scores(model, hybrid, test_present)
        table[modality] = {"auroc": round(auroc(test_scores, scores["mahalanobis"]), 4),
                           "detection_rate": round(float(1 - scores["in_distribution"].mean()), 4)}
    return table


def _write_rows(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _ood_score_rows(scores: dict[str, np.ndarray], group: str) -> list[dict]:
    """log10(score / threshold) per event: 0 is the flag's threshold whatever the event's modality pattern."""
    ratios = np.log10(np.maximum(scores["mahalanobis"], 1e-12) / scores["threshold"])
    return [{"group": group, "log10_score_over_threshold": f"{r:.4f}"} for r in ratios]


def evaluate(model_path: Path, embed_dir: Path, sensors_path: Path, metrics_path: Path, plots_dir: Path,
             batch_size: int = 32, headline_path: Path | None = None, ood_dir: Path | None = None,
             card_path: Path | None = None, events_source: str = "") -> dict:
    """Score the exported model on the test split (and the OOD set when given); write metrics JSON (and
    the headline file), plots, and the model card when `card_path` is given (`events_source`: data.events)."""
    model, config = load_model(model_path)
    class_names = config["class_names"]
    data = CachedShardDataModule(embed_dir, sensors_path, batch_size=batch_size,
                                 max_left_out_fraction=config["train"]["max_left_out_fraction"])
    data.setup("test")
    train_parts, _, _ = branch_outputs(model, data.loader("train"))
    train_means = [p.mean(dim=0, keepdim=True) for p in train_parts]
    test_parts, present, labels = branch_outputs(model, data.test_dataloader())
    if labels.size == 0:
        raise ValueError(f"the test split in {embed_dir} is empty: add events or raise splits.test in params.yaml")
    draws = bootstrap_draws(labels.size)
    logits = _logits(model, test_parts, present)
    temperature, label_noise = float(model.temperature), float(model.label_noise)
    probabilities = calibrated(logits, temperature, label_noise)
    metrics = classification_metrics(probabilities, labels, class_names)
    preds = probabilities.argmax(axis=1)
    metrics["intervals"] = bootstrap_intervals(preds, labels, len(class_names))
    metrics["calibration"] = calibration_table(logits, labels, temperature, label_noise, draws)
    if ood_dir is not None:
        from spectral.events import find_event_folders

        ood_parts, ood_present, groups = ood_event_parts(model, config, find_event_folders(ood_dir))
        test_scores = ood_scores(model, test_parts, present)
        ood = ood_scores(model, ood_parts, ood_present)
        metrics["ood"] = ood_table(test_scores, ood, groups, draws)
        metrics["ood"]["one_modality_ood"] = one_modality_ood(model, test_parts, present, ood_parts,
                                                              test_scores["mahalanobis"])
        metrics["ood"]["selective"] = selective_accuracy(preds, labels, test_scores["in_distribution"])
        metrics["ood"]["answers"] = {"test split": answer_spread(probabilities, label_noise),
                                     "OOD set": answer_spread(ood["probabilities"], label_noise)}
    metrics["ablation"] = ablation_table(model, test_parts, present, train_means, labels, class_names, draws)
    metrics["pattern_bias"] = {describe(pattern): [round(float(b), 4) for b in model.pattern_bias[index]]
                               for index, pattern in enumerate(presence_patterns()) if not all(pattern)}
    metrics["test_events"] = int(labels.size)
    metrics["left_out"] = [row for row in data.left_out() if row["split"] == "test"]
    for row in metrics["left_out"]:
        log.warning("left out of the test split: %s: %s", row["event"], row["reason"])
    events = data.used_events("test")
    if len(events) != labels.size:
        raise RuntimeError(f"{len(events)} test events listed but {labels.size} scored: shard order changed")
    metrics_path = Path(metrics_path)
    metrics_path.parent.mkdir(parents=True, exist_ok=True)
    metrics_path.write_text(json.dumps(metrics, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if headline_path is not None:
        Path(headline_path).write_text(json.dumps(headline(metrics), indent=2) + "\n", encoding="utf-8")
    plots_dir = Path(plots_dir)
    plots_dir.mkdir(parents=True, exist_ok=True)
    with open(plots_dir / "confusion.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["actual", "predicted"])
        writer.writerows((class_names[a], class_names[p]) for a, p in zip(labels, preds, strict=True))
    with open(plots_dir / "predictions.csv", "w", newline="", encoding="utf-8") as f:  # per event, to inspect
        writer = csv.writer(f)
        writer.writerow(["event", "actual", "predicted", "confidence", *class_names])
        writer.writerows([event, class_names[a], class_names[p], f"{row.max():.6f}", *(f"{v:.6f}" for v in row)]
                         for event, a, p, row in zip(events, labels, preds, probabilities, strict=True))
    for name in ("before", "after"):  # one file per series: DVC draws each file as its own line
        _write_rows(plots_dir / f"reliability_{name}.csv", metrics["calibration"][name]["reliability"])
    _write_rows(plots_dir / "ablation.csv", [{"modalities": name, "macro_f1": row["macro_f1"],
                                              "accuracy": row["accuracy"]}
                                             for name, row in metrics["ablation"].items()])
    if ood_dir is not None:
        _write_rows(plots_dir / "ood_scores.csv", _ood_score_rows(test_scores, "test split")
                    + _ood_score_rows(ood, "OOD set"))
    if card_path is not None:
        Path(card_path).write_text(model_card(metrics, config, Path(model_path), events_source), encoding="utf-8")
    _plot_confusion(metrics["confusion_matrix"], class_names, plots_dir / "confusion_matrix.png")
    _plot_reliability(metrics["calibration"], plots_dir / "reliability.png")
    return metrics
