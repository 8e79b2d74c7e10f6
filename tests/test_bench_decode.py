"""bench/decode.py at smoke size: every row of the decode benchmark runs and its ratios are computed."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


def test_decode_benchmark_runs_at_smoke_size(tmp_path):
    output = tmp_path / "decode.json"
    subprocess.run([sys.executable, str(REPO / "bench" / "decode.py"), "--events", "2", "--sets", "phone640",
                    "--seconds", "1", "--spec-clips", "1", "--profile", "--output", str(output)], check=True,
                   capture_output=True, cwd=REPO / "bench")
    result = json.loads(output.read_text())
    clips = result["sets"]["phone 640x480, 1 s GOP"]
    assert clips["clips"] == 2 and clips["frames_per_clip"] == 30 and clips["pyav_full_decode"]["frames_per_s"] > 0
    for frames in ("150", "16"):
        runs = clips["sampled"][frames]
        assert runs["stage, 1 worker(s)"]["ratio_vs_full_decode"] > 0 and runs["workers_1_to_2"] > 0
        assert runs["`spectral decode`, 2 worker(s), startup included"]["seconds"] > 0
    profile = result["profile_ms_per_sampled_frame"]["phone 640x480, 1 s GOP"]["16"]
    encode = profile["lossless H.264 encode of the 224x224 4:2:0 frames"]
    assert profile["the whole stage (1 worker, startup excluded)"] > encode > 0
