"""DVC stage `train`: fit the fusion model on cached shards, export models/model.pt (params: train.*)."""

import sys
from pathlib import Path

import yaml

from spectral.deps import require_declared
from spectral.lifecycle import end_with_children
from spectral.models.backbone import WEIGHTS_DIR, weights_file
from spectral.training import TrainConfig, train


def main() -> None:
    end_with_children()
    params = yaml.safe_load(Path("params.yaml").read_text(encoding="utf-8"))
    if weights_file(params["video"]["weights"]):
        require_declared(params["video"]["weights"], "video.weights", "train", WEIGHTS_DIR)
    summary = train(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), TrainConfig(**params["train"]),
                    weights=params["video"]["weights"])
    if summary is None:  # a DDP rank other than 0: rank 0 exports and reports
        return
    print(f"train: best {summary['monitor']} {summary['best_monitored']:.4f} after {summary['epochs_run']} epochs; "
          f"model {summary['model_bytes'] / 1e6:.1f} MB")


if __name__ == "__main__":  # spawned worker processes re-import this file
    main()
