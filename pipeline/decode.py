"""DVC stage `decode`: event folders → WebDataset shards + report.json (params: splits, video.*, decode.*).

`distributed.decode_processes` > 1 runs the stage as that many torchrun ranks on this machine;
under an outer `torchrun` (several nodes) the script is one rank of that launch.
"""

import json
import sys
from pathlib import Path

from spectral.runtime.distributed import stage_ranks
from spectral.runtime.stage import rank_timeout, start_stage
from spectral.stages.decode import DecodeConfig, run_decode


def main() -> None:
    params = start_stage("decode_processes")
    with stage_ranks(rank_timeout(params)) as ranks:
        report = run_decode(Path(sys.argv[1]), Path(sys.argv[2]), DecodeConfig.from_params(params), ranks)
    if not ranks.is_main:
        return
    rate = report["inputs"] / max(report["seconds"], 1e-9)
    reuse = report["reuse"]
    print(f"decode: {report['accepted_count']} accepted, {report['rejected_count']} rejected "
          f"of {report['inputs']} in {report['seconds']} s ({rate:.1f} events/s, {report['processes']} process(es)); "
          f"{reuse['events_decoded']} decoded, {reuse['events_copied']} copied, {reuse['shards_kept']} shards kept, "
          f"{reuse['shards_written']} written, {reuse['shards_removed']} removed")
    for rejection in report["rejected"]:
        print(f"  rejected {rejection['reason']}")
    # Timing lives outside the cached outputs, which must stay byte-identical.
    Path("metrics").mkdir(exist_ok=True)
    timing = {key: report[key] for key in ("inputs", "accepted_count", "rejected_count", "per_split", "seconds",
                                           "processes", "reuse")}
    Path("metrics/decode.json").write_text(json.dumps({**timing, "events_per_s": round(rate, 2)}, indent=2) + "\n")


if __name__ == "__main__":  # spawned worker processes re-import this file
    main()
