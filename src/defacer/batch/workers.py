"""How many worker processes a run may start: at least one, at most the CPU cores this process may use.

Defacing is CPU-bound and every worker loads its own detector (about 0.4 GB of memory), so workers beyond the cores
add memory and no speed; ``--jobs 100000`` would otherwise try to start a process per scan.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the system has one), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def cap_jobs(jobs: int, option: str = "--jobs") -> int:
    """``jobs``, or :func:`usable_cores` with a warning when it asks for more.

    Parameters
    ----------
    jobs : int
        Worker processes asked for (at least 1; the caller refuses less).
    option : str
        How the request is named in the warning.

    Returns
    -------
    int
        Worker processes to start, between 1 and the usable cores.
    """
    cores = usable_cores()
    if jobs <= cores:
        return jobs
    log.warning("%s %d asks for more worker processes than the %d CPU core(s) this machine lets defacer use: "
                "running %d (more would only add memory, not speed).",
                option, jobs, cores, cores)
    return cores
