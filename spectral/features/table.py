"""The sensors stage: every event's sensors.csv → one Parquet row of the declared feature schema.

A separate stage from decode because it is cheap and changes for different reasons (a new
feature must not re-decode video). Rows are sorted by event name and written in batches,
so memory does not grow with the number of events and reruns give byte-identical files.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from spectral.events import (
    CLASS_NAMES,
    DEFAULT_MAX_REJECTED_FRACTION,
    SENSORS_FILE,
    EventError,
    StrictModeError,
    check_rejections,
    display_name,
    find_event_folders,
    load_event,
)
from spectral.features.sensors import SENSOR_FEATURES, missing_features, sensor_features
from spectral.splits import assign_split

SCHEMA = pa.schema(
    [("event", pa.string()), ("split", pa.string()), ("label", pa.int8()), ("label_name", pa.string())]
    + [(name, pa.float64()) for name in SENSOR_FEATURES]
    + [("missing_features", pa.list_(pa.string()))]
)
BATCH_ROWS = 1024


def _row(folder: Path, splits: dict[str, float]) -> dict:
    event = load_event(folder)
    try:
        features = sensor_features(event.sensors)
    except Exception as err:
        raise EventError(event.name, SENSORS_FILE, f"cannot read sensors: {err}") from None
    row = {"event": event.name, "split": assign_split(event.name, splits), "label": event.label,
           "label_name": CLASS_NAMES[event.label]}
    row.update({name: (None if np.isnan(v) else float(v)) for name, v in zip(SENSOR_FEATURES, features, strict=True)})
    row["missing_features"] = missing_features(features)
    return row



def run_sensors(events_dir: Path, out_path: Path, splits: dict[str, float], strict: bool = False,
                max_rejected_fraction: float = DEFAULT_MAX_REJECTED_FRACTION) -> dict:
    """Write the feature table to out_path and `<out_path stem>_report.json` beside it; returns the report.

    Fails after writing both when more than `max_rejected_fraction` of the events are rejected."""
    folders = find_event_folders(events_dir)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    accepted, rejected, batch = [], [], []
    missing_counts = dict.fromkeys(SENSOR_FEATURES, 0)
    with pq.ParquetWriter(tmp, SCHEMA, compression="zstd", write_statistics=True) as writer:
        for folder in tqdm(folders, desc="sensors", unit="event"):
            try:
                row = _row(folder, splits)
            except Exception as err:  # one bad file never stops the run
                name = display_name(folder.name)
                reason = str(err) if isinstance(err, EventError) else f"{name}: {type(err).__name__}: {err}"
                rejected.append({"event": name, "reason": reason})
                if strict:
                    tmp.unlink(missing_ok=True)
                    raise StrictModeError(f"strict mode: {reason}") from None
                continue
            for name in SENSOR_FEATURES:
                missing_counts[name] += row[name] is None
            accepted.append(folder.name)
            batch.append(row)
            if len(batch) >= BATCH_ROWS:
                writer.write_table(pa.Table.from_pylist(batch, schema=SCHEMA))
                batch = []
        if batch or not accepted:
            writer.write_table(pa.Table.from_pylist(batch, schema=SCHEMA))
    tmp.replace(out_path)
    report = {
        "stage": "sensors",
        "events_dir": str(events_dir),
        "inputs": len(folders),
        "accepted_count": len(accepted),
        "rejected_count": len(rejected),
        "features": list(SENSOR_FEATURES),
        "missing_values": missing_counts,
        "missing_policy": "a feature that cannot be computed is null; the model imputes the training mean and "
                          "adds a missing-indicator input",
        "accepted": accepted,
        "rejected": rejected,
    }
    report_path = out_path.with_name(out_path.stem + "_report.json")
    report_path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    check_rejections("sensors", len(rejected), len(folders), max_rejected_fraction, report_path)
    return report
