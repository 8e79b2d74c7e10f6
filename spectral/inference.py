"""`spectral predict`: raw event folders → class + confidence, with the decode stage's own code.

Frames are sampled, resized and stored (the frame cache's encode → decode round trip) exactly as the exported model's
config says (the same functions the decode stage runs), sensors go through the same feature schema, and the
whole model (frozen backbone included, built as the embed stage built it) runs on batches
of events; every feature is per event, so the batch never changes a result. Labels are
ignored. What had to be repaired or imputed comes back as `warnings`. A bad event yields
an error object, never a crash of the batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from spectral.decode import decode_event
from spectral.events import SENSORS_FILE, EventError, display_name
from spectral.features.sensors import missing_features, sensor_features
from spectral.frames import stored_frames
from spectral.io.audio import from_pcm16
from spectral.models.artifact import load_model
from spectral.models.fusion import SpectralFusionModel


class Predictor:
    """Holds the loaded model; `predict` takes event folders and yields one dict per event."""

    def __init__(self, model_path: Path, device: str = "cpu") -> None:
        self.device = torch.device(device)
        self.model: SpectralFusionModel
        self.model, self.config = load_model(model_path, map_location=self.device)
        self.model.to(self.device)
        self.class_names: list[str] = self.config["class_names"]

    def _prepare(self, folder: Path) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], list[str]]:
        """(frames, waveform, sensor features), and the warnings of what was repaired or imputed."""
        video = self.config["video"]
        sample = decode_event(folder, video["num_frames"], video["size"], video["backend"], video["interpolation"])
        try:
            sensors = sensor_features(folder / SENSORS_FILE)
        except Exception as err:
            raise EventError(folder.name, SENSORS_FILE, f"cannot read sensors: {err}") from None
        warnings = list(sample["json"]["warnings"])
        if imputed := missing_features(sensors):
            warnings.append(f"sensors: imputed {', '.join(imputed)}")
        # the shard round trip training saw (lossless h264 by default); models from before the cache saw raw frames
        frame_format = video.get("frame_format", "npy")
        quality = video["jpeg_quality"] if frame_format == "jpeg" else 95  # recorded as null for h264/npy
        frames = stored_frames(sample["frames.npy"], frame_format, quality)
        return (frames, from_pcm16(sample["audio.npy"]), sensors.astype(np.float32)), warnings

    @torch.inference_mode()
    def _run(self, pending: list[tuple[str, tuple[np.ndarray, np.ndarray, np.ndarray], list[str]]]) -> Iterator[dict]:
        """Predictions for (name, inputs, warnings) triples, one batch."""
        names, inputs, warnings = zip(*pending, strict=True)
        frames, audio, sensors = (torch.from_numpy(np.stack(parts)).to(self.device)
                                  for parts in zip(*inputs, strict=True))
        indices, confidences, probabilities = self.model.predict(frames, audio, sensors)
        for name, index, confidence, probs, notes in zip(names, indices.tolist(), confidences.tolist(),
                                                         probabilities.tolist(), warnings, strict=True):
            yield {
                "event": name,
                "class": self.class_names[index],
                "confidence": round(confidence, 6),
                "probabilities": {c: round(p, 6) for c, p in zip(self.class_names, probs, strict=True)},
                "warnings": notes,
            }

    def predict(self, folders: list[Path], batch_size: int = 8) -> Iterator[dict]:
        """One result per folder, in order: a prediction or {"event", "error"}."""
        pending: list[tuple[str, tuple[np.ndarray, np.ndarray, np.ndarray], list[str]]] = []
        for folder in map(Path, folders):
            try:
                pending.append((folder.name, *self._prepare(folder)))
            except Exception as err:  # reported per event; the rest of the batch goes on
                # flush what is pending first, so results keep the input order
                if pending:
                    yield from self._run(pending)
                    pending = []
                yield {"event": display_name(folder.name), "error": str(err)}
                continue
            if len(pending) >= batch_size:
                yield from self._run(pending)
                pending = []
        if pending:
            yield from self._run(pending)
