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
from spectral.models.fusion import SpectralFusionModel  # noqa: E402

MODALITIES = ("video", "audio", "sensors")
MIN_EVENTS_PER_BIN = 10
MAX_BINS = 10
BOOTSTRAP_RESAMPLES = 2000
log = logging.getLogger(__name__)


@torch.no_grad()
def branch_outputs(model: SpectralFusionModel, loader) -> tuple[list[torch.Tensor], np.ndarray]:
    """Per-branch embeddings of every sample, and labels."""
    parts: list[list[torch.Tensor]] = [[], [], []]
    labels = []
    for video, audio, sensors, label in loader:
        for store, emb in zip(parts, model.branch_embeddings(video, audio, sensors), strict=True):
            store.append(emb)
        labels.append(label)
    return [torch.cat(p) for p in parts], torch.cat(labels).numpy()


def _confusion(preds: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    return np.bincount(labels * k + preds, minlength=k * k).reshape(k, k)


def _per_class(confusion: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall and F1 per class; 0 where undefined (no predictions or no events of the class)."""
    tp = np.diag(confusion).astype(np.float64)
    predicted, actual = confusion.sum(axis=0), confusion.sum(axis=1)
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


def bootstrap_intervals(preds: np.ndarray, labels: np.ndarray, k: int, resamples: int = BOOTSTRAP_RESAMPLES,
                        level: float = 0.95, seed: int = 0) -> dict:
    """Percentile-bootstrap intervals of accuracy and macro-F1 over the test events: the spread another
    draw of a test split this size would show. Fixed seed, so the same predictions give the same bytes."""
    draws = np.random.default_rng(seed).integers(0, labels.size, size=(resamples, labels.size))
    accuracy = (preds[draws] == labels[draws]).mean(axis=1)
    macro_f1 = np.array([_per_class(_confusion(preds[d], labels[d], k))[2].mean() for d in draws])
    tails = [100 * (1 - level) / 2, 100 * (1 + level) / 2]
    return {"accuracy": [round(float(v), 4) for v in np.percentile(accuracy, tails)],
            "macro_f1": [round(float(v), 4) for v in np.percentile(macro_f1, tails)],
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


def _probabilities(model: SpectralFusionModel, parts: list[torch.Tensor]) -> np.ndarray:
    with torch.no_grad():
        return torch.softmax(model.classify(*parts), dim=1).numpy()


def ablation_table(model: SpectralFusionModel, test_parts: list[torch.Tensor], train_means: list[torch.Tensor],
                   labels: np.ndarray, class_names: list[str]) -> dict:
    """Accuracy/macro-F1 with all modalities, without each one, and with each one alone."""
    def score(keep: set[str]) -> dict:
        parts = [p if m in keep else mean.expand_as(p)
                 for m, p, mean in zip(MODALITIES, test_parts, train_means, strict=True)]
        metrics = classification_metrics(_probabilities(model, parts), labels, class_names)
        return {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"]}

    table = {"all": score(set(MODALITIES))}
    for m in MODALITIES:
        table[f"without_{m}"] = score(set(MODALITIES) - {m})
    for m in MODALITIES:
        table[f"only_{m}"] = score({m})
    return table


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


def _plot_reliability(reliability: list[dict], ece: float, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    ax.plot([r["bin_confidence"] for r in reliability], [r["accuracy"] for r in reliability], "o-", label="model")
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(f"Reliability (ECE {ece:.3f})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def format_report(metrics: dict) -> str:
    """The evaluation as a short table for a terminal: headline, per class, ablation."""
    intervals = metrics.get("intervals")  # absent from files an older evaluate stage wrote
    low_high = {name: " [{:.3f}, {:.3f}]".format(*intervals[name]) if intervals else ""
                for name in ("accuracy", "macro_f1")}
    lines = [f"test accuracy {metrics['accuracy']:.3f}{low_high['accuracy']}, "
             f"macro-F1 {metrics['macro_f1']:.3f}{low_high['macro_f1']}, "
             f"ECE {metrics['ece']:.3f} on {metrics['test_events']} events",
             f"[...]: {intervals['level']:.0%} bootstrap intervals over the test events" if intervals else
             "(no intervals: re-run the evaluate stage)", "",
             f"{'class':<28}{'precision':>10}{'recall':>8}{'F1':>7}{'n':>5}"]
    for name, row in metrics["per_class"].items():
        lines.append(f"{name:<28}{row['precision']:>10.3f}{row['recall']:>8.3f}{row['f1']:>7.3f}{row['support']:>5}")
    lines += ["", f"{'ablation (missing = training mean)':<40}{'accuracy':>9}{'macro-F1':>10}"]
    for name, row in metrics["ablation"].items():
        lines.append(f"{name:<40}{row['accuracy']:>9.3f}{row['macro_f1']:>10.3f}")
    return "\n".join(lines)


def headline(metrics: dict) -> dict:
    """The few numbers to compare experiments by (DVC's metrics file); flat, so every tool shows them."""
    intervals = metrics["intervals"]
    return {"accuracy": metrics["accuracy"], "accuracy_low": intervals["accuracy"][0],
            "accuracy_high": intervals["accuracy"][1], "macro_f1": metrics["macro_f1"],
            "macro_f1_low": intervals["macro_f1"][0], "macro_f1_high": intervals["macro_f1"][1],
            "ece": metrics["ece"], "test_events": metrics["test_events"]}


def evaluate(model_path: Path, embed_dir: Path, sensors_path: Path, metrics_path: Path, plots_dir: Path,
             batch_size: int = 32, headline_path: Path | None = None) -> dict:
    """Score the exported model on the test split; write metrics JSON (and the headline file) and plots."""
    model, config = load_model(model_path)
    class_names = config["class_names"]
    data = CachedShardDataModule(embed_dir, sensors_path, batch_size=batch_size)
    data.setup("test")
    train_parts, _ = branch_outputs(model, data.loader("train"))
    train_means = [p.mean(dim=0, keepdim=True) for p in train_parts]
    test_parts, labels = branch_outputs(model, data.test_dataloader())
    if labels.size == 0:
        raise ValueError(f"the test split in {embed_dir} is empty: add events or raise decode.splits.test")
    probabilities = _probabilities(model, test_parts)
    metrics = classification_metrics(probabilities, labels, class_names)
    preds = probabilities.argmax(axis=1)
    metrics["intervals"] = bootstrap_intervals(preds, labels, len(class_names))
    metrics["ablation"] = ablation_table(model, test_parts, train_means, labels, class_names)
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
    with open(plots_dir / "reliability.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["bin_confidence", "accuracy", "count"])
        writer.writeheader()
        writer.writerows(metrics["reliability"])
    _plot_confusion(metrics["confusion_matrix"], class_names, plots_dir / "confusion_matrix.png")
    _plot_reliability(metrics["reliability"], metrics["ece"], plots_dir / "reliability.png")
    return metrics
