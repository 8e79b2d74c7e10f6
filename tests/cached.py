"""Reading the tiny embedded split straight from its shards: an independent path from the DataModule."""

from __future__ import annotations

import numpy as np
import polars as pl
import torch

from spectral.features.sensors import SENSOR_FEATURES
from spectral.io.audio import from_pcm16
from spectral.runtime.keys import event_name
from spectral.runtime.shards import read_samples, shard_paths


def cached_split(embedded, sensor_table, split="test"):
    """(names, embeddings, waveforms, sensor features, labels) read straight from the shards and the
    Parquet table: an independent path from the DataModule that training and evaluation use."""
    rows = {r["event"]: r for r in pl.read_parquet(sensor_table).iter_rows(named=True)}
    names, parts = [], [[], [], [], []]
    for sample in read_samples(shard_paths(embedded, split)):
        name = event_name(sample["__key__"])
        names.append(name)
        sensors = [np.nan if rows[name][f] is None else rows[name][f] for f in SENSOR_FEATURES]
        for store, value in zip(parts, (sample["emb.npy"].astype(np.float32), from_pcm16(sample["audio.npy"]),
                                        np.array(sensors, np.float32), rows[name]["label"]), strict=True):
            store.append(value)
    return names, *(torch.from_numpy(np.stack(p)) for p in parts[:3]), np.array(parts[3])
