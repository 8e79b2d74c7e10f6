"""DVC stage `evaluate`: test-split metrics, calibration, OOD, modality ablation and plots."""

import sys
from pathlib import Path

from spectral.runtime.stage import start_stage
from spectral.stages.evaluate import evaluate, format_report


def main() -> None:
    params = start_stage()
    metrics = evaluate(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), Path("metrics/evaluate.json"),
                       Path("plots"), headline_path=Path("metrics/headline.json"), ood_dir=Path(sys.argv[4]),
                       card_path=Path("models/MODEL_CARD.md"), events_source=params["data"]["events"])
    print(format_report(metrics))


if __name__ == "__main__":  # spawned worker processes re-import this file
    main()
