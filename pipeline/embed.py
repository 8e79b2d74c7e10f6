"""DVC stage `embed`: decoded shards → frozen-backbone embedding shards (params: video.backbone/weights, embed.*).

`distributed.embed_processes` > 1 (or `auto`: one per GPU) runs the stage as that many torchrun
ranks on this machine, each on its own GPU; under an outer `torchrun` the script is one rank.
"""

import json
import sys
from pathlib import Path

import yaml

from spectral.deps import require_declared
from spectral.distributed import relaunch_under_torchrun, stage_ranks
from spectral.embed import EmbedConfig, run_embed
from spectral.lifecycle import end_with_children
from spectral.models.backbone import WEIGHTS_DIR, weights_file


def main() -> None:
    end_with_children()
    params = yaml.safe_load(Path("params.yaml").read_text(encoding="utf-8"))
    if weights_file(params["video"]["weights"]):
        require_declared(params["video"]["weights"], "video.weights", "embed", WEIGHTS_DIR)
    relaunch_under_torchrun(params["distributed"]["embed_processes"])
    config = EmbedConfig(backbone=params["video"]["backbone"], weights=params["video"]["weights"], **params["embed"])
    with stage_ranks(params["distributed"]["timeout_s"]) as ranks:
        result = run_embed(Path(sys.argv[1]), Path(sys.argv[2]), config, ranks)
    if not ranks.is_main:
        return
    print("embed:", json.dumps(result["throughput"]))
    # Throughput lives outside the cached outputs, which must stay byte-identical.
    Path("metrics").mkdir(exist_ok=True)
    throughput = {k: v for k, v in result["throughput"].items() if k != "config"}
    Path("metrics/embed.json").write_text(json.dumps(throughput, indent=2) + "\n")


if __name__ == "__main__":  # spawned worker processes re-import this file
    main()
