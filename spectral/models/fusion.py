"""The spec's fusion classifier, fed either raw frames or cached per-frame embeddings.

Training reads cached embeddings (the backbone is frozen, so running it again would only
cost time); inference may start from raw frames. Both enter the same video branch, so the
two paths give the same logits up to the embedding cache's fp16 precision.
"""

from __future__ import annotations

import torch
from torch import nn

from spectral.models.audio import AudioEncoder
from spectral.models.backbone import FrameEncoder
from spectral.models.sensor import SensorEncoder


class VideoBranch(nn.Module):
    """uint8 frames [B, N, H, W, 3] or embeddings [B, N, D] → temporal mean [B, D]."""

    def __init__(self, embedding_dim: int, frame_encoder: FrameEncoder | None = None) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.frame_encoder = frame_encoder

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        if video.dtype == torch.uint8:
            if self.frame_encoder is None:
                raise ValueError("raw frames given but this model has no frame encoder attached")
            batch, frames = video.shape[:2]
            with torch.no_grad():
                video = self.frame_encoder(video.flatten(0, 1)).view(batch, frames, -1)
        return video.float().mean(dim=1)


class SpectralFusionModel(nn.Module):
    """Video (D) + audio (256) + sensors (64) → fusion MLP 1600 → 512 → 128 → classes."""

    def __init__(self, num_sensor_features: int, num_classes: int = 4, video_dim: int = 1280,
                 frame_encoder: FrameEncoder | None = None) -> None:
        super().__init__()
        self.video = VideoBranch(video_dim, frame_encoder)
        self.audio = AudioEncoder(embedding_dim=256)
        self.sensors = SensorEncoder(num_sensor_features, embedding_dim=64)
        fused = video_dim + self.audio.embedding_dim + self.sensors.embedding_dim
        self.fusion = nn.Sequential(
            nn.Linear(fused, 512), nn.ReLU(), nn.Dropout(0.5),
            nn.Linear(512, 128), nn.ReLU(), nn.Dropout(0.3),
        )
        self.classifier = nn.Linear(128, num_classes)

    def branch_embeddings(self, video: torch.Tensor, audio: torch.Tensor,
                          sensors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.video(video), self.audio(audio), self.sensors(sensors)

    def classify(self, video_emb: torch.Tensor, audio_emb: torch.Tensor, sensor_emb: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.fusion(torch.cat([video_emb, audio_emb, sensor_emb], dim=1)))

    def forward(self, video: torch.Tensor, audio: torch.Tensor, sensors: torch.Tensor) -> torch.Tensor:
        return self.classify(*self.branch_embeddings(video, audio, sensors))

    @torch.no_grad()
    def predict(self, video: torch.Tensor, audio: torch.Tensor,
                sensors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(class indices, confidences, probabilities) with softmax."""
        probabilities = torch.softmax(self(video, audio, sensors), dim=1)
        confidence, index = probabilities.max(dim=1)
        return index, confidence, probabilities
