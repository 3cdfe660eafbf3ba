"""Entry point of the ``defacer`` command: ``main(argv) -> int``.

Each subcommand lives in its own module ``defacer.cli.<name>`` exposing
``add_parser(subparsers)`` and ``run(args) -> int``; heavy imports happen inside ``run`` so
``defacer --help`` stays fast.  Only this module turns a :class:`~defacer.errors.DefacerError`
into a message on stderr and an exit code.
"""

from __future__ import annotations

import _thread
import argparse
import contextlib
import importlib
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from types import ModuleType

from defacer._version import __version__
from defacer.cli.entry import by_signal as _by_signal
from defacer.cli.entry import signalled, stop_on_termination
from defacer.errors import (
    SYSTEM_ERRORS,
    DefacerError,
    FeaturesNotFoundError,
    shown,
    symlink_loop_message,
    system_error_message,
    thread_refused_message,
)

#: Subcommand modules in the order ``--help`` lists them.  Each imports only the standard library and
#: defacer's light modules at import time (a command's optional extras are imported by its ``run``), so
#: every command is always listed; a broken command module is a bug and fails loudly.
COMMAND_MODULES: tuple[str, ...] = (
    "deface",
    "demo",
    "anonymize",
    "batch",
    "verify",
    "evaluate",
    "train",
    "serve",
)

#: Exit codes.
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
#: ``deface --verify`` / ``verify``: the verification failed.
EXIT_VERIFY_FAILED = 3
#: ``deface`` / ``batch``: a requested facial feature was not found or not distorted (nothing written).
EXIT_FEATURES_MISSING = 4
#: ``deface --verify`` / ``verify`` / ``batch --verify``: inconclusive, no face was found in the original's
#: renders, so nothing could be tested (see :mod:`defacer.verify.verdict`).
EXIT_VERIFY_INCONCLUSIVE = 5
EXIT_INTERRUPTED = 130


def _load_command_modules() -> list[ModuleType]:
    return [importlib.import_module(f"defacer.cli.{name}") for name in COMMAND_MODULES]


