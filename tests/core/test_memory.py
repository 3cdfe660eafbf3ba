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


@glibc_only
def test_it_starts_no_process_and_imports_no_library_search():
    """``ctypes.util.find_library("c")`` ran ``ldconfig -p`` in a child process at every start of ``defacer deface``
    (~10 ms) to name the C library the interpreter has already loaded."""
    code = ("import subprocess, sys\n"
            "def refuse(*args, **kwargs):\n"
            "    raise AssertionError('a process was started')\n"
            "subprocess.Popen = refuse\n"
            "from defacer.memory import retain_freed_memory\n"
            "assert retain_freed_memory()\n"
            "print('ctypes.util' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
