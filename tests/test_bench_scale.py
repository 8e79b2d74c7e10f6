"""bench/scale.py at smoke size: the measurement paths run (stages in their own processes, RSS sampling,
the incremental re-runs and a real `dvc push` to a local remote; training time is left to the real run)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


def test_scale_benchmark_runs_end_to_end_at_smoke_size(tmp_path):
    output = tmp_path / "scale.json"
    subprocess.run([sys.executable, str(REPO / "bench" / "scale.py"), "--sizes", "20", "--frames", "2",
                    "--embed-max", "20", "--train-max", "0", "--incremental-n", "20", "--synth", "128x48x1",
                    "--workers", "1", "--workdir", str(tmp_path / "work"), "--output", str(output)], check=True,
                   cwd=REPO)
    result = json.loads(output.read_text())
    (row,) = result["rows"]
    assert row["events"] == 20 and row["decode"]["events_decoded"] == 20 and row["decode"]["peak_rss_mib"] > 50
    assert row["baselines"]["npy_shard_bytes_per_event"] > 0
    assert row["embed"]["shards_written"] == row["decode"]["shards_written"]
    unchanged = result["incremental"]["unchanged"]  # verification alone: nothing decoded, nothing new to push
    assert unchanged["decode"]["events_decoded"] == 0 and unchanged["decode"]["recomputed"] == {}
    assert unchanged["sensors"]["recomputed"] == {} and unchanged["dvc_push_bytes"] == 0
    stamped = result["incremental"]["time_stamped"]
    assert stamped["decode"]["events_decoded"] == 1 and stamped["embed"]["shards_written"] <= 3
    assert 0 < stamped["dvc_push_bytes"] < result["incremental"]["full_push_bytes"]
    assert result["incremental"]["random_names"]["decode"]["events_decoded"] == 1
    assert output.with_suffix(".png").stat().st_size > 10_000