def get_parser() -> argparse.ArgumentParser:
    """Build the argument parser with every available subcommand."""
    parser = argparse.ArgumentParser(
        prog="defacer",
        description=(
            "De-identify head MRI and CT: find the eyes, nose and ears with a 3D attention U-Net, distort exactly "
            "those (never the brain), and de-identify DICOM headers (PS3.15 Annex E)."
        ),
        epilog="Run 'defacer COMMAND --help' for a command's options. Example: defacer deface T1w.nii.gz T1w_defaced.nii.gz",
    )
    parser.add_argument("--version", action="version", version=f"defacer {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks of unexpected errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in _load_command_modules():
        module.add_parser(subparsers)
    return parser


def tolerate_any_name_on_stdout() -> None:
    """Let stdout (and stderr) print any file name: one that is not UTF-8 (kept by Python as lone surrogates) is shown with
    backslash escapes, as on stderr.  With a UTF-8 locale stdout is strict, so 'Defaced IN -> OUT' for a Latin-1 file
    name raised UnicodeEncodeError once the output had been written ("unexpected error ... a bug", exit 1)."""
    for stream in (sys.stdout, sys.stderr):  # stderr already is, unless replaced (an embedding program, a test)
        if getattr(stream, "errors", None) == "strict" and hasattr(stream, "reconfigure"):
            with contextlib.suppress(ValueError, OSError):  # a stream that cannot change (closed, already written to)
                stream.reconfigure(errors="backslashreplace")


def _hint_names_like_options(argv: Sequence[str]) -> None:
    """After a usage error, name the arguments that look like file names but start with ``-`` (``-x.nii.gz``: an
    existing file or folder, or a name with an image ending): argparse reads them as options and says only
    "unrecognized arguments", which does not tell what to do."""
    from defacer.files import IMAGE_SUFFIXES

    for arg in argv:
        if arg == "--":
            break
        if not arg.startswith("-") or (arg.startswith("--") and "=" in arg):
            continue
        if os.path.lexists(arg) or arg.lower().endswith((*IMAGE_SUFFIXES, ".dcm", ".json", ".zip")):
            print(f"defacer: '{shown(arg)}' starts with '-', so it was read as an option. If it is a file or folder "
                  f"name, write it as './{shown(arg)}'.", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``) and return the exit code."""
    return _main(argv)


def _main(argv: Sequence[str] | None, prepare: Callable[[], object] | None = None) -> int:
    """:func:`main`; ``prepare`` (:func:`run`: the libraries' imports the console script makes its own way) is
    called once the arguments are parsed and the command's early step (``start_early``: ``deface`` begins
    reading its scan) has begun, before the command runs."""
    tolerate_any_name_on_stdout()
    parser = get_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits on --help / usage errors
        if exc.code == EXIT_USAGE:
            _hint_names_like_options(sys.argv[1:] if argv is None else argv)
        return int(exc.code or 0)
    if not args.command:
        parser.print_help()
        return EXIT_USAGE
    start_early = getattr(args, "start_early", None)
    if start_early is not None:  # before the heavy imports below: it overlaps them
        start_early(args)
    if prepare is not None:
        prepare()
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        if _SHOWN_ARGUMENTS not in handler.filters:
            handler.addFilter(_SHOWN_ARGUMENTS)
    # nibabel prints its header checks through a handler of its own (added when it is imported): passing them on to
    # the handler above too printed each twice. defacer's own messages repeat them with what to do.
    logging.getLogger("nibabel.global").propagate = False
    try:
        return int(args.func(args))
    except FeaturesNotFoundError as err:
        print(f"defacer {args.command}: {shown(err, lines=True)}", file=sys.stderr)
        return EXIT_FEATURES_MISSING
    except DefacerError as err:
        print(f"defacer {args.command}: error: {shown(err, lines=True)}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt as err:
        # What was already in place when the interrupt came (an output written, its verification not) is in the
        # notes the steps added on the way out; without them nothing half-written was left.
        notes = getattr(err, "__notes__", None)
        print(f"defacer {args.command}: interrupted{_by_signal(err)}; "
              + (" ".join(shown(note, lines=True) for note in notes) if notes
                 else "no partial output was left behind."), file=sys.stderr)
        return EXIT_INTERRUPTED
    except MemoryError:
        print(f"defacer {args.command}: error: out of memory. Close other programs or use a machine with more memory.",
              file=sys.stderr)
        return EXIT_ERROR
    except OSError as err:
        if err.errno not in SYSTEM_ERRORS or args.debug:
            return _unexpected(args, err)  # a bare ``raise`` here would escape the last resort below
        print(f"defacer {args.command}: error: {shown(system_error_message(err), lines=True)}", file=sys.stderr)
        return EXIT_ERROR
    except RuntimeError as err:
        loop = symlink_loop_message(err) or thread_refused_message(err)
        if loop is None or args.debug:
            return _unexpected(args, err)
        print(f"defacer {args.command}: error: {shown(loop, lines=True)}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as err:  # noqa: BLE001 - last resort: never a bare traceback for users
        return _unexpected(args, err)


class _ShownArguments(logging.Filter):
    """Logs a record with its arguments' control characters escaped (:func:`defacer.errors.shown`): the file names a
    warning quotes come from the input (a name holding a line feed or a terminal escape sequence faked a line of
    defacer's output, or retitled the terminal), and so may an error passed as an argument (``log.warning("%s",
    err)``, one line about a file); the message's own text, defacer's, keeps its line breaks."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and record.args:
            record.args = tuple(shown(arg) if isinstance(arg, str | os.PathLike | BaseException) else arg
                                for arg in record.args)
        elif not record.args and isinstance(record.msg, str):
            record.msg = shown(record.msg, lines=True)
        return True


_SHOWN_ARGUMENTS = _ShownArguments()


