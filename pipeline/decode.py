"""DVC stage `decode`: event folders → WebDataset shards + report.json (params: splits, video.*, decode.*)."""

import json
import sys
from pathlib import Path

import yaml

from spectral.decode import DecodeConfig, run_decode


def main() -> None:
    params = yaml.safe_load(Path("params.yaml").read_text(encoding="utf-8"))
    video, decode = params["video"], params["decode"]
    config = DecodeConfig(num_frames=video["num_frames"], size=video["size"], interpolation=video["interpolation"],
                          splits=params["splits"], **decode)
    report = run_decode(Path(sys.argv[1]), Path(sys.argv[2]), config)
    rate = report["inputs"] / max(report["seconds"], 1e-9)
    reuse = report["reuse"]
    print(f"decode: {report['accepted_count']} accepted, {report['rejected_count']} rejected "
          f"of {report['inputs']} in {report['seconds']} s ({rate:.1f} events/s); "
          f"{reuse['events_decoded']} decoded, {reuse['events_copied']} copied, {reuse['shards_kept']} shards kept, "
          f"{reuse['shards_written']} written, {reuse['shards_removed']} removed")
    for rejection in report["rejected"]:
        print(f"  rejected {rejection['reason']}")
    # Timing lives outside the cached outputs, which must stay byte-identical.
    Path("metrics").mkdir(exist_ok=True)
    timing = {key: report[key] for key in ("inputs", "accepted_count", "rejected_count", "per_split", "seconds",
                                           "reuse")}
    Path("metrics/decode.json").write_text(json.dumps({**timing, "events_per_s": round(rate, 2)}, indent=2) + "\n")


if __name__ == "__main__":  # spawned worker processes re-import this file
    main()
