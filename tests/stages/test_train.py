"""Training on cached shards: the Lightning module, DDP, modality dropout, the exported model."""

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import torch
import yaml
from cached import cached_split
from torch import nn
from torchmetrics.classification import MulticlassF1Score

import spectral.inference
import spectral.stages.train
from spectral.data import CachedShardDataModule
from spectral.features.sensors import SENSOR_FEATURES
from spectral.models.artifact import load_model
from spectral.models.modalities import describe, presence_patterns
from spectral.runtime.keys import event_name
from spectral.runtime.shards import shard_paths
from spectral.stages.decode import DecodeConfig, run_decode
from spectral.stages.embed import EmbedConfig, run_embed
from spectral.stages.sensors import run_sensors
from spectral.stages.train import SpectralLightningModule, TrainConfig, inverse_frequency_weights, train

PROJECT = Path(__file__).resolve().parents[2]


def test_short_training_reduces_loss_and_writes_metrics(trained):
    out, summary = trained
    log = pl.read_csv(out / "csv_logs" / "metrics.csv").filter(pl.col("train_loss_epoch").is_not_null())
    losses = log["train_loss_epoch"].to_list()
    assert len(losses) == 4 and losses[-1] < losses[0]
    assert summary["epochs_run"] == 4 and summary["model_bytes"] < 100e6
    dvclive = json.loads((out / "dvclive" / "metrics.json").read_text())
    assert "val" in dvclive and "train" in dvclive


def test_exported_model_gives_the_best_checkpoints_logits(trained, embedded, sensor_table):
    out, summary = trained
    payload = torch.load(out / "model.pt", weights_only=True)
    assert payload["format"] == "spectral-model/7"
    model, config = load_model(out / "model.pt")
    assert config["class_names"][3] == "Forma_Humanoide_Potencial" and len(config["sensor_features"]) == 15
    assert config["backbone"]["weights"].startswith("packaged:") and config["video"]["num_frames"] == 4
    best = SpectralLightningModule.load_from_checkpoint(out / "checkpoints" / summary["best_checkpoint"],
                                                        map_location="cpu").eval()
    _, video, audio, sensors, _ = cached_split(embedded, sensor_table, "val")
    assert torch.isfinite(model.embedding_low).all() and (model.embedding_low <= model.embedding_high).all()
    with torch.no_grad():  # the checkpoint's weights; the export adds the clipping to the training range
        parts = model.branch_embeddings(video, audio, sensors)
        torch.testing.assert_close(model.classifier(model.fused(parts, None, bounded=False)),
                                   best.model(video, audio, sensors), rtol=0, atol=0)
    fitted = summary["posthoc"]
    assert float(model.temperature) == pytest.approx(fitted["temperature"], abs=1e-4) and bool(model.ood.fitted)
    assert float(model.label_noise) == pytest.approx(fitted["label_noise"], abs=1e-5)
    assert torch.isfinite(model.ood.threshold).all() and len(fitted["ood_thresholds"]) == 7
    biases = fitted["pattern_bias"]  # None where validation has too few events: no bias
    assert len(biases) == 6 and "all" not in biases and not model.pattern_bias[-1].any()
    for index, pattern in enumerate(presence_patterns()[:-1]):
        assert model.pattern_bias[index].tolist() == pytest.approx(biases[describe(pattern)] or [0.0] * 4)
    provenance = config["provenance"]
    assert len(provenance["embeddings_sha256"]) == 64 and len(provenance["sensors_sha256"]) == 64
    assert len(provenance["code"]["code_sha256"]) == 64 and provenance == summary["provenance"]
    training_py = Path(spectral.stages.train.__file__)
    git_blob = subprocess.run(["git", "hash-object", str(training_py)], capture_output=True, text=True).stdout.strip()
    assert provenance["code"]["git_blobs"]["spectral/stages/train.py"] == git_blob
    assert config["train_precision"] == "32-true"


def test_class_weights_only_when_imbalanced():
    assert inverse_frequency_weights(torch.tensor([0, 1, 2, 3] * 5).numpy(), 4, "auto") is None
    weights = inverse_frequency_weights(torch.tensor([0] * 12 + [1, 2, 3]).numpy(), 4, "auto")
    assert weights[0] < 1 < weights[1]
    assert inverse_frequency_weights(torch.tensor([0] * 12 + [1]).numpy(), 4, "none") is None


