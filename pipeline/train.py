"""DVC stage `train`: fit the fusion model on cached shards, export models/model.pt (params: train.*, video.weights)."""

import json
import sys
from pathlib import Path

from spectral.models.backbone import WEIGHTS_DIR, weights_file
from spectral.runtime.deps import require_declared
from spectral.runtime.stage import start_stage
from spectral.stages.train import TrainConfig, train


def main() -> None:
    config = TrainConfig.from_params(start_stage())
    if weights_file(config.weights):
        require_declared(config.weights, "video.weights", "train", WEIGHTS_DIR)
    summary = train(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), config)
    if summary is None:  # a DDP rank other than 0: rank 0 exports and reports
        return
    print(f"train: best {summary['monitor']} {summary['best_monitored']:.4f} after {summary['epochs_run']} epochs; "
          f"model {summary['model_bytes'] / 1e6:.1f} MB")
    # the checkpoint the model was exported from, as a DVC metric (DVCLive's last-epoch values are only curves)
    best = {key: round(value, 4) if isinstance(value, float) else value
            for key, value in summary["best_val_metrics"].items()}
    Path("metrics").mkdir(exist_ok=True)
    Path("metrics/train.json").write_text(json.dumps({"best": best, "epochs_run": summary["epochs_run"]},
                                                     indent=2) + "\n")


if __name__ == "__main__":  # spawned worker processes re-import this file
    main()
