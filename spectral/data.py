"""Training data: cached embedding shards read by random access, joined to the sensor table.

The sensor table is one small row per event, so it is held in memory and looked up by
event name (`spectral.runtime.keys`). Labels come from that table, not the shards: relabelling an
event re-runs the cheap sensors stage, never decode or embed.

Shards are read as map-style datasets: each event's tar members are located once from the
headers (offset, size), then read with one seek. That is what makes distributed training
exact, whatever the shard sizes: torch's DistributedSampler gives every rank the same
number of training batches (a rank short of events repeats a few, as DDP needs), and
Lightning's UnrepeatedDistributedSampler gives validation and test each event exactly once
across the ranks. Streaming shards per rank (`split_by_node`) cannot do either: ranks get
unequal batch counts and DDP hangs (webdataset #188, #250; Lightning #9851).
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import polars as pl
import pytorch_lightning as pl_lightning
import torch
from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from spectral.features.sensors import SENSOR_FEATURES
from spectral.io.audio import from_pcm16
from spectral.runtime.keys import event_name
from spectral.runtime.reuse import read_complete_index
from spectral.runtime.shards import shard_split

DEFAULT_MAX_LEFT_OUT_FRACTION = 0.01
Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
Sample = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]
_MEMBERS = ("emb.npy", "audio.npy")


class ShardEvents:
    """The events of some shards by position: name, shard and where each member's bytes are.

    Only tar headers are read to build it; `members(i)` then reads one event with a seek per
    member. File handles are opened per process (DataLoader workers fork), never shared, and at
    most `OPEN_SHARDS` stay open: a 64k-event archive has ~1,000 shards per split.
    """

    OPEN_SHARDS = 16

    def __init__(self, shards: list[Path]) -> None:
        self.names: list[str] = []
        self._where: list[tuple[Path, dict[str, tuple[int, int]]]] = []
        for shard in shards:
            events: dict[str, dict[str, tuple[int, int]]] = {}
            with tarfile.open(shard) as tar:
                for member in tar.getmembers():
                    key, _, extension = member.name.partition(".")
                    events.setdefault(key, {})[extension] = (member.offset_data, member.size)
            for key, members in events.items():
                self.names.append(event_name(key))
                self._where.append((shard, members))
        self._handles: OrderedDict[Path, BinaryIO] = OrderedDict()
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.names)

    def members(self, index: int, extensions: tuple[str, ...] = _MEMBERS) -> dict[str, bytes]:
        """The event's members among `extensions` that it has (an event kept without a modality lacks one)."""
        if self._pid != os.getpid():  # a forked worker: open its own files
            self._handles, self._pid = OrderedDict(), os.getpid()
        shard, members = self._where[index]
        if shard in self._handles:
            self._handles.move_to_end(shard)
        else:
            if len(self._handles) >= self.OPEN_SHARDS:
                self._handles.popitem(last=False)[1].close()
            self._handles[shard] = open(shard, "rb")  # noqa: SIM115 - closed when evicted
        handle = self._handles[shard]
        found = {}
        for extension in extensions:
            if extension not in members:
                continue
            offset, size = members[extension]
            handle.seek(offset)
            found[extension] = handle.read(size)
        return found

    def where(self, index: int) -> Path:
        return self._where[index][0]

    def has(self, index: int, extension: str) -> bool:
        """Whether the event has that member, from the headers read at construction: no file access."""
        return extension in self._where[index][1]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_handles": OrderedDict()}


