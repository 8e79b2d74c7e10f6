"""Shared tiny datasets: real synthetic events, decoded, embedded and trained once per session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from spectral.stages.decode import DecodeConfig, run_decode  # noqa: E402
from spectral.stages.embed import EmbedConfig, run_embed  # noqa: E402
from spectral.stages.sensors import run_sensors  # noqa: E402
from spectral.stages.synth import SynthConfig, generate  # noqa: E402
from spectral.stages.train import TrainConfig, train  # noqa: E402

TINY_SYNTH = SynthConfig(fps=10, duration_s=2.0, width=128, height=64)
TINY_DECODE = DecodeConfig(num_frames=4, size=224, audio_seconds=5.0, workers=1, missing_modality="reject",
                           splits={"train": 0.6, "val": 0.2, "test": 0.2})
# Users name events: dates with dots, spaces, accents. Every stage test meets such names.
USER_NAMES = {"event_00003": "event_2026.11.27_porão", "event_00007": "event_sala de estar 7",
              "event_00011": "event_x%20.v2"}


@pytest.fixture(scope="session")
def tiny_events(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("events")
    for folder in generate(root, 16, seed=1, cfg=TINY_SYNTH):
        if folder.name in USER_NAMES:
            folder.rename(root / USER_NAMES[folder.name])
    return root


@pytest.fixture(scope="session")
def decoded(tiny_events, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("decoded")
    run_decode(tiny_events, out, TINY_DECODE)
    return out


@pytest.fixture(scope="session")
def sensor_table(tiny_events, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sensors") / "sensors.parquet"
    run_sensors(tiny_events, out, TINY_DECODE.splits)
    return out


@pytest.fixture(scope="session")
def embedded(decoded, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("embeddings")
    run_embed(decoded, out, EmbedConfig(batch_frames=32))
    return out


@pytest.fixture(scope="session")
def trained(embedded, sensor_table, tmp_path_factory):
    out = tmp_path_factory.mktemp("model")
    cfg = TrainConfig(max_epochs=4, batch_size=4, precision="32-true", early_stopping_patience=10)
    summary = train(embedded, sensor_table, out, cfg, dvclive_dir=out / "dvclive")
    return out, summary
