"""DVC stage `ood`: the out-of-distribution evaluation set (params: ood.*), scored by the evaluate stage."""

import sys
from pathlib import Path

import yaml

from spectral.lifecycle import end_with_children
from spectral.oodset import generate_ood


def main() -> None:
    end_with_children()
    params = yaml.safe_load(Path("params.yaml").read_text(encoding="utf-8"))["ood"]
    folders = generate_ood(Path(sys.argv[1]), params["events"], params["seed"])
    print(f"ood: wrote {len(folders)} events to {sys.argv[1]}")


if __name__ == "__main__":
    main()
