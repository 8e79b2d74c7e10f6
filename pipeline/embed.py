"""DVC stage `embed`: decoded shards → frozen-backbone embedding shards (params: video.backbone/weights, embed.*).

`distributed.embed_processes` > 1 (or `auto`: one per GPU) runs the stage as that many torchrun
ranks on this machine, each on its own GPU; under an outer `torchrun` the script is one rank.
"""

import json
import sys
from pathlib import Path

from spectral.models.backbone import WEIGHTS_DIR, weights_file
from spectral.runtime.deps import require_declared
from spectral.runtime.distributed import stage_ranks
from spectral.runtime.stage import rank_timeout, start_stage
from spectral.stages.embed import EmbedConfig, run_embed


def main() -> None:
    params = start_stage("embed_processes")
    config = EmbedConfig.from_params(params)
    if weights_file(config.weights):
        require_declared(config.weights, "video.weights", "embed", WEIGHTS_DIR)
    with stage_ranks(rank_timeout(params)) as ranks:
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
