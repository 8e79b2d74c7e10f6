"""The three modalities and the presence mask that travels with every sample.

A phone loses a modality now and then (no microphone permission, a sensor that never started),
so "which branches does this event have" is part of the input: a bool mask [B, 3] in
MODALITIES order. Its seven non-empty combinations index per-pattern statistics (spectral.models.ood).
"""

from __future__ import annotations

import torch

MODALITIES: tuple[str, ...] = ("video", "audio", "sensors")


def pattern_bits(present: torch.Tensor) -> torch.Tensor:
    """[B] bit code 0..7 of each row's mask (video=1, audio=2, sensors=4); 0: no modality."""
    return (present.long() * torch.tensor([1, 2, 4], device=present.device)).sum(dim=1)


def pattern_index(present: torch.Tensor) -> torch.Tensor:
    """[B] index 0..6 of each row's modality combination: its bit code minus one."""
    bits = pattern_bits(present)
    if (bits == 0).any():
        raise ValueError("an event needs at least one modality")
    return bits - 1


def presence_patterns() -> list[tuple[bool, bool, bool]]:
    """The seven non-empty presence masks, in pattern_index order."""
    return [tuple(bool(bits >> i & 1) for i in range(len(MODALITIES))) for bits in range(1, 8)]


def describe(present: tuple[bool, ...]) -> str:
    """'all', 'without audio', 'only video' ..."""
    absent = [m for m, p in zip(MODALITIES, present, strict=True) if not p]
    if not absent:
        return "all"
    if len(absent) == 1:
        return f"without {absent[0]}"
    return "only " + next(m for m, p in zip(MODALITIES, present, strict=True) if p)
