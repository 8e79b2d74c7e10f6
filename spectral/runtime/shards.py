"""Deterministic, crash-safe WebDataset shard writing and reading.

Byte-identical shards are what let DVC's cache hit across machines: members carry a fixed
mtime, owner and mode, samples arrive in sorted key order, and webdataset's own TarWriter
does the tar work. A shard is written under a temporary name and renamed when complete,
so an interrupted stage never leaves a tar that looks finished (what a stage may delete:
spectral.runtime.reuse).
"""

from __future__ import annotations

import re
import tarfile
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import webdataset as wds

FIXED_MTIME = 0.0
FIXED_OWNER = "spectral"
FIXED_MODE = 0o444


class AtomicTarWriter:
    """One tar file written under `NAME.tmp` and renamed to NAME when its `with` block ends cleanly.

    On any exception the temp file is removed, and a shard that received no sample is never
    created (`path` stays None): no hand-written abort paths in the stages."""

    def __init__(self, path: Path) -> None:
        self.target = Path(path)
        self._tmp = self.target.with_name(self.target.name + ".tmp")
        self._writer = wds.TarWriter(str(self._tmp), user=FIXED_OWNER, group=FIXED_OWNER,
                                     mode=FIXED_MODE, mtime=FIXED_MTIME)
        self.samples = 0
        self.path: Path | None = None
        self._closed = False

    def write(self, sample: dict) -> None:
        """Write one sample dict (`__key__` plus extension → bytes/str/array)."""
        self._writer.write(sample)
        self.samples += 1

    def commit(self) -> Path | None:
        """Publish the shard under its name (None when it received no sample); a second call does nothing."""
        if not self._closed:
            self._closed = True
            self._writer.close()
            if self.samples:
                self._tmp.replace(self.target)
                self.path = self.target
            else:
                self._tmp.unlink(missing_ok=True)
        return self.path

    def discard(self) -> None:
        """Remove the unfinished shard; after commit() it does nothing."""
        if not self._closed:
            self._closed = True
            self._writer.close()
            self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> AtomicTarWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        if kind is None:
            self.commit()
        else:
            self.discard()


_SHARD_NAME = re.compile(r"(?P<split>train|val|test)-[0-9a-f]{16}\.tar")


def shard_split(file: str) -> str | None:
    """The split a stage's shard file name says (`train-0123456789abcdef.tar` → train); None for other names."""
    match = _SHARD_NAME.fullmatch(file)
    return match["split"] if match else None


def shard_paths(directory: Path, prefix: str) -> list[Path]:
    """Completed shards of one split, sorted by file name (content-defined names: spectral.runtime.incremental)."""
    return sorted(p for p in Path(directory).glob(f"{prefix}-*.tar") if shard_split(p.name) == prefix)


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
