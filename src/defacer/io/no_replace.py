"""Rename a file or folder onto a name only if that name is free, in one step: Linux's ``renameat2(RENAME_NOREPLACE)``.

The kernel checks the name and renames under one lock, so nothing created under it at any moment (another run writing
the same output, a copy) is replaced.  Not every file system takes the flag: FUSE file systems that do not implement
it (exfat-fuse, the tests' exFAT disk; the kernel's own exfat and vfat drivers take it), some network shares, and
systems other than Linux answer that it is not supported, and the caller falls back to what it did before
(:func:`defacer.io.atomic._rename_no_replace`: a hard link, or a look just before the rename).
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import sys
from collections.abc import Callable
from pathlib import Path

#: ``RENAME_NOREPLACE`` of ``<linux/fs.h>``.
RENAME_NOREPLACE = 1
#: ``AT_FDCWD``: paths relative to the current folder, as :func:`os.rename` takes them.
_AT_FDCWD = -100
#: The answers of a kernel or file system that does not take the flag (or the call): the caller falls back.  EPERM
#: too: a container's seccomp filter that does not know the call (older Docker profiles) answers it; a real lack of
#: permission then meets the fallback's own rename, which says so.
UNSUPPORTED = frozenset({errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EPERM})
#: ``SYS_renameat2`` where the C library has no ``renameat2`` (glibc before 2.28, some musl builds).
_SYSCALL_NUMBERS = {"x86_64": 316, "aarch64": 276, "arm64": 276, "riscv64": 276, "i686": 353, "i386": 353,
                    "ppc64le": 357, "s390x": 347}

_Call = Callable[[bytes, bytes], int]
_cached: list[_Call | None] = []


def _load() -> _Call | None:
    """``(old, new) -> 0 or -1`` (errno set) through the C library, or ``None`` where there is no such call."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    function = getattr(libc, "renameat2", None)
    if function is not None:
        function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        function.restype = ctypes.c_int
        return lambda old, new: int(function(_AT_FDCWD, old, _AT_FDCWD, new, RENAME_NOREPLACE))
    number = _SYSCALL_NUMBERS.get(platform.machine())
    syscall = getattr(libc, "syscall", None)
    if number is None or syscall is None:
        return None
    syscall.restype = ctypes.c_long
    return lambda old, new: int(syscall(ctypes.c_long(number), ctypes.c_int(_AT_FDCWD), ctypes.c_char_p(old),
                                        ctypes.c_int(_AT_FDCWD), ctypes.c_char_p(new),
                                        ctypes.c_uint(RENAME_NOREPLACE)))


def _call() -> _Call | None:
    if not _cached:
        _cached.append(_load())
    return _cached[0]


def rename_no_replace(source: Path, target: Path) -> bool:
    """Rename ``source`` (a file or a folder) to ``target`` unless ``target`` exists, checked and done in one step.

    Returns
    -------
    bool
        ``True`` when renamed; ``False`` when this system or file system does not take the call (nothing was done:
        the caller falls back).

    Raises
    ------
    FileExistsError
        When ``target`` exists (a file, a folder, empty or not, or a link): nothing was renamed.
    OSError
        Any other refusal (a full disk, no permission...), as :func:`os.rename` raises it.
    """
    call = _call()
    if call is None:
        return False
    if call(os.fsencode(source), os.fsencode(target)) == 0:
        return True
    code = ctypes.get_errno()
    if code in UNSUPPORTED:
        return False
    if code == errno.EEXIST:
        raise FileExistsError(code, os.strerror(code), str(source), None, str(target))
    raise OSError(code, os.strerror(code), str(source), None, str(target))
