"""DVC stage `sensors`: event folders → sensor feature Parquet + report (params: splits, sensors.*)."""

import sys
from dataclasses import asdict
from pathlib import Path

from spectral.runtime.stage import start_stage
from spectral.stages.sensors import SensorsConfig, run_sensors


def main() -> None:
    config = SensorsConfig.from_params(start_stage())
    report = run_sensors(Path(sys.argv[1]), Path(sys.argv[2]), **asdict(config))
    print(f"sensors: {report['accepted_count']} accepted ({report['reused']} with features reused), "
          f"{report['rejected_count']} rejected of {report['inputs']}")
    for rejection in report["rejected"]:
        print(f"  rejected {rejection['reason']}")


if __name__ == "__main__":  # spawned worker processes re-import this file
    main()
