"""Where an exported model came from: the code revision and the exact data and params that made it.

A model file travels (to a phone backend, to a colleague) without its DVC repo; these
digests let anyone check it against a `dvc.lock`, or tell two models apart, from the file alone.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

from spectral.deps import code_digest, import_closure


def code_revision(module: Path) -> dict:
    """The code that made an output: sha256 of `module`'s import closure, and the last git commit
    that changed any file of it, with whether the work tree differs from that commit.

    The last commit *touching the code*, not HEAD: committing dvc.lock or a README must not
    change the model's bytes, or no fresh clone could reproduce the committed lock.
    """
    root = Path(module).resolve().parents[1]
    files = import_closure(Path(module).resolve().relative_to(root), root)

    def git(*args: str) -> str | None:
        try:
            result = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return result.stdout.strip() if result.returncode == 0 else None

    commit = git("log", "-1", "--format=%H", "--", *files) or None
    changed = git("status", "--porcelain", "--", *files) if commit else None
    return {"code_sha256": code_digest(Path(module).resolve().relative_to(root), root), "git_commit": commit,
            "git_dirty": bool(changed) if changed is not None else None}


def files_digest(paths: list[Path], root: Path) -> str:
    """sha256 over the files' paths (relative to root) and bytes, in sorted order."""
    digest = hashlib.sha256()
    for path in sorted(paths, key=lambda p: p.relative_to(root).as_posix()):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def params_digest(params: dict) -> str:
    """sha256 of the params as canonical JSON (key order does not matter)."""
    return hashlib.sha256(json.dumps(params, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
