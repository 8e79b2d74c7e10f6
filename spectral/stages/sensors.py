"""The sensors stage: every event's sensors.csv → one Parquet row of the declared feature schema.

A separate stage from decode because it is cheap and changes for different reasons (a new
feature must not re-decode video). It is incremental like decode (spectral.runtime.incremental): an
event whose sensors.csv and the stage's code are unchanged keeps its features from the last
table; its label and split are read again. Rows are sorted by event name and written in batches,
so memory does not grow with the number of events and reruns give byte-identical files.
With `missing_modality: keep` an event whose sensors.csv is missing, empty or unreadable still gets
its row (label and split, every feature null) with the reason in `sensors_missing`: training masks
the sensor branch for it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from spectral.events import (
    CLASS_NAMES,
    DEFAULT_MAX_REJECTED_FRACTION,
    REQUIRED_FILES,
    SENSORS_FILE,
    EventError,
    StrictModeError,
    attempt_twice,
    check_file,
    check_link_policy,
    check_losses,
    check_missing_policy,
    describe_error,
    display_name,
    find_event_folders,
    load_event,
)
from spectral.features.sensors import SENSOR_FEATURES, missing_features, sensor_features
from spectral.io.errors import is_invalid_table
from spectral.runtime.incremental import digest, file_key, file_sha256
from spectral.runtime.params import build_config
from spectral.runtime.reuse import key_changes, key_parts, key_salt, load_index, publish_index
from spectral.runtime.splits import assign_split

log = logging.getLogger(__name__)
LIBRARIES = ("numpy", "polars", "pyarrow")  # CSV parsing, the feature arithmetic, the Parquet writer

SCHEMA = pa.schema(
    [("event", pa.string()), ("split", pa.string()), ("label", pa.int8()), ("label_name", pa.string())]
    + [(name, pa.float64()) for name in SENSOR_FEATURES]
    + [("missing_features", pa.list_(pa.string())), ("sensors_missing", pa.string())]
)
BATCH_ROWS = 1024


def _features(folder: Path, name: str) -> dict:
    try:
        features = sensor_features(folder / SENSORS_FILE)
    except Exception as err:
        if not is_invalid_table(err):  # the machine's failure (I/O, memory): never a property of the file
            raise
        raise EventError(name, SENSORS_FILE, f"cannot read sensors: {describe_error(err)}") from None
    row = {feature: (None if np.isnan(v) else float(v)) for feature, v in zip(SENSOR_FEATURES, features, strict=True)}
    row["missing_features"] = missing_features(features)
    row["sensors_missing"] = None
    return row


def _absent(reason: str) -> dict:
    """The row of an event kept without usable sensors: every feature null, and why."""
    return {**dict.fromkeys(SENSOR_FEATURES), "missing_features": list(SENSOR_FEATURES), "sensors_missing": reason}


def _previous_features(out_path: Path, report: dict | None) -> tuple[dict[str, tuple[str, dict]], str | None]:
    """The last run's feature rows by event, with the key each was computed from, and why none are
    reused when a last run's index exists but cannot be trusted.

    Only trusted when the table on disk is the one the report describes (a run killed between
    writing the two, or a damaged table, leaves them unmatched, and then everything is recomputed).
    The table is read whole to be reused, so its sha256 is always checked (no stat stamps)."""
    if report is None:
        return {}, None
    if not out_path.is_file():
        return {}, "listed in the index but missing"
    try:
        index = report["index"]
        if index["table_sha256"] != file_sha256(out_path):
            return {}, "content differs from the index's sha256 (damaged or replaced)"
        table = pq.read_table(out_path)
        if not table.schema.equals(SCHEMA):
            # another table, or one with other feature columns (the code changed: keys differ anyway)
            return {}, "has columns other than this code's features"
        features = [*SENSOR_FEATURES, "missing_features", "sensors_missing"]
        return {row["event"]: (index["keys"][row["event"]], {k: row[k] for k in features})
                for row in table.to_pylist() if row["event"] in index["keys"]}, None
    except (ValueError, KeyError, TypeError, OSError) as err:
        return {}, f"cannot be read against the index ({type(err).__name__}: {err})"


@dataclass(frozen=True)
class SensorsConfig:
    """sensors.* params, the splits and the missing-file and link policies: `run_sensors`'s keyword arguments
    as the stage gives them; the defaults are params.yaml's (tests/runtime/test_params.py)."""

    splits: dict[str, float] = field(default_factory=lambda: {"train": 0.4, "val": 0.3, "test": 0.3})
    strict: bool = False
    max_rejected_fraction: float = DEFAULT_MAX_REJECTED_FRACTION
    missing_modality: str = "keep"
    links_outside_events: str = "refuse"

    @classmethod
    def from_params(cls, params: dict) -> SensorsConfig:
        return build_config(cls, params, "sensors", elsewhere={
            "splits": "splits", "missing_modality": "missing_modality", "links_outside_events": "links_outside_events"})


