"""DVC stage `synth`: write the demo event folders (params: synth.*)."""

import sys
from pathlib import Path

from spectral.runtime.stage import start_stage
from spectral.stages.synth import SynthStageConfig, run_synth


def main() -> None:
    folders = run_synth(Path(sys.argv[1]), SynthStageConfig.from_params(start_stage()))
    print(f"synth: wrote {len(folders)} events to {sys.argv[1]}")


if __name__ == "__main__":  # spawned worker processes re-import this file
    main()
