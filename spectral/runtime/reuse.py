"""The reuse protocol of the incremental stages (decode, sensors, embed), written once.

A stage's index (decode's report.json, embed's manifest.json, the sensors report) lists every
file the stage made with its size and sha256. Nothing is reused on the index's word alone:

- the index is loaded only when it parses and is this stage's (absent or damaged: start clean);
- before a listed file is reused, its size is checked always, and its sha256 whenever the
  file's (size, mtime, ctime, inode) differ from when this machine last verified it: a file
  copied, pulled, truncated or rewritten since is read again (ctime cannot be set back by a
  program), an untouched one costs one `stat`;
- a file that fails is recomputed, and counted with the reason (`recomputed` in the report).

The stat stamps are machine-local (`.spectral-verified.json` in the output folder, listed in
`.dvcignore`): they must not change the outputs' bytes. `spectral verify` re-reads everything.

A stage's reuse key is made of `key_parts`: its code (spectral.runtime.deps.code_digest: what the code
does, not its comments), its config, and the versions of the libraries that shape its bytes,
native ones included. The index records the parts, so a run that recomputes says why
(`key_changes`: "av 18.1.0 → 18.2.0").

`StageOutputs` is one run over an output folder, on every torchrun rank: keep what verifies,
publish an index of the kept files only (a run killed later never leaves an index describing a
file it since rewrote), write the rest through `spectral.runtime.shards.AtomicTarWriter` (temp name,
renamed when its `with` block ends cleanly, removed on any error), then delete the stage's own
stale files and publish the complete index, atomically.
"""

from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from spectral.runtime.distributed import SINGLE_PROCESS, Ranks
from spectral.runtime.incremental import clean_run_requested, digest, file_sha256, module_code_digest

STAMPS = ".spectral-verified.json"
_OWNED = re.compile(r"(?:train|val|test)-[0-9a-f]{16}\.tar(?:\.tmp)?")  # what the stages write, and its temp


def _native_versions(distribution: str) -> dict[str, str]:
    """The native libraries a wheel bundles, whose versions its own version does not always pin."""
    if distribution == "av":
        import av

        return {f"av:{name}": ".".join(map(str, version)) for name, version in av.library_versions.items()}
    if distribution == "soundfile":
        import soundfile

        return {"soundfile:libsndfile": soundfile.__libsndfile_version__}
    if distribution == "soxr":
        import soxr

        return {"soxr:libsoxr": soxr.__libsoxr_version__}
    return {}


def library_versions(distributions: tuple[str, ...]) -> dict[str, str]:
    """Versions of the installed distributions that shape a stage's bytes, with the native libraries inside them."""
    versions = {name: metadata.version(name) for name in distributions}
    for name in distributions:
        versions.update(_native_versions(name))
    return dict(sorted(versions.items()))


def key_parts(module_file: str, config: object, distributions: tuple[str, ...]) -> dict:
    """Everything a stage's outputs depend on besides its inputs: what its code does, its config, its libraries."""
    parts = {"code": module_code_digest(module_file), "config": config, "libraries": library_versions(distributions)}
    return json.loads(json.dumps(parts))  # as the index will hold them (tuples become lists), to compare with it


def key_salt(stage: str, parts: dict) -> str:
    """The digest every key of the stage starts from."""
    return digest(stage, parts)


def _flat(value: object, prefix: str = "") -> dict[str, object]:
    if isinstance(value, dict):
        return {k: v for name, item in value.items() for k, v in _flat(item, f"{prefix}{name}.").items()}
    return {prefix.rstrip("."): value}