def _unexpected(args: argparse.Namespace, err: Exception) -> int:
    """The last resort for an error defacer did not foresee: one message and exit 1 (``--debug``: re-raised)."""
    if args.debug:
        raise err
    print(
        f"defacer {args.command}: unexpected error: {type(err).__name__}: {shown(err, lines=True)}\n"
        "This is a bug in defacer, not in your data. Rerun with --debug to see the traceback and report it.",
        file=sys.stderr,
    )
    return EXIT_ERROR


#: Commands that deface one job and end: their process keeps the memory it frees for its own reuse
#: (:func:`defacer.memory.retain_freed_memory`; about a second less per 1 mm head on small VMs) and ends
#: without the interpreter's teardown (:func:`exit_without_teardown`; 0.1-0.2 s).
BOUNDED_COMMANDS = frozenset({"deface"})


def import_nibabel_without_pydicom() -> bool:
    """Import nibabel without letting it import pydicom; return whether this process's nibabel was so imported.

    At import, ``nibabel.nifti1`` imports pydicom (about 0.1 s with its pixel plugins, a twentieth of a
    whole ``defacer deface``) only to read a NIfTI header's DICOM extension (ecode 2) as a pydicom Dataset.
    defacer never reads an extension as an object: it writes the header's bytes as stored, which nibabel
    keeps for every extension either way.  Hidden from nibabel, pydicom is still imported as usual later
    (DICOM input, de-identification).  Done only by the command line, never on ``import defacer``: a
    library user's nibabel keeps its DICOM extension objects.
    """
    if "nibabel" in sys.modules or "pydicom" in sys.modules:
        return False
    sys.modules["pydicom"] = None  # type: ignore[assignment]  # import pydicom -> ImportError, for nibabel
    try:
        import nibabel  # noqa: F401
    finally:
        del sys.modules["pydicom"]
    return True


#: Held while a stand-in is looked for in ``sys.modules`` and taken out of it (nothing is imported under it):
#: two threads reading one stand-in at once both found it there, and the second's removal raised KeyError (or
#: removed the real module the first had imported meanwhile).  Reentrant: a finalizer run by a removal may read one.
_STAND_IN_LOCK = _thread.RLock()


def _take_out(name: str, stand_in: ModuleType) -> None:
    """Remove ``stand_in`` from ``sys.modules`` where it still stands there for ``name`` (once, whatever the threads)."""
    with _STAND_IN_LOCK:
        if sys.modules.get(name) is stand_in:
            del sys.modules[name]


class _OnFirstUse(ModuleType):
    """Stands for a module not imported yet: the first attribute read from it imports the module (the usual
    import, with its lock) and is read from there, as is every later one."""

    def __getattr__(self, attribute: str) -> object:
        _take_out(self.__name__, self)  # still standing in: the real module takes its place
        return getattr(importlib.import_module(self.__name__), attribute)


#: Modules nibabel imports only for what defacer never calls: ``urllib.request`` (``FileBasedImage.from_url``),
#: with ``http.client``, ``ssl`` (and the OpenSSL libraries) and the email parser, 0.01-0.03 s of every start.
DEFERRED_FOR_NIBABEL = ("urllib.request",)


@contextlib.contextmanager
def modules_deferred(names: Sequence[str] = DEFERRED_FOR_NIBABEL) -> Iterator[None]:
    """While the block runs (nibabel's import), importing one of ``names`` gives a stand-in that imports the
    module when an attribute is first read from it (:class:`_OnFirstUse`).

    Only the importers inside the block hold stand-ins (nibabel's ``request``; every use of it works, one
    import later); afterwards the names are imported as usual.  Nothing is done for a module imported already.
    Used only by the command line, never on ``import defacer``.
    """
    placed = {name: _OnFirstUse(name) for name in names if name not in sys.modules}
    for name, stand_in in placed.items():  # in the package too, as an import would (``import urllib.request``)
        parent, _, child = name.rpartition(".")
        sys.modules[name] = stand_in
        if parent:
            setattr(importlib.import_module(parent), child, stand_in)
    try:
        yield
    finally:
        for name, stand_in in placed.items():
            _take_out(name, stand_in)
            parent, _, child = name.rpartition(".")
            package = sys.modules.get(parent) if parent else None
            if package is not None and getattr(package, child, None) is stand_in:
                delattr(package, child)


