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



#: Touches 200 MB ahead in another thread, then allocates a 150 MB array in this one and prints the page faults
#: this thread took for it (argv: "ahead" or "none").
TOUCH_PROBE = """
import resource, sys
import numpy as np
from defacer.memory import retain_freed_memory, touch_ahead
assert retain_freed_memory()
if sys.argv[1] == "ahead":
    thread = touch_ahead(200)
    assert thread is not None and thread.daemon
    thread.join()
def faults():
    return resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
before = faults()
a = np.ones(150 * 2**20 // 4, dtype=np.float32)
assert float(a[-1]) == 1.0
print(faults() - before)
"""


def _faults_for_an_array(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", TOUCH_PROBE, mode], capture_output=True, text=True, check=True).stdout
    return int(out.split()[-1])


@glibc_only
@pytest.mark.skipif(not hasattr(__import__("resource"), "RUSAGE_THREAD"), reason="per-thread page faults: Linux")
def test_memory_touched_ahead_serves_the_later_arrays_without_new_page_faults():
    # 150 MB of new pages: at least 75 faults of 2 MB (transparent huge pages), 38,400 of 4 kB; touched ahead by
    # another thread and kept in the heap, the array reuses them (a few faults for the heap's own bookkeeping)
    assert _faults_for_an_array("none") > 70
    assert _faults_for_an_array("ahead") < 20


def test_nothing_is_touched_ahead_without_the_retained_heap():
    code = "from defacer.memory import touch_ahead; print(touch_ahead(100))"  # retain_freed_memory not called
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "None"
