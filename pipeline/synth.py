"""DVC stage `synth`: write the demo event folders (params: synth.*)."""

import sys
from pathlib import Path

import yaml

from spectral.lifecycle import end_with_children
from spectral.synth import SynthConfig, generate


def main() -> None:
    end_with_children()
    params = yaml.safe_load(Path("params.yaml").read_text(encoding="utf-8"))["synth"]
    config = SynthConfig(fps=params["fps"], duration_s=params["duration_s"], width=params["width"],
                         height=params["height"], difficulty=params["difficulty"], label_noise=params["label_noise"])
    generate(Path(sys.argv[1]), params["events"], params["seed"], config, workers=params["workers"])


if __name__ == "__main__":  # spawned worker processes re-import this file
    main()
