"""The ``deface`` command's process keeps the memory it frees for its own reuse (glibc)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

#: Allocates and frees a 200 MB array and prints the resident MB before, with and after it.
PROBE = """
import sys
import numpy as np
if sys.argv[1] == "retain":
    from defacer.memory import retain_freed_memory
    assert retain_freed_memory()
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20
before = rss()
a = np.ones(50 * 2**20, dtype=np.float32)
held = rss()
del a
print(before, held, rss())
"""

glibc_only = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="retain_freed_memory acts on glibc's allocator only")


def _resident_mb(mode: str) -> tuple[float, float, float]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True).stdout
    before, held, after = (float(v) for v in out.split())
    return before, held, after


@glibc_only
def test_freed_memory_stays_in_the_process_when_retained():
    before, held, after = _resident_mb("retain")
    assert held - before > 150
    assert after - before > 150, "the freed 200 MB stay resident for reuse"


@glibc_only
def test_without_it_a_large_array_goes_back_to_the_system():
    before, held, after = _resident_mb("default")
    assert held - before > 150
    assert after - before < 50



#: Writes 200 MB from C's malloc (as onnxruntime's buffers are) and prints the MB of it in huge pages.
HUGE_PROBE = """
import ctypes, ctypes.util, sys
if sys.argv[1] == "huge":
    from defacer.memory import retain_freed_memory, use_huge_pages
    assert retain_freed_memory() and use_huge_pages()
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
size = 200 * 2**20
block = libc.malloc(size)
ctypes.memset(block, 1, size)
with open("/proc/self/smaps_rollup") as f:
    print(next(int(line.split()[1]) for line in f if line.startswith("AnonHugePages")) / 1024)
"""


def _huge_mb(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", HUGE_PROBE, mode], capture_output=True, text=True, check=True).stdout
    return float(out)


@glibc_only
def test_malloced_buffers_come_in_huge_pages():
    from defacer.memory import huge_pages_on_request

    if not huge_pages_on_request():
        pytest.skip("this kernel gives no transparent huge pages on request (or overcommit is strict)")
    assert _huge_mb("huge") > 150, "the 200 MB written after use_huge_pages sit in 2 MB pages"
    assert _huge_mb("default") < 50, "without it, malloc's memory comes in 4 kB pages"


def test_huge_pages_need_a_kernel_that_gives_them(tmp_path, monkeypatch):
    from defacer import memory

    switch = tmp_path / "enabled"
    switch.write_text("always madvise [never]\n")
    monkeypatch.setattr(memory, "THP_SWITCH", switch)
    assert not memory.huge_pages_on_request()
    assert not memory.use_huge_pages()
    switch.write_text("always [madvise] never\n")
    policy = tmp_path / "overcommit_memory"
    policy.write_text("2\n")
    monkeypatch.setattr(memory, "OVERCOMMIT_POLICY", policy)
    assert not memory.huge_pages_on_request(), "strict overcommit: a 1 GB reserve would count as used"
