"""bench/faults.py at smoke size: a real DVC project, real damage, graded against a clean run's bytes."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


def test_fault_matrix_runs_and_finds_no_silent_loss_at_smoke_size(tmp_path):
    output = tmp_path / "faults.json"
    result = subprocess.run([sys.executable, str(REPO / "bench" / "faults.py"), "--events", "8", "--kills", "0",
                             "--timeout", "300", "--output", str(output), "--only", "embed shard truncated", "FIFO"],
                            cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = {row["fault"]: row["grade"] for row in json.loads(output.read_text())["rows"]}
    assert rows == {"embed shard truncated": "repaired", "FIFO as video.mp4": "handled"}
