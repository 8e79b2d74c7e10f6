"""What every DVC stage script does before its one library call: one bootstrap instead of one per script."""

from __future__ import annotations

import logging
import sys

from spectral.runtime.distributed import DEFAULT_TIMEOUT_S, relaunch_under_torchrun
from spectral.runtime.lifecycle import end_with_children
from spectral.runtime.params import load_params


def configure_logging() -> None:
    """INFO and above to stderr, where `dvc repro` shows it (the weights used, the post-hoc fit, summaries)."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")


def start_stage(processes_param: str | None = None) -> dict:
    """Children end with the stage (SIGTERM from DVC), logging goes to stderr, params.yaml is read and checked;
    `processes_param` (a key of `distributed`) > 1 re-executes the script as that many torchrun ranks."""
    end_with_children()
    configure_logging()
    params = load_params()
    if processes_param is not None:
        relaunch_under_torchrun(params.get("distributed", {}).get(processes_param, 1))
    return params


def rank_timeout(params: dict) -> float:
    """How long a rank waits at a barrier for the slowest one (distributed.timeout_s)."""
    return float(params.get("distributed", {}).get("timeout_s", DEFAULT_TIMEOUT_S))
