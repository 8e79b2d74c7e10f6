"""What every benchmark records: the machine it ran on, and where its JSON goes; the pipeline-output arguments."""

from __future__ import annotations

import argparse
import json
import os
import platform
from datetime import date
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"


def machine() -> str:
    """CPU model, its widest vector kind (the embedding kernels differ between them), cores, torch, GPU."""
    cpu, kind = platform.processor() or platform.machine(), ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = line.split(":", 1)[1].split()
                kind = " AVX-512" if "avx512f" in flags else " AVX2" if "avx2" in flags else ""
                break
    except OSError:
        pass
    text = f"{cpu}{kind}, {len(os.sched_getaffinity(0))} cores, torch {torch.__version__}"
    if torch.cuda.is_available():
        text += f", GPU {torch.cuda.get_device_name(0)}"
    return text


def write_result(name: str, result: dict, path: Path | None = None) -> Path:
    """bench/results/<name>.json, or `path` (a smoke run's file, kept out of the committed results)."""
    path = path or RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    stamp = {"machine": machine(), "date": date.today().isoformat()}  # bench/report.py shows both with the numbers
    path.write_text(json.dumps({**stamp, **result}, indent=2) + "\n", encoding="utf-8")
    print(f"machine: {machine()}\nwrote {path}")
    return path


def pipeline_outputs_parser(description: str) -> argparse.ArgumentParser:
    """Arguments of the benchmarks that measure what the demo pipeline made: its model, embeddings,
    sensors table and params, at their dvc.yaml paths by default."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("models/model.pt"))
    parser.add_argument("--embeddings", type=Path, default=Path("data/embeddings"))
    parser.add_argument("--sensors", type=Path, default=Path("data/sensors.parquet"))
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    return parser


def tree_rss_kb(root: int) -> int:
    """Resident memory of a process and all its descendants (Linux /proc), in KiB."""
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            total += int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))
            for task in Path(f"/proc/{pid}/task").iterdir():
                stack += [int(child) for child in (task / "children").read_text().split()]
        except (OSError, StopIteration, ValueError):
            continue
    return total
