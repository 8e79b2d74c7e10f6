"""Synth, decode, sensors and the OOD set give the committed bytes, whatever CPU kernels numpy and OpenBLAS pick.

The digests in golden_digests.json were made on one machine; this test recomputes them here,
also with numpy's SIMD dispatch narrowed to the x86-64-v2 baseline, OpenBLAS forced onto other
kernels and soxr's SIMD off, so bytes that depend on those choices fail on any machine (x264,
swscale in bit-exact mode and libsndfile cannot be narrowed from outside). `make golden` rewrites
the digests when a change is meant to alter these bytes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__

HERE = Path(__file__).parent
# every dispatched numpy target this CPU has (x86-64-v3/v4, AVX-512 groups): off, only the baseline runs
NARROWED_NUMPY = " ".join(t for t in __cpu_dispatch__ if __cpu_features__.get(t))
VARIANTS = {
    "default": {},
    "openblas-haswell": {"OPENBLAS_CORETYPE": "Haswell"},
    "baseline-only": {"NPY_DISABLE_CPU_FEATURES": NARROWED_NUMPY, "OPENBLAS_CORETYPE": "Prescott",
                      "SOXR_USE_SIMD": "0"},
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_outputs_match_the_committed_digests(variant, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "NPY_DISABLE_CPU_FEATURES",
                                                           "SOXR_USE_SIMD")}
    env.update(VARIANTS[variant])
    result = subprocess.run([sys.executable, str(HERE / "golden_run.py")], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    expected = json.loads((HERE / "golden_digests.json").read_text(encoding="utf-8"))
    actual = json.loads(result.stdout)
    changed = sorted(path for path in expected.keys() | actual.keys() if expected.get(path) != actual.get(path))
    assert not changed, (f"{variant}: bytes differ from tests/golden_digests.json for {changed}; if the change is "
                         f"meant to alter them, run `make golden` and say why in the commit")
