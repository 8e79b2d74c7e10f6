"""Training data: cached embedding shards streamed with WebDataset, joined to the sensor table.

The sensor table is one small row per event, so it is held in memory and looked up by
event name (`spectral.keys`) while the heavy shards stream. Labels come from that table,
not the shards: relabelling an event re-runs the cheap sensors stage, never decode or embed.
Shards are split across nodes and DataLoader workers by WebDataset itself, which is what
lets Lightning's DDP scale this without code changes.
"""

from __future__ import annotations

import io
import random
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pytorch_lightning as pl_lightning
import torch
import webdataset as wds
from torch.utils.data import DataLoader

from spectral.features.sensors import SENSOR_FEATURES
from spectral.io.audio import from_pcm16
from spectral.keys import event_name
from spectral.shards import shard_paths

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def shard_events(shards: list[Path]) -> list[str]:
    """Event names in shards, from tar headers only (no payload is decoded)."""
    names = []
    for shard in shards:
        with tarfile.open(shard) as tar:
            names.extend(event_name(m.name.split(".", 1)[0]) for m in tar.getmembers() if m.name.endswith(".json"))
    return names


def load_sensor_table(path: Path) -> tuple[dict[str, np.ndarray], dict[str, int], dict[str, str]]:
    """(event → float32 feature vector in SENSOR_FEATURES order, NaN = missing; event → label; event → split)."""
    table = pl.read_parquet(path)
    missing = [c for c in ("event", "split", "label", *SENSOR_FEATURES) if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: sensor table lacks columns {missing}; rerun the sensors stage")
    events = table["event"].to_list()
    values = table.select(SENSOR_FEATURES).fill_null(float("nan")).to_numpy().astype(np.float32)
    return (dict(zip(events, values, strict=True)), dict(zip(events, table["label"].to_list(), strict=True)),
            dict(zip(events, table["split"].to_list(), strict=True)))


@dataclass
class JoinReport:
    """Which events of a split reach training, and which are left out and why."""

    split: str
    used: int
    without_sensors: list[str]   # in the embedding shards, but the sensor table has no row
    without_shards: list[str]    # in the sensor table, but decode/embed produced no sample


class CachedShardDataModule(pl_lightning.LightningDataModule):
    """Streams (embeddings [B, N, D], waveform [B, S], sensors [B, F], label [B]) per split."""

    def __init__(self, embed_dir: Path, sensors_path: Path, batch_size: int = 16, num_workers: int = 0,
                 shuffle_buffer: int = 256, seed: int = 0) -> None:
        super().__init__()
        self.embed_dir, self.sensors_path = Path(embed_dir), Path(sensors_path)
        self.batch_size, self.num_workers = batch_size, num_workers
        self.shuffle_buffer, self.seed = shuffle_buffer, seed
        self.sensors: dict[str, np.ndarray] = {}
        self.labels: dict[str, int] = {}
        self.joins: dict[str, JoinReport] = {}
        self.train_keys: list[str] = []
        self._shuffle_rng = random.Random(seed)

    def setup(self, stage: str | None = None) -> None:
        if self.sensors:
            return
        self.sensors, self.labels, splits = load_sensor_table(self.sensors_path)
        for split in ("train", "val", "test"):
            keys = shard_events(shard_paths(self.embed_dir, split))
            lacking = [k for k in keys if k not in self.sensors]
            in_shards = set(keys)
            unmatched = sorted(e for e, s in splits.items() if s == split and e not in in_shards)
            self.joins[split] = JoinReport(split, len(keys) - len(lacking), lacking, unmatched)
            if split == "train":
                self.train_keys = [k for k in keys if k in self.sensors]
        if self.joins["train"].used == 0:
            raise ValueError(f"no training events with both cached shards in {self.embed_dir} and sensor rows in "
                             f"{self.sensors_path}")

    def left_out(self) -> list[dict]:
        """Every event one input has and the other lacks, with why it cannot be used: {event, split, reason}."""
        rows = []
        for split, join in self.joins.items():
            rows += [{"event": e, "split": split, "reason": f"no row in {self.sensors_path} (the sensors stage "
                                                            f"rejected it; see its report)"}
                     for e in join.without_sensors]
            rows += [{"event": e, "split": split, "reason": f"no sample in {self.embed_dir} (rejected by the "
                                                            f"decode stage, see its report, or not embedded)"}
                     for e in join.without_shards]
        return rows

    def used_events(self, split: str) -> list[str]:
        """Event names in the order an unshuffled single-process loader of `split` yields them."""
        return [e for e in shard_events(shard_paths(self.embed_dir, split)) if e in self.sensors]

    def train_labels(self) -> np.ndarray:
        """Labels of the training events, from the sensor table: no pass over the shards."""
        return np.array([self.labels[k] for k in self.train_keys], dtype=np.int64)

    def train_sensor_statistics(self) -> tuple[torch.Tensor, torch.Tensor]:
        """NaN-aware mean/std of the training events' sensor features."""
        rows = np.stack([self.sensors[k] for k in self.train_keys])
        return torch.from_numpy(np.nanmean(rows, axis=0)), torch.from_numpy(np.nanstd(rows, axis=0))

    def _samples(self, split: str, shuffle: bool = False) -> wds.WebDataset:
        urls = [str(p) for p in shard_paths(self.embed_dir, split)]
        dataset = wds.WebDataset(urls, shardshuffle=len(urls) if shuffle else False, seed=self.seed,
                                 nodesplitter=wds.split_by_node, empty_check=False)
        dataset = dataset.select(lambda s: event_name(s["__key__"]) in self.sensors)
        if shuffle and self.shuffle_buffer > 1:
            dataset = dataset.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer, rng=self._shuffle_rng)
        return dataset.map(self._to_tensors)

    def _to_tensors(self, sample: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        embeddings = torch.from_numpy(np.load(io.BytesIO(sample["emb.npy"])).astype(np.float32))
        waveform = torch.from_numpy(from_pcm16(np.load(io.BytesIO(sample["audio.npy"]))))
        name = event_name(sample["__key__"])
        return embeddings, waveform, torch.from_numpy(self.sensors[name].copy()), int(self.labels[name])

    def loader(self, split: str, shuffle: bool = False) -> DataLoader:
        """Batches of one split; evaluation also reads the train split through it (for ablation means)."""
        return DataLoader(self._samples(split, shuffle=shuffle), batch_size=self.batch_size,
                          num_workers=self.num_workers, persistent_workers=False)

    def train_dataloader(self) -> DataLoader:
        return self.loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self.loader("val")

    def test_dataloader(self) -> DataLoader:
        return self.loader("test")
