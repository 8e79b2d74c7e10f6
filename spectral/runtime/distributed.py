"""Stages across processes, GPUs and nodes, on torch.distributed as launched by torchrun.

A stage run under `torchrun` (or re-launched under it by `relaunch_under_torchrun` when a
`distributed.*_processes` param asks for more than one process) sees RANK/WORLD_SIZE in its
environment. Every rank plans the same work from the same inputs, takes whole output shards
(`assign_by_size`), writes them under temporary names and renames them; rank 0 alone writes the
index and deletes stale files, after the others have reported what they wrote. Since a shard's
bytes depend only on its members, the outputs are byte-identical whatever the world size.

The process group only carries small Python objects (gathers of index entries), so it is gloo
on every machine: GPU ranks need no NCCL for it, and CPU-only tests run the same code.
torch is imported only where a process group is used: spawned decode workers import this
module's callers and must stay light.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

DEFAULT_TIMEOUT_S = 24 * 3600  # a barrier waits for the slowest rank, however long its share takes


@dataclass(frozen=True)
class Ranks:
    """This process's place among the stage's processes."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def gather(self, value: Any) -> list[Any]:
        """Every rank's `value`, in rank order, on every rank (also a barrier)."""
        if self.world_size == 1:
            return [value]
        import torch.distributed as dist

        values: list[Any] = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values

    def broadcast(self, value: Any) -> Any:
        """Rank 0's `value` on every rank: one view of inputs that may change while ranks look at them."""
        if self.world_size == 1:
            return value
        import torch.distributed as dist

        box = [value if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier()

    def label(self, text: str) -> str:
        """`text [rank r/n]` when there are several ranks: what progress bars and logs say."""
        return text if self.world_size == 1 else f"{text} [rank {self.rank}/{self.world_size}]"


SINGLE_PROCESS = Ranks()


def environment_ranks() -> Ranks:
    """The ranks torchrun (or SLURM through torchrun) put in the environment; one process without it."""
    return Ranks(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                 int(os.environ.get("LOCAL_RANK", 0)))


@contextmanager
def stage_ranks(timeout_s: float = DEFAULT_TIMEOUT_S) -> Iterator[Ranks]:
    """Join the launcher's process group for the duration of a stage (nothing to join for one process)."""
    import torch.distributed as dist

    ranks = environment_ranks()
    joined = ranks.world_size > 1 and not dist.is_initialized()
    if joined:
        dist.init_process_group("gloo", timeout=timedelta(seconds=timeout_s))
    try:
        yield ranks
    finally:
        if joined:
            dist.destroy_process_group()


def assign_by_size(sizes: list[int], world_size: int) -> list[int]:
    """The rank that makes each item (a whole shard): largest first to the least loaded rank, ties to the
    lowest rank. Deterministic, so every rank computes the same assignment without talking."""
    loads = [0] * world_size
    owners = [0] * len(sizes)
    for index in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        owner = min(range(world_size), key=lambda r: (loads[r], r))
        owners[index] = owner
        loads[owner] += sizes[index]
    return owners


def resolve_processes(processes: int | str) -> int:
    """`auto`: one process per visible GPU (one on a CPU-only machine)."""
    if processes == "auto":
        import torch

        return max(1, torch.cuda.device_count())
    if int(processes) < 1:
        raise ValueError(f"a stage needs at least one process, got {processes}")
    return int(processes)


def relaunch_under_torchrun(processes: int | str) -> None:
    """Replace this process by `torchrun --standalone --nproc-per-node N <this script and args>` when more
    than one process is asked for and this is not already a rank. exec keeps the process id, so DVC
    waits on torchrun, whose elastic agent forwards signals to the ranks and ends them all if one fails.
    """
    count = resolve_processes(processes)
    if count == 1 or "WORLD_SIZE" in os.environ:
        return
    os.execv(sys.executable, [sys.executable, "-m", "torch.distributed.run", "--standalone",
                              f"--nproc-per-node={count}", *sys.argv])
