"""A small fixed synth -> decode -> sensors run and a short OOD set, digested file by file: the portable proof
of determinism.

`python tests/golden_run.py` prints the digests; `--update` rewrites tests/golden_digests.json
(run it, via `make golden`, when a change is meant to alter these bytes, and say why in the
commit). tests/test_golden.py runs this in subprocesses with the CPU features narrowed, so a
change that makes the bytes depend on the machine fails CI on any machine, not only on a
different one.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

from spectral.runtime.reuse import output_files
from spectral.stages.decode import DecodeConfig, run_decode
from spectral.stages.ood import VIDEO_SOURCES, write_ood_event
from spectral.stages.sensors import run_sensors
from spectral.stages.synth import SynthConfig, generate

DIGESTS = Path(__file__).with_name("golden_digests.json")
SYNTH = SynthConfig(fps=10, duration_s=2.0, width=128, height=64)
DECODE = DecodeConfig(num_frames=4, size=224, audio_seconds=5.0, workers=1, missing_modality="reject",
                      splits={"train": 0.5, "val": 0.25, "test": 0.25})
NAMES = ["event_2026.11.27_porão", "event_sala de estar", "event_a", "event_b"]


def make_inputs(root: Path) -> Path:
    """Four synthetic events under users' kind of names; one with 48 kHz stereo audio (exercises the resampler)."""
    events = root / "events"
    for folder, name in zip(generate(events, len(NAMES), seed=7, cfg=SYNTH), NAMES, strict=True):
        folder.rename(events / name)
    noise = np.random.default_rng(3).integers(-8000, 8000, size=(96_000, 2), dtype=np.int16)
    sf.write(events / "event_b" / "audio.wav", noise, 48_000, subtype="PCM_16")
    return events


def run(root: Path) -> dict[str, str]:
    """Digests of everything the run writes under root (paths given relative, as DVC stages give them)."""
    make_inputs(root)
    os.chdir(root)
    run_decode(Path("events"), Path("decoded"), DECODE)
    run_sensors(Path("events"), Path("sensors.parquet"), DECODE.splits)
    for index in range(len(VIDEO_SOURCES)):  # one event per video source: the photo crops and every lavfi one
        write_ood_event(Path("ood") / f"event_ood_{index:05d}", seed=0, index=index, seconds=0.5)
    files = output_files(root)
    return {p.relative_to(root).as_posix(): hashlib.sha256(_portable_bytes(p)).hexdigest() for p in files}


def _portable_bytes(path: Path) -> bytes:
    """The file's bytes; for the stage reports, without their reuse `index` and `key_parts`. They hold sha256
    keys of (stage code, config, library versions, input digests) — no float or CPU-dependent path — and the
    shards the index lists are digested here anyway; left in, any edit to what a stage's code does would move
    the golden digests even when its data does not change."""
    if not path.name.endswith("report.json"):
        return path.read_bytes()
    report = json.loads(path.read_text(encoding="utf-8"))
    report.pop("index")
    report.pop("key_parts")
    return json.dumps(report, ensure_ascii=False, sort_keys=True).encode("utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--update", action="store_true", help=f"write the digests to {DIGESTS}")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        digests = run(Path(tmp))
    text = json.dumps(digests, indent=2, ensure_ascii=False, sort_keys=True) + "\n"
    if args.update:
        DIGESTS.write_text(text, encoding="utf-8")
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
