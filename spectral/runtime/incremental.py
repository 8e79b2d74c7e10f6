"""Incremental stages: what a per-event or per-shard result is keyed on, and where shards are cut.

DVC re-runs a stage when anything in its input folder changes, so a nightly archive that
grows by 1 % would otherwise be decoded and embedded again in full. The stages keep their
outputs between runs (`persist: true` in dvc.yaml) and reuse a result when its key — the
content of the input files, the stage's data-shaping config, what the stage's code does (its
import closure, `spectral.runtime.deps`) and its libraries' versions (`spectral.runtime.reuse.key_parts`) — is
unchanged. Labels are never part of a key, so
relabelling an event re-runs nothing heavy.

Shard membership is content-defined: it depends only on the sorted event names, so it is
known before anything is decoded and an added event rewrites only the shard it falls in
(time-stamped names: the last shard of each split).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
from pathlib import Path

from spectral.events import LINK_OUTSIDE, links_outside, special_file
from spectral.runtime.deps import code_digest, project_root

CLEAN_RUN_ENV = "SPECTRAL_CLEAN_RUN"
_BOUNDARY_SALT = b"spectral-shard-boundary\0"  # independent of the split hash (spectral.runtime.splits)
_CHUNK = 1 << 20


def clean_run_requested() -> bool:
    """`SPECTRAL_CLEAN_RUN=1 dvc repro -f STAGE` recomputes everything: `-f` alone keeps persisted outputs."""
    return os.environ.get(CLEAN_RUN_ENV, "").strip().lower() not in ("", "0", "false", "no")


def digest(*parts: object) -> str:
    """sha256 of the parts as canonical JSON: the one way keys are made."""
    text = json.dumps(parts, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


def file_sha256(path: Path) -> str | None:
    """Content digest of a regular file; None when it does not exist or is a folder. A FIFO, a device, a socket
    or a link to one is never opened (a FIFO would block for ever, `/dev/zero` never ends): its digest is the
    text naming what it is, which the stage then rejects; likewise a symlink loop. Any other error is raised:
    an unreadable file is the machine's failure."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "a symlink loop"
        raise
    if stat.S_ISDIR(mode):
        return None
    if (kind := special_file(mode)) is not None:
        return f"not a regular file ({kind})"
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def file_key(path: Path, links_inside: bool) -> str | None:
    """What a stage's reuse key holds for one input file: its content digest, or, when links must stay inside
    the events folder and this one does not, that fact (the target is never read; spectral.events.check_link)."""
    if links_inside and links_outside(path, Path(path).parent.parent):
        return LINK_OUTSIDE
    return file_sha256(path)


def module_code_digest(module_file: str | Path) -> str:
    """sha256 of what a `spectral` module's import closure does (spectral.runtime.deps.code_digest): the stage code a
    result depends on, its comments and docstrings aside."""
    module_file = Path(module_file).resolve()
    root = project_root(module_file)
    return code_digest(module_file.relative_to(root), root)


def boundary_position(name: str) -> float:
    """Where an event name hashes in [0, 1); a shard ends after a name below 1 / mean size."""
    value = hashlib.sha256(_BOUNDARY_SALT + name.encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(value[:8], "big") / 2**64


def plan_shards(names: list[str], mean_events: int, max_events: int) -> list[list[str]]:
    """Event names (sorted) cut into shards: after every name whose boundary hash falls below
    1 / mean_events, and after max_events names in a row without such a cut.

    Inserting or removing a name changes only the shard it falls in (and, within a run longer
    than max_events, the capped shards after it up to the next hash cut).
    """
    if mean_events < 1 or max_events < mean_events:
        raise ValueError(f"need 1 <= shard_events ({mean_events}) <= max_shard_events ({max_events})")
    threshold = 1.0 / mean_events
    shards: list[list[str]] = []
    current: list[str] = []
    for name in sorted(names):
        current.append(name)
        if boundary_position(name) < threshold or len(current) >= max_events:
            shards.append(current)
            current = []
    if current:
        shards.append(current)
    return shards


def shard_file_name(split: str, members: list[str]) -> str:
    """`{split}-{16 hex}.tar`, named by membership: an unchanged set of events keeps its file."""
    return f"{split}-{digest(split, members)[:16]}.tar"
