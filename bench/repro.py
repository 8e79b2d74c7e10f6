"""DVC overhead and savings: no-op `dvc repro` at 100 and 1,000 events, and a train-only change vs a full repro.

Runs the real pipeline in a temporary git repo with small clips (128x64, 2 s, 10 fps, 4 frames sampled)
and 3 training epochs, so 1,000 events fit on a laptop; the no-op time depends on the number of
files DVC must check, not on clip size. Goal: no-op < 3 s.

    python bench/repro.py [--sizes 100 1000]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from common import write_result

PROJECT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def sh(*cmd: str, cwd: Path) -> tuple[float, str]:
    started = time.perf_counter()
    result = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, check=True)
    return time.perf_counter() - started, result.stdout + result.stderr


def make_repo(root: Path, events: int) -> None:
    for item in ("dvc.yaml", "params.yaml", "pipeline", "spectral", "data/weights", ".gitignore", ".dvcignore"):
        source = PROJECT / item
        (shutil.copytree if source.is_dir() else shutil.copy)(source, root / item)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["synth"].update(events=events, width=128, height=64, duration_s=2.0, fps=10)
    params["video"]["num_frames"] = 4
    params["train"]["max_epochs"] = 3
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh("git", "init", "-q", cwd=root)
    sh("dvc", "init", "-q", cwd=root)
    sh("git", "add", "-A", cwd=root)
    sh("git", "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "bench", cwd=root)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000])
    args = parser.parse_args()
    rows = {}
    for size in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            make_repo(root, size)
            full_s, _ = sh("dvc", "repro", cwd=root)
            noop_s = min(sh("dvc", "repro", cwd=root)[0] for _ in range(3))
            params = yaml.safe_load((root / "params.yaml").read_text())
            params["train"]["lr"] = 0.0005
            (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
            train_s, output = sh("dvc", "repro", cwd=root)
            ran = sorted(set(re.findall(r"Running stage '([a-z]+)'", output)))
        rows[size] = {"full_repro_s": round(full_s, 1), "noop_repro_s": round(noop_s, 2),
                      "train_change_repro_s": round(train_s, 1), "train_change_ran": ran,
                      "time_saved_ratio": round(full_s / train_s, 2)}
    print(f"{'events':>7}{'full s':>9}{'no-op s':>9}{'train-only s':>14}{'full/train-only':>17}")
    for size, row in rows.items():
        print(f"{size:>7}{row['full_repro_s']:>9.1f}{row['noop_repro_s']:>9.2f}{row['train_change_repro_s']:>14.1f}"
              f"{row['time_saved_ratio']:>17.2f}   ran: {', '.join(row['train_change_ran'])}")
    write_result("repro", {"clips": "128x64, 2 s, 10 fps; 4 frames sampled; 3 epochs", "sizes": rows})


if __name__ == "__main__":
    main()
