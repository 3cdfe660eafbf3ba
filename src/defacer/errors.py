"""Exceptions raised by defacer.

Every error a user can cause derives from :class:`DefacerError` and from the matching
builtin, and its message says what was expected, what was found and what to do.
Only :mod:`defacer.cli` turns these into an exit code and a message on stderr.
"""

from __future__ import annotations

import errno
import re

#: A Python traceback quoted inside a library's message (pydicom adds one to every error about an element:
#: "With tag (0020,4000) got exception: ...\nTraceback (most recent call last):\n  File ...\nTypeError: ...\n").
_QUOTED_TRACEBACK = re.compile(r"\n?Traceback \(most recent call last\):\n(?:[ \t][^\n]*\n)*[^\n]*\n?")


def without_tracebacks(message: str) -> str:
    """``message`` with any quoted Python traceback taken out (the one-line summary before it stays)."""
    return _QUOTED_TRACEBACK.sub("", message)


class DefacerError(Exception):
    """Base class of every error defacer raises on purpose.

    Its message never holds a Python traceback, even when it quotes a library's message that does.
    """

    default_message = "defacer could not complete the request."

    def __init__(self, message: str | None = None) -> None:
        super().__init__(without_tracebacks(message) if message else self.default_message)


class InputImageError(DefacerError, ValueError):
    """The input scan is missing, unreadable, or not a usable 3D head volume."""

    default_message = "The input image could not be used. Check that it is a 3D head scan in a supported format."


class TooManyVoxelsError(InputImageError):
    """The scan declares more voxels than the limit (``max_voxels``), refused before anything is allocated.

    Attributes
    ----------
    count, limit : int
        Voxels declared, and the limit.
    """

    default_message = "The scan declares more voxels than this run accepts."

    def __init__(self, message: str | None = None, count: int = 0, limit: int = 0) -> None:
        super().__init__(message)
        self.count, self.limit = count, limit


class OutputError(DefacerError, OSError):
    """The output cannot be written (exists without ``--force``, same as input, folder not writable)."""

    default_message = "The output could not be written."


class LabelMapError(DefacerError, ValueError):
    """A user-supplied label map does not match the scan or the label convention."""

    default_message = "The label map does not match the scan (see defacer.labels for the convention)."


class FeaturesNotFoundError(DefacerError):
    """Some requested feature (eyes, nose, ears) was not found or not distorted: nothing was written.

    An unchanged or partly defaced copy could pass for a defaced scan, so by default nothing is
    written; ``--allow-missing`` (``allow_missing=True``) writes it anyway and the sidecar lists
    what was found.  The command line exits with status 4.

    Attributes
    ----------
    missing : list of str
        The requested features not found or not distorted.
    found : list of str
        The requested features found and distorted.
    provenance : dict
        The provenance record of the run (``features`` says what was found per feature).
    """

    default_message = "Not every requested facial feature was found; nothing was written."

    def __init__(self, message: str | None = None, *, missing: list[str] | None = None,
                 found: list[str] | None = None, provenance: dict | None = None) -> None:
        super().__init__(message)
        self.missing = list(missing or [])
        self.found = list(found or [])
        self.provenance = dict(provenance or {})

    @property
    def nothing_found(self) -> bool:
        """True when no requested feature at all was found."""
        return not self.found


class DetectorError(DefacerError, RuntimeError):
    """No detector is available, or the detector failed on this scan."""

    default_message = "No facial-feature detector is available: pass --labels FILE or install the shipped weights."


class WeightsError(DetectorError):
    """Model weights are missing, corrupt, or do not match their recorded sha256."""

    default_message = "The model weights are missing or do not match their recorded sha256."


class ProtectionError(DefacerError, RuntimeError):
    """A voxel inside the protected region (the brain's side of the protection depth) would change.

    The distortions' own gate makes this impossible; the independent check after it refuses the
    result instead of writing it, so a defect in the gate can never reach a file.
    """

    default_message = "A voxel inside the protected region would change; nothing was written."


class DicomSeriesError(DefacerError, ValueError):
    """A DICOM folder holds no usable series, or a series cannot be assembled into a volume."""

    default_message = "No usable DICOM series was found."


class SeveralSeriesError(DicomSeriesError):
    """A DICOM folder holds several image series and none was chosen.

    Attributes
    ----------
    count : int
        How many image series (stacks) the folder holds.
    """

    default_message = "The DICOM folder holds several image series; choose one."

    def __init__(self, message: str | None = None, count: int = 0) -> None:
        super().__init__(message)
        self.count = count


class VerificationError(DefacerError, RuntimeError):
    """Rendering or face checking failed."""

    default_message = "Verification could not be completed."


