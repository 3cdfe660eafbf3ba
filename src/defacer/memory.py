"""Keep the memory a run frees for the run's own reuse, instead of handing it back to the system at once.

On virtual machines whose host takes freed guest memory back within a second (free page reporting or a
balloon, as on Firecracker micro-VMs), the first touch of every page the process gets anew costs a fault on
the host: measured 3-5 ms per MB on the project's 2-core development VM, more than the arithmetic done on the
page.  One defacing run allocates and frees several full-size arrays one after another (the image, the
network's activations, masks, the output's stored values); glibc serves each array above 32 MB with its own
``mmap`` and returns it with ``munmap`` when freed, so the next array touches new pages again.

:func:`retain_freed_memory` asks glibc (``mallopt``) to serve large arrays from its heap and never trim it,
so the pages one stage frees are the pages the next stage reuses.  Peak memory is unchanged (the same
arrays are alive at the peak); the process just keeps its peak until it exits, which suits a command that
defaces one scan and ends (``defacer deface``).  It is not applied to long-running servers.  On other C
libraries and systems it does nothing.
"""

from __future__ import annotations

import ctypes
import os
import sys

#: ``mallopt`` parameters of glibc's ``<malloc.h>``.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4

#: Trim threshold meaning "never give the heap's top back" (the largest value ``mallopt`` takes).
_NEVER = 2**31 - 1


def retain_freed_memory() -> bool:
    """Keep freed memory in this process for reuse (glibc only); return whether it was applied.

    Call it once, early, in a process that does one bounded job.  Large allocations then come from
    the heap (``M_MMAP_MAX`` 0) and the heap is never trimmed (``M_TRIM_THRESHOLD`` maximal).
    """
    if not sys.platform.startswith("linux") or not _glibc():
        return False
    try:
        # the C library the interpreter is linked with, as loaded: ctypes.util.find_library("c") ran
        # ``ldconfig -p`` in a child process at every start of the command (~10 ms) to name the same library
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _NEVER))


def _glibc() -> bool:
    """Whether this process runs on glibc (its ``confstr``, as :func:`platform.libc_ver` asks first)."""
    try:
        return (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc ")
    except (ValueError, OSError):  # no such name on this system (musl, macOS)
        return False
