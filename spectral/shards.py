"""Deterministic, crash-safe WebDataset shard writing and reading.

Byte-identical shards are what let DVC's cache hit across machines: members carry a fixed
mtime, owner and mode, samples arrive in sorted key order, and webdataset's own TarWriter
does the tar work. A shard is written under a temporary name and renamed when complete,
so an interrupted stage never leaves a tar that looks finished.
"""

from __future__ import annotations

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


class ShardWriter:
    """Writes `{prefix}-{n:06d}.tar`, starting a new shard at maxcount samples or maxsize bytes."""

    def __init__(self, out_dir: Path, prefix: str, maxcount: int, maxsize: int) -> None:
        self.out_dir, self.prefix = Path(out_dir), prefix
        self.maxcount, self.maxsize = maxcount, maxsize
        self.shards: list[Path] = []
        self._current: AtomicTarWriter | None = None
        self._count = self._size = 0

    def write(self, sample: dict) -> None:
        if self._current is None or self._count >= self.maxcount or self._size >= self.maxsize:
            if self._current is not None:
                self._current.close()
            self._current = AtomicTarWriter(self.out_dir / f"{self.prefix}-{len(self.shards):06d}.tar")
            self.shards.append(self._current.path)
            self._count = self._size = 0
        self._size += self._current.write(sample)
        self._count += 1

    def close(self) -> list[Path]:
        if self._current is not None:
            self._current.close()
            self._current = None
        return self.shards

    def abort(self) -> None:
        """Drop the shard in progress; completed shards stay (they are whole)."""
        if self._current is not None:
            self._current.abort()
            self.shards.pop()
            self._current = None


def remove_shards(directory: Path) -> None:
    """Delete the shards (complete or half-written) a previous run left, so none outlives its inputs."""
    for stale in [*Path(directory).glob("*.tar"), *Path(directory).glob("*.tar.tmp")]:
        stale.unlink()


def shard_paths(directory: Path, prefix: str) -> list[Path]:
    """Completed shards of one split, in order."""
    return sorted(Path(directory).glob(f"{prefix}-[0-9][0-9][0-9][0-9][0-9][0-9].tar"))


def read_samples(shards: list[Path], *, split_by_node: bool = False) -> Iterator[dict]:
    """Decoded samples (npy → ndarray, json → dict) streamed from shards in order.

    With split_by_node, each distributed rank and DataLoader worker reads its own shards
    (webdataset's node/worker splitting); without, every reader sees every sample.
    """
    urls = [str(p) for p in shards]
    if not urls:
        return iter(())
    nodesplitter = wds.split_by_node if split_by_node else wds.single_node_only
    dataset = wds.WebDataset(urls, shardshuffle=False, nodesplitter=nodesplitter,
                             workersplitter=wds.split_by_worker, empty_check=False).decode()
    return iter(dataset)
