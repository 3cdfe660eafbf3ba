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
from pathlib import Path

#: ``mallopt`` parameters of glibc's ``<malloc.h>``.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4

#: ``madvise`` advice asking for transparent huge pages (``<sys/mman.h>``, Linux).
_MADV_HUGEPAGE = 14
#: Size of a transparent huge page on x86-64 and most arm64 kernels.
_HUGE_PAGE = 2 * 2**20
#: Heap reserved ahead for huge pages: above the peak of one 1 mm 256^3 head (about 450 MB).
DEFAULT_RESERVE = 1024 * 2**20
#: The kernel's switch for transparent huge pages (``[always] madvise never`` style).
THP_SWITCH = Path("/sys/kernel/mm/transparent_hugepage/enabled")
#: The kernel's overcommit policy: 2 means every reserved byte counts against a hard limit at once.
OVERCOMMIT_POLICY = Path("/proc/sys/vm/overcommit_memory")

#: Trim threshold meaning "never give the heap's top back" (the largest value ``mallopt`` takes).
_NEVER = 2**31 - 1


def _glibc() -> ctypes.CDLL | None:
    """glibc, or None on other C libraries and systems."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name)
    except OSError:
        return None


def retain_freed_memory() -> bool:
    """Keep freed memory in this process for reuse (glibc only); return whether it was applied.

    Call it once, early, in a process that does one bounded job.  Large allocations then come from
    the heap (``M_MMAP_MAX`` 0) and the heap is never trimmed (``M_TRIM_THRESHOLD`` maximal).
    """
    libc = _glibc()
    if libc is None:
        return False
    mallopt = libc.mallopt
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _NEVER))


def _heap_range() -> tuple[int, int] | None:
    """Start and end address of this process's ``[heap]`` mapping (``/proc/self/maps``)."""
    try:
        lines = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.rstrip().endswith("[heap]"):
            start, end = line.split()[0].split("-")
            return int(start, 16), int(end, 16)
    return None


def huge_pages_on_request() -> bool:
    """Whether the kernel gives transparent huge pages to memory that asks (``madvise`` or ``always``) and a
    reserve of address space costs nothing until touched (overcommit policy not 2, "never")."""
    try:
        switch = THP_SWITCH.read_text()
        policy = OVERCOMMIT_POLICY.read_text().strip()
    except OSError:
        return False
    return ("[madvise]" in switch or "[always]" in switch) and policy != "2"


def use_huge_pages(reserve: int = DEFAULT_RESERVE) -> bool:
    """Reserve ``reserve`` bytes of heap and ask for transparent huge pages on it; return whether it was applied.

    Call it after :func:`retain_freed_memory` (large allocations then come from the heap and the heap
    is never trimmed, so the reserve stays).  Only address space is reserved: pages are faulted in, 2 MB
    at a time, when first written.  Does nothing where the kernel has huge pages off or counts reserved
    address space as used (strict overcommit), or off glibc.
    """
    libc = _glibc()
    if libc is None or not huge_pages_on_request():
        return False
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    libc.madvise.restype = ctypes.c_int
    block = libc.malloc(reserve)  # grows the heap by about ``reserve``; freed into the never-trimmed top
    if not block:
        return False
    libc.free(block)
    heap = _heap_range()
    if heap is None:
        return False
    start = -(-heap[0] // _HUGE_PAGE) * _HUGE_PAGE
    return heap[1] > start and libc.madvise(start, heap[1] - start, _MADV_HUGEPAGE) == 0
