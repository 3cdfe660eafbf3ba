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
import threading

#: ``mallopt`` parameters of glibc's ``<malloc.h>``.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4

#: Trim threshold meaning "never give the heap's top back" (the largest value ``mallopt`` takes).
_NEVER = 2**31 - 1

#: The C library :func:`retain_freed_memory` set up (its ``malloc``, ``memset`` and ``free`` serve
#: :func:`touch_ahead`), or ``None`` before / where it did nothing.
_retained: ctypes.CDLL | None = None


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
    applied = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _NEVER))
    global _retained
    _retained = libc if applied else None
    return applied


def touch_ahead(megabytes: int) -> threading.Thread | None:
    """Have another thread touch ``megabytes`` of the heap now and free them, for this process's later arrays.

    After :func:`retain_freed_memory`: a block taken from the heap (in the calling thread, so from its
    allocator's main arena) is written once by a new thread and freed there; glibc keeps it in the heap, so
    the large arrays the run allocates afterwards (the scan, the network's activations) come from pages
    already touched instead of faulting in new ones one by one.  The writing runs outside Python's global
    lock (a ``ctypes`` call), so on a second core it costs the calling thread nothing: a command calls this
    before its imports (0.4-0.5 s of one core).  The block's contents are never read: what is later allocated
    there comes as heap memory always does (``malloc``: no promised contents; ``calloc``: cleared), so results do
    not change.  Give about what the run will allocate anyway (its peak minus the interpreter's): the peak then
    rises only by the heap's fragmentation (4-19 MB on real heads, docs/measurements.md).

    Returns
    -------
    threading.Thread or None
        The daemon thread doing it (joining it is optional: an exit does not wait for it), or ``None`` where
        :func:`retain_freed_memory` was not applied (the block would go back to the system when freed).
    """
    libc = _retained
    if libc is None or megabytes <= 0:
        return None
    malloc, memset, free = libc.malloc, libc.memset, libc.free
    malloc.argtypes, malloc.restype = [ctypes.c_size_t], ctypes.c_void_p
    memset.argtypes, memset.restype = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t], ctypes.c_void_p
    free.argtypes, free.restype = [ctypes.c_void_p], None
    size = int(megabytes) << 20
    block = malloc(size)
    if not block:
        return None

    def touch() -> None:
        try:
            memset(block, 0, size)
        finally:
            free(block)

    thread = threading.Thread(target=touch, name="defacer-touch-ahead", daemon=True)
    thread.start()
    return thread
