"""Out-of-distribution score: Mahalanobis distance of an event's fused features to the nearest class.

A softmax is confident far from its training data (the demo's model called a cartoon over digital
silence "humanoid" at 0.999), so "is this like anything I was trained on" needs its own score. The
class-conditional Gaussian with one shared covariance (Lee et al., NeurIPS 2018) is fitted on the
training events' penultimate features; its threshold is the 95th percentile of the validation
events' scores, so 95 % of in-distribution events are accepted by construction. Which modalities an
event has moves its features (an absent branch contributes its learned "absent" embedding), so each
of the seven modality patterns gets its own means, covariance and threshold: an event classified
from video and sensors alone is compared with training events seen the same way.
"""

from __future__ import annotations

import torch
from torch import nn

from spectral.models.modalities import MODALITIES, pattern_index

PATTERNS = 2 ** len(MODALITIES) - 1
ACCEPTED_FRACTION = 0.95
SHRINKAGE = 1e-3  # ridge on the covariance, relative to its mean variance: a few hundred events, 128 dimensions


class MahalanobisDetector(nn.Module):
    """Per modality pattern: class means [C, D], shared precision [D, D], threshold; all buffers (exported)."""

    def __init__(self, num_classes: int, feature_dim: int) -> None:
        super().__init__()
        self.register_buffer("means", torch.zeros(PATTERNS, num_classes, feature_dim))
        self.register_buffer("precision", torch.zeros(PATTERNS, feature_dim, feature_dim))
        self.register_buffer("threshold", torch.full((PATTERNS,), float("inf")))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def fit_pattern(self, pattern: int, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Class means and the shared (pooled within-class) covariance of training features, in float64."""
        features = features.double()
        means = torch.stack([features[labels == c].mean(dim=0) if (labels == c).any()
                             else torch.full_like(features[0], float("inf")) for c in range(self.means.shape[1])])
        centred = features - means[labels]
        covariance = centred.T @ centred / max(len(features) - 1, 1)
        ridge = SHRINKAGE * covariance.diagonal().mean().clamp_min(1e-12)
        covariance += ridge * torch.eye(covariance.shape[0], dtype=covariance.dtype)
        self.means[pattern] = means.float()
        self.precision[pattern] = torch.linalg.inv(covariance).float()

    @torch.no_grad()
    def set_threshold(self, pattern: int, validation_scores: torch.Tensor) -> None:
        self.threshold[pattern] = torch.quantile(validation_scores.double(), ACCEPTED_FRACTION).float()

    def score(self, features: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """[B] squared distance to the nearest class mean under the event's pattern; higher = less familiar."""
        patterns = pattern_index(present)
        means, precision = self.means[patterns], self.precision[patterns]        # [B, C, D], [B, D, D]
        offsets = features.float().unsqueeze(1) - means                          # [B, C, D]
        distances = torch.einsum("bcd,bde,bce->bc", offsets, precision, offsets)
        return distances.min(dim=1).values

    def in_distribution(self, scores: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        return scores <= self.threshold[pattern_index(present)]
