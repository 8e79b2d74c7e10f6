"""The spec's fusion classifier, fed either raw frames or cached per-frame embeddings.

Training reads cached embeddings (the backbone is frozen, so running it again would only
cost time); inference may start from raw frames. Both enter the same video branch, so the
two paths give the same logits up to the embedding cache's fp16 precision.

Every sample carries a presence mask (spectral.models.modalities): a branch whose input is absent
contributes a learned "absent" embedding instead of its output, so the fusion MLP knows "no
microphone" from "a quiet room". Training's loss also counts each event with one present branch
replaced by it (modality dropout, in expectation), so the absent embedding is learned and the model
does not lean on one modality.

Each present branch's embedding is clipped, per dimension, to the range the training events' embeddings
span (fitted after training by spectral.models.posthoc): a ReLU network extrapolates linearly, so media
far from anything trained on (white noise or speech through the audio CNN) would otherwise reach logits
larger than any training event's and a softmax saturated at 1. The exported model also carries its
calibration, a softmax temperature and a label-noise floor fitted on validation
(spectral.models.calibration), and an out-of-distribution detector on the fused features
(spectral.models.ood), which scores the embeddings unclipped.
"""

from __future__ import annotations

import torch
from torch import nn

from spectral.models.audio import AudioEncoder
from spectral.models.backbone import FrameEncoder
from spectral.models.calibration import calibrated_probabilities
from spectral.models.modalities import MODALITIES, pattern_bits, pattern_index, presence_patterns
from spectral.models.ood import MahalanobisDetector
from spectral.models.sensor import SensorEncoder

FUSED_DIM = 128


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
        dims = (video_dim, self.audio.embedding_dim, self.sensors.embedding_dim)
        self.branch_dims = dims
        # per dimension of the concatenated branch embeddings; ±inf (no bound) until posthoc fits them
        self.register_buffer("embedding_low", torch.full((sum(dims),), float("-inf")))
        self.register_buffer("embedding_high", torch.full((sum(dims),), float("inf")))
        self.absent = nn.ParameterDict({m: nn.Parameter(torch.zeros(d)) for m, d in zip(MODALITIES, dims, strict=True)})
        self.fusion = nn.Sequential(
            nn.Linear(sum(dims), 512), nn.ReLU(), nn.Dropout(0.5),
            nn.Linear(512, FUSED_DIM), nn.ReLU(), nn.Dropout(0.3),
        )
        self.classifier = nn.Linear(FUSED_DIM, num_classes)
        # identity until spectral.models.posthoc fits them on validation
        self.register_buffer("temperature", torch.ones(()))
        self.register_buffer("label_noise", torch.zeros(()))
        # per modality pattern (pattern_index order), a class bias added to the logits; zero for "all"
        self.register_buffer("pattern_bias", torch.zeros(len(presence_patterns()), num_classes))
        self.ood = MahalanobisDetector(num_classes, FUSED_DIM)

    def branch_embeddings(self, video: torch.Tensor, audio: torch.Tensor,
                          sensors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.video(video), self.audio(audio), self.sensors(sensors)

    def bounded(self, parts: tuple[torch.Tensor, ...] | list[torch.Tensor]) -> list[torch.Tensor]:
        """Each branch embedding clipped to its training range."""
        lows, highs = self.embedding_low.split(self.branch_dims), self.embedding_high.split(self.branch_dims)
        return [part.clamp(low.to(part.dtype), high.to(part.dtype))
                for part, low, high in zip(parts, lows, highs, strict=True)]

    def fused(self, parts: tuple[torch.Tensor, ...] | list[torch.Tensor], present: torch.Tensor | None,
              bounded: bool = True) -> torch.Tensor:
        """[B, 128] penultimate features; absent branches (present[:, i] False) take their learned embedding.
        torch.where keeps every parameter in the graph, as DDP needs, whatever a batch's mask. bounded=False:
        the embeddings as the branches made them, which the OOD detector scores (clipping would pull an
        unfamiliar event towards the training data it is to be told apart from)."""
        if bounded:
            parts = self.bounded(parts)
        if present is not None:
            parts = [torch.where(present[:, i:i + 1], part, self.absent[m].to(part.dtype))
                     for i, (m, part) in enumerate(zip(MODALITIES, parts, strict=True))]
        return self.fusion(torch.cat(list(parts), dim=1))

    def logits(self, features: torch.Tensor, present: torch.Tensor | None) -> torch.Tensor:
        """The classifier's logits plus the class bias of each event's modality pattern. The absent-modality
        paths see a fraction of the training loss and can settle on a shifted class boundary (one training
        seed called every correlated event humanoid without video); spectral.models.posthoc fits the shift back
        on validation."""
        logits = self.classifier(features)
        if present is None:
            return logits
        # indexed by bit code: code 0 (no modality, only reachable inside training's dropout) takes no bias
        table = torch.cat([torch.zeros_like(self.pattern_bias[:1]), self.pattern_bias]).to(logits.dtype)
        return logits + table[pattern_bits(present)]

    def classify(self, video_emb: torch.Tensor, audio_emb: torch.Tensor, sensor_emb: torch.Tensor,
                 present: torch.Tensor | None = None) -> torch.Tensor:
        """Uncalibrated logits from branch embeddings."""
        return self.logits(self.fused((video_emb, audio_emb, sensor_emb), present), present)

    def forward(self, video: torch.Tensor, audio: torch.Tensor, sensors: torch.Tensor,
                present: torch.Tensor | None = None) -> torch.Tensor:
        return self.classify(*self.branch_embeddings(video, audio, sensors), present)

    def calibrate(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits → the calibrated probabilities `spectral predict` and evaluation report."""
        return calibrated_probabilities(logits, self.temperature, self.label_noise)

    @torch.no_grad()
    def predict(self, video: torch.Tensor, audio: torch.Tensor, sensors: torch.Tensor,
                present: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Calibrated probabilities with class indices and confidences, and the out-of-distribution
        score and flag."""
        if present is None:
            present = torch.ones(video.shape[0], len(MODALITIES), dtype=torch.bool, device=video.device)
        parts = self.branch_embeddings(video, audio, sensors)
        probabilities = self.calibrate(self.logits(self.fused(parts, present), present))
        confidence, index = probabilities.max(dim=1)
        scores = self.ood.score(self.fused(parts, present, bounded=False), present)
        return {"index": index, "confidence": confidence, "probabilities": probabilities,
                "ood_score": scores, "ood_threshold": self.ood.threshold[pattern_index(present)],
                "in_distribution": self.ood.in_distribution(scores, present)}
