"""Any WAV (rate, channels, sample format) to the model's fixed mono 44.1 kHz, 5-second waveform."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import soundfile as sf
import soxr

from spectral.io.errors import InvalidMediaError

TARGET_RATE = 44_100
TARGET_SECONDS = 5.0
TARGET_SAMPLES = int(TARGET_RATE * TARGET_SECONDS)  # 220,500, the spec's window
FULL_SCALE = 32767 / 32768  # int16's positive full scale as soundfile normalises it; floats clip at 1.0


@dataclass(frozen=True)
class AudioInfo:
    """What the source file was; travels into the shard metadata."""

    sample_rate: int
    channels: int
    subtype: str
    duration_s: float
    repaired_samples: int = 0  # sample frames holding NaN/inf (float WAVs), replaced by 0 / full scale
    clipped_samples: int = 0   # source sample frames with a channel at full scale (within one 16-bit step)


def audio_samples(seconds: float) -> int:
    """The audio window in samples at TARGET_RATE: every waveform is trimmed or zero-padded to it."""
    return int(round(TARGET_RATE * seconds))


def fit_length(waveform: np.ndarray, length: int = TARGET_SAMPLES) -> np.ndarray:
    """Trim the tail or zero-pad to exactly `length` samples."""
    if waveform.shape[0] >= length:
        return waveform[:length]
    return np.pad(waveform, (0, length - waveform.shape[0]))


def load_audio(path: str, sample_rate: int = TARGET_RATE, length: int = TARGET_SAMPLES) -> tuple[np.ndarray, AudioInfo]:
    """float32 mono waveform in [-1, 1] of exactly `length` samples at `sample_rate`.

    soundfile normalises every integer format (8-bit unsigned included) to float; channels are
    averaged; soxr's very-high-quality resampler changes the rate. Repairs and saturation are
    counted in AudioInfo, never made silently.
    """
    with sf.SoundFile(str(path)) as f:
        info = AudioInfo(f.samplerate, f.channels, f.subtype, f.frames / f.samplerate if f.samplerate else 0.0)
        data = f.read(dtype="float32", always_2d=True)
    if data.shape[0] == 0:
        raise InvalidMediaError("audio has no samples")
    repaired = int((~np.isfinite(data)).any(axis=1).sum())
    data = np.nan_to_num(data, nan=0.0, posinf=1.0, neginf=-1.0)
    clipped = int((np.abs(data) >= FULL_SCALE).any(axis=1).sum())  # per channel, before downmix and resampling
    mono = data.mean(axis=1)
    if info.sample_rate != sample_rate:
        # VHQ runs soxr's double-precision engine: measured, its int16 output is the same with and without
        # soxr's SIMD (SOXR_USE_SIMD=0), while HQ's single-precision engine moved samples between the two.
        mono = soxr.resample(mono.astype(np.float64), info.sample_rate, sample_rate, quality="VHQ")
    info = replace(info, repaired_samples=repaired, clipped_samples=clipped)
    return np.ascontiguousarray(fit_length(mono, length), dtype=np.float32), info


def to_pcm16(waveform: np.ndarray) -> np.ndarray:
    """int16 PCM for storage: exact for 16-bit sources at 44.1 kHz, ~-96 dB quantisation otherwise."""
    return np.clip(np.round(waveform * 32768.0), -32768, 32767).astype(np.int16)


def from_pcm16(pcm: np.ndarray) -> np.ndarray:
    return pcm.astype(np.float32) / 32768.0