def key_changes(previous: dict | None, parts: dict) -> list[str]:
    """What differs between the key parts the last run recorded and this run's, for a person: `av 18.1.0 →
    18.2.0`, `code (what the stage's code does)`, `config.size 224 → 256`. Empty when nothing differs or
    there is no last run (a first or clean run recomputes for that reason alone)."""
    if previous is None:
        return []
    if not isinstance(previous.get("key_parts"), dict):
        return ["the last run's index records no key parts (written by an older version)"]
    old, new = _flat(previous["key_parts"]), _flat(parts)
    changes = []
    for name in sorted(set(old) | set(new)):
        if old.get(name) != new.get(name):
            label = name.removeprefix("libraries.")
            if name == "code":
                changes.append("code (what the stage's code does)")
            else:
                changes.append(f"{label} {old.get(name, 'absent')} → {new.get(name, 'absent')}")
    return changes


def file_record(path: Path) -> dict:
    """{"size", "sha256"} of a file this stage just wrote: what its index lists."""
    return {"size": os.stat(path).st_size, "sha256": file_sha256(path)}


def output_files(directory: Path) -> list[Path]:
    """The files of a stage's output folder as DVC hashes them (`.dvcignore`): all but the machine-local stamps
    and half-written `.tmp` files."""
    return [p for p in sorted(Path(directory).rglob("*")) if p.is_file() and p.name != STAMPS
            and not p.name.endswith(".tmp")]


def load_index(path: Path, stage: str) -> dict | None:
    """The stage's last index, or None: absent, damaged (not JSON, another stage's), or a clean run requested."""
    if clean_run_requested():
        return None
    try:
        index = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return index if isinstance(index, dict) and index.get("stage") == stage else None


def read_complete_index(path: Path) -> dict:
    """A decode or embed index that a run completed, or a ValueError saying what is wrong with it (for
    readers that must not fall back to recomputing: training, evaluation, `spectral verify`)."""
    path = Path(path)
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} not found: {path.parent} is not the output of the decode or embed stage") \
            from None
    except (OSError, ValueError) as err:
        raise ValueError(f"{path} cannot be read ({err}): rerun the stage that writes it") from None
    if not isinstance(index, dict) or index.get("stage") not in ("decode", "embed") or "index" not in index:
        raise ValueError(f"{path} is not a decode or embed index: rerun the stage that writes it")
    if not index.get("complete"):
        raise ValueError(f"{path} is from an interrupted {index['stage']} run: rerun the {index['stage']} stage")
    return index


