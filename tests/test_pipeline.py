"""The real `dvc` binary on a real git repo: full repro, selective re-runs, sharing through a remote.

One tiny pipeline is reproduced once for the module; each test then changes one thing
and asserts on which stages DVC says it ran and which dvc.lock hashes moved.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from spectral.runtime.incremental import CLEAN_RUN_ENV
from spectral.runtime.provenance import git_blob_id

pytestmark = pytest.mark.slow

PROJECT = Path(__file__).resolve().parents[1]
STAGES = ("synth", "ood", "decode", "sensors", "embed", "train", "evaluate")
TINY = {
    "synth": {"events": 16, "fps": 10, "duration_s": 2.0, "width": 128, "height": 64, "workers": 2},
    "splits": {"train": 0.6, "val": 0.2, "test": 0.2},
    "video": {"num_frames": 4},
    "decode": {"workers": 2},  # exercises the spawned worker pools under dvc
    "embed": {"batch_frames": 8},  # several batches, so the kill test can catch embed mid-write
    "train": {"max_epochs": 2, "batch_size": 4},
    "ood": {"events": 3},
}


def env_for(repo: Path) -> dict[str, str]:
    """The venv's tools first, and the temp repo's own `spectral` ahead of the installed one, so what DVC hashes
    as a stage's code is what the stage runs (an edit in the temp repo changes behaviour there)."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "PYTHONPATH": str(repo)}


def run(cmd: list[str], cwd: Path, extra_env: dict[str, str] | None = None) -> str:
    env = {**env_for(cwd), **(extra_env or {})}
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result.stdout + result.stderr


def dvc(repo: Path, *args: str) -> str:
    return run([str(Path(sys.executable).parent / "dvc"), *args], repo)


def stages_run(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([a-z]+)'", output))


def lock_hashes(repo: Path) -> dict[str, dict]:
    lock = yaml.safe_load((repo / "dvc.lock").read_text(encoding="utf-8"))["stages"]
    return {stage: {o["path"]: o.get("md5") for o in body.get("outs", [])} for stage, body in lock.items()}


def set_params(repo: Path, changes: dict) -> None:
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text(encoding="utf-8"))
    for section, values in changes.items():
        params[section].update(values)
    path.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")


def commit(repo: Path, message: str) -> None:
    run(["git", "add", "-A"], repo)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", message, "--allow-empty"], repo)


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pipeline") / "project"
    root.mkdir()
    for item in ("dvc.yaml", "params.yaml", "pipeline", "spectral", "data/weights", ".gitignore", ".dvcignore"):
        source = PROJECT / item
        if source.is_dir():
            shutil.copytree(source, root / item, ignore=shutil.ignore_patterns("__pycache__"))
        elif source.exists():
            shutil.copy(source, root / item)
    run(["git", "init", "-q", "-b", "main"], root)
    dvc(root, "init", "-q")
    dvc(root, "config", "core.analytics", "false")
    shutil.copytree(PROJECT / ".dvc" / "plots", root / ".dvc" / "plots")  # the offline page and custom templates
    dvc(root, "config", "plots.html_template", "plots/page.html")
    set_params(root, TINY)
    commit(root, "tiny project")
    output = dvc(root, "repro")
    assert stages_run(output) == set(STAGES), output
    commit(root, "first repro")
    return root


def spectral_cli(repo: Path, *args: str) -> str:
    return run([str(Path(sys.executable).parent / "spectral"), *args], repo)


def test_full_repro_produces_every_output(repo):
    for path in ("data/decoded/report.json", "data/sensors.parquet", "data/embeddings/manifest.json",
                 "models/model.pt", "metrics/evaluate.json", "plots/confusion_matrix.png", "dvclive/metrics.json",
                 "models/MODEL_CARD.md", "metrics/train.json"):
        assert (repo / path).is_file(), path
    assert "accuracy" in dvc(repo, "metrics", "show")
    report = spectral_cli(repo, "report", "metrics/evaluate.json")
    assert "macro-F1" in report and "out-of-distribution" in report and "temperature" in report
    output = spectral_cli(repo, "predict", "data/demo_events/event_00000")  # --model: models/model.pt
    (result,) = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    assert result["event"] == "event_00000" and result["class"] in result["model_probabilities"]
    assert result["missing"] == [] and result["decision"] in ("classified", "out_of_distribution")
    # README, "Trusting a prediction": the OOD flag measured on folders of your own
    spectral_cli(repo, "ood", "own_ood", "-S", "ood.events=2", "-S", "ood.seed=5")
    output = spectral_cli(repo, "evaluate", "models/model.pt", "data/embeddings", "data/sensors.parquet", "--ood",
                          "own_ood", "--metrics", "own_ood.json", "--plots", "own_ood_plots")
    assert "out-of-distribution (mahalanobis)" in output and "on 2 OOD vs" in output
    shutil.rmtree(repo / "own_ood")
    shutil.rmtree(repo / "own_ood_plots")
    (repo / "own_ood.json").unlink()


