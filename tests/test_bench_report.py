"""bench/README.md is what bench/report.py writes from bench/results/*.json: no number there drifts from its JSON."""

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


def test_bench_readme_is_generated_from_the_results():
    result = subprocess.run([sys.executable, str(BENCH / "report.py"), "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_changed_number_makes_the_check_fail(tmp_path):
    """The check is not vacuous: a README whose number differs from its JSON fails it."""
    copy = tmp_path / "bench"
    subprocess.run(["cp", "-r", str(BENCH), str(copy)], check=True)
    readme = copy / "README.md"
    text = readme.read_text(encoding="utf-8")
    readme.write_text(text.replace("| 0.9388 / 0.9369 |", "| 0.9400 / 0.9369 |", 1), encoding="utf-8")
    result = subprocess.run([sys.executable, str(copy / "report.py"), "--check"], capture_output=True, text=True)
    assert result.returncode == 1 and "differs" in result.stderr
