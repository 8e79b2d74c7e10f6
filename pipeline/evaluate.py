"""DVC stage `evaluate`: test-split metrics, modality ablation and plots."""

import sys
from pathlib import Path

from spectral.evaluation import evaluate, format_report
from spectral.lifecycle import end_with_children


def main() -> None:
    end_with_children()
    metrics = evaluate(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), Path("metrics/evaluate.json"),
                       Path("plots"), headline_path=Path("metrics/headline.json"), ood_dir=Path(sys.argv[4]))
    print(format_report(metrics))


if __name__ == "__main__":  # spawned worker processes re-import this file
    main()
