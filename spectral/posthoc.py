"""After training, before export: fit the softmax temperature and the out-of-distribution detector.

Both are fitted on held-out data the optimiser never saw, in one pass over cached branch
embeddings (the branches are the expensive part; the seven modality patterns only re-run the
small fusion MLP). Temperature scaling (Guo et al., ICML 2017) divides the logits by one scalar
fitted for validation NLL: it changes confidences, never the predicted class. The detector's
statistics come from the training split and its thresholds from validation (spectral.models.ood).
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch

from spectral.models.fusion import SpectralFusionModel
from spectral.models.modalities import describe, presence_patterns

log = logging.getLogger(__name__)
MIN_VALIDATION_EVENTS = 100  # below this the temperature and the 95 % thresholds are rough: said, not refused
TEMPERATURE_GRID = torch.exp(torch.linspace(math.log(0.05), math.log(20.0), 2001, dtype=torch.float64))


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


def nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float | torch.Tensor = 1.0) -> float:
    return float(torch.nn.functional.cross_entropy(logits.double() / temperature, labels))


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The T minimising NLL of softmax(logits / T) on a log grid from 0.05 to 20 (step 0.3 %): a grid, not
    an optimiser, so the same logits give the same T on every machine."""
    logits, labels = logits.double(), torch.as_tensor(labels)
    losses = torch.stack([torch.nn.functional.cross_entropy(logits / t, labels) for t in TEMPERATURE_GRID])
    return float(TEMPERATURE_GRID[int(losses.argmin())])


@torch.no_grad()
def fit_posthoc(model: SpectralFusionModel, train_loader, val_loader) -> dict:
    """Set model.temperature and model.ood in place (model in eval mode); return what was fitted."""
    model.eval()
    train_parts, train_present, train_labels = branch_outputs(model, train_loader)
    val_parts, val_present, val_labels = branch_outputs(model, val_loader)
    warning = None
    if len(val_labels) < MIN_VALIDATION_EVENTS:
        warning = (f"only {len(val_labels)} validation events fitted the temperature and the OOD thresholds "
                   f"(a 95 % threshold needs ~{MIN_VALIDATION_EVENTS}+): raise splits.val or add events")
        log.warning(warning)
    val_logits = model.classify(*val_parts, val_present)
    temperature = fit_temperature(val_logits, torch.from_numpy(val_labels))
    model.temperature.fill_(temperature)
    thresholds = {}
    for index, pattern in enumerate(presence_patterns()):
        # events kept without a modality (missing_modality: keep) may have none of this pattern's: left out
        train_mask, val_mask = pattern_mask(train_present, pattern), pattern_mask(val_present, pattern)
        train_rows, val_rows = train_mask.any(dim=1), val_mask.any(dim=1)
        if not train_rows.any() or not val_rows.any():
            thresholds[describe(pattern)] = None  # never fitted: the threshold stays inf, nothing is flagged
            continue
        train_features = model.fused([p[train_rows] for p in train_parts], train_mask[train_rows])
        model.ood.fit_pattern(index, train_features, torch.from_numpy(train_labels)[train_rows])
        val_features = model.fused([p[val_rows] for p in val_parts], val_mask[val_rows])
        model.ood.set_threshold(index, model.ood.score(val_features, val_mask[val_rows]))
        thresholds[describe(pattern)] = round(float(model.ood.threshold[index]), 4)
    model.ood.fitted.fill_(True)
    fitted = {"temperature": round(temperature, 4),
              "val_nll_before": round(nll(val_logits, torch.from_numpy(val_labels)), 4),
              "val_nll_after": round(nll(val_logits, torch.from_numpy(val_labels), temperature), 4),
              "ood_thresholds": thresholds, "fit_events": {"train": len(train_labels), "val": len(val_labels)},
              "warning": warning}
    log.info("post-hoc fit: %s", fitted)
    return fitted
