"""Sensor branch: standardise, impute and flag missing values, then an MLP.

Missing features arrive as NaN in fixed positions (spectral.features.sensors). They are
imputed with the training mean (0 after standardising) and a per-feature missing
indicator is appended, so the MLP can tell "average" from "not measured".
"""

from __future__ import annotations

import torch
from torch import nn


class SensorEncoder(nn.Module):
    """[B, F] raw features (NaN = missing) → [B, embedding_dim]; input_dim = 2F (values + mask)."""

    def __init__(self, num_features: int, embedding_dim: int = 64) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(num_features))
        self.register_buffer("std", torch.ones(num_features))
        self.mlp = nn.Sequential(
            nn.Linear(2 * num_features, 128), nn.ReLU(), nn.Dropout(0.3),
            nn.Linear(128, 64), nn.ReLU(), nn.Dropout(0.2),
            nn.Linear(64, embedding_dim),
        )
        self.embedding_dim = embedding_dim

    def set_statistics(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Training-set statistics, stored in the state dict so inference standardises identically."""
        self.mean.copy_(torch.nan_to_num(mean, nan=0.0))
        self.std.copy_(torch.where(torch.isfinite(std) & (std > 1e-8), std, torch.ones_like(std)))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        missing = torch.isnan(features)
        standardized = torch.where(missing, torch.zeros_like(features), (features - self.mean) / self.std)
        return self.mlp(torch.cat([standardized.clamp(-10, 10), missing.float()], dim=1))
