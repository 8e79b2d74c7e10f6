"""The code a stage runs: the import closure of its script inside the `spectral` package.

DVC re-runs a stage only when one of its listed deps changes, so a library module missing
from a stage's deps leaves its outputs stale when that module is edited. Listing deps by
hand drifts; this closure is what `tests/runtime/test_deps.py` holds `dvc.yaml` to, and what a
stage hashes as "its code" (`code_digest`) in its reuse keys.

`code_digest` hashes what the code does, not its bytes: each file's syntax tree without
comments, docstrings or layout, written out the same way on every Python version this project
supports (fields a version adds empty are skipped). A documentation edit recomputes nothing;
any change to what runs recomputes everything keyed on it.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import re
from pathlib import Path

PACKAGE = "spectral"


def project_root(module: Path) -> Path:
    """The folder holding the `spectral` package `module` belongs to: what closures and blob paths are relative to."""
    return next(folder.parent for folder in Path(module).resolve().parents if folder.name == PACKAGE)


def _module_file(root: Path, module: str) -> Path | None:
    """The file that defines `module` (dotted name) under root, or None when it is not one of ours."""
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return None
    base = root.joinpath(*parts)
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    return None


def _imported_modules(path: Path, rel: Path) -> set[str]:
    """Every dotted module name the file imports, at module level or inside a function; relative
    imports (`from .audio import x`) are resolved against the file's package (`rel` is its repo path).

    `from spectral.models import artifact` names either a module or an attribute; both
    candidates are returned and `_module_file` keeps the ones that exist.
    """
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = list(rel.parent.parts)  # the file's package; `..` is its parent
                base = package[: len(package) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    # importing a.b.c runs a/__init__.py and a/b/__init__.py first
    return {".".join(name.split(".")[:i]) for name in names for i in range(1, name.count(".") + 2)}


def import_closure(script: Path, root: Path = Path(".")) -> list[str]:
    """Sorted repo-relative paths of `script` and every `spectral` module it transitively imports."""
    root = Path(root)
    seen: set[Path] = set()
    todo = [Path(script)]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for module in _imported_modules(root / path, path):
            found = _module_file(root, module)
            if found is not None:
                todo.append(found.relative_to(root))
    return sorted(p.as_posix() for p in seen)


def expand(deps: list[str], root: Path = Path(".")) -> list[str]:
    """The .py files a list of dvc.yaml deps covers (a folder covers every module in it)."""
    root = Path(root)
    files: set[str] = set()
    for dep in deps:
        path = root / dep
        if path.is_dir():
            files.update(p.relative_to(root).as_posix() for p in path.rglob("*.py"))
        elif dep.endswith(".py"):
            files.add(dep)
    return sorted(files)


def files_digest(paths: list[Path], root: Path) -> str:
    """sha256 over the files' paths relative to root and their bytes, in sorted order: the same for the
    same tree wherever it lies."""
    root = Path(root).resolve()
    digest = hashlib.sha256()
    for rel, full in sorted((p.relative_to(root).as_posix(), p) for p in (Path(q).resolve() for q in paths)):
        digest.update(rel.encode() + b"\0")
        with open(full, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


_DOCSTRING_OWNERS = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
_NOT_SEMANTIC = frozenset({"type_comment", "kind"})  # `# type:` comments, the `u` of u"..." strings


def _is_docstring(statement: ast.stmt) -> bool:
    return (isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant)
            and isinstance(statement.value.value, str))


def _fstring_parts(values: list[ast.expr]) -> list[ast.expr]:
    """An f-string's pieces with adjacent literal text joined and empty text dropped: how a version's parser
    splits the literal text of an f-string is not what the code does."""
    parts: list[ast.expr] = []
    for value in values:
        if isinstance(value, ast.Constant) and isinstance(value.value, str):
            if parts and isinstance(parts[-1], ast.Constant) and isinstance(parts[-1].value, str):
                parts[-1] = ast.Constant(parts[-1].value + value.value)
            elif value.value:
                parts.append(value)
        else:
            parts.append(value)
    return [p for p in parts if not (isinstance(p, ast.Constant) and p.value == "")]


def _canonical(node: object) -> str:
    """One text for a syntax tree: node names and their non-empty fields, without docstrings."""
    if isinstance(node, list):
        return "[" + ",".join(_canonical(item) for item in node) + "]"
    if not isinstance(node, ast.AST):
        return f"{type(node).__name__}:{node!r}"
    fields = []
    for name in node._fields:
        value = getattr(node, name, None)
        if name == "body" and isinstance(node, _DOCSTRING_OWNERS) and value and _is_docstring(value[0]):
            value = value[1:]
        elif name == "values" and isinstance(node, ast.JoinedStr):
            value = _fstring_parts(value)
        if name in _NOT_SEMANTIC or value is None or (isinstance(value, list) and not value):
            continue
        fields.append(f"{name}={_canonical(value)}")
    return f"{type(node).__name__}({','.join(fields)})"


def semantic_text(source: str, filename: str = "<source>") -> str:
    """What `code_digest` hashes of one file: its syntax tree without comments, docstrings or layout."""
    return _canonical(ast.parse(source, filename=filename))


def code_digest(script: Path, root: Path = Path(".")) -> str:
    """sha256 over the closure's paths and each file's `semantic_text`: changes when what the stage's code
    does changes, not when its comments, docstrings or layout do."""
    digest = hashlib.sha256()
    for rel in import_closure(script, root):
        path = Path(root) / rel
        digest.update(rel.encode() + b"\0" + semantic_text(path.read_text(encoding="utf-8"), str(path)).encode()
                      + b"\0")
    return digest.hexdigest()


def _is_code(dep: str) -> bool:
    return dep.startswith(("pipeline/", f"{PACKAGE}/")) or dep == PACKAGE


def rewrite_dvc_yaml(text: str, root: Path = Path(".")) -> str:
    """dvc.yaml text with each stage's code deps replaced by its script's closure; data deps, order of the
    other keys and comments are kept (a line-based edit, so the file stays hand-readable)."""
    lines, out, stage, script = text.split("\n"), [], None, None
    i = 0
    while i < len(lines):
        line = lines[i]
        if re.match(r"^  [A-Za-z0-9_-]+:\s*$", line):
            stage, script = line.strip()[:-1], None
        command = re.match(r"^    cmd: python (\S+)", line)
        if command:
            script = command.group(1)
        if stage and script and line.strip() == "deps:":
            out.append(line)
            i += 1
            data = []
            while i < len(lines) and lines[i].startswith("      - "):
                if not _is_code(lines[i][8:].strip()):
                    data.append(lines[i])
                i += 1
            out += data + [f"      - {path}" for path in import_closure(Path(script), root)]
            continue
        out.append(line)
        i += 1
    return "\n".join(out)


def stage_deps(stage: str, dvc_yaml: Path = Path("dvc.yaml")) -> list[str]:
    """The deps `dvc.yaml` declares for a stage, as written (paths relative to the project)."""
    import yaml  # here, so the code-key functions above run on a bare interpreter (tests/runtime/test_deps.py)

    stages = yaml.safe_load(dvc_yaml.read_text(encoding="utf-8"))["stages"]
    if stage not in stages:
        raise KeyError(f"{dvc_yaml} has no stage {stage!r} (stages: {', '.join(stages)})")
    return list(stages[stage].get("deps", []))


def require_declared(path: str, param: str, stage: str, home: str, dvc_yaml: Path = Path("dvc.yaml")) -> None:
    """Refuse a file a stage reads because a param names it unless it lies under one of the stage's deps:
    DVC re-runs a stage only when a declared dep changes, so an undeclared file could be replaced under
    the same name and every output made from its old bytes would stay, reported up to date."""
    target = Path(path).resolve()
    root = dvc_yaml.resolve().parent
    declared = stage_deps(stage, dvc_yaml)
    for dep in declared:
        dep_path = (root / dep).resolve()
        if target == dep_path or dep_path in target.parents:
            return
    raise ValueError(f"{param}={path!r} is not under any dep of the {stage!r} stage in {dvc_yaml}, so DVC would "
                     f"not notice when its bytes change. Put the file under {home}/ (`dvc add` it there to share "
                     f"it through the remote), or add its path to stages.{stage}.deps.")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="the code deps (import closure) of DVC stage scripts")
    parser.add_argument("scripts", type=Path, nargs="*", help="print the closure of these scripts")
    parser.add_argument("--write", type=Path, metavar="DVC_YAML",
                        help="rewrite the code deps of every `cmd: python SCRIPT` stage in this dvc.yaml")
    args = parser.parse_args(argv)
    if args.write:
        args.write.write_text(rewrite_dvc_yaml(args.write.read_text(encoding="utf-8")), encoding="utf-8")
    for script in args.scripts:
        print(f"{script}:")
        for path in import_closure(script):
            print(f"  - {path}")


if __name__ == "__main__":
    main()
