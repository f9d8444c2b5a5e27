"""Where this process computes: its device and its threads.

Split out of :mod:`clinlm.llm.builders` (which turns params sections into library objects):
the device a process loads its model onto under a distributed launch, and the intra-op threads
it may use (its CPU affinity, not the machine's core count, split between local processes).
"""

from __future__ import annotations

import os
from typing import Any


def device() -> str:
    """``cuda`` when a GPU is visible, else ``cpu``."""
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def local_device() -> Any:
    """This process's device: ``cuda:<LOCAL_RANK>`` under a distributed launcher, else the one
    device (every rank must load its model onto its own GPU, never all onto GPU 0)."""
    import torch
    if not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))


def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity (``taskset``, cgroup cpusets), which
    ``os.cpu_count()`` ignores -- two threads pinned to one core run far slower than one."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def set_threads(n: int | None) -> None:
    """Use ``n`` intra-op threads (default: every usable core, split between local processes)."""
    import torch
    local = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    torch.set_num_threads(n or max(1, usable_cores() // local))
