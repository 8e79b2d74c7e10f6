import errno
import hashlib
import json

import polars as pl
import pytest

import spectral.stages.sensors
from spectral.events import MachineFailure, StrictModeError, TooManyRejectionsError
from spectral.features.sensors import SENSOR_FEATURES
from spectral.stages.sensors import run_sensors

SPLITS = {"train": 0.6, "val": 0.2, "test": 0.2}


def test_table_schema_accounting_and_determinism(tiny_events, tmp_path):
    bad = tiny_events.parent / "bad_events"
    if not bad.exists():
        bad.mkdir()
        for src in sorted(tiny_events.iterdir())[:3]:
            dst = bad / src.name
            dst.mkdir()
            for f in src.iterdir():
                dst.joinpath(f.name).write_bytes(f.read_bytes())
        (bad / "event_00001" / "sensors.csv").write_text("a,b\n1,2\n", encoding="utf-8")
    report = run_sensors(bad, tmp_path / "s.parquet", SPLITS)  # 1 of 3 rejected: within the default limit
    first = hashlib.sha256((tmp_path / "s.parquet").read_bytes()).hexdigest()
    run_sensors(bad, tmp_path / "s.parquet", SPLITS)
    assert hashlib.sha256((tmp_path / "s.parquet").read_bytes()).hexdigest() == first
    table = pl.read_parquet(tmp_path / "s.parquet")
    assert table.columns == ["event", "split", "label", "label_name", *SENSOR_FEATURES, "missing_features",
                             "sensors_missing"]
    assert table["sensors_missing"].null_count() == table.height
    for row in table.iter_rows(named=True):  # what the model will impute is recorded per event
        assert row["missing_features"] == [f for f in SENSOR_FEATURES if row[f] is None]
    assert table["event"].to_list() == ["event_00000", "event_00002"]
    assert report["rejected"] == [{"event": "event_00001", "reason": report["rejected"][0]["reason"]}]
    assert report["rejected"][0]["reason"].startswith("event_00001/sensors.csv: cannot read sensors")
    saved = json.loads((tmp_path / "s_report.json").read_text(encoding="utf-8"))
    assert saved["accepted"] == ["event_00000", "event_00002"]
    with pytest.raises(StrictModeError):
        run_sensors(bad, tmp_path / "strict.parquet", SPLITS, strict=True)
    # missing_modality: keep — the unreadable sensors.csv gives a row of nulls with the reason, deterministically
    kept = run_sensors(bad, tmp_path / "keep.parquet", SPLITS, missing_modality="keep")
    assert kept["rejected"] == [] and kept["incomplete"] == ["event_00001"]
    first = hashlib.sha256((tmp_path / "keep.parquet").read_bytes()).hexdigest()
    run_sensors(bad, tmp_path / "keep.parquet", SPLITS, missing_modality="keep")
    assert hashlib.sha256((tmp_path / "keep.parquet").read_bytes()).hexdigest() == first
    row = pl.read_parquet(tmp_path / "keep.parquet").filter(pl.col("event") == "event_00001").row(0, named=True)
    assert row["sensors_missing"].startswith("event_00001/sensors.csv: cannot read sensors")
    assert all(row[f] is None for f in SENSOR_FEATURES) and row["missing_features"] == list(SENSOR_FEATURES)


def test_rejection_limit_fails_after_the_report_and_an_empty_folder_fails(tiny_events, tmp_path):
    bad = tmp_path / "events"
    for i, src in enumerate(sorted(tiny_events.iterdir())[:3]):
        (bad / src.name).mkdir(parents=True)
        for f in src.iterdir():
            (bad / src.name / f.name).write_bytes(f.read_bytes() if i == 0 or f.name != "sensors.csv" else b"x\n")
    with pytest.raises(TooManyRejectionsError, match="sensors: 2 of 3 events rejected"):
        run_sensors(bad, tmp_path / "s.parquet", SPLITS)
    assert json.loads((tmp_path / "s_report.json").read_text(encoding="utf-8"))["rejected_count"] == 2
    run_sensors(bad, tmp_path / "lenient.parquet", SPLITS, max_rejected_fraction=1.0)
    with pytest.raises(ValueError, match="within \\[0, 1\\]"):
        run_sensors(bad, tmp_path / "x.parquet", SPLITS, max_rejected_fraction=1.5)
    (tmp_path / "empty").mkdir()
    with pytest.raises(TooManyRejectionsError, match="no event folders"):
        run_sensors(tmp_path / "empty", tmp_path / "e.parquet", SPLITS)


def test_a_machine_failure_reading_sensors_stops_the_stage_instead_of_rejecting(tiny_events, tmp_path, monkeypatch):
    """An I/O error says nothing about the file: retried once, then the stage fails naming the event."""
    real, calls = spectral.stages.sensors.sensor_features, []
    target = sorted(tiny_events.iterdir())[2]

    def failing(path, times):
        calls.append(path)
        if path.parent == target and calls.count(path) <= times:
            raise OSError(errno.EIO, "Input/output error")
        return real(path)

    monkeypatch.setattr(spectral.stages.sensors, "sensor_features", lambda path: failing(path, 1))
    assert run_sensors(tiny_events, tmp_path / "once.parquet", SPLITS)["rejected"] == []
    monkeypatch.setattr(spectral.stages.sensors, "sensor_features", real)
    run_sensors(tiny_events, tmp_path / "clean.parquet", SPLITS)
    assert (tmp_path / "once.parquet").read_bytes() == (tmp_path / "clean.parquet").read_bytes()
    calls.clear()
    monkeypatch.setattr(spectral.stages.sensors, "sensor_features", lambda path: failing(path, 2))
    with pytest.raises(MachineFailure, match=f"sensors: {target.name} failed twice with OSError"):
        run_sensors(tiny_events, tmp_path / "twice.parquet", SPLITS)
    assert not (tmp_path / "twice.parquet").exists() and not (tmp_path / "twice.parquet.tmp").exists()


def test_keep_mode_counts_events_kept_without_sensors_against_the_limit(tiny_events, tmp_path):
    events = tmp_path / "events"
    for src in sorted(tiny_events.iterdir())[:4]:
        (events / src.name).mkdir(parents=True)
        for f in src.iterdir():
            (events / src.name / f.name).write_bytes(f.read_bytes() if f.name != "sensors.csv" else b"")
    with pytest.raises(TooManyRejectionsError, match=r"sensors: 4 of 4 events without their sensors"):
        run_sensors(events, tmp_path / "s.parquet", SPLITS, missing_modality="keep")
