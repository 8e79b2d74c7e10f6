"""Fault matrix: inject a fault into a small DVC project, run what a user runs next, and grade the result
against a clean run's bytes — independently of what the stages' own reports say.

Every fault gets a fresh copy of a project reproduced once (`dvc repro`, small synthetic archive). After
the follow-up the declared outputs (shards, tables, model, metrics) are hashed and compared with the
reference: a clean run over the same inputs.

    repaired      the follow-up exited 0 and every output byte equals the reference
    loud          a command failed naming the cause; once the fault is gone, `dvc repro` gives the reference
    handled       an input fault: the run finished, the event is accounted for with the reason, and the
                  outputs equal a clean run over the same inputs
    SILENT LOSS   exit status 0 and outputs that differ from the reference: the one grade that must never occur
    HANG          the follow-up did not finish within --timeout seconds

    python bench/faults.py [--kills 10] [--only NAME ...] [--events 24]

Faults are injected from outside the code under test: damaged files, special files, a `sitecustomize`
on PYTHONPATH that shadows a module or makes one call fail (EIO once, ENOSPC once), SIGKILL to the
process group of `dvc repro` at random times within each stage.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import yaml
from common import write_result

from spectral.runtime.reuse import output_files

PROJECT = Path(__file__).resolve().parents[1]
OUTPUTS = ("data/decoded", "data/embeddings", "data/sensors.parquet", "data/sensors_report.json", "models/model.pt",
           "models/train_summary.json", "metrics/headline.json", "metrics/evaluate.json")
KILLED_STAGES = ("decode", "sensors", "embed", "train")
SMALL = {
    "synth": {"fps": 10, "duration_s": 2.0, "width": 128, "height": 64, "workers": 2},
    "ood": {"events": 3},
    "splits": {"train": 0.5, "val": 0.25, "test": 0.25},
    "video": {"num_frames": 4},
    "decode": {"workers": 2, "shard_events": 4, "max_shard_events": 8},
    "embed": {"batch_frames": 8},
    "train": {"max_epochs": 2, "batch_size": 4},
}

# Injected into every Python process of a run (DVC's stage processes and their workers) through PYTHONPATH.
SITECUSTOMIZE = '''
import errno, importlib.abc, importlib.util, os, sys
FAULT, STATE = os.environ.get("SPECTRAL_FAULT", ""), os.environ.get("SPECTRAL_FAULT_STATE", "")

def first_time(tag):
    """True once per fault across every process of the run (a marker file records it)."""
    try:
        os.close(os.open(os.path.join(STATE, tag), os.O_CREAT | os.O_EXCL))
        return True
    except FileExistsError:
        return False

def patch(module):
    if FAULT == "eio_once" and module.__name__ == "spectral.io.video":
        load_video = module.load_video
        def failing(path, *args, **kwargs):
            if first_time("eio"):
                raise OSError(errno.EIO, "Input/output error (injected)", str(path))
            return load_video(path, *args, **kwargs)
        module.load_video = failing
    if FAULT == "enospc_once" and module.__name__ == "spectral.runtime.shards":
        write = module.AtomicTarWriter.write
        def failing(self, sample):
            if self.samples == 1 and first_time("enospc"):
                raise OSError(errno.ENOSPC, "No space left on device (injected)")
            return write(self, sample)
        module.AtomicTarWriter.write = failing

class Patcher(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name not in ("spectral.io.video", "spectral.runtime.shards"):
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        run = spec.loader.exec_module
        def exec_module(module):
            run(module)
            patch(module)
        spec.loader.exec_module = exec_module
        return spec

if FAULT:
    sys.meta_path.insert(0, Patcher())
'''


class Project:
    """A copy of the reference project with the tools to run and grade it."""

    def __init__(self, root: Path, timeout: float) -> None:
        self.root, self.timeout = root, timeout
        self.inject = root.parent / f"{root.name}-inject"
        self.inject.mkdir(exist_ok=True)
        (self.inject / "sitecustomize.py").write_text(SITECUSTOMIZE)
        self.fault_env: dict[str, str] = {}

    def env(self) -> dict[str, str]:
        python_path = os.pathsep.join(p for p in (str(self.inject) if self.fault_env else "", str(self.root)) if p)
        return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
                "PYTHONPATH": python_path, "SPECTRAL_FAULT_STATE": str(self.inject), **self.fault_env}

    def run(self, *cmd: str, extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        try:
            return subprocess.run(cmd, cwd=self.root, env={**self.env(), **(extra or {})}, capture_output=True,
                                  text=True, timeout=self.timeout)
        except subprocess.TimeoutExpired as err:
            return subprocess.CompletedProcess(cmd, -999, err.stdout or "", f"timed out after {self.timeout} s")

    def repro(self) -> subprocess.CompletedProcess:
        """The user's follow-up; without the run-cache, so train and evaluate cannot be restored from it."""
        return self.run("dvc", "repro", "--no-run-cache")

    def digests(self) -> dict[str, str]:
        found = {}
        for output in OUTPUTS:
            path = self.root / output
            files = output_files(path) if path.is_dir() else [path] if path.is_file() else []
            for file in files:
                found[file.relative_to(self.root).as_posix()] = hashlib.sha256(file.read_bytes()).hexdigest()
        return found

    def params(self, changes: dict) -> None:
        path = self.root / "params.yaml"
        params = yaml.safe_load(path.read_text())
        for section, values in changes.items():
            if isinstance(values, dict):
                params[section].update(values)
            else:
                params[section] = values
        path.write_text(yaml.safe_dump(params, sort_keys=False))


