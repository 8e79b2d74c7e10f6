"""Sensor features: the declared per-event schema and the Parquet table stage."""
