"""`spectral predict`: raw event folders → class, calibrated confidence and an out-of-distribution flag.

Frames are sampled, resized and stored (the frame cache's encode → decode round trip) exactly as the
exported model's config says (the same functions the decode stage runs), sensors go through the same
feature schema, and the whole model (frozen backbone included, built as the embed stage built it)
runs on batches of events; every feature is per event, so the batch never changes a result. Labels
are ignored. A modality whose file is missing, empty or undecodable is absent, not an error: the
model classifies from the others and the result says which were missing and why. An event with no
readable modality, or a malformed folder, yields an error object, never a crash of the batch; a failure
of the machine (an I/O error, a decoder that cannot be imported) is not an answer about the event: it is
retried once and then raised (spectral.events.attempt_twice).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from spectral.events import (
    SENSORS_FILE,
    EventError,
    MissingFileError,
    attempt_twice,
    check_file,
    describe_error,
    display_name,
)
from spectral.features.sensors import missing_features, sensor_features
from spectral.io.audio import TARGET_RATE, from_pcm16
from spectral.io.errors import is_invalid_table
from spectral.io.event import decode_event
from spectral.io.frames import stored_frames
from spectral.io.video import check_backend
from spectral.models.artifact import load_model
from spectral.models.fusion import SpectralFusionModel
from spectral.models.modalities import MODALITIES

# what an answer's "decision" says: the class and confidence can be acted on, or the event is unlike
# anything the model was trained on (docs/trusting-a-prediction.md)
CLASSIFIED, OUT_OF_DISTRIBUTION = "classified", "out_of_distribution"


@dataclass
class PreparedEvent:
    """One event's model inputs; None where the modality is absent, with the reason in `missing`."""

    name: str
    frames: np.ndarray | None = None
    waveform: np.ndarray | None = None
    sensors: np.ndarray | None = None
    missing: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


class Predictor:
    """Holds the loaded model; `predict` takes event folders and yields one dict per event."""

    def __init__(self, model_path: Path, device: str = "cpu") -> None:
        self._use(*load_model(model_path, map_location=torch.device(device)), device)

    @classmethod
    def for_model(cls, model: SpectralFusionModel, config: dict, device: str = "cpu") -> Predictor:
        """A predictor around a model already loaded (evaluation scores the OOD set with its own)."""
        predictor = cls.__new__(cls)
        predictor._use(model, config, device)
        return predictor

    def _use(self, model: SpectralFusionModel, config: dict, device: str) -> None:
        check_backend(config["video"]["backend"])  # a decoder that cannot be imported fails here, not per event
        self.device = torch.device(device)
        self.model, self.config = model.to(self.device), config
        self.class_names: list[str] = config["class_names"]

    def prepare(self, folder: Path) -> PreparedEvent:
        """Decode what the folder has, with the decode stage's own function (the same frames and int16
        audio round trip training saw); raises EventError only when no modality is usable."""
        folder = Path(folder)
        video = self.config["video"]
        sample = decode_event(folder, video["num_frames"], video["size"], video["backend"], video["interpolation"],
                              self.config["audio"]["samples"] / TARGET_RATE, keep_missing=True)
        event = PreparedEvent(folder.name, missing=dict(sample["json"].get("missing", {})),
                              warnings=list(sample["json"]["warnings"]))
        if "frames.npy" in sample:  # the shard round trip training saw (lossless h264 by default)
            frame_format = video.get("frame_format", "npy")
            quality = video["jpeg_quality"] if frame_format == "jpeg" else 95  # recorded as null for h264/npy
            event.frames = stored_frames(sample["frames.npy"], frame_format, quality)
        if "audio.npy" in sample:
            event.waveform = from_pcm16(sample["audio.npy"])
        try:
            event.sensors = sensor_features(check_file(folder, SENSORS_FILE)).astype(np.float32)
        except MissingFileError as err:
            event.missing["sensors"] = str(err)
        except Exception as err:
            if not is_invalid_table(err):  # the machine's failure (I/O, memory): not an absent modality
                raise
            event.missing["sensors"] = str(EventError(folder.name, SENSORS_FILE,
                                                      f"cannot read sensors: {describe_error(err)}"))
        if len(event.missing) == len(MODALITIES):
            raise EventError(folder.name, None, "no modality could be read: " +
                             "; ".join(f"{m}: {why}" for m, why in event.missing.items()))
        if event.sensors is not None and (imputed := missing_features(event.sensors)):
            event.warnings.append(f"sensors: imputed {', '.join(imputed)}")
        return event

    def tensors(self, events: list[PreparedEvent]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(frames, waveforms, sensors, present) for a batch; absent inputs are zeros (NaN sensors) and
        masked, so they never reach the fusion MLP."""
        video = self.config["video"]
        no_frames = np.zeros((video["num_frames"], video["size"], video["size"], 3), np.uint8)
        no_audio = np.zeros(self.config["audio"]["samples"], np.float32)
        no_sensors = np.full(len(self.config["sensor_features"]), np.nan, np.float32)
        frames = np.stack([no_frames if e.frames is None else e.frames for e in events])
        audio = np.stack([no_audio if e.waveform is None else e.waveform for e in events])
        sensors = np.stack([no_sensors if e.sensors is None else e.sensors for e in events])
        present = np.array([[m not in e.missing for m in MODALITIES] for e in events])
        return tuple(torch.from_numpy(a).to(self.device) for a in (frames, audio, sensors, present))

    @torch.inference_mode()
    def _run(self, pending: list[PreparedEvent]) -> Iterator[dict]:
        """Predictions for one batch of prepared events."""
        out = self.model.predict(*self.tensors(pending))
        for i, event in enumerate(pending):
            familiar = bool(out["in_distribution"][i])
            probabilities = {c: round(float(p), 6)
                             for c, p in zip(self.class_names, out["probabilities"][i].tolist(), strict=True)}
            yield {
                "event": event.name,
                "decision": CLASSIFIED if familiar else OUT_OF_DISTRIBUTION,
                "class": self.class_names[int(out["index"][i])],
                # unlike anything trained on: the model's numbers are not a probability of being right there
                "confidence": round(float(out["confidence"][i]), 6) if familiar else None,
                "probabilities": probabilities if familiar else None,
                "model_probabilities": probabilities,
                "missing": [m for m in MODALITIES if m in event.missing],
                "missing_reasons": event.missing,
                "ood_score": round(float(out["ood_score"][i]), 4),
                "ood_threshold": round(float(out["ood_threshold"][i]), 4),
                "warnings": event.warnings,
            }

    def answers(self, prepared: list[PreparedEvent]) -> list[dict]:
        """Predictions for events already prepared (the server decodes them apart from the batch)."""
        return list(self._run(prepared))

    def predict(self, folders: list[Path], batch_size: int = 8) -> Iterator[dict]:
        """One result per folder, in order: a prediction or {"event", "error"}."""
        pending: list[PreparedEvent] = []
        for folder in map(Path, folders):
            try:  # a machine failure (I/O, memory) is retried once, then raises MachineFailure: never an answer
                pending.append(attempt_twice("predict", folder.name, lambda folder=folder: self.prepare(folder)))
            except EventError as err:  # the event's own files: reported per event; the rest of the batch goes on
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
