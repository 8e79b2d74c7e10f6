"""After training, before export: fit the class bias of each absent-modality pattern, the calibration and
the out-of-distribution detector.

All are fitted on held-out data the optimiser never saw, in one pass over cached branch
embeddings (the branches are the expensive part; the seven modality patterns only re-run the
small fusion MLP). First, per pattern with a modality absent, a class bias on the logits
(SpectralFusionModel.logits) fitted for validation NLL with a ridge: the only step that may change a
predicted class, and only for events missing a modality. Then the calibration, a temperature and a
label-noise floor (spectral.models.calibration), fitted for validation NLL: it changes confidences,
never the predicted class. The detector's statistics come from the training split and its thresholds
from validation (spectral.models.ood).
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch

from spectral.models.calibration import MAX_LABEL_NOISE, calibrated_probabilities, with_label_noise
from spectral.models.fusion import SpectralFusionModel
from spectral.models.modalities import describe, presence_patterns

log = logging.getLogger(__name__)
MIN_VALIDATION_EVENTS = 100  # below this the temperature and the 95 % thresholds are rough: said, not refused
# log grids: T over 0.05–20, ε over 1e-4–MAX_LABEL_NOISE plus 0; coarse, then fine around the coarse best
TEMPERATURE_RANGE, LABEL_NOISE_RANGE = (0.05, 20.0), (1e-4, MAX_LABEL_NOISE)
COARSE_STEPS, FINE_STEPS = 200, 20
# The least probability the most confident training or validation event leaves to the other classes: the NLL fit
# gains nothing from it on events it already gets right, so without a bound a small validation set (or an easy
# one) drives T down until softmax(z/T) is 1 to machine precision and different events share one answer.
# 1e-5 is ten steps of the answers' six decimals; it bounds T from below (spectral.models.posthoc.min_temperature).
MIN_RESIDUAL = 1e-5
# the class-bias ridge, on mean NLL: at 0.01 the demo's biases stay within ±0.8 logit while a collapsed
# pattern's boundary moves back (docs/trusting-a-prediction.md); a pattern with fewer validation events
# than MIN_BIAS_EVENTS gets no bias
BIAS_RIDGE, MIN_BIAS_EVENTS = 0.01, 20


@torch.no_grad()
def branch_outputs(model: SpectralFusionModel, loader) -> tuple[list[torch.Tensor], torch.Tensor, np.ndarray]:
    """Per-branch embeddings of every sample in loader order, the presence masks, and labels."""
    parts: list[list[torch.Tensor]] = [[], [], []]
    masks, labels = [], []
    for video, audio, sensors, present, label in loader:
        for store, emb in zip(parts, model.branch_embeddings(video, audio, sensors), strict=True):
            store.append(emb)
        masks.append(present)
        labels.append(label)
    return [torch.cat(p) for p in parts], torch.cat(masks), torch.cat(labels).numpy()


def pattern_mask(present: torch.Tensor, pattern: tuple[bool, ...]) -> torch.Tensor:
    """The events' own mask with the pattern's absent modalities switched off."""
    return present & torch.tensor(pattern).expand_as(present)


def pattern_rows(present: torch.Tensor, pattern: tuple[bool, ...]) -> torch.Tensor:
    """[B] bool: the events that have every modality of the pattern. Masked, they are that pattern exactly; an
    event recorded without one of them would be another pattern, whose features and boundary differ."""
    return (pattern_mask(present, pattern) == torch.tensor(pattern)).all(dim=1)


def nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0, label_noise: float = 0.0) -> float:
    probabilities = calibrated_probabilities(logits.double(), temperature, label_noise)
    return float(-probabilities[torch.arange(len(labels)), torch.as_tensor(labels)].log().mean())


def _log_grid(low: float, high: float, steps: int) -> torch.Tensor:
    return torch.exp(torch.linspace(math.log(low), math.log(high), steps + 1, dtype=torch.float64))


def _grid_nll(logits: torch.Tensor, labels: torch.Tensor, temperatures: torch.Tensor,
              floors: torch.Tensor) -> torch.Tensor:
    """[T, ε] NLL of calibrated_probabilities over every pair of the two grids (one T at a time: memory
    stays [ε, events])."""
    floors, rows = floors[:, None], torch.arange(len(labels))
    losses = []
    for temperature in temperatures:
        picked = torch.softmax(logits / temperature, dim=1)[rows, labels]
        losses.append(-with_label_noise(picked, floors, logits.shape[1]).log().mean(dim=1))
    return torch.stack(losses)


def min_temperature(logits: torch.Tensor, min_residual: float = MIN_RESIDUAL) -> float:
    """The least T at which every event of `logits` leaves at least about `min_residual` to the classes it does
    not pick: the runner-up alone gets exp(-gap/T) / (1 + Σ exp(-gap_c/T)) for the gap between the two largest
    logits, so T ≥ largest gap / log(1 / min_residual)."""
    top = logits.double().topk(2, dim=1).values
    return float((top[:, 0] - top[:, 1]).max()) / math.log(1 / min_residual)


def fit_calibration(logits: torch.Tensor, labels: torch.Tensor, label_noise: bool = True,
                    also_bounded: torch.Tensor | None = None) -> tuple[float, float]:
    """(T, ε) minimising the NLL of calibrated_probabilities: a log grid (T from max(0.05, min_temperature)
    to 20, ε in 0 and 1e-4–0.4), then a 10× finer grid one coarse step either side of its best (T to ~0.3 %,
    ε to ~1 %). A grid, not an optimiser, so the same logits give the same calibration on every machine.
    Fitting ε with T keeps a few mislabeled events from inflating T. label_noise=False: temperature scaling
    alone (ε = 0), the baseline bench/calibration.py measures against. `also_bounded`: more logits whose
    events must leave MIN_RESIDUAL too (the training split's: the events a model is surest of, and more of
    them than a small validation split has)."""
    logits, labels = logits.double(), torch.as_tensor(labels)
    bounded = logits if also_bounded is None else torch.cat([logits, also_bounded.double()])
    low = max(TEMPERATURE_RANGE[0], min_temperature(bounded))
    temperatures = _log_grid(low, max(TEMPERATURE_RANGE[1], 2 * low), COARSE_STEPS)
    floors = torch.zeros(1, dtype=torch.float64)
    if label_noise:
        floors = torch.cat([floors, _log_grid(*LABEL_NOISE_RANGE, COARSE_STEPS // 2)])
    losses = _grid_nll(logits, labels, temperatures, floors)
    t, e = divmod(int(losses.argmin()), len(floors))
    fine_t = _log_grid(float(temperatures[max(t - 1, 0)]), float(temperatures[min(t + 1, len(temperatures) - 1)]),
                       FINE_STEPS)
    fine_e = floors[e:e + 1] if e == 0 else _log_grid(float(floors[max(e - 1, 1)]),
                                                      float(floors[min(e + 1, len(floors) - 1)]), FINE_STEPS)
    if e == 1:  # the coarse best is the smallest non-zero floor: zero stays a candidate
        fine_e = torch.cat([torch.zeros(1, dtype=torch.float64), fine_e])
    losses = _grid_nll(logits, labels, fine_t, fine_e)
    t, e = divmod(int(losses.argmin()), len(fine_e))
    return float(fine_t[t]), float(fine_e[e])


def fit_class_bias(logits: torch.Tensor, labels: torch.Tensor, ridge: float = BIAS_RIDGE) -> torch.Tensor:
    """[K] bias b minimising mean NLL of softmax(logits + b) + ridge·|b|²: Newton's method in float64 (the
    objective is strictly convex), halving a step until the objective falls; rounded to 1e-4 so machines
    whose last bits differ store the same bias."""
    logits, labels = logits.double(), torch.as_tensor(labels)
    onehot = torch.nn.functional.one_hot(labels, logits.shape[1]).double()

    def objective(b: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(logits + b, labels) + ridge * b.square().sum()

    bias = torch.zeros(logits.shape[1], dtype=torch.float64)
    for _ in range(50):
        p = torch.softmax(logits + bias, dim=1)
        gradient = (p - onehot).mean(dim=0) + 2 * ridge * bias
        hessian = torch.diag(p.mean(dim=0)) - p.T @ p / len(p) + 2 * ridge * torch.eye(len(bias), dtype=torch.float64)
        step, current = torch.linalg.solve(hessian, gradient), objective(bias)
        while objective(bias - step) > current and step.abs().max() > 1e-12:
            step = step / 2
        bias = bias - step
        if step.abs().max() < 1e-10:
            break
    return torch.round(bias, decimals=4).float()


@torch.no_grad()
def fit_pattern_biases(model: SpectralFusionModel, parts: list[torch.Tensor], present: torch.Tensor,
                       labels: np.ndarray, min_events: int = MIN_BIAS_EVENTS) -> dict[str, list[float] | None]:
    """Set model.pattern_bias from scratch: per pattern with a modality absent, fit_class_bias on the events
    that have every modality of the pattern (masked, they are that pattern exactly; an event recorded
    without one of them is not); None and no bias below min_events."""
    model.pattern_bias.zero_()
    biases = {}
    for index, pattern in enumerate(presence_patterns()):
        if all(pattern):
            continue  # the pattern training optimised: its boundary is the model's own
        mask, rows = pattern_mask(present, pattern), pattern_rows(present, pattern)
        if int(rows.sum()) < min_events:
            biases[describe(pattern)] = None
            continue
        logits = model.classify(*[p[rows] for p in parts], mask[rows])
        model.pattern_bias[index] = fit_class_bias(logits, torch.from_numpy(labels)[rows.numpy()])
        biases[describe(pattern)] = [round(float(b), 4) for b in model.pattern_bias[index]]
    return biases


@torch.no_grad()
def fit_embedding_bounds(model: SpectralFusionModel, parts: list[torch.Tensor], present: torch.Tensor) -> None:
    """model.embedding_low/high: per dimension, the range of the training events' branch embeddings (events
    that have the modality); a branch no training event has stays unbounded."""
    lows, highs = [], []
    for i, part in enumerate(parts):
        rows = part[present[:, i]].float()
        unbounded = torch.full_like(part[0], float("inf"))
        lows.append(rows.min(dim=0).values if len(rows) else -unbounded)
        highs.append(rows.max(dim=0).values if len(rows) else unbounded)
    model.embedding_low.copy_(torch.cat(lows))
    model.embedding_high.copy_(torch.cat(highs))


@torch.no_grad()
def fit_posthoc(model: SpectralFusionModel, train_loader, val_loader) -> dict:
    """Set model.embedding_low/high, model.pattern_bias, model.temperature, model.label_noise and model.ood in
    place (model in eval mode); return what was fitted."""
    model.eval()
    train_parts, train_present, train_labels = branch_outputs(model, train_loader)
    val_parts, val_present, val_labels = branch_outputs(model, val_loader)
    warning = None
    if len(val_labels) < MIN_VALIDATION_EVENTS:
        warning = (f"only {len(val_labels)} validation events fitted the calibration and the OOD thresholds "
                   f"(a 95 % threshold needs ~{MIN_VALIDATION_EVENTS}+): raise splits.val or add events")
        log.warning(warning)
    fit_embedding_bounds(model, train_parts, train_present)
    biases = fit_pattern_biases(model, val_parts, val_present, val_labels)
    val_logits = model.classify(*val_parts, val_present)
    temperature, label_noise = fit_calibration(val_logits, torch.from_numpy(val_labels),
                                               also_bounded=model.classify(*train_parts, train_present))
    model.temperature.fill_(temperature)
    model.label_noise.fill_(label_noise)
    thresholds = {}
    for index, pattern in enumerate(presence_patterns()):
        # events kept without one of this pattern's modalities (missing_modality: keep) are another pattern
        train_mask, val_mask = pattern_mask(train_present, pattern), pattern_mask(val_present, pattern)
        train_rows, val_rows = pattern_rows(train_present, pattern), pattern_rows(val_present, pattern)
        if not train_rows.any() or not val_rows.any():
            thresholds[describe(pattern)] = None  # never fitted: the threshold stays inf, nothing is flagged
            continue
        train_features = model.fused([p[train_rows] for p in train_parts], train_mask[train_rows], bounded=False)
        model.ood.fit_pattern(index, train_features, torch.from_numpy(train_labels)[train_rows])
        val_features = model.fused([p[val_rows] for p in val_parts], val_mask[val_rows], bounded=False)
        model.ood.set_threshold(index, model.ood.score(val_features, val_mask[val_rows]))
        thresholds[describe(pattern)] = round(float(model.ood.threshold[index]), 4)
    model.ood.fitted.fill_(True)
    fitted = {"pattern_bias": biases, "temperature": round(temperature, 4), "label_noise": round(label_noise, 5),
              "val_nll_before": round(nll(val_logits, torch.from_numpy(val_labels)), 4),
              "val_nll_after": round(nll(val_logits, torch.from_numpy(val_labels), temperature, label_noise), 4),
              "ood_thresholds": thresholds, "fit_events": {"train": len(train_labels), "val": len(val_labels)},
              "warning": warning}
    log.info("post-hoc fit: %s", fitted)
    return fitted
