"""Ctrl-C (or SIGTERM) in the first moments of ``defacer ...``: one line, exit status 130, no traceback.

Before (SPEED20): the console script's entry point was ``defacer.cli.main:run``, so the script pip writes
imported ``defacer.cli.main`` (argparse, logging, defacer's error module) before any handling: a real Ctrl-C
in the command's first ~60 ms printed a traceback ending in ``KeyboardInterrupt``.  Now the entry point is
:mod:`defacer.cli.entry`, which imports nothing of the command before its handler.

The child is the console script as pip writes it from ``[project.scripts]`` in pyproject.toml, with an import
hook that sends its own process a real signal when a chosen module starts to be imported: deterministic,
where a timer would land anywhere.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from defacer.cli.main import COMMAND_MODULES
from defacer.phantom import make_phantom, save_phantom

REPO = Path(__file__).resolve().parents[2]


def entry_point() -> tuple[str, str]:
    """The ``defacer`` console script's module and function, as pyproject.toml declares them."""
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]
    module, function = scripts["defacer"].split(":")
    return module, function


#: pip's console script (``import re``, ``import sys``, ``from MODULE import FUNCTION``, ``sys.exit(FUNCTION())``),
#: after an import hook that signals this process when the module named in argv[1] is first imported.
CHILD = """
import os, signal, sys, weakref
at, signal_name, module, function = sys.argv[1:5]
del sys.argv[1:5]

def in_a_callback(_):  # as a module lock's weak reference callback: the interrupt is raised in here
    os.kill(os.getpid(), getattr(signal, signal_name.removeprefix("callback-")))
    for _ in range(10000):
        pass

class SignalAt:
    def find_spec(self, name, path=None, target=None):
        if name == at:
            sys.meta_path.remove(self)
            if signal_name.startswith("converted-"):  # as numpy's C code turns it into an ImportError
                try:
                    os.kill(os.getpid(), getattr(signal, signal_name.removeprefix("converted-")))
                    for _ in range(10000):
                        pass
                except KeyboardInterrupt:
                    raise ImportError('PyCapsule_Import could not import module "datetime"') from None
            elif signal_name.startswith("callback-"):
                referent = SignalAt()
                reference = weakref.ref(referent, in_a_callback)
                del referent
            else:
                os.kill(os.getpid(), getattr(signal, signal_name))  # raised at the import machinery's next bytecode
        return None

sys.meta_path.insert(0, SignalAt())
import re
entry = getattr(__import__(module, fromlist=[function]), function)
if __name__ == '__main__':
    sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0])
    sys.exit(entry())
"""

#: Modules the command imports on its way to defacing, first to last: the command line's own (argparse,
#: logging, defacer's errors), the numerical libraries, and the deface pipeline.
ALONG_THE_START = ("argparse", "logging", "defacer.errors", "defacer.cli.options", "numpy", "nibabel",
                   "scipy.ndimage", "defacer.route")


@pytest.fixture(scope="module")
def scan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("interrupt_at_start")
    save_phantom(make_phantom(4.0), folder / "in.nii.gz", folder / "in.labels.nii.gz")
    return folder / "in.nii.gz"