class EventDataset(Dataset):
    """(embeddings [N, D], waveform [S], sensors [F], presence mask [3], label) of the events that have a
    sensor row. An event decode or sensors kept without a modality (`missing_modality: keep`) has zeros
    (NaN sensors) there and False in its mask; the model never sees the placeholder."""

    def __init__(self, events: ShardEvents, sensors: dict[str, np.ndarray], labels: dict[str, int],
                 sensors_present: dict[str, bool], video_shape: tuple[int, int], audio_samples: int) -> None:
        self.events, self.sensors, self.labels = events, sensors, labels
        self.sensors_present = sensors_present
        self.video_shape, self.audio_samples = video_shape, audio_samples
        self.positions = [i for i, name in enumerate(events.names) if name in sensors]
        self.names = [events.names[i] for i in self.positions]

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, index: int) -> Sample:
        members = self.events.members(self.positions[index])
        name = self.names[index]
        if not {"emb.npy", "audio.npy"} <= members.keys():  # only decode's `keep` may leave one out, and says so
            said = json.loads(self.events.members(self.positions[index], ("json",))["json"]).get("missing", {})
            lacking = {"emb.npy": "video", "audio.npy": "audio"}
            if unexplained := [m for member, m in lacking.items() if member not in members and m not in said]:
                raise KeyError(f"{self.events.where(self.positions[index])}: event {name} has no {unexplained} "
                               f"member and decode did not record it missing; rerun the embed stage")
        present = torch.tensor(["emb.npy" in members, "audio.npy" in members, self.sensors_present[name]])
        embeddings = (torch.from_numpy(np.load(io.BytesIO(members["emb.npy"])).astype(np.float32)) if present[0]
                      else torch.zeros(self.video_shape))
        waveform = (torch.from_numpy(from_pcm16(np.load(io.BytesIO(members["audio.npy"])))) if present[1]
                    else torch.zeros(self.audio_samples))
        return embeddings, waveform, torch.from_numpy(self.sensors[name].copy()), present, int(self.labels[name])


def read_manifest(embed_dir: Path) -> dict:
    """The embed stage's manifest.json, refused unless that run completed."""
    return read_complete_index(Path(embed_dir) / "manifest.json")


def listed_shards(embed_dir: Path, manifest: dict, split: str) -> list[Path]:
    """The split's shards as the manifest lists them, each present at its recorded size: the folder may hold
    other files, or lack one a node-local run never copied back, and neither may change what is read."""
    shards = []
    for file, entry in sorted(manifest["index"].items()):
        if shard_split(file) != split:
            continue
        path = Path(embed_dir) / file
        size = path.stat().st_size if path.is_file() else None
        if size is None or size != entry.get("size"):
            found = "missing" if size is None else f"{size} bytes"
            raise ValueError(f"{path}: the manifest lists it at {entry.get('size')} bytes, found {found}; rerun the "
                             f"embed stage (it verifies and rewrites damaged shards)")
        shards.append(path)
    return shards