def test_the_plots_page_is_offline_and_holds_every_series(repo, tmp_path):
    """`dvc plots show` writes a page whose scripts are all inline (it renders without a network) and that holds
    the reliability diagram's two series, the OOD histogram of both groups, the ablation bars and the confusion."""
    dvc(repo, "plots", "show", "-o", str(tmp_path / "page"))
    html = (tmp_path / "page" / "index.html").read_text(encoding="utf-8")
    assert not re.search(r"<script[^>]*\bsrc\s*=", html) and "vega-embed" in html
    for plot in ("Reliability_before_and_after", "plots_confusion_csv", "OOD_score__test_split", "Macro-F1_by_"):
        assert re.search(rf'<div id = "{plot}', html), plot
    assert '"filename": "reliability_before.csv"' in html and '"filename": "reliability_after.csv"' in html
    assert '"group": "OOD set"' in html and '"group": "test split"' in html and "OOD threshold" in html
    assert '"modalities": "only video"' in html and '"actual": ' in html


def test_a_stage_command_with_no_flags_makes_the_stage_bytes(repo, tmp_path):
    """`spectral decode` and `spectral train` read params.yaml as their stages do: the same shards, the same model
    (train run from another folder, so its DVCLive files land there, with --params naming the project's file)."""
    spectral_cli(repo, "decode", "data/demo_events", str(tmp_path / "decoded"))
    stage = {p.name: p.read_bytes() for p in (repo / "data" / "decoded").glob("*.tar")}
    assert stage and {p.name: p.read_bytes() for p in (tmp_path / "decoded").glob("*.tar")} == stage
    run([str(Path(sys.executable).parent / "spectral"), "train", str(repo / "data" / "embeddings"),
         str(repo / "data" / "sensors.parquet"), str(tmp_path / "models"), "--params", str(repo / "params.yaml")],
        tmp_path, {"PYTHONPATH": str(repo)})
    assert (tmp_path / "models" / "model.pt").read_bytes() == (repo / "models" / "model.pt").read_bytes()


def test_editing_code_used_only_downstream_reruns_the_stages_that_run_it(repo):
    """from_pcm16 runs only when train and evaluate read waveforms back; decode imports its module too.
    The stages run the temp repo's edited code (PYTHONPATH), so "decode re-ran, same output" is real."""
    before = lock_hashes(repo)
    shards_before = {p.name: p.read_bytes() for p in (repo / "data" / "decoded").glob("*.tar")}
    audio = repo / "spectral" / "io" / "audio.py"
    source = audio.read_text(encoding="utf-8")
    edited = source.replace("return pcm.astype(np.float32) / 32768.0", "return pcm.astype(np.float32) * (1 / 32768)")
    assert edited != source
    audio.write_text(edited, encoding="utf-8")
    ran = stages_run(dvc(repo, "repro"))
    assert {"train", "evaluate"} <= ran and not ran & {"synth", "sensors"}, ran
    after = lock_hashes(repo)
    # decode re-ran and redid every event (its code changed), giving the same shards; only its reuse index
    # (report.json) records the new code, so embed re-ran too, found every input shard unchanged and kept its output
    assert {p.name: p.read_bytes() for p in (repo / "data" / "decoded").glob("*.tar")} == shards_before
    assert after["decode"]["data/decoded"] != before["decode"]["data/decoded"]
    assert after["embed"]["data/embeddings"] == before["embed"]["data/embeddings"]
    provenance = torch.load(repo / "models" / "model.pt", weights_only=True)["config"]["provenance"]
    assert provenance["code"]["git_blobs"]["spectral/io/audio.py"] == git_blob_id(edited.encode())  # ran the edit
    commit(repo, "edit from_pcm16")


def test_nothing_changed_runs_nothing(repo):
    output = dvc(repo, "repro")
    assert stages_run(output) == set() and "up to date" in output
    assert "up to date" in dvc(repo, "status")


