"""Where an exported model came from: the code revision and the exact data and params that made it.

A model file travels (to a phone backend, to a colleague) without its DVC repo; these
digests tell two models apart and trace one back to its code, data and params from the
file alone. All are content digests, so they never make a rerun's bytes differ.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from spectral.runtime.deps import code_digest, import_closure, project_root


def git_blob_id(data: bytes) -> str:
    """The id git gives a file with these bytes (`git hash-object`), computed without git."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def code_revision(module: Path) -> dict:
    """The code that made an output, content-addressed: sha256 of `module`'s import closure, and the
    git blob id of every file in it.

    Blob ids, not HEAD's commit: they are the same in any clone, so committing dvc.lock or a
    README, or running before committing, never changes the model's bytes; `git log
    --find-object=<blob>` finds the commits that hold a file in that exact state, and a blob no
    commit holds means the model was trained from uncommitted code.
    """
    root = project_root(module)
    files = import_closure(Path(module).resolve().relative_to(root), root)
    return {"code_sha256": code_digest(Path(module).resolve().relative_to(root), root),
            "git_blobs": {path: git_blob_id((root / path).read_bytes()) for path in files}}


def params_digest(params: dict) -> str:
    """sha256 of the params as canonical JSON (key order does not matter)."""
    return hashlib.sha256(json.dumps(params, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