def publish_index(path: Path, index: dict) -> None:
    """Replace the index atomically: a reader sees the old one or the new one, never half of either."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(index, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)


@dataclass
class Verifier:
    """Checks files against their index records before reuse; remembers what failed and why."""

    directory: Path
    stamps: dict[str, list] = field(default_factory=dict)        # file → [size, mtime_ns, ctime_ns, inode, sha256]
    fresh: dict[str, list] = field(default_factory=dict)         # the stamps made by this run (other ranks' merge)
    recomputed: dict[str, str] = field(default_factory=dict)     # file → why it could not be reused

    @classmethod
    def open(cls, directory: Path) -> Verifier:
        try:
            stamps = json.loads((Path(directory) / STAMPS).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            stamps = {}
        return cls(Path(directory), stamps if isinstance(stamps, dict) else {})

    def problem(self, file: str, record: dict) -> str | None:
        """None when `file` is the one `record` ({"size", "sha256"}) describes; else what is wrong with it."""
        path = self.directory / file
        try:
            info = os.stat(path)
        except FileNotFoundError:
            return "listed in the index but missing"
        if not stat.S_ISREG(info.st_mode):
            return "not a regular file"
        size, sha256 = record.get("size"), record.get("sha256")
        if size is None or sha256 is None:
            return "the index records no size or sha256 for it"
        if info.st_size != size:
            return f"{info.st_size} bytes, the index says {size} (truncated or replaced)"
        stamp = [info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino]
        if self.stamps.get(file) == [*stamp, sha256]:
            return None
        if file_record(path)["sha256"] != sha256:
            return "content differs from the index's sha256 (damaged or replaced)"
        self.stamps[file] = self.fresh[file] = [*stamp, sha256]
        return None

    def reusable(self, file: str, record: dict) -> bool:
        """problem() is None; a failing file is counted in `recomputed` and not read again this run."""
        if file in self.recomputed:
            return False
        reason = self.problem(file, record)
        if reason is not None:
            self.recomputed[file] = reason
        return reason is None

    def written(self, file: str) -> dict:
        """The record of a file this run wrote, stamped as verified."""
        path = self.directory / file
        record = file_record(path)
        info = os.stat(path)
        self.stamps[file] = self.fresh[file] = [info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino,
                                                record["sha256"]]
        return record

    def save(self, listed: set[str], more: dict[str, list] | None = None) -> None:
        """Write the stamps of the files the new index lists (`more`: the stamps other ranks made this run)."""
        stamps = {file: value for file, value in {**self.stamps, **(more or {})}.items() if file in listed}
        tmp = self.directory / (STAMPS + ".tmp")
        tmp.write_text(json.dumps(stamps, sort_keys=True) + "\n", encoding="utf-8")
        tmp.replace(self.directory / STAMPS)


def verify_all(directory: Path, records: dict[str, dict]) -> dict[str, str]:
    """Read every listed file in full against its record, whatever the stamps say (`spectral verify`);
    the files that pass are stamped again. Returns file → problem for those that fail."""
    from tqdm import tqdm

    verifier = Verifier(Path(directory))
    problems = {file: why for file, record in tqdm(sorted(records.items()), desc=f"verify {directory}", unit="file")
                if (why := verifier.problem(file, record)) is not None}
    verifier.save(set(records) - set(problems))
    return problems


def remove_stale_shards(directory: Path, keep: set[str]) -> list[str]:
    """Delete shard files the stages wrote (or left half-written) that are not in `keep`.

    Only the stages' own names (`{split}-{16 hex}.tar`, and `.tmp`) are touched. A run killed after
    publishing a shard has not recorded it yet, so the name, not the index, decides; a user's `notes.tar`
    or `train-000000.tar` in the output folder survives. Returns the names removed.
    """
    removed = []
    for path in sorted(Path(directory).iterdir()) if Path(directory).is_dir() else []:
        owned = _OWNED.fullmatch(path.name)
        if path.is_file() and owned and path.name not in keep:
            path.unlink()
            removed.append(path.name)
    return removed


class StageOutputs:
    """One run of an incremental stage over its output folder, the same on every rank: the previous
    index, the verifier of its files, the kept-only index, then the complete one."""

    def __init__(self, stage: str, directory: Path, index_name: str, ranks: Ranks = SINGLE_PROCESS) -> None:
        self.stage, self.directory, self.ranks = stage, Path(directory), ranks
        self.directory.mkdir(parents=True, exist_ok=True)
        self.index_path = self.directory / index_name
        self.previous = load_index(self.index_path, stage)  # None: start clean
        self.verifier = Verifier.open(self.directory)

    def publish_kept(self, body: dict) -> None:
        """Rank 0 replaces the index by `body` (the kept files only, `complete: false`) once every rank has
        read the previous one; no rank returns, and so replaces a file, before it is published."""
        self.ranks.barrier()
        if self.ranks.is_main:
            publish_index(self.index_path, {"stage": self.stage, "complete": False, **body})
        self.ranks.barrier()

    def finish(self, body: dict, listed: set[str]) -> tuple[list[str], dict[str, str]]:
        """Rank 0 deletes the stage's own files that `listed` (the new index's files) does not name, publishes
        `body` as the complete index and saves every rank's stamps; all ranks return together.
        Returns (the files removed, on rank 0; file → why it was recomputed, over all ranks)."""
        verified = self.ranks.gather((self.verifier.recomputed, self.verifier.fresh))
        removed = []
        if self.ranks.is_main:
            removed = remove_stale_shards(self.directory, keep=listed)
            publish_index(self.index_path, {"stage": self.stage, "complete": True, **body})
            self.verifier.save(listed, {file: stamp for _, fresh in verified for file, stamp in fresh.items()})
        self.ranks.barrier()  # a failing check after this must not end the ranks before the index is written
        return removed, {file: why for recomputed, _ in verified for file, why in recomputed.items()}
