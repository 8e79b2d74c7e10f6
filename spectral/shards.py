"""Deterministic, crash-safe WebDataset shard writing and reading.

Byte-identical shards are what let DVC's cache hit across machines: members carry a fixed
mtime, owner and mode, samples arrive in sorted key order, and webdataset's own TarWriter
does the tar work. A shard is written under a temporary name and renamed when complete,
so an interrupted stage never leaves a tar that looks finished, and a stage deletes only
files whose names it writes.
"""

from __future__ import annotations

import re
import tarfile
from collections.abc import Iterator
from pathlib import Path

import webdataset as wds

FIXED_MTIME = 0.0
FIXED_OWNER = "spectral"
FIXED_MODE = 0o444


class AtomicTarWriter:
    """One tar file written under `NAME.tmp` and renamed to NAME only when closed cleanly."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._tmp = self.path.with_name(self.path.name + ".tmp")
        self._writer = wds.TarWriter(str(self._tmp), user=FIXED_OWNER, group=FIXED_OWNER,
                                     mode=FIXED_MODE, mtime=FIXED_MTIME)

    def write(self, sample: dict) -> int:
        """Write one sample dict (`__key__` plus extension → bytes/str/array); returns bytes written."""
        return self._writer.write(sample)

    def close(self) -> Path:
        self._writer.close()
        self._tmp.replace(self.path)
        return self.path

    def abort(self) -> None:
        self._writer.close()
        self._tmp.unlink(missing_ok=True)


_SHARD_NAME = re.compile(r"(?P<split>train|val|test)-[0-9a-f]{16}\.tar")
_OWNED = re.compile(r"(?:train|val|test)-[0-9a-f]{16}\.tar(?:\.tmp)?")  # what the stages write, and its temp


def shard_paths(directory: Path, prefix: str) -> list[Path]:
    """Completed shards of one split, sorted by file name (names are content-defined, see spectral.incremental)."""
    return sorted(p for p in Path(directory).glob(f"{prefix}-*.tar")
                  if (match := _SHARD_NAME.fullmatch(p.name)) and match["split"] == prefix)


def remove_stale_shards(directory: Path, keep: set[str], legacy: set[str] = frozenset()) -> list[str]:
    """Delete shard files the stages wrote (or left half-written) that are not in `keep`.

    Only the stages' own names (`{split}-{16 hex}.tar`, and `.tmp`) are touched, plus `legacy`:
    the files an old-layout report listed. A run killed after publishing a shard has not recorded
    it yet, so the name, not the index, decides; a user's `notes.tar` or `train-000000.tar` in the
    output folder survives. Returns the names removed.
    """
    removed = []
    for path in sorted(Path(directory).iterdir()) if Path(directory).is_dir() else []:
        owned = _OWNED.fullmatch(path.name) or path.name in legacy
        if path.is_file() and owned and path.name not in keep:
            path.unlink()
            removed.append(path.name)
    return removed


def read_samples(shards: list[Path]) -> Iterator[dict]:
    """Decoded samples (npy → ndarray, json → dict) streamed from shards in order: for looking inside a
    shard (training reads them by random access, spectral.data)."""
    urls = [str(p) for p in shards]
    if not urls:
        return iter(())
    return iter(wds.WebDataset(urls, shardshuffle=False, nodesplitter=None, empty_check=False).decode())


def raw_samples(shard: Path) -> Iterator[dict]:
    """Samples of one shard as written, member bytes untouched (`__key__` plus extension → bytes).

    For copying unchanged samples into a rewritten shard without decoding and re-encoding them.
    """
    with tarfile.open(shard) as tar:
        sample: dict = {}
        for member in tar:
            key, _, extension = member.name.partition(".")
            if sample and key != sample["__key__"]:
                yield sample
                sample = {}
            sample["__key__"] = key
            sample[extension] = tar.extractfile(member).read()
        if sample:
            yield sample