def test_embed_param_change_leaves_decode_and_sensors_alone(repo):
    """A batch size is how embeddings are computed, not what they are (embed.reuse: recipe): embed re-runs,
    reuses every shard, and nothing downstream runs."""
    before = lock_hashes(repo)
    set_params(repo, {"embed": {"batch_frames": 16}})
    assert stages_run(dvc(repo, "repro")) == {"embed"}
    reuse = json.loads((repo / "metrics" / "embed.json").read_text())["reuse"]
    assert reuse["shards_written"] == 0 and reuse["shards_kept"] > 0
    after = lock_hashes(repo)
    for stage in ("synth", "decode", "sensors", "train", "evaluate"):
        assert after[stage] == before[stage]
    assert after["embed"]["data/embeddings"] == before["embed"]["data/embeddings"]
    # back to the batch size the shards were made with, so a clean re-run (below) makes the same bytes
    set_params(repo, {"embed": {"batch_frames": TINY["embed"]["batch_frames"]}})
    assert stages_run(dvc(repo, "repro")) == {"embed"}
    assert lock_hashes(repo)["embed"]["data/embeddings"] == before["embed"]["data/embeddings"]
    commit(repo, "other embedding batch and back")


def test_replacing_a_weights_files_bytes_reruns_embed(repo):
    """A weights file given by path lives under data/weights/, a dep of embed: the same name with other bytes
    makes DVC re-run embed, which says why and recomputes every shard. A path outside it is refused."""
    from spectral.models.backbone import packaged_weights_path

    before = lock_hashes(repo)
    weights = repo / "data" / "weights" / "lite0.pth"
    shutil.copy(packaged_weights_path(), weights)
    set_params(repo, {"video": {"weights": "data/weights/lite0.pth"}})
    dvc(repo, "repro", "embed")  # the packaged bytes under another name: the same recipe, nothing recomputed
    assert json.loads((repo / "metrics" / "embed.json").read_text())["reuse"]["shards_written"] == 0
    assert "up to date" in dvc(repo, "status", "embed")

    state = torch.load(weights, weights_only=True)
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name] = state[name] * 1.01
    torch.save(state, weights)
    assert "data/weights" in dvc(repo, "status", "embed")
    output = dvc(repo, "repro", "embed")
    assert "embed" in stages_run(output) and "weights" in output
    reuse = json.loads((repo / "metrics" / "embed.json").read_text())["reuse"]
    assert reuse["shards_kept"] == 0 and reuse["shards_written"] > 0
    assert any("weights" in change for change in reuse["key_changes"]), reuse

    outside = repo.parent / "elsewhere.pth"
    shutil.move(weights, outside)
    set_params(repo, {"video": {"weights": str(outside)}})
    refused = subprocess.run([str(Path(sys.executable).parent / "dvc"), "repro", "embed"], cwd=repo,
                             env=env_for(repo), capture_output=True, text=True)
    assert refused.returncode != 0 and "data/weights/" in refused.stdout + refused.stderr

    set_params(repo, {"video": {"weights": "packaged"}})
    dvc(repo, "repro", "embed")
    assert lock_hashes(repo)["embed"]["data/embeddings"] == before["embed"]["data/embeddings"]
    assert "up to date" in dvc(repo, "status")
    commit(repo, "a weights file by path, replaced, and back to packaged")


def test_sensors_param_change_reruns_sensors_and_nothing_upstream(repo):
    """An unchanged Parquet (strict only matters for bad input) lets DVC skip train: its deps did not move."""
    before = lock_hashes(repo)
    set_params(repo, {"sensors": {"strict": True}})
    ran = stages_run(dvc(repo, "repro"))
    assert "sensors" in ran and not ran & {"synth", "decode", "embed"}
    assert lock_hashes(repo)["sensors"] == before["sensors"]
    assert ran == {"sensors"}
    commit(repo, "strict sensors")


def test_forced_clean_rerun_as_two_processes_gives_the_same_hashes(repo):
    """The process counts are no stage's deps (changing them re-runs nothing); a clean forced re-run with
    decode as 2 torchrun ranks (the stage script launches them) gives the same outputs. (Embed at 2 ranks
    would need embed.cpu_threads: 1 on 2 cores; tests/test_distributed.py runs it at 3.)"""
    before = lock_hashes(repo)
    set_params(repo, {"distributed": {"decode_processes": 2}})
    assert "up to date" in dvc(repo, "status")
    run([str(Path(sys.executable).parent / "dvc"), "repro", "--force"], repo, {CLEAN_RUN_ENV: "1"})
    assert json.loads((repo / "metrics" / "decode.json").read_text())["processes"] == 2
    after = lock_hashes(repo)
    # Timings and dvclive's wall-clock step logs are uncached logs; every cached output is byte-identical.
    logs = {"dvclive", "metrics/decode.json", "metrics/embed.json"}
    for stage in STAGES:
        cached = {path: md5 for path, md5 in after[stage].items() if path not in logs}
        assert cached == {p: m for p, m in before[stage].items() if p not in logs}, stage
        assert cached, stage
    set_params(repo, {"distributed": {"decode_processes": 1}})
    commit(repo, "forced")