class _PlainDoc:
    """Stands for SciPy's ``FunctionDoc`` in its ``xp_capabilities`` decorator: the docstring as it is, no table.

    The decorator adds a "Notes" table (which array libraries a function supports) to each function's docstring
    by parsing it whole with SciPy's numpydoc parser: ~0.05 s of every start of the command, in ``scipy.special``
    and ``scipy.ndimage`` alone.  With this, ``str()`` gives a line for the signature the decorator strips, then
    the docstring unchanged.
    """

    def __init__(self, function: object) -> None:
        self._doc = getattr(function, "__doc__", None) or ""
        self._sections: dict[str, list[str]] = {}

    def __getitem__(self, section: str) -> list[str]:
        return self._sections.setdefault(section, [])

    def __str__(self) -> str:
        return "\n" + self._doc


def import_scipy_ndimage_without_docstring_tables() -> bool:
    """Import ``scipy.ndimage`` (and ``scipy.special``) without SciPy's array-API tables added to their
    functions' docstrings; return whether it was so imported.

    SciPy 1.15+ decorates each public function of these modules at import with ``xp_capabilities``, which
    parses the whole docstring (numpydoc) to append a table of the array libraries it supports: ~0.05 s of
    CPU at every start on the project's 2-core VM, for docstrings a command line never shows.  Only the
    docstrings differ (no "Notes" table added; nothing else the decorator records changes), and only while
    these modules are imported: SciPy's parser is put back afterwards, so a module imported later keeps its
    tables.  Done only by the command line, never on ``import defacer``.  With a SciPy whose decorator does
    not work this way (no ``FunctionDoc`` there), or any error with the stand-in, the modules are imported
    as usual.
    """
    if "scipy.ndimage" in sys.modules or "scipy.special" in sys.modules:
        return False
    try:
        import scipy._lib._array_api as array_api
    except ImportError:
        return False
    real = getattr(array_api, "FunctionDoc", None)
    if real is None:
        return False
    array_api.FunctionDoc = _PlainDoc
    try:
        import scipy.ndimage  # noqa: F401
    except Exception:  # a SciPy the stand-in does not fit: what failed is imported as usual later
        if signalled():  # an interrupt turned into an import error by a C extension: not SciPy's doing
            raise
        return False
    finally:
        array_api.FunctionDoc = real
    return True


#: numpy's submodules that SciPy's array-API layer (``scipy._lib.array_api_compat.numpy``, imported with
#: ``scipy.ndimage``) imports only to copy numpy's whole namespace (``from numpy import *`` and every name in
#: ``dir(numpy)``): f2py (the Fortran wrapper generator) and testing (with unittest), ~0.05 s of every start of
#: the command on the project's 2-core VM, and polynomial (~3 ms).  Nothing the command runs uses them (numpy.random
#: and numpy.ma, also copied, are used: by SciPy's own modules and np.percentile).
DEFERRED_NUMPY_MODULES = ("f2py", "testing", "polynomial")


