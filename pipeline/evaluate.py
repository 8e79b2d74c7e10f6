"""DVC stage `evaluate`: test-split metrics, modality ablation and plots."""

import sys
from pathlib import Path

from spectral.evaluation import evaluate


def main() -> None:
    metrics = evaluate(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), Path("metrics/evaluate.json"),
                       Path("plots"))
    print(f"evaluate: test accuracy {metrics['accuracy']:.3f}, macro-F1 {metrics['macro_f1']:.3f}, "
          f"ECE {metrics['ece']:.3f} on {metrics['test_events']} events")
    for name, row in metrics["ablation"].items():
        print(f"  {name:<16} accuracy {row['accuracy']:.3f}  macro-F1 {row['macro_f1']:.3f}")


if __name__ == "__main__":  # spawned worker processes re-import this file
    main()