def test_experiment_run_shows_metrics(repo):
    """README, "Experiments", as written; a train.* change re-runs only train and evaluate."""
    output = dvc(repo, "exp", "run", "-S", "train.lr=0.003")
    assert stages_run(output) == {"train", "evaluate"}
    table = json.loads(dvc(repo, "exp", "show", "--json"))
    experiments = [e for rev in table for e in (rev.get("experiments") or [])]
    assert experiments, table
    data = experiments[0]["revs"][0]["data"]
    headline = data["metrics"]["metrics/headline.json"]["data"]
    assert {"accuracy", "accuracy_low", "accuracy_high", "macro_f1", "ece"} <= set(headline)
    # the headline and the exported checkpoint's validation metrics; the detail and DVCLive's last epoch are not columns
    assert set(data["metrics"]) == {"metrics/headline.json", "metrics/train.json"}, data["metrics"]
    assert {"val_loss", "val_acc", "val_f1", "epoch"} <= set(data["metrics"]["metrics/train.json"]["data"]["best"])
    assert data["params"]["params.yaml"]["data"]["train"]["lr"] == 0.003
    # README's `dvc exp show --only-changed`, as CSV so no column is elided for the terminal's width
    header = dvc(repo, "exp", "show", "--only-changed", "--csv").splitlines()[0].split(",")
    # (DVC names a column by the shortest unambiguous tail of its key; on this tiny set the headline may not move)
    assert any(c.endswith("lr") for c in header), header
    assert not any(c.endswith(("workers", "num_frames", "batch_frames")) for c in header), header


def test_killed_stage_leaves_nothing_half_written_and_rerun_matches(repo):
    before = lock_hashes(repo)
    cache_files = {p for p in (repo / ".dvc" / "cache").rglob("*") if p.is_file()}
    env = {**env_for(repo), "SPECTRAL_CLEAN_RUN": "1"}  # README: a clean run (--force alone reuses the shards)
    process = subprocess.Popen([str(Path(sys.executable).parent / "dvc"), "repro", "--force", "-s", "embed"],
                               cwd=repo, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list((repo / "data" / "embeddings").glob("*.tar.tmp")) and process.poll() is None:
        assert time.monotonic() < deadline, "embed never started writing"
        time.sleep(0.002)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the stage finished before it could be killed"
    assert {p for p in (repo / ".dvc" / "cache").rglob("*") if p.is_file()} == cache_files
    assert "embed" in dvc(repo, "status")
    output = dvc(repo, "repro")
    # persisted outputs bypass DVC's run-cache: embed re-runs, keeping the shards finished before the kill
    assert "Running stage 'embed'" in output, output
    assert not stages_run(output) & {"synth", "decode", "sensors"}
    assert lock_hashes(repo)["embed"]["data/embeddings"] == before["embed"]["data/embeddings"]
    assert not list((repo / "data" / "embeddings").glob("*.tmp"))


def test_fresh_clone_pulls_from_a_remote_and_runs_nothing(repo, tmp_path):
    remote = tmp_path / "remote"
    dvc(repo, "remote", "add", "-d", "shared", str(remote))
    commit(repo, "remote")
    dvc(repo, "push", "--run-cache")
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    dvc(clone, "pull")
    output = dvc(clone, "repro")
    assert stages_run(output) == set(), output
    assert "up to date" in dvc(clone, "status")
    assert (clone / "data" / "embeddings" / "manifest.json").is_file()
    # `dvc repro --pull` fetches what it needs instead of recomputing
    other = tmp_path / "other"
    run(["git", "clone", "-q", str(repo), str(other)], tmp_path)
    output = dvc(other, "repro", "--pull")
    assert stages_run(output) == set(), output
    assert (other / "models" / "model.pt").is_file()


def test_readme_flow_bring_your_own_recordings(repo):
    """README, "Your own recordings", as written: dvc add, point data.events at it, dvc repro evaluate."""
    recordings = repo / "data" / "recordings"
    recordings.mkdir()
    for source in sorted((repo / "data" / "demo_events").iterdir()):
        shutil.copytree(source, recordings / source.name.replace("event_000", "event_2026.11.27 sala "))
    dvc(repo, "add", "data/recordings")
    run(["git", "add", "data/recordings.dvc", "data/.gitignore"], repo)
    set_params(repo, {"data": {"events": "data/recordings"}})
    ran = stages_run(dvc(repo, "repro", "evaluate"))
    assert ran == {"decode", "sensors", "embed", "train", "evaluate"}, ran
    report = json.loads((repo / "data" / "decoded" / "report.json").read_text(encoding="utf-8"))
    assert report["rejected"] == [] and report["accepted"] == sorted(p.name for p in recordings.iterdir())
    assert "event_2026.11.27 sala 00" in report["accepted"]
    commit(repo, "own recordings")
    assert "up to date" in dvc(repo, "status")