def test_ddp_on_two_cpu_processes_with_uneven_shards_matches_one_process(tiny_events, tmp_path):
    """`train.devices: 2` on the CPU (gloo) over deliberately uneven shards, as the stage script runs it:
    it must finish (equal batches per rank; a hang is what uneven WebDataset streams give), and the
    validation metrics it logged for its best checkpoint must be one process's evaluation of that
    checkpoint over every validation event once: loss within 1e-5, accuracy and macro-F1 exactly."""
    decoded, embedded, sensor_table = tmp_path / "decoded", tmp_path / "embeddings", tmp_path / "sensors.parquet"
    splits = {"train": 0.55, "val": 0.3, "test": 0.15}  # 12 / 3 / 1 events here
    report = run_decode(tiny_events, decoded, DecodeConfig(num_frames=2, size=64, workers=1, shard_events=2,
                                                           max_shard_events=4, splits=splits))
    run_sensors(tiny_events, sensor_table, splits)
    index = json.loads((decoded / "report.json").read_text())["index"]
    train_shard_sizes = [len(entry["accepted"]) for entry in index["train"]]
    assert len(train_shard_sizes) >= 2 and max(train_shard_sizes) >= 2 * min(train_shard_sizes), train_shard_sizes
    assert report["per_split"]["val"] % 2 == 1  # odd: the ranks' validation shares differ by one event
    run_embed(decoded, embedded, EmbedConfig(batch_frames=16, num_workers=0))
    params = yaml.safe_load((PROJECT / "params.yaml").read_text(encoding="utf-8"))
    params["train"].update(devices=2, accelerator="cpu", precision="32-true", max_epochs=3, batch_size=2,
                           logger="none", class_weights="balanced")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    result = subprocess.run([sys.executable, str(PROJECT / "pipeline" / "train.py"), str(embedded),
                             str(sensor_table), "models"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(PROJECT), "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-4000:]
    summary = json.loads((tmp_path / "models" / "train_summary.json").read_text())
    assert summary["devices"] == 2 and summary["class_weights"] is not None
    logged = summary["best_val_metrics"]
    module = SpectralLightningModule.load_from_checkpoint(
        tmp_path / "models" / "checkpoints" / summary["best_checkpoint"], map_location="cpu").eval()
    data = CachedShardDataModule(embedded, sensor_table, batch_size=100)
    data.setup()
    (video, audio, sensors, present, labels), = list(data.loader("val"))
    assert len(labels) == report["per_split"]["val"] and present.all()
    with torch.no_grad():  # the logits the loss sees (LogitNorm-scaled), as validation logged them
        logits = module.loss_logits(module.model.branch_embeddings(video, audio, sensors), present)
    weights = module.criterion.weight[labels]
    loss = float((nn.functional.cross_entropy(logits, labels, reduction="none") * weights).sum() / weights.sum())
    predicted = logits.argmax(dim=1)
    assert abs(logged["val_loss"] - loss) < 1e-5
    assert logged["val_acc"] == pytest.approx(float((predicted == labels).float().mean()), abs=1e-6)
    assert logged["val_f1"] == pytest.approx(float(MulticlassF1Score(4, average="macro")(predicted, labels)), abs=1e-6)


def test_every_rank_gets_the_same_number_of_training_batches_and_each_validation_event_once(embedded, sensor_table):
    data = CachedShardDataModule(embedded, sensor_table, batch_size=2)
    data.setup()
    for world in (2, 3):
        train = [len(data.loader("train", shuffle=True, ranks=(world, rank))) for rank in range(world)]
        assert len(set(train)) == 1
    val = data.used_events("val")
    seen = [val[i] for rank in range(2) for i in data.loader("val", ranks=(2, rank)).sampler]
    assert sorted(seen) == sorted(val) and len(val) == 2
    with pytest.raises(ValueError, match="the val split has 2 event"):
        data.loader("val", ranks=(3, 0))


def test_modality_dropout_is_the_expectation_over_one_absent_modality():
    present = torch.tensor([[True, True, True], [True, False, False]])  # the second event has only video
    variants = spectral.stages.train.dropout_variants(present, torch.tensor([0.2, 0.1, 0.3]))
    assert [w for w, _ in variants] == pytest.approx([0.4, 0.2, 0.1, 0.3])
    masks = [m.tolist() for _, m in variants]
    assert masks[0] == present.tolist()
    assert masks[1] == [[False, True, True], [True, False, False]]  # never left without any modality
    assert masks[3] == [[True, True, False], [True, False, False]]
    assert len(spectral.stages.train.dropout_variants(present, torch.tensor([0.0, 0.2, 0.0]))) == 2
    with pytest.raises(ValueError, match="sum to less than 1"):
        TrainConfig(modality_dropout={"video": 0.5, "audio": 0.4, "sensors": 0.1})
    with pytest.raises(ValueError, match="modality_dropout"):
        TrainConfig(modality_dropout={"video": 0.2})


def test_the_training_loss_with_modality_dropout_is_the_weighted_sum_of_its_variants():
    torch.manual_seed(0)
    module = SpectralLightningModule(len(SENSOR_FEATURES), 1280, modality_dropout={"video": 0.3, "audio": 0.0,
                                                                                     "sensors": 0.2}).eval()
    video, audio, sensors = torch.randn(4, 2, 1280), torch.randn(4, 22_050) * 0.1, torch.randn(4, 15)
    present, labels = torch.ones(4, 3, dtype=torch.bool), torch.tensor([0, 1, 2, 3])
    module.log = lambda *args, **kwargs: None  # no trainer attached
    with torch.no_grad():
        loss = module._step((video, audio, sensors, present, labels), "train")
        ce = [nn.functional.cross_entropy(module.model(video, audio, sensors, mask), labels)
              for mask in (present, torch.tensor([[False, True, True]] * 4), torch.tensor([[True, True, False]] * 4))]
    assert float(loss) == pytest.approx(float(0.5 * ce[0] + 0.3 * ce[1] + 0.2 * ce[2]), rel=1e-5)


def test_branch_heads_add_each_branchs_own_loss_on_the_events_that_have_it():
    torch.manual_seed(0)
    module = SpectralLightningModule(len(SENSOR_FEATURES), 1280, branch_loss=0.5).eval()
    plain = SpectralLightningModule(len(SENSOR_FEATURES), 1280).eval()
    plain.load_state_dict(module.state_dict())
    video, audio, sensors = torch.randn(4, 2, 1280), torch.randn(4, 22_050) * 0.1, torch.randn(4, 15)
    present, labels = torch.ones(4, 3, dtype=torch.bool), torch.tensor([0, 1, 2, 3])
    present[0, 1] = False  # no audio for the first event: the audio head never sees its placeholder
    module.log = plain.log = lambda *args, **kwargs: None
    with torch.no_grad():
        total = module._step((video, audio, sensors, present, labels), "train")
        base = plain._step((video, audio, sensors, present, labels), "train")
        parts = module.model.branch_embeddings(video, audio, sensors)
        heads = [nn.functional.cross_entropy(module.branch_heads[0](parts[0]), labels),
                 nn.functional.cross_entropy(module.branch_heads[1](parts[1][1:]), labels[1:]),
                 nn.functional.cross_entropy(module.branch_heads[2](parts[2]), labels)]
    assert float(total) == pytest.approx(float(base + 0.5 * sum(heads) / 3), rel=1e-5)
    exported = {k for k in module.model.state_dict()}
    assert not any("branch_heads" in k for k in exported)  # training only: not in the exported model


def test_events_kept_without_a_modality_reach_training_masked(tiny_events, tmp_path, monkeypatch):
    """missing_modality: keep through decode, sensors, embed and the data module: an event without audio,
    one with an undecodable video and one without sensors are trained on with that modality masked
    (zeros / NaN placeholders, False in the mask), counted in the training summary; reject mode leaves
    them out with their reasons."""
    events = tmp_path / "events"
    shutil.copytree(tiny_events, events)
    (events / "event_00000" / "audio.wav").unlink()
    (events / "event_00001" / "video.mp4").write_bytes(b"\x00" * 64)
    (events / "event_00002" / "sensors.csv").write_bytes(b"")
    decoded, embedded, table = tmp_path / "decoded", tmp_path / "embedded", tmp_path / "sensors.parquet"
    splits = {"train": 0.6, "val": 0.4, "test": 0.0}
    run_decode(events, decoded, DecodeConfig(num_frames=2, size=64, workers=1, splits=splits,
                                             missing_modality="keep"))
    sensors_report = run_sensors(events, table, splits, missing_modality="keep")
    assert sensors_report["incomplete"] == ["event_00002"] and sensors_report["rejected_count"] == 0
    run_embed(decoded, embedded, EmbedConfig(batch_frames=3, num_workers=0))
    data = CachedShardDataModule(embedded, table, batch_size=64)
    data.setup()
    missing = [data.missing_modalities(split) for split in ("train", "val")]
    assert {m: sorted(a[m] + b[m]) for a, b in [missing] for m in a} == {
        "video": ["event_00001"], "audio": ["event_00000"], "sensors": ["event_00002"]}
    batches = [next(iter(data.loader(split))) for split in ("train", "val")]
    video, audio, sensors, present = (torch.cat([b[i] for b in batches]) for i in range(4))
    names = data.used_events("train") + data.used_events("val")
    assert len(names) == 16
    masks = {name: row.tolist() for name, row in zip(names, present, strict=True)}
    assert masks["event_00000"] == [True, False, True] and masks["event_00001"] == [False, True, True]
    assert masks["event_00002"] == [True, True, False] and masks["event_00004"] == [True, True, True]
    row = names.index("event_00000")
    assert not audio[row].any() and torch.isnan(sensors[names.index("event_00002")]).all()
    assert not video[names.index("event_00001")].any() and video.shape[1:] == (2, 1280)
    with torch.no_grad():
        module = SpectralLightningModule(len(SENSOR_FEATURES), 1280).eval()
        assert torch.isfinite(module(video, audio, sensors, present)).all()
    # and they train: modality dropout, branch heads, then the OOD statistics of every modality pattern
    cfg = TrainConfig(max_epochs=1, batch_size=8, precision="32-true", logger="none", branch_loss=0.3,
                      modality_dropout={"video": 0.15, "audio": 0.15, "sensors": 0.15}, monitor="val_robust_loss")
    loads, torch_load = [], torch.load

    def recording_load(*args, **kwargs):
        loads.append(kwargs.get("weights_only"))
        return torch_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    summary = train(embedded, table, tmp_path / "model", cfg, dvclive_dir=tmp_path / "live")
    assert loads and set(loads) == {True}  # the best checkpoint, a pickle, is read without running code
    counts = summary["missing_modalities"]
    assert sum(counts[split][m] for split in counts for m in counts[split]) == 3
    rejecting = run_sensors(events, tmp_path / "reject.parquet", splits)
    # reject mode: sensors rejects what it can see (a missing audio.wav, an empty sensors.csv); the
    # undecodable video is decode's rejection
    assert [r["event"] for r in rejecting["rejected"]] == ["event_00000", "event_00002"]


def test_a_member_missing_without_decode_saying_so_is_an_error_not_a_masked_modality(embedded, sensor_table,
                                                                                       tmp_path):
    """Only decode's `missing_modality: keep` may leave a member out, and it records why in the sample's json;
    a shard that lacks one otherwise (a bug, a hand-edited file) must stop training, not train masked."""
    import tarfile

    copy = tmp_path / "embeddings"
    shutil.copytree(embedded, copy)
    shard = shard_paths(copy, "train")[0]
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    dropped = next(m.name for m, _ in members if m.name.endswith(".emb.npy"))
    with tarfile.open(shard, "w") as tar:
        for member, data in members:
            if member.name != dropped:
                tar.addfile(member, io.BytesIO(data))
    manifest = json.loads((copy / "manifest.json").read_text())  # the edit is recorded: only the member lacks
    manifest["index"][shard.name]["size"] = shard.stat().st_size
    (copy / "manifest.json").write_text(json.dumps(manifest))
    data = CachedShardDataModule(copy, sensor_table)
    data.setup()
    dataset = data.datasets["train"]
    position = dataset.names.index(event_name(dropped.split(".")[0]))
    with pytest.raises(KeyError, match="did not record it missing"):
        dataset[position]
