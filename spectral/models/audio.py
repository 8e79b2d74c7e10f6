"""Audio branch: log-mel spectrogram + 2-D CNN, from the raw 44.1 kHz waveform.

The spectrogram is computed inside the model, not in a stage, so inference on a raw
waveform and training on shards run the same code.
"""

from __future__ import annotations

import torch
import torchaudio
from torch import nn


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(), nn.MaxPool2d(2))


class AudioEncoder(nn.Module):
    """[B, samples] waveform → [B, embedding_dim]; mel 128 × 431 frames for 5 s at 44.1 kHz."""

    def __init__(self, sample_rate: int = 44_100, n_fft: int = 2048, hop_length: int = 512, n_mels: int = 128,
                 embedding_dim: int = 256) -> None:
        super().__init__()
        self.mel = torchaudio.transforms.MelSpectrogram(sample_rate=sample_rate, n_fft=n_fft,
                                                        hop_length=hop_length, n_mels=n_mels)
        # amin keeps digital silence finite (-100 dB) instead of -inf.
        self.to_db = torchaudio.transforms.AmplitudeToDB(stype="power", top_db=80.0)
        self.input_norm = nn.BatchNorm2d(1)
        self.conv = nn.Sequential(_block(1, 32), _block(32, 64), _block(64, 128), _block(128, 256))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.projection = nn.Linear(256, embedding_dim)
        self.embedding_dim = embedding_dim

    def log_mel(self, waveform: torch.Tensor) -> torch.Tensor:
        """[B, 1, mels, time] dB. The channel axis goes in before AmplitudeToDB: it floors at `top_db`
        below the maximum over its last three axes, so on [B, mels, time] one loud clip in the batch
        would lift a quiet clip's floor (measured: up to 22 dB) and an event's features would
        depend on its batch-mates."""
        with torch.autocast(waveform.device.type, enabled=False):  # FFT and log in fp32
            return self.to_db(self.mel(waveform.float()).unsqueeze(1))

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        x = self.input_norm(self.log_mel(waveform))
        return self.projection(self.pool(self.conv(x)).flatten(1))
