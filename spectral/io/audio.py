"""Any WAV (rate, channels, sample format) to the model's fixed mono 44.1 kHz, 5-second waveform."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import soundfile as sf
import soxr

TARGET_RATE = 44_100
TARGET_SECONDS = 5.0
TARGET_SAMPLES = int(TARGET_RATE * TARGET_SECONDS)  # 220,500, the spec's window


@dataclass(frozen=True)
class AudioInfo:
    """What the source file was; travels into the shard metadata."""

    sample_rate: int
    channels: int
    subtype: str
    duration_s: float


def fit_length(waveform: np.ndarray, length: int = TARGET_SAMPLES) -> np.ndarray:
    """Trim the tail or zero-pad to exactly `length` samples."""
    if waveform.shape[0] >= length:
        return waveform[:length]
    return np.pad(waveform, (0, length - waveform.shape[0]))


def load_audio(path: str, sample_rate: int = TARGET_RATE, length: int = TARGET_SAMPLES) -> tuple[np.ndarray, AudioInfo]:
    """float32 mono waveform in [-1, 1] of exactly `length` samples at `sample_rate`.

    soundfile normalises every integer format (8-bit unsigned included) to float; channels are
    averaged; soxr's high-quality resampler changes the rate.
    """
    with sf.SoundFile(str(path)) as f:
        info = AudioInfo(f.samplerate, f.channels, f.subtype, f.frames / f.samplerate if f.samplerate else 0.0)
        data = f.read(dtype="float32", always_2d=True)
    if data.shape[0] == 0:
        raise ValueError("audio has no samples")
    mono = data.mean(axis=1)
    if info.sample_rate != sample_rate:
        mono = soxr.resample(mono, info.sample_rate, sample_rate, quality="HQ")
    mono = np.nan_to_num(mono, nan=0.0, posinf=1.0, neginf=-1.0)
    return fit_length(np.ascontiguousarray(mono, dtype=np.float32), length), info


def to_pcm16(waveform: np.ndarray) -> np.ndarray:
    """int16 PCM for storage: exact for 16-bit sources at 44.1 kHz, ~-96 dB quantisation otherwise."""
    return np.clip(np.round(waveform * 32768.0), -32768, 32767).astype(np.int16)


def from_pcm16(pcm: np.ndarray) -> np.ndarray:
    return pcm.astype(np.float32) / 32768.0
