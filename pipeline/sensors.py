"""DVC stage `sensors`: event folders → sensor feature Parquet + report (params: splits, sensors.*)."""

import sys
from pathlib import Path

import yaml

from spectral.features.table import run_sensors
from spectral.lifecycle import end_with_children


def main() -> None:
    end_with_children()
    params = yaml.safe_load(Path("params.yaml").read_text(encoding="utf-8"))
    sensors = params["sensors"]
    report = run_sensors(Path(sys.argv[1]), Path(sys.argv[2]), params["splits"], strict=sensors["strict"],
                         max_rejected_fraction=sensors["max_rejected_fraction"],
                         missing_modality=params["missing_modality"],
                         links_outside_events=params["links_outside_events"])
    print(f"sensors: {report['accepted_count']} accepted ({report['reused']} with features reused), "
          f"{report['rejected_count']} rejected of {report['inputs']}")
    for rejection in report["rejected"]:
        print(f"  rejected {rejection['reason']}")


if __name__ == "__main__":  # spawned worker processes re-import this file
    main()
