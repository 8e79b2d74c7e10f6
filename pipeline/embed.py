"""DVC stage `embed`: decoded shards → frozen-backbone embedding shards (params: video.backbone/weights, embed.*)."""

import json
import sys
from pathlib import Path

import yaml

from spectral.embed import EmbedConfig, run_embed


def main() -> None:
    params = yaml.safe_load(Path("params.yaml").read_text(encoding="utf-8"))
    config = EmbedConfig(backbone=params["video"]["backbone"], weights=params["video"]["weights"], **params["embed"])
    result = run_embed(Path(sys.argv[1]), Path(sys.argv[2]), config)
    print("embed:", json.dumps(result["throughput"]))
    # Throughput lives outside the cached outputs, which must stay byte-identical.
    Path("metrics").mkdir(exist_ok=True)
    throughput = {k: v for k, v in result["throughput"].items() if k != "config"}
    Path("metrics/embed.json").write_text(json.dumps(throughput, indent=2) + "\n")


if __name__ == "__main__":  # spawned worker processes re-import this file
    main()
