"""Lightning training of the fusion model on the cached shards, and export of the best checkpoint.

The recipe is the spec's (AdamW, ReduceLROnPlateau on a validation loss, top-3 checkpoints,
early stopping); everything about the loop (devices, precision, DDP) stays in the
Trainer, so moving from this CPU to eight GPUs is a params change (`train.devices`).
With modality dropout, `train.monitor: val_robust_loss` selects on the validation events as
recorded and with each modality in turn absent: the model is meant for both.

Under DDP every epoch-level value is a torchmetrics state summed over the ranks before it
is computed (loss included, as a weighted mean), so the LR scheduler, early stopping and
checkpointing all see the same val_loss on every rank, equal to one process evaluating
every validation event once (spectral.data gives each rank its share without padding).
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint, TQDMProgressBar
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.utilities.rank_zero import rank_zero_only
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from spectral.data import DEFAULT_MAX_LEFT_OUT_FRACTION, CachedShardDataModule, read_manifest
from spectral.events import CLASS_NAMES
from spectral.features.sensors import SENSOR_FEATURES
from spectral.models.artifact import export_model
from spectral.models.backbone import BackboneInfo, FrameEncoder, create_backbone
from spectral.models.fusion import SpectralFusionModel
from spectral.models.modalities import MODALITIES
from spectral.models.posthoc import fit_posthoc
from spectral.runtime.deps import files_digest
from spectral.runtime.devices import lightning_precision
from spectral.runtime.lifecycle import reclaim_sigterm
from spectral.runtime.params import build_config, check_choice
from spectral.runtime.provenance import code_revision, params_digest

log = logging.getLogger(__name__)
CLASS_WEIGHTS = ("auto", "balanced", "none")
LOGGERS = ("dvclive", "wandb", "none")


@dataclass(frozen=True)
class TrainConfig:
    """train.* params and video.weights (the exported model holds the backbone); the defaults are params.yaml's
    (tests/runtime/test_params.py)."""

    seed: int = 42
    max_epochs: int = 50
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    lr_factor: float = 0.5
    lr_patience: int = 5
    early_stopping_patience: int = 10
    class_weights: str = "auto"   # auto: inverse-frequency weights when the largest class is >1.5x the smallest
    accelerator: str = "auto"
    devices: str | int = "auto"   # per node; batch_size is per device (DDP's effective batch = devices x nodes x it)
    num_nodes: int = 1
    precision: str = "auto"       # auto: bf16-mixed where the hardware has native bf16, else 32-true (CPU)
    num_workers: int = 0
    logger: str = "dvclive"       # dvclive | wandb | none; a CSV log is always written
    # per modality, the weight of the event with that modality absent (its learned embedding) in the training
    # loss; the rest, 1 - the sum, is the event as recorded (spectral.stages.train.dropout_variants)
    modality_dropout: dict[str, float] = field(default_factory=lambda: dict.fromkeys(MODALITIES, 0.15))
    # what the LR schedule, early stopping and the checkpoint choice minimise: val_loss (all modalities)
    # or val_robust_loss (its mean with each modality in turn absent)
    monitor: str = "val_robust_loss"
    # weight of the per-branch auxiliary classifiers' loss (training only): each branch must classify alone
    branch_loss: float = 0.3
    # LogitNorm (Wei et al., ICML 2022): every loss sees logits / (logit_norm · |logits|), so training cannot lower
    # it by growing the logits, which left easy events and unfamiliar media at a softmax saturated at 1; the
    # exported model keeps the raw logits (the calibration's temperature sets their scale). 0: off
    logit_norm: float = 0.1
    # label smoothing of the training targets; measured against LogitNorm by bench/saturation.py: it also ends the
    # saturation but tightens the penultimate features the OOD flag reads (93 % of the OOD set flagged, not 100 %)
    label_smoothing: float = 0.0
    # the events decode or sensors accepted that training (and evaluation) may fail to use: more fails the stage
    max_left_out_fraction: float = DEFAULT_MAX_LEFT_OUT_FRACTION
    weights: str = "packaged"     # video.weights: the backbone's weights, as embed used them

    @classmethod
    def from_params(cls, params: dict) -> TrainConfig:
        return build_config(cls, params, "train", elsewhere={"weights": "video.weights"})

    def __post_init__(self) -> None:
        rates = self.modality_dropout
        if set(rates) != set(MODALITIES) or not all(0.0 <= float(r) < 1.0 for r in rates.values()):
            raise ValueError(f"train.modality_dropout needs a rate in [0, 1) for each of {', '.join(MODALITIES)}, "
                             f"got {rates}")
        if sum(rates.values()) >= 1.0:
            raise ValueError(f"train.modality_dropout rates must sum to less than 1 (the rest is the events as "
                             f"recorded), got {rates}")
        if self.logit_norm < 0 or not 0 <= self.label_smoothing < 1:
            raise ValueError(f"train.logit_norm must be ≥ 0 (0: off) and train.label_smoothing in [0, 1), got "
                             f"{self.logit_norm} and {self.label_smoothing}")
        check_choice("train.monitor", self.monitor, ("val_loss", "val_robust_loss"))
        check_choice("train.class_weights", self.class_weights, CLASS_WEIGHTS)
        check_choice("train.logger", self.logger, LOGGERS)


def without_modality(present: torch.Tensor, index: int) -> torch.Tensor:
    """The mask with one modality switched off; an event that had only that one keeps its own mask."""
    kept = present & (torch.arange(present.shape[1], device=present.device) != index)
    return torch.where(kept.any(dim=1, keepdim=True), kept, present)


def dropout_variants(present: torch.Tensor, rates: torch.Tensor) -> list[tuple[float, torch.Tensor]]:
    """Modality dropout in expectation: (weight, mask) for the events as recorded (1 - sum of the rates)
    and with each modality absent (its rate). The training loss is the weighted sum over them: the
    expected loss of dropping at most one modality per event with these rates, computed exactly, so
    every step trains every absent-modality path and no sampling noise enters the gradient."""
    variants = [(1.0 - float(rates.sum()), present)]
    variants += [(float(rate), without_modality(present, i)) for i, rate in enumerate(rates) if rate > 0]
    return variants


class SpectralLightningModule(pl.LightningModule):
    """Loss, metrics and optimiser around SpectralFusionModel."""

    def __init__(self, num_sensor_features: int, video_dim: int, num_classes: int = len(CLASS_NAMES),
                 lr: float = 1e-3, weight_decay: float = 1e-4, lr_factor: float = 0.5, lr_patience: int = 5,
                 class_weights: list[float] | None = None, modality_dropout: dict[str, float] | None = None,
                 monitor: str = "val_loss", branch_loss: float = 0.0, label_smoothing: float = 0.0,
                 logit_norm: float = 0.0) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = SpectralFusionModel(num_sensor_features, num_classes, video_dim)
        weight = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
        self.criterion = nn.CrossEntropyLoss(weight=weight, label_smoothing=label_smoothing)
        # Training-only linear heads on each branch's embedding. Without them a branch that another one makes
        # redundant (sensors' humanoid flag next to the video's figure) stops carrying the class, and the
        # model has nothing to fall back on when that other modality is absent (bench/modality_dropout.py).
        dims = (video_dim, self.model.audio.embedding_dim, self.model.sensors.embedding_dim)
        self.branch_heads = nn.ModuleList(nn.Linear(dim, num_classes) for dim in dims)
        rates = [float((modality_dropout or {}).get(m, 0.0)) for m in MODALITIES]
        self.register_buffer("dropout_rates", torch.tensor(rates), persistent=False)
        self.losses = nn.ModuleDict({f"{split}_loss": MeanMetric() for split in ("train", "val", "test")}
                                    | {f"{split}_robust_loss": MeanMetric() for split in ("val", "test")})
        self.metrics = nn.ModuleDict({
            f"{split}_{name}": metric
            for split in ("train", "val", "test")
            for name, metric in (("acc", MulticlassAccuracy(num_classes, average="micro")),
                                 ("f1", MulticlassF1Score(num_classes, average="macro")))
        })

    def forward(self, video: torch.Tensor, audio: torch.Tensor, sensors: torch.Tensor,
                present: torch.Tensor) -> torch.Tensor:
        return self.model(video, audio, sensors, present)

    def loss_logits(self, parts, present: torch.Tensor) -> torch.Tensor:
        """The logits every loss sees: normalised to length 1 / logit_norm when it is set."""
        logits = self.model.classify(*parts, present)
        if self.hparams.logit_norm:
            logits = logits / (self.hparams.logit_norm * logits.norm(dim=1, keepdim=True).clamp_min(1e-7))
        return logits

    def _step(self, batch, split: str) -> torch.Tensor:
        video, audio, sensors, present, labels = batch
        parts = self.model.branch_embeddings(video, audio, sensors)
        logits = self.loss_logits(parts, present)
        loss = self.criterion(logits, labels)
        if split == "train" and self.dropout_rates.any():
            (as_recorded, _), *absent = dropout_variants(present, self.dropout_rates)
            loss = as_recorded * loss + sum(weight * self.criterion(self.loss_logits(parts, mask), labels)
                                            for weight, mask in absent)
        if split == "train" and self.hparams.branch_loss:
            loss = loss + self.hparams.branch_loss * self._branch_loss(parts, present, labels)
        preds = logits.argmax(dim=1)
        # Logged loss: sum(w_y * CE) / sum(w_y) over the events seen, which no batching or rank split
        # changes (a mean of batch means would). A step's value is this rank's batch, an epoch's all ranks'.
        event_weights = self.criterion.weight[labels] if self.criterion.weight is not None else torch.ones_like(loss)
        event_weights = event_weights.expand(labels.shape)
        self.losses[f"{split}_loss"](nn.functional.cross_entropy(logits.detach(), labels, reduction="none"),
                                     event_weights)
        if split != "train":
            # the events as recorded and with each modality in turn absent: what the model meets in use
            variants = [logits] + [self.loss_logits(parts, without_modality(present, i))
                                   for i in range(len(MODALITIES))]
            robust = torch.stack([nn.functional.cross_entropy(v.detach(), labels, reduction="none")
                                  for v in variants]).mean(dim=0)
            self.losses[f"{split}_robust_loss"](robust, event_weights)
            self.log(f"{split}_robust_loss", self.losses[f"{split}_robust_loss"], on_step=False, on_epoch=True)
        on_step = split == "train"
        self.log(f"{split}_loss", self.losses[f"{split}_loss"], on_step=on_step, on_epoch=True, prog_bar=True)
        for name in ("acc", "f1"):
            metric = self.metrics[f"{split}_{name}"]
            metric(preds, labels)
            self.log(f"{split}_{name}", metric, on_step=False, on_epoch=True, prog_bar=name == "acc")
        return loss

    def _branch_loss(self, parts, present: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean over the branches of each auxiliary head's loss on the events that have that modality."""
        losses = [self.criterion(head(part[present[:, i]]), labels[present[:, i]])
                  for i, (head, part) in enumerate(zip(self.branch_heads, parts, strict=True)) if present[:, i].any()]
        return torch.stack(losses).mean()

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "test")

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=self.hparams.lr_factor,
                                                               patience=self.hparams.lr_patience)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "monitor": self.hparams.monitor}}


