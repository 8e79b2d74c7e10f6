"""Peak memory of the decode and sensors stages at two dataset sizes: it must not grow with the event count.

Each stage runs as its own `spectral` process; peak RSS comes from the OS (getrusage of the child).

    python bench/memory.py [--sizes 100 1000]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from common import write_result

from spectral.stages.synth import SynthConfig, generate

SPECTRAL = [sys.executable, "-m", "spectral"]


def peak_rss_mb(cmd: list[str]) -> float:
    """Peak RSS of one child process tree (the largest of the process and its workers)."""
    code = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, capture_output=True); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", code, *cmd], check=True, capture_output=True, text=True).stdout
    return int(out.strip().splitlines()[-1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000])
    args = parser.parse_args()
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            events = Path(tmp) / f"events_{size}"
            generate(events, size, seed=0, cfg=SynthConfig(width=128, height=64, duration_s=2.0, fps=10), workers=2)
            rows[size] = {
                "decode_peak_rss_mb": round(peak_rss_mb([*SPECTRAL, "decode", str(events), f"{tmp}/dec_{size}",
                                                         "--params", "none"]), 1),
                "sensors_peak_rss_mb": round(peak_rss_mb([*SPECTRAL, "sensors", str(events),
                                                          f"{tmp}/sensors_{size}.parquet", "--params", "none"]), 1),
            }
    print(f"{'events':>7}{'decode MB':>11}{'sensors MB':>12}")
    for size, row in rows.items():
        print(f"{size:>7}{row['decode_peak_rss_mb']:>11.1f}{row['sensors_peak_rss_mb']:>12.1f}")
    write_result("memory", {"clips": "128x64, 2 s, 10 fps; 16 frames sampled", "sizes": rows})


if __name__ == "__main__":
    main()
