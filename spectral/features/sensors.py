"""Per-event sensor features: one declared, fixed-position 15-feature schema.

The spec's sketch appends a feature only when its column exists, so one missing column
silently shifts every later feature into the wrong input of the MLP. Here every feature
has a fixed slot; what cannot be computed is NaN (null in Parquet), and the model turns
NaN into an imputed value plus a missing-indicator (see spectral.models.sensor).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

SENSOR_FEATURES: tuple[str, ...] = (
    # the spec's ten
    "magnetic_mean",
    "magnetic_std",
    "magnetic_max",
    "magnetic_min",
    "accel_norm_mean",
    "gyro_norm_mean",
    "final_yaw",
    "audio_peak_max",
    "humanoid_any",
    "bluetooth_mean",
    # five for the spec's "correlation between sensors"
    "corr_magnetic_audio",   # simultaneous magnetic and sound events
    "corr_magnetic_accel",   # magnetic change while the phone is jolted
    "corr_accel_audio",      # a jolt heard by the microphone
    "magnetic_peak_z",       # how far the largest magnetic excursion stands out (robust z-score)
    "magnetic_diff_std",     # sample-to-sample magnetic dispersion: oscillating fields
)
"""Names and order of the model's sensor input; `input_dim` is derived from its length."""

NUMERIC_COLUMNS = ("timestamp", "magnetic_magnitude", "accel_x", "accel_y", "accel_z", "gyro_x", "gyro_y", "gyro_z",
                   "orientation_yaw", "audio_peak", "bluetooth_count")
FLAG_COLUMNS = ("humanoid_detected",)
_TRUE = ("true", "t", "yes", "y", "1", "1.0")
_FALSE = ("false", "f", "no", "n", "0", "0.0", "")


def _as_float(frame: pl.DataFrame, column: str, is_flag: bool) -> pl.Expr:
    """Column as Float64 with nulls for NaN/unparseable values; 'True'/'false' strings become 1/0."""
    dtype = frame.schema[column]
    col = pl.col(column)
    if dtype == pl.String and is_flag:
        lowered = col.str.strip_chars().str.to_lowercase()
        expr = pl.when(lowered.is_in(_TRUE)).then(1.0).when(lowered.is_in(_FALSE)).then(0.0).otherwise(None)
    elif dtype == pl.String:
        expr = col.str.strip_chars().cast(pl.Float64, strict=False)
    else:
        expr = col.cast(pl.Float64, strict=False)
    return expr.fill_nan(None).alias(column)


def read_sensor_table(path: Path) -> pl.DataFrame:
    """The known columns of a sensors.csv as Float64 (missing ones absent), rows sorted by timestamp."""
    frame = pl.read_csv(path, infer_schema_length=0, truncate_ragged_lines=True)  # all strings: parse ourselves
    frame = frame.rename({c: c.strip().lower() for c in frame.columns})
    known = [c for c in (*NUMERIC_COLUMNS, *FLAG_COLUMNS) if c in frame.columns]
    if not known:
        raise ValueError(f"none of the known sensor columns is present (found {frame.columns})")
    frame = frame.select([_as_float(frame, c, c in FLAG_COLUMNS) for c in known])
    if "timestamp" in frame.columns:
        frame = frame.sort("timestamp", nulls_last=True, maintain_order=True)
    return frame


def _pearson(a: np.ndarray | None, b: np.ndarray | None) -> float:
    if a is None or b is None:
        return np.nan
    valid = ~(np.isnan(a) | np.isnan(b))
    if valid.sum() < 3:
        return np.nan
    a, b = a[valid] - a[valid].mean(), b[valid] - b[valid].mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 0 else 0.0


def _norm(frame: pl.DataFrame, prefix: str) -> np.ndarray | None:
    columns = [f"{prefix}_{axis}" for axis in "xyz"]
    if not all(c in frame.columns for c in columns):
        return None
    values = frame.select(columns).to_numpy().astype(np.float64)
    return np.sqrt((values**2).sum(axis=1))


def _nan_stat(values: np.ndarray | None, stat) -> float:
    if values is None or np.all(np.isnan(values)):
        return np.nan
    return float(stat(values[~np.isnan(values)]))


def compute_features(table: pl.DataFrame) -> np.ndarray:
    """float64 vector aligned with SENSOR_FEATURES; NaN where the data does not allow a value."""
    def column(name: str) -> np.ndarray | None:
        return table[name].to_numpy().astype(np.float64) if name in table.columns else None

    magnetic, audio_peak = column("magnetic_magnitude"), column("audio_peak")
    accel_norm, gyro_norm = _norm(table, "accel"), _norm(table, "gyro")
    yaw, flags, bluetooth = column("orientation_yaw"), column("humanoid_detected"), column("bluetooth_count")

    def final_valid(values: np.ndarray | None) -> float:
        if values is None or np.all(np.isnan(values)):
            return np.nan
        return float(values[~np.isnan(values)][-1])

    def peak_z(values: np.ndarray | None) -> float:
        if values is None or np.sum(~np.isnan(values)) < 3:
            return np.nan
        v = values[~np.isnan(values)]
        median = np.median(v)
        mad = np.median(np.abs(v - median)) * 1.4826
        return float(np.abs(v - median).max() / mad) if mad > 0 else 0.0

    def diff_std(values: np.ndarray | None) -> float:
        if values is None or np.sum(~np.isnan(values)) < 3:
            return np.nan
        return float(np.diff(values[~np.isnan(values)]).std())

    return np.array([
        _nan_stat(magnetic, np.mean),
        _nan_stat(magnetic, lambda v: v.std(ddof=1) if v.size > 1 else 0.0),
        _nan_stat(magnetic, np.max),
        _nan_stat(magnetic, np.min),
        _nan_stat(accel_norm, np.mean),
        _nan_stat(gyro_norm, np.mean),
        final_valid(yaw),
        _nan_stat(audio_peak, np.max),
        _nan_stat(flags, lambda v: float(np.any(v > 0))),
        _nan_stat(bluetooth, np.mean),
        _pearson(magnetic, audio_peak),
        _pearson(magnetic, accel_norm),
        _pearson(accel_norm, audio_peak),
        peak_z(magnetic),
        diff_std(magnetic),
    ], dtype=np.float64)


def missing_features(features: np.ndarray) -> list[str]:
    """Names of the features the data did not allow (the model imputes them); recorded per event."""
    return [name for name, value in zip(SENSOR_FEATURES, features, strict=True) if np.isnan(value)]


def sensor_features(path: Path) -> np.ndarray:
    """Feature vector of one sensors.csv; raises ValueError when the file holds no usable row."""
    table = read_sensor_table(Path(path))
    if table.height == 0:
        raise ValueError("no data rows")
    features = compute_features(table)
    if np.all(np.isnan(features)):
        raise ValueError("none of the known sensor columns has a value")
    return features
