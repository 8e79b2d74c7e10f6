"""DVC stage `ood`: the out-of-distribution evaluation set (params: ood.*), scored by the evaluate stage."""

import sys
from pathlib import Path

from spectral.runtime.stage import start_stage
from spectral.stages.ood import OodConfig, generate_ood


def main() -> None:
    config = OodConfig.from_params(start_stage())
    folders = generate_ood(Path(sys.argv[1]), config.events, config.seed)
    print(f"ood: wrote {len(folders)} events to {sys.argv[1]}")


if __name__ == "__main__":
    main()
