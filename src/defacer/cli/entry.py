"""The ``defacer`` console script's entry point: an interrupt from the first moment is one line and exit status 130.

The command's modules (argparse and logging, then numpy, nibabel, SciPy, onnxruntime: about half a second
on the project's 2-core VM) are imported inside :func:`run`, where a ``KeyboardInterrupt`` is caught.  With
:func:`defacer.cli.main.run` as the entry point they were imported by the console script itself, before
any handling: Ctrl-C in the command's first ~60 ms printed a Python traceback.  This module imports only
``sys`` and ``signal`` (and the ``defacer`` package, which imports its version and its lazy-export helper,
not even ``typing``), and makes SIGTERM and SIGHUP interrupts too before anything else is imported.  An
interrupt Python would swallow (one landing in a weak reference's callback) is delivered again.

What stays outside any handling is the interpreter's own start and the line ``import re`` of the console
script pip writes, before this module is imported (a few milliseconds): a Ctrl-C there ends Python as the
signal's default action does, or as Python itself reports it.
"""

from __future__ import annotations

import signal
import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy reads any TYPE_CHECKING as true)
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import NoReturn

#: Exit status after an interrupt (128 + SIGINT); :data:`defacer.cli.main.EXIT_INTERRUPTED` is this.
EXIT_INTERRUPTED = 130


def run(argv: Sequence[str] | None = None) -> None:
    """Run the ``defacer`` command (:func:`defacer.cli.main.run`), its imports under the interrupt handling.

    Parameters
    ----------
    argv : sequence of str, optional
        The arguments (default: ``sys.argv[1:]``).

    Raises
    ------
    SystemExit
        Always: the command's exit status, 130 after an interrupt.
    """
    try:
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not one ignored from the start (nohup)
            signal.signal(signal.SIGINT, _ctrl_c)
        stop_on_termination()
        sys.unraisablehook = _interrupt_not_swallowed
        from defacer.cli import main
    except KeyboardInterrupt as err:
        _interrupted(f"defacer: interrupted{by_signal(err)} while starting; nothing was written.")
    except Exception:
        _interrupted_if_signalled()
        raise
    try:
        main.run(argv)
    except KeyboardInterrupt as err:  # past the command's own handling (its message printed, exiting): no claim
        _interrupted(f"defacer: interrupted{by_signal(err)}.")
    except Exception:  # escaping the command's handling: raised while it starts (parsing, the libraries' imports)
        _interrupted_if_signalled()
        raise


def _interrupted_if_signalled() -> None:
    """Exit as interrupted (status 130, one line) when an interrupt came: an error raised after it is its doing.

    An interrupt that lands while a C extension imports a module of its own is turned into that extension's
    ``ImportError`` (numpy: 'PyCapsule_Import could not import module "datetime"', then 'Importing the numpy
    C-extensions failed ... bad install'), a traceback blaming the installation for a Ctrl-C."""
    if _signalled:
        name = signal.Signals(_signalled[-1]).name
        by = f" by {name}" if name != "SIGINT" else ""
        _interrupted(f"defacer: interrupted{by} while starting; nothing was written.")


def _interrupted(message: str) -> NoReturn:
    """Say ``message`` on stderr (a closed stderr is no reason for a traceback) and exit with status 130."""
    try:
        print(message, file=sys.stderr, flush=True)
    except (OSError, ValueError, KeyboardInterrupt):
        pass
    raise SystemExit(EXIT_INTERRUPTED)


def stop_on_termination() -> None:
    """Make SIGTERM and SIGHUP stop a run the way Ctrl-C does (``KeyboardInterrupt``).

    ``timeout``, ``kill``, SLURM's ``scancel``, ``docker stop`` and a closed terminal end a process
    with these signals; by default Python then dies at once and leaves a run's temporary folder
    (``.defacer-tmp-*``, with a half-written output) beside the user's files.  As an interrupt, the
    temporaries are removed and nothing half-written is left.  A signal the process was started
    ignoring (``nohup``) stays ignored, and so does one given a handler already (a second call).
    """
    for number in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(number) == signal.SIG_DFL:
            signal.signal(number, _interrupt)


#: The signals that interrupted this run, in order (:func:`_interrupted_if_signalled`).
_signalled: list[int] = []


def _interrupt(signum: int, frame: object) -> None:
    _signalled.append(signum)
    raise KeyboardInterrupt(f"stopped by signal {signal.Signals(signum).name}")


def signalled() -> bool:
    """Whether an interrupt (Ctrl-C, SIGTERM, SIGHUP) came during this run: an error after it may be its doing."""
    return bool(_signalled)


def _ctrl_c(signum: int, frame: object) -> None:
    """Python's own Ctrl-C handler (``KeyboardInterrupt``), the signal recorded."""
    _signalled.append(signum)
    raise KeyboardInterrupt


def _interrupt_not_swallowed(unraisable: sys.UnraisableHookArgs) -> None:
    """Deliver again an interrupt Python would swallow: one raised while a callback ran (a weak reference's, as
    the import machinery's module locks have, or a finaliser's) is "ignored" there, so a Ctrl-C printed "Exception
    ignored in: <function _get_module_lock.<locals>.cb ...>" and the command went on to the end.  A thread of
    its own raises it in the main thread again, once this hook has returned (raised inside the hook, Python would
    ignore it once more); every other such error goes to Python's own hook."""
    if isinstance(unraisable.exc_value, KeyboardInterrupt):
        import _thread

        reason = by_signal(unraisable.exc_value).removeprefix(" by ")
        _thread.start_new_thread(_thread.interrupt_main, (getattr(signal, reason, signal.SIGINT),))
        return
    sys.__unraisablehook__(unraisable)


def by_signal(err: KeyboardInterrupt) -> str:
    """`` by SIGTERM`` when a termination signal (:func:`stop_on_termination`) stopped the run, else nothing."""
    reason = str(err)
    return f" by {reason.removeprefix('stopped by signal ')}" if reason.startswith("stopped by signal ") else ""
