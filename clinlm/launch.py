"""Process layout of a run: one process, or several under ``torchrun`` (one or many machines).

A run's layout is params (``models.<m>.launch``). A train or predict stage that needs more
than one process re-executes itself under ``python -m torch.distributed.run`` (torchrun) with
that layout, so ``dvc repro`` and ``dvc exp run -S models.<m>.launch.num_processes=8`` need no
other command. Under the launcher every process runs the same stage: the Trainer shards the
training rows (every row once per epoch), prediction shards the test rows
(:func:`shard_and_gather`), and only the main process (rank 0) writes files.

``accelerate launch --cpu --num_processes 2`` starts ONE process on a CPU-only machine
(accelerate needs an MPI hostfile for multi-process CPU); torchrun with the gloo backend does
start them, which is what the tests use.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any

log = logging.getLogger(__name__)


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", 1))


def rank() -> int:
    return int(os.environ.get("RANK", 0))


def is_main_process() -> bool:
    """Rank 0, or a plain single process: the one that writes files."""
    return rank() == 0


def torchrun_command(module: str, argv: Sequence[str], launch: dict[str, Any]) -> list[str]:
    """``python -m torch.distributed.run ... -m <module> <argv>`` for a launch section."""
    return [sys.executable, "-m", "torch.distributed.run",
            f"--nproc-per-node={launch['num_processes']}", f"--nnodes={launch['num_machines']}",
            f"--node-rank={launch['machine_rank']}",
            f"--master-addr={launch['main_process_ip'] or '127.0.0.1'}",
            f"--master-port={launch['main_process_port']}",
            "-m", module, *argv]


def relaunch_if_needed(module: str, argv: Sequence[str], launch: dict[str, Any] | None) -> None:
    """Re-execute ``python -m <module> <argv>`` under torchrun when ``launch`` asks for more
    than one process and this process was not started by a launcher; exits with its status."""
    if not launch or launch["num_processes"] * launch["num_machines"] <= 1:
        return
    if "LOCAL_RANK" in os.environ:  # already one of the launched processes
        return
    cmd = torchrun_command(module, argv, launch)
    log.info("launching %d x %d processes: %s", launch["num_machines"], launch["num_processes"],
             " ".join(cmd))
    raise SystemExit(subprocess.call(cmd))


def init_process_group() -> None:
    """Join the launcher's process group (gloo on CPU, nccl on GPUs) if not joined yet."""
    import torch
    import torch.distributed as dist
    if world_size() > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")


def gather_object(obj: Any) -> list[Any]:
    """Every process's ``obj``, in rank order (``[obj]`` in a single process)."""
    if world_size() == 1:
        return [obj]
    import torch.distributed as dist
    init_process_group()
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def shard_and_gather(df: Any, fn: Callable[[Any], Any]) -> Any:
    """Apply ``fn`` to this process's rows of ``df`` (rows ``rank::world``) and return the
    results of all processes put back in ``df``'s row order (every process gets them all).

    ``fn`` maps a DataFrame to a DataFrame with one row per input row, in input order.
    """
    import numpy as np
    import pandas as pd
    n = world_size()
    if n == 1:
        return fn(df)
    part = df.iloc[rank()::n]
    out = fn(part.reset_index(drop=True))
    parts = gather_object((list(range(rank(), len(df), n)), out))
    positions = np.array([i for pos, _ in parts for i in pos])
    merged = pd.concat([o for _, o in parts], ignore_index=True)
    return merged.iloc[np.argsort(positions, kind="stable")].reset_index(drop=True)
