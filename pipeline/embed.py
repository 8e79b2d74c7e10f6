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


if __name__ == "__main__":  # spawned worker processes re-import this file
    main()
