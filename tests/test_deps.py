"""dvc.yaml lists exactly the code each stage runs: the import closure of its script."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from spectral.deps import code_digest, expand, import_closure, rewrite_dvc_yaml

PROJECT = Path(__file__).resolve().parents[1]
STAGES = yaml.safe_load((PROJECT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_code_deps_are_exactly_the_import_closure(stage):
    body = STAGES[stage]
    script = body["cmd"].split()[1]
    listed = expand([d for d in body["deps"] if d.startswith(("pipeline/", "spectral"))], PROJECT)
    closure = import_closure(Path(script), PROJECT)
    missing, extra = sorted(set(closure) - set(listed)), sorted(set(listed) - set(closure))
    assert not missing and not extra, (f"{stage}: dvc.yaml misses {missing}, lists in excess {extra}; "
                                       f"`python -m spectral.deps {script}` prints the closure")


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
    stale = text.replace("      - spectral/shards.py\n", "", 1).replace("      - pipeline/embed.py\n", extra)
    assert rewrite_dvc_yaml(stale, PROJECT) == text