def load_sensor_table(path: Path) -> tuple[dict[str, np.ndarray], dict[str, int], dict[str, str], dict[str, bool]]:
    """(event → float32 feature vector in SENSOR_FEATURES order, NaN = missing; event → label; event → split;
    event → whether it has usable sensors at all)."""
    table = pl.read_parquet(path)
    missing = [c for c in ("event", "split", "label", *SENSOR_FEATURES, "sensors_missing") if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: sensor table lacks columns {missing}; rerun the sensors stage")
    events = table["event"].to_list()
    values = table.select(SENSOR_FEATURES).fill_null(float("nan")).to_numpy().astype(np.float32)
    present = table["sensors_missing"].is_null().to_list()
    return (dict(zip(events, values, strict=True)), dict(zip(events, table["label"].to_list(), strict=True)),
            dict(zip(events, table["split"].to_list(), strict=True)), dict(zip(events, present, strict=True)))


@dataclass
class JoinReport:
    """Which events of a split reach training, and which are left out and why."""

    split: str
    used: int
    without_sensors: list[str]   # in the embedding shards, but the sensor table has no row
    without_shards: list[str]    # in the sensor table, but decode/embed produced no sample


class CachedShardDataModule(pl_lightning.LightningDataModule):
    """Batches of (embeddings [B, N, D], waveform [B, S], sensors [B, F], present [B, 3], label [B]) per split,
    per rank."""

    def __init__(self, embed_dir: Path, sensors_path: Path, batch_size: int = 16, num_workers: int = 0,
                 seed: int = 0, max_left_out_fraction: float = DEFAULT_MAX_LEFT_OUT_FRACTION) -> None:
        super().__init__()
        self.embed_dir, self.sensors_path = Path(embed_dir), Path(sensors_path)
        self.max_left_out_fraction = max_left_out_fraction
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.sensors: dict[str, np.ndarray] = {}
        self.labels: dict[str, int] = {}
        self.joins: dict[str, JoinReport] = {}
        self.datasets: dict[str, EventDataset] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.sensors:
            return
        self.sensors, self.labels, splits, sensors_present = load_sensor_table(self.sensors_path)
        manifest = read_manifest(self.embed_dir)
        video_shape = (manifest["video"]["num_frames"], manifest["backbone"]["embedding_dim"])
        for split in ("train", "val", "test"):
            events = ShardEvents(listed_shards(self.embed_dir, manifest, split))
            self.datasets[split] = EventDataset(events, self.sensors, self.labels, sensors_present, video_shape,
                                                manifest["audio"]["samples"])
            lacking = [name for name in events.names if name not in self.sensors]
            in_shards = set(events.names)
            unmatched = sorted(e for e, s in splits.items() if s == split and e not in in_shards)
            self.joins[split] = JoinReport(split, len(self.datasets[split]), lacking, unmatched)
        self._check_left_out()
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

    def _check_left_out(self) -> None:
        """Fail when more than `max_left_out_fraction` of the events decode or sensors accepted cannot be used:
        each stage checks its own losses, but 45 % lost in one and another 45 % in the other leave 10 %."""
        if not 0.0 <= self.max_left_out_fraction <= 1.0:
            raise ValueError(f"train.max_left_out_fraction must be within [0, 1], got {self.max_left_out_fraction}")
        rows = self.left_out()
        accepted = sum(join.used + len(join.without_sensors) + len(join.without_shards) for join in self.joins.values())
        if accepted and len(rows) / accepted > self.max_left_out_fraction:
            named = "; ".join(f"{row['event']}: {row['reason']}" for row in rows[:5])
            raise ValueError(f"{len(rows)} of the {accepted} events that decode or sensors accepted cannot be used "
                             f"({len(rows) / accepted:.0%}, more than train.max_left_out_fraction="
                             f"{self.max_left_out_fraction}): {named}{' …' if len(rows) > 5 else ''}")

    def used_events(self, split: str) -> list[str]:
        """Event names in the order a single-process, unshuffled loader of `split` yields them."""
        return list(self.datasets[split].names)

    def train_labels(self) -> np.ndarray:
        """Labels of the training events, from the sensor table: no pass over the shards."""
        return np.array([self.labels[name] for name in self.datasets["train"].names], dtype=np.int64)

    def missing_modalities(self, split: str) -> dict[str, list[str]]:
        """The events of a split kept without a modality (`missing_modality: keep`), by modality."""
        dataset = self.datasets[split]
        events = list(zip(dataset.names, dataset.positions, strict=True))
        return {"video": [n for n, i in events if not dataset.events.has(i, "emb.npy")],
                "audio": [n for n, i in events if not dataset.events.has(i, "audio.npy")],
                "sensors": [n for n in dataset.names if not dataset.sensors_present[n]]}

    def train_sensor_statistics(self) -> tuple[torch.Tensor, torch.Tensor]:
        """NaN-aware mean/std of the training events' sensor features."""
        rows = np.stack([self.sensors[name] for name in self.datasets["train"].names])
        return torch.from_numpy(np.nanmean(rows, axis=0)), torch.from_numpy(np.nanstd(rows, axis=0))

    def _ranks(self) -> tuple[int, int]:
        """(world size, rank) of the trainer this module is attached to; one process without one."""
        trainer = getattr(self, "trainer", None)
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def loader(self, split: str, shuffle: bool = False, ranks: tuple[int, int] | None = None) -> DataLoader:
        """This rank's batches of one split (`ranks` = (world size, rank); default: the trainer's).

        shuffle (training): every rank gets the same number of batches, reshuffled each epoch by
        Lightning's `set_epoch`. Otherwise (evaluation) each event is in exactly one rank's batches.
        """
        dataset = self.datasets[split]
        world, rank = ranks or self._ranks()
        if world > len(dataset):
            raise ValueError(f"the {split} split has {len(dataset)} event(s) for {world} ranks: every rank needs "
                             f"one; use fewer devices or a larger split")
        sampler = (DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=self.seed)
                   if shuffle else UnrepeatedDistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=False))
        return DataLoader(dataset, batch_size=self.batch_size, sampler=sampler, num_workers=self.num_workers,
                          persistent_workers=False)

    def train_dataloader(self) -> DataLoader:
        return self.loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self.loader("val")

    def test_dataloader(self) -> DataLoader:
        return self.loader("test")
