"""Train/val/test assignment by a stable hash of the event id.

A hash, not a shuffle: adding or removing events never moves an existing event to another
split, so metrics stay comparable as the dataset grows and no event leaks from test to train.
"""

from __future__ import annotations

import hashlib

SPLITS: tuple[str, ...] = ("train", "val", "test")


def assign_split(event_id: str, fractions: dict[str, float]) -> str:
    """The split of `event_id`, given fractions for train/val/test that sum to 1."""
    total = sum(fractions.get(name, 0.0) for name in SPLITS)
    if abs(total - 1.0) > 1e-6 or any(fractions.get(name, 0.0) < 0 for name in SPLITS):
        raise ValueError(f"split fractions must be >= 0 and sum to 1, got {fractions}")
    # surrogateescape: a folder name that is not UTF-8 still gets a split (its event is rejected later)
    digest = hashlib.sha256(event_id.encode("utf-8", "surrogateescape")).digest()
    position = int.from_bytes(digest[:8], "big") / 2**64
    cumulative = 0.0
    for name in SPLITS:
        cumulative += fractions.get(name, 0.0)
        if position < cumulative:
            return name
    return SPLITS[-1]