class ValidationHistory(pl.Callback):
    """Each epoch's validation metrics as logged (synced over ranks), so the summary can report the
    ones that belong to the best checkpoint."""

    def __init__(self) -> None:
        self.epochs: dict[int, dict[str, float]] = {}

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.epochs[trainer.current_epoch] = {name: float(trainer.callback_metrics[name])
                                                  for name in ("val_loss", "val_robust_loss", "val_acc", "val_f1")}


class StageSigterm(pl.Callback):
    """Keeps a stage's SIGTERM behaviour (spectral.runtime.lifecycle) once Lightning has installed its handlers."""

    def on_sanity_check_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        reclaim_sigterm()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        reclaim_sigterm()


def inverse_frequency_weights(labels: np.ndarray, num_classes: int, mode: str) -> list[float] | None:
    """Class weights for the loss: None when balanced enough (or mode 'none'), else n / (k * count)."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    if mode == "none" or counts.min() > 0 and counts.max() / counts.min() <= 1.5 and mode == "auto":
        return None
    weights = labels.size / (num_classes * np.maximum(counts, 1.0))
    return [round(float(w), 6) for w in weights]


def _loggers(cfg: TrainConfig, out_dir: Path, dvclive_dir: Path) -> list:
    loggers = [CSVLogger(str(out_dir), name="csv_logs", version="")]
    if cfg.logger == "dvclive":
        from dvclive.lightning import DVCLiveLogger
        # dvcyaml=None: dvc.yaml declares dvclive's outputs itself; DVCLive must not rewrite it mid-repro.
        loggers.append(DVCLiveLogger(dir=str(dvclive_dir), dvcyaml=None, save_dvc_exp=False))
    elif cfg.logger == "wandb":
        loggers.append(pl.loggers.WandbLogger(project="spectral", save_dir=str(out_dir)))
    return loggers


def train(embed_dir: Path, sensors_path: Path, out_dir: Path, cfg: TrainConfig,
          dvclive_dir: Path = Path("dvclive")) -> dict | None:
    """Fit, export `out_dir/model.pt` from the best checkpoint, return a summary (also train_summary.json).

    With `train.devices` > 1 every DDP rank runs this function (Lightning starts the ranks by
    re-running the script); rank 0 alone exports, and the other ranks return None.
    """
    out_dir = Path(out_dir)
    checkpoints = out_dir / "checkpoints"
    if checkpoints.is_dir() and rank_zero_only.rank == 0:  # stale checkpoints must not compete for "best"
        shutil.rmtree(checkpoints)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(embed_dir)
    info = BackboneInfo(**{**manifest["backbone"], "mean": tuple(manifest["backbone"]["mean"]),
                           "std": tuple(manifest["backbone"]["std"])})
    # before fitting, so a mismatch costs seconds, not a training run; before seeding, as building draws randoms
    backbone, live_info = create_backbone(info.name, cfg.weights)
    if live_info.weights_sha256 != info.weights_sha256:
        raise RuntimeError(f"video.weights={cfg.weights!r} resolves to {live_info.weights} (sha256 "
                           f"{live_info.weights_sha256}), but the embeddings were made with {info.weights} "
                           f"(sha256 {info.weights_sha256}); rerun the embed stage")
    pl.seed_everything(cfg.seed, workers=True)
    data = CachedShardDataModule(embed_dir, sensors_path, cfg.batch_size, cfg.num_workers, cfg.seed,
                                 cfg.max_left_out_fraction)
    data.setup("fit")
    left_out = data.left_out()
    for row in left_out:
        log.warning("left out of %s: %s: %s", row["split"], row["event"], row["reason"])
    labels = data.train_labels()
    class_weights = inverse_frequency_weights(labels, len(CLASS_NAMES), cfg.class_weights)
    module = SpectralLightningModule(len(SENSOR_FEATURES), info.embedding_dim, lr=cfg.lr,
                                     weight_decay=cfg.weight_decay, lr_factor=cfg.lr_factor,
                                     lr_patience=cfg.lr_patience, class_weights=class_weights,
                                     modality_dropout=cfg.modality_dropout, monitor=cfg.monitor,
                                     branch_loss=cfg.branch_loss, label_smoothing=cfg.label_smoothing,
                                     logit_norm=cfg.logit_norm)
    module.model.sensors.set_statistics(*data.train_sensor_statistics())
    precision = lightning_precision(cfg.precision, cfg.accelerator)
    checkpoint = ModelCheckpoint(dirpath=str(checkpoints), filename=f"spectral-{{epoch:02d}}-{{{cfg.monitor}:.3f}}",
                                 monitor=cfg.monitor, mode="min", save_top_k=3)
    history = ValidationHistory()
    trainer = pl.Trainer(
        max_epochs=cfg.max_epochs,
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        num_nodes=cfg.num_nodes,
        precision=precision,
        deterministic="warn",
        logger=_loggers(cfg, out_dir, Path(dvclive_dir)),
        callbacks=[checkpoint, EarlyStopping(monitor=cfg.monitor, patience=cfg.early_stopping_patience, mode="min"),
                   LearningRateMonitor(logging_interval="epoch"), TQDMProgressBar(), history,
                   StageSigterm()],
        enable_progress_bar=True,
        log_every_n_steps=1,
        use_distributed_sampler=False,  # spectral.data's samplers: equal train batches, unpadded evaluation
    )
    trainer.fit(module, datamodule=data)
    if not trainer.is_global_zero:
        return None
    # a checkpoint is a pickle: weights_only=True lets only tensors and plain data out of it, never code
    best_epoch = torch.load(checkpoint.best_model_path, map_location="cpu", weights_only=True)["epoch"]
    best = SpectralLightningModule.load_from_checkpoint(checkpoint.best_model_path, map_location="cpu",
                                                        weights_only=True)
    posthoc = fit_posthoc(best.model, data.loader("train", ranks=(1, 0)), data.loader("val", ranks=(1, 0)))
    config = {
        "backbone": info.to_dict(),
        "embedding_precision": manifest["precision"],
        "embedding_channels_last": manifest["channels_last"],
        "embeddings_made_by": manifest["made_by"],  # the devices, kernels and threads that computed them
        "video": manifest["video"],
        "audio": manifest["audio"],
        "sensor_features": list(SENSOR_FEATURES),
        "class_names": list(CLASS_NAMES),
        "class_weights": class_weights,
        "train": asdict(cfg),
        "train_precision": precision,
        "provenance": {
            "code": code_revision(Path(__file__)),
            # what training read: the manifest and the shards it lists (a stray file in the folder is not part)
            "embeddings_sha256": files_digest([Path(embed_dir) / "manifest.json",
                                               *(Path(embed_dir) / file for file in manifest["index"])],
                                              Path(embed_dir)),
            "sensors_sha256": files_digest([Path(sensors_path)], Path(sensors_path).parent),
            "params_sha256": params_digest({"train": asdict(cfg)}),
        },
    }
    size = export_model(best.model, FrameEncoder(backbone, info), config, out_dir / "model.pt")
    summary = {
        "best_checkpoint": Path(checkpoint.best_model_path).name,
        "monitor": cfg.monitor,
        "best_monitored": float(checkpoint.best_model_score) if checkpoint.best_model_score is not None else None,
        # the validation metrics of the exported weights, over every validation event once (all ranks)
        "best_val_metrics": {"epoch": best_epoch, **history.epochs[best_epoch]},
        "devices": trainer.world_size,
        "epochs_run": trainer.current_epoch,
        "train_events": int(labels.size),
        "train_class_counts": np.bincount(labels, minlength=len(CLASS_NAMES)).tolist(),
        "class_weights": class_weights,
        "train_precision": precision,
        "posthoc": posthoc,
        "left_out": left_out,
        # kept with a modality masked (missing_modality: keep), per split and modality
        "missing_modalities": {split: {m: len(names) for m, names in data.missing_modalities(split).items()}
                               for split in ("train", "val", "test")},
        "provenance": config["provenance"],
        "model_bytes": size,
    }
    (out_dir / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    log.info("training done: %s", summary)
    return summary
