"""The model card: what the exported model is for, what it was trained on, how well it does and where it fails.

Written by the evaluate stage from the metrics it just computed and the model's own config, so the card beside
`models/model.pt` is always true for that model (numbers are never typed by hand).
"""

from __future__ import annotations

from pathlib import Path

DEMO_EVENTS = "data/demo_events"


def _interval(values: list[float]) -> str:
    return f"[{values[0]:.3f}, {values[1]:.3f}]"


def _selective(selective: dict) -> str:
    if selective["accuracy_kept"] is None:
        return "The flag let no test event through."
    return (f"The test events the flag lets through are right {selective['accuracy_kept']:.1%} of the time "
            f"({selective['kept']} events; all test events: {selective['accuracy_all']:.1%}).")


def model_card(metrics: dict, config: dict, model_path: Path, events_source: str) -> str:
    """Markdown for `models/MODEL_CARD.md`. `events_source` is `data.events`: the demo's synthetic events or the
    user's recordings."""
    backbone, intervals, calibration = config["backbone"], metrics["intervals"], metrics["calibration"]
    noise = calibration["label_noise"]
    synthetic = Path(events_source).as_posix().rstrip("/") == DEMO_EVENTS
    data = ("**synthetic** demo events made by `spectral synth`: they show the pipeline works, not how the model "
            "does on real recordings" if synthetic else f"the recordings in `{events_source}`")
    lines = [
        "# Model card: Spectral fusion classifier",
        "",
        "Written by the `evaluate` stage from `metrics/evaluate.json` and the model's config; do not edit.",
        "",
        "## Intended use",
        "",
        "Sorts one recorded event (video + audio + phone sensors, any subset) into one of "
        f"{len(config['class_names'])} classes: {', '.join(f'`{name}`' for name in config['class_names'])}, with a "
        "calibrated confidence and an out-of-distribution flag. It triages recordings for a person to review; its "
        "answer is not evidence on its own, and an event flagged out of distribution has no trustworthy class.",
        "",
        "## Model",
        "",
        f"- Frame encoder: `{backbone['name']}`, frozen, weights `{backbone['weights']}` "
        f"(sha256 `{backbone['weights_sha256']}`), embeddings in {config['embedding_precision']}",
        f"- Inputs: {config['video']['num_frames']} frames at {config['video']['size']} px, "
        f"{config['audio']['samples'] / config['audio']['sample_rate']:g} s of audio, "
        f"{len(config['sensor_features'])} sensor features; fusion MLP 1600 → 512 → 128 → "
        f"{len(config['class_names'])}",
        f"- File: `{model_path}` ({model_path.stat().st_size / 1e6:.1f} MB), loaded by "
        "`spectral.models.artifact.load_model` or `spectral predict`",
        "",
        "## Training data",
        "",
        f"Trained on {data}. Splits are a stable hash of the event name; the numbers below are on the "
        f"{metrics['test_events']} test events, which training and calibration never saw.",
        "",
        "## Performance (test split, 95 % percentile-bootstrap intervals)",
        "",
        "| metric | value | interval |",
        "|---|---|---|",
        f"| accuracy | {metrics['accuracy']:.3f} | {_interval(intervals['accuracy'])} |",
        f"| macro-F1 | {metrics['macro_f1']:.3f} | {_interval(intervals['macro_f1'])} |",
        f"| ECE (calibrated) | {calibration['after']['ece']:.3f} | {_interval(calibration['after']['ece_interval'])} |",
        f"| NLL (calibrated) | {calibration['after']['nll']:.3f} | {_interval(calibration['after']['nll_interval'])} |",
        "",
        "| class | precision | recall | F1 | test events |",
        "|---|---|---|---|---|",
        *(f"| {name} | {row['precision']:.3f} | {row['recall']:.3f} | {row['f1']:.3f} | {row['support']} |"
          for name, row in metrics["per_class"].items()),
        "",
        "## Calibration",
        "",
        f"Temperature {calibration['temperature']:.3f} and label noise {noise:.4f}, fitted on the validation split: "
        f"every class probability lies between {noise / (len(config['class_names']) - 1):.4f} and {1 - noise:.4f}, "
        "so no answer is ever fully certain.",
        "",
        "## Missing modalities",
        "",
        "| modalities present | accuracy | macro-F1 |",
        "|---|---|---|",
        *(f"| {name} | {row['accuracy']:.3f} | {row['macro_f1']:.3f} |"
          for name, row in metrics["ablation"].items() if "training mean" not in name),
        "",
    ]
    if "ood" in metrics:
        ood = metrics["ood"]
        lines += [
            "## Out of distribution",
            "",
            f"The flag (Mahalanobis distance of the fused features, per modality pattern) separates the "
            f"{ood['ood_events']} events of the OOD set from the test split with AUROC {ood['auroc']:.3f} "
            f"{_interval(ood['auroc_interval'])}; it flags {ood['detection_rate']:.1%} of the OOD set and "
            f"{ood['false_alarm_rate']:.1%} of the test split (false alarms). A flagged event's answer says "
            f"`\"decision\": \"out_of_distribution\"` and carries no confidence. {_selective(ood['selective'])} "
            f"Even unflagged, the model is less sure of unfamiliar media: median confidence "
            f"{ood['answers']['OOD set']['median_confidence']:.3f} on the OOD set against "
            f"{ood['answers']['test split']['median_confidence']:.3f} on the test split (1 − max probability as "
            f"an OOD score: AUROC {ood['alternatives_auroc']['max_softmax']:.3f}). "
            "Media unlike both the training data and the OOD set is untested.",
            "",
        ]
    code = config["provenance"]["code"]["code_sha256"]
    lines += [
        "## Provenance",
        "",
        f"- Code (import closure of the train stage): sha256 `{code}`",
        f"- Embeddings: sha256 `{config['provenance']['embeddings_sha256']}`",
        f"- Sensor table: sha256 `{config['provenance']['sensors_sha256']}`",
        f"- Train params: sha256 `{config['provenance']['params_sha256']}`",
        "",
    ]
    return "\n".join(lines)
