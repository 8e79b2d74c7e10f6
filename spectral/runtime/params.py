"""params.yaml → a stage's config: the one way both the DVC stages and `spectral <stage>` build it.

Each stage's config dataclass carries params.yaml's values as its defaults (tests/runtime/test_params.py holds
them equal) and a `from_params` built on `build_config` below. A stage script reads params.yaml; the command
reads the same file when it is there (else the defaults) and applies `-S key=value` overrides the way
`dvc exp run -S` does, so a command with no flags runs exactly what its stage runs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

PARAMS_FILE = Path("params.yaml")
# Every key params.yaml may hold (tests check it against the committed file), so a misspelt one fails instead of
# being read by no stage: sections that several stages read list their keys; None = one stage's config checks them.
SECTIONS: dict[str, tuple[str, ...] | None] = {
    "data": ("events",), "synth": None, "ood": None, "missing_modality": (), "links_outside_events": (),
    "splits": ("train", "val", "test"), "video": ("num_frames", "size", "interpolation", "backbone", "weights"),
    "audio": ("seconds",), "decode": None, "sensors": None, "embed": None,
    "distributed": ("decode_processes", "embed_processes", "timeout_s"), "train": None,
}

Config = TypeVar("Config")


def _check_sections(params: dict, source: str) -> None:
    unknown = sorted(set(params) - set(SECTIONS))
    if unknown:
        raise ValueError(f"{source}: unknown param section(s) {', '.join(unknown)}; valid: {', '.join(SECTIONS)}")
    for section, keys in SECTIONS.items():
        if keys and isinstance(params.get(section), dict) and (extra := sorted(set(params[section]) - set(keys))):
            raise ValueError(f"{source}: unknown key(s) {', '.join(f'{section}.{k}' for k in extra)}; "
                             f"valid: {', '.join(keys)}")


def set_param(params: dict, assignment: str) -> None:
    """Apply one `section.key=value` override in place; the value is read as YAML (`3`, `true`, `[0.4, 0.3]`)."""
    path, sep, text = assignment.partition("=")
    if not sep or not path:
        raise ValueError(f"-S {assignment!r}: expected key=value, e.g. -S train.max_epochs=3")
    keys = path.split(".")
    node = params
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ValueError(f"-S {assignment!r}: {key} is a value, not a section")
    node[keys[-1]] = yaml.safe_load(text)


def load_params(path: Path | None = PARAMS_FILE, overrides: Sequence[str] = ()) -> dict:
    """params.yaml (or {} when `path` is None or absent: every config then takes its defaults) with overrides."""
    params: dict = {}
    if path is not None and Path(path).is_file():
        params = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    for assignment in overrides:
        set_param(params, assignment)
    _check_sections(params, str(path) if path else "params")
    return params


def _lookup(params: dict, dotted: str) -> tuple[bool, Any]:
    node: Any = params
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return False, None
        node = node[key]
    return True, node


def build_config(cls: type[Config], params: dict, section: str | None = None,
                 elsewhere: dict[str, str] | None = None, ignore: Sequence[str] = (), base: Config | None = None
                 ) -> Config:
    """A `cls` from params: every key of `section` is the field of the same name (a key that is no field is an
    error listing the valid ones, unless in `ignore`: read by another config), and `elsewhere` maps other fields
    to their dotted param (`{"num_frames": "video.num_frames"}`). Params left out keep the defaults (of `base`
    when given)."""
    fields = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    if section is not None:
        found, body = _lookup(params, section)
        body = body if found else {}
        if not isinstance(body, dict):
            raise ValueError(f"params: {section} must be a section of keys, got {body!r}")
        unknown = sorted(set(body) - fields - set(ignore))
        if unknown:
            valid = sorted((fields - set(elsewhere or {})) | set(ignore))
            raise ValueError(f"params: unknown key(s) {', '.join(f'{section}.{k}' for k in unknown)}; "
                             f"valid: {', '.join(valid)}")
        values.update({k: v for k, v in body.items() if k in fields})
    for field_name, dotted in (elsewhere or {}).items():
        found, value = _lookup(params, dotted)
        if found:
            values[field_name] = value
    return dataclasses.replace(base, **values) if base is not None else cls(**values)


def check_choice(param: str, value: object, choices: Sequence[object]) -> None:
    """Refuse a value outside its choices, naming them (a typo must not mean a default)."""
    if value not in choices:
        raise ValueError(f"{param} must be one of {', '.join(map(str, choices))}, got {value!r}")
