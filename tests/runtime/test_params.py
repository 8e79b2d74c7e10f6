"""One configuration: each stage's config has params.yaml's defaults, and `spectral <stage>` builds what the stage
script builds; a misspelt param fails with the valid choices instead of meaning a default."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from spectral.cli import build_parser, stage_config
from spectral.runtime.params import SECTIONS, load_params
from spectral.stages.decode import DecodeConfig
from spectral.stages.embed import EmbedConfig
from spectral.stages.ood import OodConfig
from spectral.stages.sensors import SensorsConfig
from spectral.stages.synth import SynthStageConfig
from spectral.stages.train import TrainConfig

PROJECT = Path(__file__).resolve().parents[2]

COMMITTED = yaml.safe_load((PROJECT / "params.yaml").read_text(encoding="utf-8"))
# subcommand, its positional arguments, the config class its DVC stage builds
STAGES = [("synth", ["out"], SynthStageConfig), ("ood", ["out"], OodConfig),
          ("decode", ["events", "out"], DecodeConfig), ("sensors", ["events", "out.parquet"], SensorsConfig),
          ("embed", ["decoded", "out"], EmbedConfig), ("train", ["emb", "s.parquet", "out"], TrainConfig)]


@pytest.mark.parametrize("config_class", [c for _, _, c in STAGES], ids=[s for s, _, _ in STAGES])
def test_config_defaults_are_the_committed_params(config_class):
    assert config_class() == config_class.from_params(COMMITTED)


@pytest.mark.parametrize(("command", "paths", "config_class"), STAGES, ids=[s for s, _, _ in STAGES])
def test_the_command_with_no_flags_builds_the_stage_config(command, paths, config_class, monkeypatch, tmp_path):
    """In the project, the command reads params.yaml as the stage does; elsewhere it has the same defaults."""
    edited = {**COMMITTED, "splits": {"train": 0.5, "val": 0.25, "test": 0.25}, "missing_modality": "reject",
              "video": {**COMMITTED["video"], "num_frames": 12},
              "train": {**COMMITTED["train"], "branch_loss": 0.1}, "synth": {**COMMITTED["synth"], "events": 7},
              "ood": {"events": 3, "seed": 4}, "embed": {**COMMITTED["embed"], "batch_frames": 8},
              "sensors": {**COMMITTED["sensors"], "strict": True}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(edited), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    from_command = stage_config(build_parser().parse_args([command, *paths]))
    assert from_command == config_class.from_params(load_params())
    assert from_command != config_class()  # the edited file was read
    monkeypatch.chdir(tmp_path / "..")
    assert stage_config(build_parser().parse_args([command, *paths])) == config_class()


def test_overrides_work_like_dvc_exp_run_set():
    args = build_parser().parse_args(["decode", "in", "out", "--params", "none", "-S", "video.num_frames=16",
                                      "-S", "splits={train: 0.5, val: 0.5, test: 0.0}", "-S", "decode.strict=true"])
    cfg = stage_config(args)
    assert (cfg.num_frames, cfg.splits, cfg.strict) == (16, {"train": 0.5, "val": 0.5, "test": 0.0}, True)
    with pytest.raises(ValueError, match="expected key=value"):
        stage_config(build_parser().parse_args(["decode", "in", "out", "-S", "video.num_frames"]))


@pytest.mark.parametrize(("override", "message"), [
    ("train.max_epoch=3", r"unknown key\(s\) train.max_epoch; valid: .*max_epochs"),
    ("trian.max_epochs=3", r"unknown param section\(s\) trian; valid: data, synth"),
    ("video.num_frame=3", r"unknown key\(s\) video.num_frame; valid: num_frames"),
    ("train.class_weights=balance", r"train.class_weights must be one of auto, balanced, none, got 'balance'"),
    ("train.logger=csv", r"train.logger must be one of dvclive, wandb, none, got 'csv'"),
    ("embed.precision=fp8", r"embed.precision must be one of auto, fp32, bf16, fp16"),
])
def test_a_misspelt_param_fails_with_the_valid_choices(override, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig.from_params(load_params(PROJECT / "params.yaml", [override]))
        EmbedConfig.from_params(load_params(PROJECT / "params.yaml", [override]))


def test_every_committed_param_is_known():
    assert list(COMMITTED) == list(SECTIONS)
    for section, keys in SECTIONS.items():
        if keys:
            assert set(COMMITTED[section]) == set(keys), section
