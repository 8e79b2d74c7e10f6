"""bench/serve.py at smoke size: the server process, every run of the benchmark and its verdicts on bad uploads."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


def test_serve_benchmark_runs_at_smoke_size(trained, tiny_events, tmp_path):
    out, _ = trained
    output = tmp_path / "serve.json"
    subprocess.run([sys.executable, str(REPO / "bench" / "serve.py"), "--model", str(out / "model.pt"),
                    "--demo-events", str(tiny_events), "--events", "4", "--requests", "6", "--levels", "1", "2",
                    "--soak", "10", "--mixed", "10", "--output", str(output)], check=True, capture_output=True,
                   cwd=REPO / "bench")
    result = json.loads(output.read_text())
    assert result["concurrency"]["1"]["errors_by_status"] == {} and result["concurrency"]["2"]["events_per_s"] > 0
    assert result["soak"]["requests"] == 10 and result["soak"]["files_left_in_upload_dir"] == 0
    mixed = result["mixed_20_percent_bad"]
    assert mixed["good_failed"] == 0 and mixed["every_bad_got_a_4xx_with_a_reason"] is True
