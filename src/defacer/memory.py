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
import ctypes.util
import platform

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
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _NEVER))