@contextlib.contextmanager
def numpy_tools_deferred() -> Iterator[None]:
    """While SciPy's array-API layer is imported, leave :data:`DEFERRED_NUMPY_MODULES` out of numpy's
    ``__all__`` and ``dir()``; afterwards give the layer's module those names back, imported from numpy when
    first used (a module ``__getattr__``, and in its ``__all__``).

    numpy's ``__all__`` and ``__dir__`` are put back as they were on leaving.  Nothing is done where the
    layer is imported already, where numpy has imported these modules already, or where numpy's namespace
    is not as expected (numpy 1.x imports its submodules eagerly).  Used only by the command line, never on
    ``import defacer``.
    """
    layer = "scipy._lib.array_api_compat.numpy"
    import numpy

    names = vars(numpy)
    deferred = tuple(n for n in DEFERRED_NUMPY_MODULES if f"numpy.{n}" not in sys.modules)
    public, real_dir = names.get("__all__"), names.get("__dir__")
    if (layer in sys.modules or not deferred or not isinstance(public, list) or not callable(real_dir)
            or not all(n in public for n in deferred)):
        yield
        return
    names["__all__"] = [n for n in public if n not in deferred]
    names["__dir__"] = lambda: [n for n in real_dir() if n not in deferred]
    try:
        yield
    finally:
        names["__all__"], names["__dir__"] = public, real_dir
    _give_back_deferred(sys.modules.get(layer), numpy, deferred)


def _give_back_deferred(module: ModuleType | None, numpy: ModuleType, deferred: tuple[str, ...]) -> None:
    """Make ``deferred`` (names of numpy's submodules) attributes of ``module`` again, imported when first
    used, and add them back to its ``__all__``: the module then answers as if it had copied them."""
    if module is None:
        return
    missing = tuple(n for n in deferred if n not in vars(module))
    if not missing:
        return
    earlier = vars(module).get("__getattr__")

    def __getattr__(name: str) -> object:
        if name in missing:
            return getattr(numpy, name)
        if earlier is not None:
            return earlier(name)
        raise AttributeError(f"module {module.__name__!r} has no attribute {name!r}")

    names = vars(module)
    names["__getattr__"] = __getattr__
    public = names.get("__all__")
    if isinstance(public, list):
        names["__all__"] = sorted({*public, *missing})


def _import_libraries() -> None:
    """The command line's imports of nibabel and SciPy (see the functions and context managers used)."""
    with modules_deferred():
        import_nibabel_without_pydicom()
    with numpy_tools_deferred():
        import_scipy_ndimage_without_docstring_tables()


def run(argv: Sequence[str] | None = None) -> None:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``) and exit with its status.

    Called by the console script's entry point :func:`defacer.cli.entry.run` (also ``python -m defacer``),
    which imports this module under its own interrupt handling; it stays callable directly (a console
    script installed before that entry point, embedding programs).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    stop_on_termination()
    bounded = next((a for a in args if not a.startswith("-")), None) in BOUNDED_COMMANDS
    try:
        if bounded:
            from defacer.memory import retain_freed_memory

            retain_freed_memory()
        code = _main(args, prepare=_import_libraries)
    except KeyboardInterrupt as err:  # Ctrl-C or SIGTERM during the imports, before a command runs: one line
        print(f"defacer: interrupted{_by_signal(err)} while starting; nothing was written.", file=sys.stderr)
        code = EXIT_INTERRUPTED
    if bounded:
        exit_without_teardown(code)
    sys.exit(code)


def exit_without_teardown(code: int) -> None:
    """End a finished one-job command now: exit handlers run and output is flushed, but the interpreter does
    not free its modules and objects one by one (the system reclaims the whole process at once).

    After a deface that teardown takes 0.1-0.3 s on the project's 2-core VM (numpy, scipy, nibabel and
    onnxruntime, the detector's session, the volumes), a tenth of the command.  Returns without exiting
    (the interpreter's normal exit follows) when another non-daemon thread still runs, which the normal
    exit would wait for, or when flushing the output fails, which the normal exit reports.
    """
    import atexit
    import os
    import threading

    if any(t is not threading.main_thread() and t.is_alive() and not t.daemon for t in threading.enumerate()):
        return

    def flushed() -> bool:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except (OSError, ValueError):  # a closed pipe: the interpreter's exit reports it (status 120)
            return False
        return True

    if not flushed():
        return
    atexit._run_exitfuncs()  # logging.shutdown (flushes every log handler), coverage, user hooks; run once
    if flushed():
        os._exit(code)