class MissingExtraError(DefacerError, ImportError):
    """An optional dependency group is not installed."""

    def __init__(self, extra: str, module: str) -> None:
        super().__init__(
            f"This feature needs the optional package '{module}', which is not installed. "
            f"Install it with: pip install 'defacer[{extra}]'"
        )
        self.extra = extra
        self.module = module


#: Characters a terminal acts on instead of showing: C0 controls (line breaks, ESC that starts a terminal's escape
#: sequence, BEL, backspace, carriage return), DEL, C1 controls, the Unicode line and paragraph separators and the
#: bidirectional overrides (which can show a name reversed).
_UNSHOWABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
#: The same less line feed and tab, for whole messages whose own lines are defacer's.
_UNSHOWABLE_IN_TEXT = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def shown(name: object, *, lines: bool = False) -> str:
    """``str(name)`` for the console, its control characters written as backslash escapes (``\\n``, ``\\x1b``).

    A file name (of a hostile dataset, an upload) may hold a line feed, a carriage return or a terminal escape
    sequence: printed raw, ``in<LF>Defaced x -> y`` fakes a line of defacer's output, and ``ESC]0;...BEL`` or
    ``ESC[2J`` retitles or clears the user's terminal.  With ``lines`` (a whole message, whose line breaks and tabs
    are defacer's own) line feeds and tabs are kept; each name in it should have been passed through ``shown``.
    """
    pattern = _UNSHOWABLE_IN_TEXT if lines else _UNSHOWABLE
    return pattern.sub(lambda match: match.group().encode("unicode_escape").decode("ascii"), str(name))


#: What the system can refuse a run for (full disk, read-only or forbidden place, too many files, I/O
#: failure), with what to do: a message, not "a bug in defacer".
SYSTEM_ERRORS: dict[int, str] = {
    errno.ENOSPC: "the disk is full: free some space or write the output to another disk",
    errno.EDQUOT: "your disk quota is used up: free some space or write the output elsewhere",
    errno.EFBIG: "the file is too large for this file system: write the output to another disk",
    errno.EROFS: "the file system is read-only: choose a writable output folder",
    errno.EACCES: "permission denied: choose a place you may write to (or a file you may read)",
    errno.EPERM: "operation not permitted: choose a place you may write to (or a file you may read)",
    errno.ENAMETOOLONG: "a file name is too long for this file system: choose a shorter output name",
    errno.EMFILE: "too many open files: raise the limit (ulimit -n) or process fewer files at once",
    errno.ENFILE: "too many open files on this system: retry when fewer programs run",
    errno.EIO: "the disk reported an input/output error: check the disk, or read and write elsewhere",
    errno.ELOOP: "a symbolic link on the way leads back to itself (a loop): fix or remove the link",
}


def system_error_message(err: OSError) -> str:
    """A refusal by the system (:data:`SYSTEM_ERRORS`) in words: what happened, where, what to do."""
    where = f" ('{err.filename}')" if err.filename else ""
    what = SYSTEM_ERRORS.get(err.errno or 0, "the system refused it")
    return (f"{err.strerror or type(err).__name__}{where}: {what}. Outputs are written to a "
            "temporary and renamed only when complete, so no half-written output was left under its name."
            + "".join(f" {note}" for note in getattr(err, "__notes__", ())))


def thread_refused_message(err: BaseException) -> str | None:
    """A new thread refused by the system, in words, or ``None`` for any other error.

    Under a memory limit on the address space (``ulimit -v``, a batch scheduler's virtual-memory limit) or a
    process-count limit, starting a thread (the compressed writer's, the detector's) raises
    ``RuntimeError("can't start new thread")``, which read as "unexpected error ... a bug in defacer".
    """
    if not isinstance(err, RuntimeError) or "can't start new thread" not in str(err):
        return None
    return ("The system refused to start a thread: the process reached a limit on its memory (ulimit -v, a job "
            "scheduler's virtual-memory limit) or on its number of threads or processes (ulimit -u). Raise the "
            "limit (a 1 mm head needs about 1 GB of address space) or run where more is allowed. Outputs are "
            "written to a temporary and renamed only when complete, so no half-written output was left.")


def symlink_loop_message(err: BaseException) -> str | None:
    """The error of a symbolic-link loop met while resolving a path, in words, or ``None`` for any other error.

    Python 3.11's ``Path.resolve()`` raises ``RuntimeError("Symlink loop from '<path>'")`` (not an OSError), which
    reached the user as "unexpected error ... a bug in defacer" for a link ``a.nii.gz -> a.nii.gz`` given as a scan,
    a label map, or in an output's folders.
    """
    text = str(err)
    prefix = "Symlink loop from "
    if not isinstance(err, RuntimeError) or not text.startswith(prefix):
        return None
    return (f"The path {text[len(prefix):]} is, or goes through, a symbolic link that leads back to itself (a loop), "
            "so it names no file or folder. Fix or remove the link, or give the path it should lead to.")
