"""One thread policy per process: torch intra-op threads x concurrent segmenters <= cores.

Two segmenters that each ask torch for every core spend much of their time spinning against
each other. ``apply_thread_policy`` is the one place that sets torch's thread count, from the
cores this process may use and how many segmenters run in it at once (the CLI runs one; the
flow's thread pool and each Dask worker run as many as they have threads).
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass

log = logging.getLogger(__name__)
_lock = threading.Lock()
_applied: ThreadPolicy | None = None


@dataclass(frozen=True)
class ThreadPolicy:
    """The thread split a process runs with."""

    cores: int            # CPU cores this process may use
    segmenters: int       # segmenters running at the same time in this process
    torch_threads: int    # torch intra-op threads, shared by all of them

    def line(self) -> str:
        plural = "s" if self.segmenters != 1 else ""
        return (f"{self.torch_threads} torch threads for {self.segmenters} concurrent segmenter{plural} "
                f"on {self.cores} cores")


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS tells, else all)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def plan_threads(segmenters: int = 1, cores: int | None = None) -> ThreadPolicy:
    """The split for ``segmenters`` at once on ``cores``: each gets cores // segmenters, at least 1."""
    cores = cores or available_cores()
    segmenters = max(1, segmenters)
    return ThreadPolicy(cores, segmenters, max(1, cores // segmenters))


def apply_thread_policy(segmenters: int = 1, cores: int | None = None) -> ThreadPolicy:
    """Set torch's intra-op threads for this process (a global in torch) and log the split once."""
    import torch

    global _applied
    policy = plan_threads(segmenters, cores)
    with _lock:
        if policy != _applied:
            torch.set_num_threads(policy.torch_threads)
            log.info("thread policy: %s", policy.line())
            _applied = policy
    return policy


def current_policy() -> ThreadPolicy | None:
    """The policy this process last applied, if any (what run summaries report)."""
    return _applied