def run_sensors(events_dir: Path, out_path: Path, splits: dict[str, float], strict: bool = False,
                max_rejected_fraction: float = DEFAULT_MAX_REJECTED_FRACTION, missing_modality: str = "reject",
                links_outside_events: str = "refuse") -> dict:
    """Write the feature table to out_path and `<out_path stem>_report.json` beside it; returns the report.

    Fails after writing both when more than `max_rejected_fraction` of the events are rejected, or lack
    their sensors. Links resolving outside the events folder are refused unless `links_outside_events`
    is follow (spectral.events.check_link)."""
    keep_missing = check_missing_policy(missing_modality) == "keep"
    links_inside = check_link_policy(links_outside_events) == "refuse"
    folders = find_event_folders(events_dir)
    out_path = Path(out_path)
    report_path = out_path.with_name(out_path.stem + "_report.json")
    parts = key_parts(__file__, None, LIBRARIES)
    salt = key_salt("sensors", parts)
    last_report = load_index(report_path, "sensors")
    changes = key_changes(last_report, parts)
    previous, distrusted = _previous_features(out_path, last_report)
    if changes and previous:  # every key differs: no row is reused
        log.warning("sensors: %s; recomputing %d events' features", "; ".join(changes), len(folders))
    if distrusted:  # a warning, so the stage and `spectral sensors` both show it
        log.warning("recomputing every event's features: the last run's %s: %s", out_path.name, distrusted)
    keys: dict[str, str] = {}
    reused = 0
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    accepted, rejected, batch, incomplete = [], [], [], []
    missing_counts = dict.fromkeys(SENSOR_FEATURES, 0)
    with pq.ParquetWriter(tmp, SCHEMA, compression="zstd", write_statistics=True) as writer:
        for folder in tqdm(folders, desc="sensors", unit="event"):
            def read_event(folder: Path = folder) -> tuple:
                # keep: the other modalities' files are decode's business, this stage needs only the label
                event = load_event(folder, files=() if keep_missing else REQUIRED_FILES[1:], links_inside=links_inside)
                try:
                    key = digest(salt, file_key(folder / SENSORS_FILE, links_inside))
                    check_file(folder, SENSORS_FILE, links_inside)
                    if previous.get(event.name, ("",))[0] == key:
                        return event, key, previous[event.name][1], True
                    return event, key, _features(folder, event.name), False
                except EventError as err:
                    if not keep_missing:
                        raise
                    return event, digest(salt, "absent"), _absent(str(err)), False

            try:  # a machine failure (I/O, memory) is retried once, then stops the stage: never a rejection
                event, key, features, was_reused = attempt_twice("sensors", folder.name, read_event)
            except EventError as err:  # a property of the files: one bad file never stops the run
                rejected.append({"event": display_name(folder.name), "reason": str(err)})
                if strict:
                    tmp.unlink(missing_ok=True)
                    raise StrictModeError(f"strict mode: {err}") from None
                continue
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            reused += was_reused
            if features["sensors_missing"] is not None:
                incomplete.append(event.name)
            # label and split are read fresh every run: relabelling costs a metadata read, not a feature pass
            row = {"event": event.name, "split": assign_split(event.name, splits), "label": event.label,
                   "label_name": CLASS_NAMES[event.label], **features}
            keys[event.name] = key
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
        "missing_modality": missing_modality,
        "accepted": accepted,
        "incomplete": incomplete,  # kept without usable sensors (missing_modality: keep): the branch is masked
        "rejected": rejected,
        # the reuse index: which sensors.csv content (and code) each row's features came from
        "index": {"table_sha256": file_sha256(out_path), "keys": keys},
        "key_parts": parts,  # what every key holds besides sensors.csv: the next run says what changed
    }
    publish_index(report_path, report)
    check_losses("sensors", len(rejected), {"sensors": len(incomplete)}, len(folders), max_rejected_fraction,
                 report_path)
    recomputed = {out_path.name: distrusted} if distrusted else {}  # the last run's features, not reused, and why
    return {**report, "reused": reused, "recomputed": recomputed, "key_changes": changes}
