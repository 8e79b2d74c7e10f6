"""Stage processes end together: a scheduler's SIGTERM, or a dead parent, ends every process a stage started.

Measured: SIGTERM to `dvc repro` kills DVC without signalling its stage, and a stage killed by
SIGTERM leaves its spawned decode/synth workers running, orphaned. Schedulers (SLURM, Kubernetes,
a user's `kill`) signal one process; so each stage process asks Linux to signal it when its parent
dies (`PR_SET_PDEATHSIG`), and on SIGTERM it terminates its own children before exiting. Worker
pools install the same parent-death signal, so even a SIGKILLed stage leaves no worker behind.
Half-written files are `.tmp` names that the next run removes.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1
_installed = False


def die_with_parent(signum: int = signal.SIGTERM) -> None:
    """Have the kernel send `signum` to this process when its parent exits (Linux; a no-op elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the request took effect
        os.kill(os.getpid(), signum)


def _terminate_children_and_exit(signum: int, frame) -> None:
    for child in multiprocessing.active_children():
        child.terminate()
    os._exit(128 + signum)  # no unwinding: a worker pool's shutdown would wait for the killed workers


def take_children_along() -> None:
    """Exit on SIGTERM terminating this process's worker processes first (a server's inference and HTTP
    processes, a stage's pool), so `kill` never leaves orphans behind."""
    signal.signal(signal.SIGTERM, _terminate_children_and_exit)


def end_with_children() -> None:
    """For a stage's main process: exit on SIGTERM taking its worker processes along, and get SIGTERM
    when the launching process (DVC, torchrun, a shell) dies."""
    global _installed
    take_children_along()
    die_with_parent()
    _installed = True


def reclaim_sigterm() -> None:
    """Put the stage's SIGTERM handler back where a library replaced it (a no-op outside a stage).

    Lightning installs its own when fit starts; under DDP it broadcasts from inside the handler,
    which can wait forever on a rank that is in an all-reduce. Exiting at once is safe: the other
    ranks get SIGTERM from their parent-death signal."""
    if _installed:
        signal.signal(signal.SIGTERM, _terminate_children_and_exit)