def _run(at: str, signal_name: str, *args: str) -> subprocess.CompletedProcess[str]:
    module, function = entry_point()
    return subprocess.run([sys.executable, "-c", CHILD, at, signal_name, module, function, *args],
                          capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.parametrize("at", ALONG_THE_START)
def test_ctrl_c_while_the_command_imports_its_modules_is_one_line_and_status_130(tmp_path: Path, scan: Path,
                                                                                 at: str) -> None:
    out = tmp_path / "out" / "d.nii.gz"
    result = _run(at, "SIGINT", "deface", str(scan), str(out))
    assert "Traceback" not in result.stderr and "KeyboardInterrupt" not in result.stderr, result.stderr
    assert result.returncode == 130, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("defacer") and "interrupted" in lines[0], result.stderr
    assert not out.parent.exists()  # nothing written, not even the output's folder


@pytest.mark.parametrize("at", ["argparse", "numpy"])
def test_sigterm_while_the_command_imports_its_modules_is_an_interrupt_too(tmp_path: Path, scan: Path,
                                                                           at: str) -> None:
    """``timeout``, ``scancel``, ``docker stop``: the same one line, naming the signal."""
    result = _run(at, "SIGTERM", "deface", str(scan), str(tmp_path / "d.nii.gz"))
    assert result.returncode == 130, result.stderr
    assert result.stderr.strip() == "defacer: interrupted by SIGTERM while starting; nothing was written."
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGTERM"])
def test_an_interrupt_raised_in_a_callback_is_not_swallowed(tmp_path: Path, scan: Path, signal_name: str) -> None:
    """Python ignores an exception raised in a weak reference's callback: a Ctrl-C landing in the import
    machinery's module-lock callback printed "Exception ignored in: <function _get_module_lock.<locals>.cb ...>",
    "KeyboardInterrupt", and the command went on and wrote its output (seen 56 ms after the start)."""
    out = tmp_path / "d.nii.gz"
    result = _run("numpy", f"callback-{signal_name}", "deface", str(scan), str(out))
    assert "Exception ignored" not in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 130, result.stderr
    by = " by SIGTERM" if signal_name == "SIGTERM" else ""
    assert result.stderr.strip() == f"defacer: interrupted{by} while starting; nothing was written."
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("at", ["numpy", "scipy.ndimage"])
def test_an_interrupt_turned_into_an_import_error_is_still_an_interrupt(tmp_path: Path, scan: Path, at: str) -> None:
    """A Ctrl-C landing while numpy's C code imports ``datetime`` came out as 'ImportError: PyCapsule_Import could
    not import module "datetime"' and 'Importing the numpy C-extensions failed ... bad install': a traceback blaming
    the installation (seen once in this file's callback test)."""
    result = _run(at, "converted-SIGINT", "deface", str(scan), str(tmp_path / "d.nii.gz"))
    assert "Traceback" not in result.stderr and "ImportError" not in result.stderr, result.stderr
    assert result.returncode == 130, result.stderr
    assert result.stderr.strip() == "defacer: interrupted while starting; nothing was written."
    assert os.listdir(tmp_path) == []


def test_an_import_error_without_an_interrupt_is_not_called_one(tmp_path: Path, scan: Path) -> None:
    code = ("import sys; sys.modules['nibabel'] = None; from defacer.cli.entry import run; "
            "run(['deface', sys.argv[1], sys.argv[2]])")
    result = subprocess.run([sys.executable, "-c", code, str(scan), str(tmp_path / "d.nii.gz")],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode != 130 and "interrupted" not in result.stderr, result.stderr
    assert "nibabel" in result.stderr


def test_the_entry_module_imports_nothing_of_the_command_before_its_handler() -> None:
    module, _ = entry_point()
    code = (f"import re, sys; before = set(sys.modules); import {module}; "
            "print(' '.join(sorted(set(sys.modules) - before)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    imported = set(result.stdout.split())
    assert {name for name in imported if name.startswith("defacer")} == {
        "defacer", "defacer._lazy", "defacer._version", "defacer.cli", module}, imported
    assert not imported & {"typing", "argparse", "logging", "numpy", "ctypes", "tempfile"}, imported
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # this test process: untouched


@pytest.mark.parametrize("command", [None, *COMMAND_MODULES])
def test_every_command_answers_help_through_the_entry_point(command: str | None) -> None:
    result = _run("no.such.module", "SIGINT", *([command] if command else []), "--help")
    assert result.returncode == 0, result.stderr
    assert "usage: defacer" in result.stdout and result.stderr == ""
    if command is None:
        assert all(name in result.stdout for name in COMMAND_MODULES)


def test_the_exit_status_of_the_command_comes_through_the_entry_point(tmp_path: Path, scan: Path) -> None:
    result = _run("no.such.module", "SIGINT", "deface", str(tmp_path / "missing.nii.gz"), str(tmp_path / "o.nii.gz"))
    assert result.returncode == 1 and "error" in result.stderr and "Traceback" not in result.stderr
    usage = _run("no.such.module", "SIGINT", "deface")
    assert usage.returncode == 2 and "usage" in usage.stderr
    version = _run("no.such.module", "SIGINT", "--version")
    assert version.returncode == 0 and version.stdout.startswith("defacer ")
