"""dvc.yaml lists exactly the code each stage runs: the import closure of its script."""

from __future__ import annotations

import ast
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from spectral.runtime.deps import code_digest, expand, import_closure, require_declared, rewrite_dvc_yaml, semantic_text

PROJECT = Path(__file__).resolve().parents[2]
STAGES = yaml.safe_load((PROJECT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_code_deps_are_exactly_the_import_closure(stage):
    body = STAGES[stage]
    script = body["cmd"].split()[1]
    listed = expand([d for d in body["deps"] if d.startswith(("pipeline/", "spectral"))], PROJECT)
    closure = import_closure(Path(script), PROJECT)
    missing, extra = sorted(set(closure) - set(listed)), sorted(set(listed) - set(closure))
    assert not missing and not extra, (f"{stage}: dvc.yaml misses {missing}, lists in excess {extra}; "
                                       f"`python -m spectral.runtime.deps {script}` prints the closure")


def test_closure_follows_imports_inside_functions_and_packages(tmp_path):
    (tmp_path / "spectral" / "sub").mkdir(parents=True)
    (tmp_path / "spectral" / "__init__.py").write_text("")
    (tmp_path / "spectral" / "sub" / "__init__.py").write_text("")
    (tmp_path / "spectral" / "sub" / "leaf.py").write_text("import os\nfrom .deeper import x\nfrom .. import rel\n")
    (tmp_path / "spectral" / "sub" / "deeper.py").write_text("")
    (tmp_path / "spectral" / "rel.py").write_text("")
    (tmp_path / "spectral" / "mid.py").write_text("def f():\n    from spectral.sub import leaf\n")
    (tmp_path / "spectral" / "unused.py").write_text("")
    (tmp_path / "stage.py").write_text("import numpy\nfrom spectral import mid\n")
    assert import_closure(Path("stage.py"), tmp_path) == [
        "spectral/__init__.py", "spectral/mid.py", "spectral/rel.py", "spectral/sub/__init__.py",
        "spectral/sub/deeper.py", "spectral/sub/leaf.py", "stage.py"]
    before = code_digest(Path("stage.py"), tmp_path)
    (tmp_path / "spectral" / "unused.py").write_text("x = 1\n")
    assert code_digest(Path("stage.py"), tmp_path) == before
    (tmp_path / "spectral" / "sub" / "deeper.py").write_text("x = 1  # edited\n")
    assert code_digest(Path("stage.py"), tmp_path) != before


def test_make_deps_leaves_the_committed_dvc_yaml_unchanged():
    """`make deps` (rewrite_dvc_yaml) is what keeps dvc.yaml in step; on the committed file it is a no-op."""
    text = (PROJECT / "dvc.yaml").read_text(encoding="utf-8")
    assert rewrite_dvc_yaml(text, PROJECT) == text
    extra = "      - pipeline/embed.py\n      - spectral/x.py\n"
    stale = text.replace("      - spectral/runtime/shards.py\n", "", 1).replace("      - pipeline/embed.py\n", extra)
    assert rewrite_dvc_yaml(stale, PROJECT) == text


def test_code_digest_ignores_docstrings_comments_and_layout_and_sees_every_semantic_edit(tmp_path):
    """A docstring-only edit in events.py (imported by every stage) leaves decode's and sensors' code keys as
    they were, so their next run computes nothing; an edit to what runs changes them."""
    shutil.copytree(PROJECT / "spectral", tmp_path / "spectral", ignore=shutil.ignore_patterns("__pycache__"))
    events = tmp_path / "spectral" / "events.py"
    source = events.read_text(encoding="utf-8")
    keys = {stage: code_digest(Path(f"spectral/{stage}.py"), tmp_path) for stage in ("stages/decode", "stages/sensors")}
    documented = source.replace('"""', '"""Edited docs. ', 1).replace("\n\n\ndef ", "\n\n\n\n# a comment\ndef ")
    assert documented.count("# a comment") > 3
    events.write_text(documented, encoding="utf-8")
    assert {stage: code_digest(Path(f"spectral/{stage}.py"), tmp_path) for stage in keys} == keys
    events.write_text(source.replace("def describe_error(", "def describe_error_(", 1), encoding="utf-8")
    assert all(code_digest(Path(f"spectral/{stage}.py"), tmp_path) != key for stage, key in keys.items())


# Syntax whose tree differs between Python versions in ways that do not change what runs: f-strings (3.12
# tokenizes them anew), fields 3.12/3.13 added (type_params, empty here), u-prefixes, type comments.
PORTABLE = '''"""Module doc."""
from __future__ import annotations

import os  # type: ignore


@decorator(arg=1)
class Thing(Base, metaclass=Meta):
    """Class doc."""

    field: int = 0

    async def run(self, *args: str, key: float = 1.5, **kwargs) -> dict[str, int]:
        """Method doc."""
        async with lock:
            async for item in source():
                await emit(f"{item!r:>{width}} of {self.field:05d}" f"-{u'x'}-" rf"\\d{{2}}")
        match args:
            case [first, *rest] if (n := len(rest)) > 1:
                return {first: n}
            case _:
                return {k: v for k, v in kwargs.items() if v is not None}
        return lambda x=b"\\x00": (x, ..., 1j, -2, 3.0e-5, None, True)
'''
PORTABLE_SHA256 = "fbe3d7f8f525532d3568f020876de9472e16f0c93a21fbb234b2a67872ef636f"


def interpreters() -> dict[str, str]:
    """Every CPython 3.11-3.13 this machine has (on PATH or under pyenv), by version."""
    found = {}
    candidates = [sys.executable, *(shutil.which(f"python3.{minor}") for minor in (11, 12, 13))]
    candidates += [str(p) for p in sorted(Path.home().glob(".pyenv/versions/3.1[123]*/bin/python"))]
    for path in filter(None, candidates):
        version = subprocess.run([path, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                                 capture_output=True, text=True).stdout.strip()
        if version:  # a pyenv shim for a version not selected answers nothing
            found.setdefault(version, path)
    return found


SEMANTIC_DIGESTS = """
import hashlib, importlib.util, json, sys
from pathlib import Path
spec = importlib.util.spec_from_file_location("deps", "spectral/runtime/deps.py")
deps = importlib.util.module_from_spec(spec)
spec.loader.exec_module(deps)
portable = hashlib.sha256(deps.semantic_text(sys.stdin.read()).encode()).hexdigest()
stages = {p.stem: deps.code_digest(Path("pipeline") / p.name, Path(".")) for p in sorted(Path("pipeline").glob("*.py"))}
print(json.dumps({"portable": portable, "stages": stages}))
"""


def test_code_keys_are_the_same_on_every_python_version():
    """The committed digest of a tree that differs between versions, and every stage's code key, computed by
    each CPython 3.11-3.13 this machine has: a version whose parser writes the tree differently fails here
    instead of recomputing every stage on the machines that run it."""
    assert hashlib.sha256(semantic_text(PORTABLE).encode()).hexdigest() == PORTABLE_SHA256
    found = interpreters()
    results = {version: json.loads(subprocess.run([path, "-c", SEMANTIC_DIGESTS], input=PORTABLE, cwd=PROJECT,
                                                  capture_output=True, text=True, check=True).stdout)
               for version, path in sorted(found.items())}
    here = {"portable": PORTABLE_SHA256,
            "stages": {p.stem: code_digest(Path("pipeline") / p.name, PROJECT)
                       for p in sorted((PROJECT / "pipeline").glob("*.py"))}}
    assert {version: result == here for version, result in results.items()} == dict.fromkeys(results, True)
    print(f"code keys equal on CPython {', '.join(sorted(results))}")


def test_a_file_named_by_a_param_must_lie_under_a_declared_dep(tmp_path):
    (tmp_path / "dvc.yaml").write_text("stages:\n  embed:\n    cmd: python pipeline/embed.py\n"
                                       "    deps:\n      - data/weights\n      - pipeline/embed.py\n")
    (tmp_path / "data" / "weights").mkdir(parents=True)
    require_declared(str(tmp_path / "data" / "weights" / "b0.pth"), "video.weights", "embed", "data/weights",
                     tmp_path / "dvc.yaml")
    with pytest.raises(ValueError, match=r"video.weights='/elsewhere/b0.pth' is not under any dep of the 'embed' "
                                         r"stage.*Put the file under data/weights/"):
        require_declared("/elsewhere/b0.pth", "video.weights", "embed", "data/weights", tmp_path / "dvc.yaml")
    with pytest.raises(KeyError, match="no stage 'train'"):
        require_declared("x", "video.weights", "train", "data/weights", tmp_path / "dvc.yaml")


def test_only_the_cli_and_the_stages_import_a_stage():
    """Library code sits below the stages (spectral/stages/__init__.py): a stage imported from a library
    module would make every stage using that module re-run when the imported stage is edited."""
    offenders = {}
    for path in sorted((PROJECT / "spectral").rglob("*.py")):
        rel = path.relative_to(PROJECT)
        if rel.parts[1] == "stages" or rel == Path("spectral/cli.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders.update({f"{rel}: {n}": True for n in names if n.startswith("spectral.stages")})
    assert not offenders, sorted(offenders)
