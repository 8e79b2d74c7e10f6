"""DVC stage `decode`: event folders → WebDataset shards + report.json (params: splits, video.*, decode.*)."""

import sys
from pathlib import Path

import yaml

from spectral.decode import DecodeConfig, run_decode


def main() -> None:
    params = yaml.safe_load(Path("params.yaml").read_text(encoding="utf-8"))
    video, decode = params["video"], params["decode"]
    config = DecodeConfig(num_frames=video["num_frames"], size=video["size"], interpolation=video["interpolation"],
                          backend=decode["backend"], splits=params["splits"], maxcount=decode["maxcount"],
                          maxsize=decode["maxsize"], workers=decode["workers"], strict=decode["strict"])
    report = run_decode(Path(sys.argv[1]), Path(sys.argv[2]), config)
    rate = report["inputs"] / max(report["seconds"], 1e-9)
    print(f"decode: {report['accepted_count']} accepted, {report['rejected_count']} rejected "
          f"of {report['inputs']} in {report['seconds']} s ({rate:.1f} events/s)")
    for rejection in report["rejected"]:
        print(f"  rejected {rejection['reason']}")


if __name__ == "__main__":  # spawned worker processes re-import this file
    main()
