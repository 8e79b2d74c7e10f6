"""Spectral: reproducible pipeline that classifies multimodal anomaly events."""

__version__ = "0.1.0"