def make_reference(root: Path, events: int, timeout: float) -> Project:
    root.mkdir(parents=True)
    for item in ("dvc.yaml", "params.yaml", "pipeline", "spectral", "data/weights", ".gitignore", ".dvcignore"):
        source = PROJECT / item
        (shutil.copytree if source.is_dir() else shutil.copy)(source, root / item)
    project = Project(root, timeout)
    project.params({**SMALL, "synth": {**SMALL["synth"], "events": events}})
    for cmd in (("git", "init", "-q", "-b", "main"), ("dvc", "init", "-q"),
                ("dvc", "config", "core.analytics", "false")):
        check(project.run(*cmd))
    # events the user recorded: a folder outside the synth stage, so damaging one does not regenerate it
    check(project.run("dvc", "repro", "synth"))
    shutil.copytree(root / "data" / "demo_events", root / "data" / "recordings")
    project.params({"data": {"events": "data/recordings"}})
    check(project.run("git", "add", "-A"))
    check(project.run("git", "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "small project"))
    check(project.repro())
    return project


def check(result: subprocess.CompletedProcess) -> None:
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(result.args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")


def copy_of(reference: Project, work: Path, name: str) -> Project:
    target = work / name
    shutil.copytree(reference.root, target, symlinks=True)
    return Project(target, reference.timeout)


def tail(result: subprocess.CompletedProcess) -> str:
    """The stage's own last error line (a Python exception), else DVC's."""
    lines = [line.strip() for line in (result.stderr + result.stdout).splitlines() if line.strip()]
    raised = [line for line in lines if re.match(r"[\w.]+(Error|Failure|Exception|Interrupt): ", line)]
    return (raised or [line for line in lines if "rror" in line] or lines or [""])[-1]


def grade(project: Project, reference: dict[str, str], result: subprocess.CompletedProcess) -> dict:
    """repaired / SILENT LOSS / HANG for a follow-up that should repair; loud is decided by the caller."""
    if result.returncode == -999:
        return {"grade": "HANG", "detail": result.stderr}
    digests = project.digests()
    differing = sorted(set(digests.items()) ^ set(reference.items()))
    if result.returncode == 0:
        if not differing:
            return {"grade": "repaired"}
        return {"grade": "SILENT LOSS", "detail": f"{len({k for k, _ in differing})} output file(s) differ: "
                                                  f"{sorted({k for k, _ in differing})[:4]}"}
    return {"grade": "failed", "detail": tail(result), "differs": bool(differing)}


def repair_then_compare(project: Project, reference: dict[str, str], first: subprocess.CompletedProcess,
                        cause: str = "") -> dict:
    """A follow-up that failed: loud when its error names `cause` and, the fault gone, `dvc repro` gives the
    reference; failed otherwise."""
    if first.returncode == 0 or first.returncode == -999:
        return grade(project, reference, first)
    project.fault_env = {}
    second = grade(project, reference, project.repro())
    named = cause in first.stderr + first.stdout
    return {"grade": "loud" if second["grade"] == "repaired" and named else "failed",
            "detail": tail(first) if named else f"the error does not name {cause!r}: {tail(first)}"}


# ---- damaged outputs: the follow-up is `dvc repro` -------------------------------------------------------------

def truncate_at_member_boundary(path: Path) -> None:
    """Cut a tar after its first sample: what an interrupted copy or a full disk leaves (still a valid tar)."""
    with tarfile.open(path) as tar:
        members = tar.getmembers()
    first = members[0].name.partition(".")[0]
    cut = next(m.offset for m in members if not m.name.startswith(first + "."))
    with open(path, "r+b") as handle:
        handle.truncate(cut)


def flip_byte(path: Path) -> None:
    """In place: same size, same inode, one byte changed, mtime set back. Only the ctime (which no program can
    set back) tells a reader that the content changed."""
    info = os.stat(path)
    with open(path, "r+b") as handle:
        handle.seek(info.st_size // 2)
        byte = handle.read(1)
        handle.seek(info.st_size // 2)
        handle.write(bytes([byte[0] ^ 0xFF]))
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))


def largest(folder: Path) -> Path:
    return max(folder.glob("*.tar"), key=lambda p: (p.stat().st_size, p.name))


def interrupted_index(project: Project) -> None:
    """What a run killed after publishing its kept-only index leaves: complete false, some shards unlisted."""
    path = project.root / "data" / "decoded" / "report.json"
    report = json.loads(path.read_text())
    index = {split: entries[: len(entries) // 2] for split, entries in report["index"].items()}
    path.write_text(json.dumps({"stage": "decode", "complete": False, "index": index}, indent=2))


DAMAGE: dict[str, Callable[[Project], None]] = {
    "decode shard truncated": lambda p: truncate_at_member_boundary(largest(p.root / "data" / "decoded")),
    "decode shard byte flipped": lambda p: flip_byte(largest(p.root / "data" / "decoded")),
    "embed shard truncated": lambda p: truncate_at_member_boundary(largest(p.root / "data" / "embeddings")),
    "embed shard byte flipped": lambda p: flip_byte(largest(p.root / "data" / "embeddings")),
    "sensors table truncated": lambda p: os.truncate(p.root / "data" / "sensors.parquet",
                                                     (p.root / "data" / "sensors.parquet").stat().st_size // 2),
    "sensors table byte flipped": lambda p: flip_byte(p.root / "data" / "sensors.parquet"),
    "listed decode shard deleted": lambda p: largest(p.root / "data" / "decoded").unlink(),
    "listed embed shard deleted": lambda p: largest(p.root / "data" / "embeddings").unlink(),
    "decode index from an interrupted run": interrupted_index,
}


def damaged_output(reference: Project, expected: dict[str, str], work: Path, name: str) -> dict:
    project = copy_of(reference, work, name.replace(" ", "_"))
    check(project.run("spectral", "verify"))  # stamped on this machine: only the damage itself can say "read again"
    DAMAGE[name](project)
    return repair_then_compare(project, expected, project.repro(), cause="rerun")


# ---- the machine fails: the follow-up is `dvc repro` with the fault, then without -------------------------------

def machine_fault(reference: Project, expected: dict[str, str], work: Path, name: str, fault: str,
                  cause: str) -> dict:
    """Every event decoded again (a clean run of the stage) while the fault strikes once."""
    project = copy_of(reference, work, name.replace(" ", "_"))
    project.fault_env = {"SPECTRAL_FAULT": fault}
    first = project.run("dvc", "repro", "-f", "-s", "decode", extra={"SPECTRAL_CLEAN_RUN": "1"})
    if first.returncode == 0:  # retried within the run: the outputs must be the reference's
        project.fault_env = {}
        return grade(project, expected, project.repro())
    return repair_then_compare(project, expected, first, cause)


def unimportable_decoder(reference: Project, work: Path, clean_decord: dict[str, str]) -> dict:
    project = copy_of(reference, work, "decoder_unimportable")
    project.params({"decode": {"backend": "decord"}})
    project.fault_env = {"SPECTRAL_FAULT": "shadow"}
    (project.inject / "decord.py").write_text("raise ImportError('decord is broken here (injected)')\n")
    first = project.repro()
    (project.inject / "decord.py").unlink()
    return repair_then_compare(project, clean_decord, first, cause="decord cannot be imported")


# ---- inputs a user may have: the follow-up is `dvc repro`, compared with a clean run over the same inputs -------

def fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


def dev_zero(path: Path) -> None:
    path.unlink()
    path.symlink_to("/dev/zero")


def escaping_link(path: Path) -> None:
    outside = path.parents[3] / "outside.mp4"
    shutil.copy(path, outside)
    path.unlink()
    path.symlink_to(outside)


INPUTS: dict[str, tuple[str, Callable[[Path], None], str]] = {
    "FIFO as video.mp4": ("video.mp4", fifo, "not a regular file (a FIFO)"),
    "/dev/zero link as audio.wav": ("audio.wav", dev_zero, "not a regular file (a device)"),
    "link escaping the events root": ("video.mp4", escaping_link, "outside the events folder"),
}


def bad_input(reference: Project, work: Path, name: str) -> dict:
    """The decode and sensors scripts themselves: `dvc repro` hashes its deps first, and DVC's own hashing of
    a FIFO in the events folder blocks (a DVC matter, not the stages')."""
    file, inject, reason = INPUTS[name]
    project = copy_of(reference, work, name.replace(" ", "_").replace("/", ""))
    event = sorted((project.root / "data" / "recordings").iterdir())[1]
    inject(event / file)
    runs = {}
    for label, decoded, table in (("incremental", "data/decoded", "data/sensors.parquet"),
                                  ("clean", "clean/decoded", "clean/sensors.parquet")):
        extra = {"SPECTRAL_CLEAN_RUN": "1"} if label == "clean" else None
        runs[label] = [project.run("python", "pipeline/decode.py", "data/recordings", decoded, extra=extra),
                       project.run("python", "pipeline/sensors.py", "data/recordings", table, extra=extra)]
    if any(run.returncode == -999 for run in runs["incremental"]):
        return {"grade": "HANG", "detail": "the stage did not finish"}
    if any(run.returncode for run in runs["incremental"]):
        return {"grade": "failed", "detail": tail(next(run for run in runs["incremental"] if run.returncode))}
    report = json.loads((project.root / "data" / "decoded" / "report.json").read_text())
    said = json.dumps({k: report.get(k) for k in ("rejected", "warnings")}, ensure_ascii=False)
    accounted = event.name in said and reason in said

    def digests(decoded: str, table: str) -> dict[str, str]:
        files = {f.name: f for f in output_files(project.root / decoded)} | {"table": project.root / table}
        return {name: hashlib.sha256(f.read_bytes()).hexdigest() for name, f in files.items()}

    same = digests("data/decoded", "data/sensors.parquet") == digests("clean/decoded", "clean/sensors.parquet")
    if accounted and same:
        return {"grade": "handled", "detail": reason}
    return {"grade": "SILENT LOSS", "detail": f"accounted with its reason: {accounted}; equals a clean run: {same}"}


# ---- SIGKILL anywhere, then `dvc repro` ---------------------------------------------------------------------------

def start_and_wait_for(project: Project, stage: str, log: Path) -> tuple[subprocess.Popen, float]:
    """A clean forced run of one stage under DVC, returned once DVC says the stage is running."""
    with open(log, "w") as out:
        process = subprocess.Popen(["dvc", "repro", "-f", "-s", stage], cwd=project.root, start_new_session=True,
                                   env={**project.env(), "SPECTRAL_CLEAN_RUN": "1"}, stdout=out,
                                   stderr=subprocess.STDOUT)
    while f"Running stage '{stage}'" not in log.read_text() and process.poll() is None:
        time.sleep(0.01)
    return process, time.perf_counter()


def stage_seconds(reference: Project, work: Path) -> dict[str, float]:
    """Each stage's own seconds when forced to recompute everything (the window kills are drawn from)."""
    project = copy_of(reference, work, "timing")
    seconds = {}
    for stage in KILLED_STAGES:
        process, started = start_and_wait_for(project, stage, work / "timing.log")
        process.wait()
        seconds[stage] = time.perf_counter() - started
    shutil.rmtree(project.root)
    return seconds


def killed(reference: Project, expected: dict[str, str], work: Path, stage: str, at: float) -> dict:
    project = copy_of(reference, work, f"kill_{stage}_{at:.2f}")
    process, _ = start_and_wait_for(project, stage, work / f"kill_{stage}.log")
    time.sleep(at)
    finished = process.poll() is not None
    if not finished:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    result = grade(project, expected, project.repro())
    shutil.rmtree(project.root)
    return {**result, "killed": not finished}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=24)
    parser.add_argument("--kills", type=int, default=10, help="SIGKILL points per stage")
    parser.add_argument("--only", nargs="*", help="run only the faults whose name contains one of these words")
    parser.add_argument("--timeout", type=float, default=600, help="seconds before a follow-up counts as a hang")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, help="JSON path (default: bench/results/faults.json)")
    args = parser.parse_args()
    wanted = (lambda name: any(word in name for word in args.only)) if args.only else (lambda name: True)
    rng = random.Random(args.seed)
    rows = []

    def record(name: str, outcome: dict) -> None:
        rows.append({"fault": name, **outcome})
        print(f"{name:<42} {outcome['grade']:<12} {outcome.get('detail', '')[:110]}", flush=True)

    with tempfile.TemporaryDirectory(prefix="spectral-faults-") as tmp:
        work = Path(tmp)
        reference = make_reference(work / "reference", args.events, args.timeout)
        expected = reference.digests()
        for name in DAMAGE:
            if wanted(name):
                record(name, damaged_output(reference, expected, work, name))
        for name, fault, cause in (("EIO once while decoding", "eio_once", "Input/output error"),
                                   ("disk full during a shard write", "enospc_once", "No space left on device")):
            if wanted(name):
                record(name, machine_fault(reference, expected, work, name, fault, cause))
        if wanted("decoder that cannot be imported"):
            clean_decord = copy_of(reference, work, "clean_decord")
            clean_decord.params({"decode": {"backend": "decord"}})
            check(clean_decord.run("dvc", "repro", extra={"SPECTRAL_CLEAN_RUN": "1"}))
            record("decoder that cannot be imported", unimportable_decoder(reference, work, clean_decord.digests()))
        for name in INPUTS:
            if wanted(name):
                record(name, bad_input(reference, work, name))
        if args.kills and any(wanted(f"SIGKILL in {stage}") for stage in KILLED_STAGES):
            seconds = stage_seconds(reference, work)
            for stage in KILLED_STAGES:
                if not wanted(f"SIGKILL in {stage}"):
                    continue
                outcomes = [killed(reference, expected, work, stage, rng.uniform(0.05, 0.95) * seconds[stage])
                            for _ in range(args.kills)]
                silent = [o for o in outcomes if o["grade"] != "repaired"]  # the first non-repaired grade shows
                record(f"SIGKILL in {stage} x{args.kills}",
                       {"grade": "repaired" if not silent else silent[0]["grade"],
                        "detail": f"{sum(o['killed'] for o in outcomes)} killed mid-stage, "
                                  f"{len(outcomes) - len(silent)} of {len(outcomes)} equal to the clean run",
                        "stage_seconds": round(seconds[stage], 1)})
    silent = [row for row in rows if row["grade"] in ("SILENT LOSS", "HANG")]
    failed = [row for row in rows if row["grade"] == "failed"]
    print(f"\n{len(rows)} fault(s), {len(silent)} silent loss(es) or hang(s), {len(failed)} failed without naming "
          f"the cause or without recovering")
    result = {"events": args.events, "kills_per_stage": args.kills, "rows": rows, "silent": len(silent),
              "failed": len(failed)}
    if args.output:
        args.output.write_text(json.dumps(result, indent=2) + "\n")
    else:
        write_result("faults", result)
    sys.exit(1 if silent or failed else 0)


if __name__ == "__main__":
    main()
