"""The one rule between an event's folder name and its WebDataset sample key.

WebDataset groups tar members into samples by cutting each member name at the first dot
of its basename, so `event_2026.11.27_porao.frames.npy` would be torn into the key
`event_2026` and the extension `11.27_porao.frames.npy`. Event names are the users'
(dates with dots, spaces, accents), so the key percent-encodes the dot and the percent
sign and nothing else: keys stay readable, and `event_name(sample_key(n)) == n` for any
name a folder can have.
"""

from __future__ import annotations

from urllib.parse import unquote

_ESCAPES = {"%": "%25", ".": "%2E"}


def sample_key(event_name: str) -> str:
    """The `__key__` shards store for an event folder name."""
    return "".join(_ESCAPES.get(ch, ch) for ch in event_name)


def event_name(key: str) -> str:
    """The event folder name a `__key__` stands for (inverse of sample_key)."""
    return unquote(key, errors="strict")
