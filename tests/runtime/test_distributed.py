"""Decode and embed as torchrun ranks (gloo on CPU): the same bytes at 1, 2 and 3 ranks, and a SIGTERM
to the stage ends every process it started.

The stage scripts run as users run them: `python pipeline/X.py`, and an explicit
`torchrun --nproc-per-node 3 pipeline/X.py` (the cluster path); `embed.cpu_threads` gives every
process the same intra-op threads, so the 1-rank reference computes as each rank does.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import TINY_SYNTH

from spectral.runtime.distributed import assign_by_size
from spectral.runtime.reuse import output_files
from spectral.stages.synth import generate

pytestmark = pytest.mark.slow

PROJECT = Path(__file__).resolve().parents[2]
SMALL = {"video": {"num_frames": 2, "size": 64},
         "decode": {"shard_events": 2, "max_shard_events": 4, "workers": 1},
         "embed": {"batch_frames": 6, "num_workers": 0, "cpu_threads": 1}}  # 3 ranks on 2 cores


ENDS_WITHIN_S = 5  # SIGTERM is forwarded and acted on at once; an event of work takes longer


def write_params(cwd: Path, changes: dict) -> None:
    params = yaml.safe_load((PROJECT / "params.yaml").read_text(encoding="utf-8"))
    for section, values in {**SMALL, **changes}.items():
        params[section] = {**params[section], **values}
    (cwd / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")


def stage_command(script: str, args: list[str], torchrun_ranks: int | None) -> list[str]:
    path = str(PROJECT / "pipeline" / script)
    if torchrun_ranks is None:
        return [sys.executable, path, *args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={torchrun_ranks}",
            path, *args]


def stage_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(PROJECT)}


def run_stage(cwd: Path, script: str, args: list[str], torchrun_ranks: int | None = None) -> str:
    result = subprocess.run(stage_command(script, args, torchrun_ranks), cwd=cwd, env=stage_env(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{script} failed:\n{result.stdout}\n{result.stderr[-4000:]}"
    return result.stdout + result.stderr


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in output_files(folder)}


@pytest.fixture(scope="module")
def events(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dist_events")
    generate(root, 14, seed=3, cfg=TINY_SYNTH)
    return root


def test_assignment_takes_whole_items_and_balances_them():
    sizes = [9, 1, 4, 4, 2, 7]
    owners = assign_by_size(sizes, 3)
    loads = [sum(s for s, o in zip(sizes, owners, strict=True) if o == r) for r in range(3)]
    assert owners == assign_by_size(sizes, 3) and sorted(loads) == [9, 9, 9]
    assert assign_by_size(sizes, 8).count(0) == 1  # more ranks than shards: some ranks idle, none fail


def run_both_stages(cwd: Path, events: Path, torchrun_ranks: int | None) -> str:
    return (run_stage(cwd, "decode.py", [str(events), "decoded"], torchrun_ranks)
            + run_stage(cwd, "embed.py", ["decoded", "embeddings"], torchrun_ranks))


def stage_outputs(cwd: Path) -> dict[str, dict[str, str]]:
    return {name: digests(cwd / name) for name in ("decoded", "embeddings")}


def test_decode_and_embed_give_the_same_bytes_at_any_world_size_also_incrementally(events, tmp_path):
    """1 process vs 3 ranks under an outer torchrun (the cluster path); then the nightly case: an event
    added and one removed, the 3 ranks re-run on their previous outputs, against a clean 1-process run.
    2 ranks started by the stage scripts from params is tested through `dvc repro` (test_pipeline.py)."""
    archive = tmp_path / "archive"
    shutil.copytree(events, archive)
    for name in ("one", "three", "clean"):
        (tmp_path / name).mkdir()
        write_params(tmp_path / name, {})
    run_both_stages(tmp_path / "one", archive, None)
    log = run_both_stages(tmp_path / "three", archive, 3)
    assert "[rank 2/3]" in log  # the work really was spread over the ranks
    assert len([f for f in stage_outputs(tmp_path / "one")["decoded"] if f.endswith(".tar")]) >= 3
    assert stage_outputs(tmp_path / "three") == stage_outputs(tmp_path / "one")

    shutil.copytree(archive / "event_00004", archive / "event_00004b")
    shutil.rmtree(archive / "event_00009")
    run_both_stages(tmp_path / "three", archive, 3)
    reuse = json.loads((tmp_path / "three" / "metrics" / "decode.json").read_text())["reuse"]
    assert reuse["shards_kept"] >= 1 and reuse["events_decoded"] == 1
    run_both_stages(tmp_path / "clean", archive, None)
    assert stage_outputs(tmp_path / "three") == stage_outputs(tmp_path / "clean")


def process_tree(root: int) -> set[int]:
    """root and its live descendants (zombies excluded), from /proc. torchrun starts each rank in a
    session of its own, so the tree, not the session, is what a stage started."""
    parents, live = {}, set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(stat.parent.name)
        parents.setdefault(int(fields[1]), []).append(pid)
        if fields[0] != "Z":
            live.add(pid)
    tree, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid in live:
            tree.add(pid)
        todo += parents.get(pid, [])
    return tree


def wait_for_tree(stage: subprocess.Popen, count: int, timeout_s: float = 120) -> set[int]:
    deadline = time.monotonic() + timeout_s
    while len(process_tree(stage.pid)) < count and stage.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    tree = process_tree(stage.pid)
    assert stage.poll() is None and len(tree) >= count, "the stage never got going"
    return tree


def assert_all_end(pids: set[int], timeout_s: float) -> None:
    def alive() -> set[int]:
        return {pid for pid in pids if Path(f"/proc/{pid}/stat").is_file()
                and Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"}

    deadline = time.monotonic() + timeout_s
    while alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    left = alive()
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert left == set(), f"processes left running: {left}"


def test_sigterm_to_a_distributed_stage_ends_every_process_it_started(events, tmp_path):
    """decode as 2 ranks with 2 pool workers each, SIGTERM to the process DVC would have started (torchrun,
    exec'd by the stage script): every rank and worker ends at once, not after its current event."""
    write_params(tmp_path, {"video": {"num_frames": 150, "size": 224},  # seconds of work per event
                            "distributed": {"decode_processes": 2}, "decode": {"workers": 2}})
    stage = subprocess.Popen(stage_command("decode.py", [str(events), "decoded"], None), cwd=tmp_path,
                             env=stage_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        started = wait_for_tree(stage, 7)  # torchrun, 2 ranks, 2 pool workers each
        os.kill(stage.pid, signal.SIGTERM)
        assert_all_end(started, timeout_s=ENDS_WITHIN_S)
    finally:
        stage.wait(10)
    assert not list((tmp_path / "decoded").glob("*.tar"))  # nothing that looks finished


def test_a_stage_whose_launcher_dies_ends_with_its_workers(tmp_path):
    """DVC dies on SIGTERM without signalling its stage (measured with dvc 3.67): the synth stage and its
    spawned pool must still end. A python parent stands in for DVC and is killed the same way."""
    write_params(tmp_path, {"synth": {"events": 200, "width": 640, "height": 480, "duration_s": 5.0, "workers": 2}})
    launcher = [sys.executable, "-c", "import subprocess, sys; subprocess.run(sys.argv[1:])",
                *stage_command("synth.py", ["events"], None)]
    parent = subprocess.Popen(launcher, cwd=tmp_path, env=stage_env(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        started = wait_for_tree(parent, 4)  # launcher, stage, 2 pool workers
        os.kill(parent.pid, signal.SIGTERM)
        assert_all_end(started, timeout_s=ENDS_WITHIN_S)
    finally:
        parent.wait(10)
