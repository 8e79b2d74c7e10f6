"""The exported model: one file of tensors and plain config, loadable with weights_only=True.

Like timm's pretrained_cfg, everything needed to use the weights travels with them:
backbone name, weights source and preprocessing, frame sampling, sensor schema, class
names. The frozen backbone's weights are included, so predicting needs neither the hub
nor the weights package.
"""

from __future__ import annotations

from pathlib import Path

import torch

from spectral.models.backbone import BackboneInfo, FrameEncoder, rebuild_frame_encoder
from spectral.models.fusion import SpectralFusionModel

FORMAT = "spectral-model/7"  # 3: absent-modality embeddings, temperature, OOD detector; 4: label-noise floor;
# 5: class bias per modality pattern; 6: branch embedding bounds; 7: frames scaled in 4:2:0 (spectral.io.yuv420)


def export_model(model: SpectralFusionModel, frame_encoder: FrameEncoder, config: dict, path: Path) -> int:
    """Write the artefact; `config` holds backbone (BackboneInfo dict), embedding_precision and
    embedding_channels_last, video, audio, sensor_features, class_names, provenance. Returns the file size."""
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("video.frame_encoder.")}
    payload = {
        "format": FORMAT,
        "config": config,
        "state_dict": state,
        "backbone_state_dict": frame_encoder.backbone.state_dict(),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path.stat().st_size


def load_model(path: Path, map_location: str | torch.device = "cpu") -> tuple[SpectralFusionModel, dict]:
    """(model in eval mode with its frame encoder attached, config)."""
    payload = torch.load(Path(path), map_location=map_location, weights_only=True)
    if payload.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} file (format={payload.get('format')!r}); a model exported by "
                         f"an earlier version must be trained again (dvc repro train)")
    config = payload["config"]
    info = BackboneInfo(**{**config["backbone"], "mean": tuple(config["backbone"]["mean"]),
                           "std": tuple(config["backbone"]["std"])})
    # the frame encoder runs exactly as the embed stage ran it over the training frames
    precision = getattr(torch, config["embedding_precision"])
    encoder = rebuild_frame_encoder(info, payload["backbone_state_dict"], precision, config["embedding_channels_last"])
    model = SpectralFusionModel(len(config["sensor_features"]), len(config["class_names"]), info.embedding_dim,
                                frame_encoder=encoder)
    missing, unexpected = model.load_state_dict(payload["state_dict"], strict=False)
    if unexpected or any(not k.startswith("video.frame_encoder.") for k in missing):
        raise ValueError(f"{path}: state dict does not fit the model (missing {missing}, unexpected {unexpected})")
    return model.eval(), config
