"""Private work areas, one per upload: a folder only this process can read, and the session's state.

Every browser upload starts a new :class:`Session` with a random id (the only thing the
client ever names); its folder is removed when the user finishes, when it has been idle
for the configured time, or when the server shuts down.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import shutil
import stat
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from defacer.errors import DefacerError

log = logging.getLogger(__name__)

#: Shape of a session id (``secrets.token_urlsafe(24)``); anything else is refused before lookup.
SESSION_ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{32}$")

#: Name prefix of a server's root work folder (a running server holds a lock on that folder).
ROOT_PREFIX = "defacer-web-"
#: The whole name of a root work folder: the prefix and :func:`tempfile.mkdtemp`'s 8 random characters.
ROOT_NAME = re.compile(r"^defacer-web-[a-z0-9_]{8}$")
#: Ending of the marker a server makes beside its root work folder (``.defacer-web-XXXXXXXX.server``, an empty
#: folder: it holds nothing) when it makes it, and removes with it: only a folder with its marker is ever swept.
MARKER_SUFFIX = ".server"
#: A folder younger than this is never swept: its server may be starting and not hold its lock yet.
STARTING_GRACE_S = 60.0
#: On shutdown, how long to wait for a step still working in a work area before giving up on removing it.
SHUTDOWN_WAIT_S = 600.0


def root_marker(root: Path) -> Path:
    """The marker of a server's root work folder, beside it (see :data:`MARKER_SUFFIX`)."""
    return root.with_name(f".{root.name}{MARKER_SUFFIX}")


try:  # POSIX: an advisory lock that the kernel releases when its holder dies, even by SIGKILL
    import fcntl
except ImportError:  # pragma: no cover - Windows: no sweeping of other servers' leftovers
    fcntl = None  # type: ignore[assignment]


class SessionNotFound(DefacerError, KeyError):
    """No open work area has this id (never existed, finished, or expired)."""

    default_message = (
        "This scan's work area no longer exists (it was finished, expired after being idle, or the server "
        "restarted). Upload the scan again."
    )

    def __str__(self) -> str:  # KeyError would add quotes
        return str(self.args[0]) if self.args else self.default_message


class TooManySessions(DefacerError, RuntimeError):
    """The server already holds its maximum number of work areas."""


class SessionBusy(DefacerError, RuntimeError):
    """The session is in the middle of a job."""


@dataclass
class StoredFile:
    """One uploaded file: where the server put it and what the user called it."""

    path: Path
    kind: str
    display_name: str
    size: int


@dataclass
class Job:
    """Progress of the long-running defacing job of a session."""

    state: str = "idle"  # idle | queued | running | done | failed
    stage: str = ""
    progress: float = 0.0
    error: str | None = None
    result: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"state": self.state, "stage": self.stage, "progress": round(self.progress, 3),
                "error": self.error, "result": self.result}


@dataclass
class Session:
    """One user's scan and everything made from it.

    Attributes
    ----------
    id : str
        Random, URL-safe; the only handle the client has.
    folder : Path
        Private (mode 0700) work area; every path below it is chosen by the server.
    scan_files, label_files : list of StoredFile
        Uploaded scan file(s) and optional label map.
    uploading : bool
        True while a file is being received; a second upload at the same time is refused (its stored
        name and the byte count both depend on the files already stored).
    state : dict
        Results of the steps (loaded volume, labels, outputs), owned by :mod:`defacer.web.workflow`.
    """

    id: str
    folder: Path
    created: float = field(default_factory=time.monotonic)
    touched: float = field(default_factory=time.monotonic)
    scan_files: list[StoredFile] = field(default_factory=list)
    label_files: list[StoredFile] = field(default_factory=list)
    uploaded_bytes: int = 0
    uploading: bool = False
    job: Job = field(default_factory=Job)
    state: dict[str, Any] = field(default_factory=dict)
    lock: threading.RLock = field(default_factory=threading.RLock)
    job_lock: threading.Lock = field(default_factory=threading.Lock)
    closed: bool = False

    def touch(self) -> None:
        self.touched = time.monotonic()

    def path(self, *parts: str) -> Path:
        """A server-chosen path inside the work area (``parts`` are constants, never client text)."""
        target = self.folder.joinpath(*parts)
        if self.folder.resolve() not in target.resolve().parents and target.resolve() != self.folder.resolve():
            raise ValueError("internal error: a work-area path left its folder")
        return target

    def hide_paths(self, message: str) -> str:
        """Replace server paths in an error message by the names the user knows."""
        for stored in self.scan_files + self.label_files:
            message = message.replace(str(stored.path), stored.display_name or "the uploaded file")
        for folder in (self.folder.resolve(), self.folder):
            message = message.replace(str(folder / "dicom"), "the uploaded DICOM series")
            message = message.replace(str(folder) + "/", "").replace(str(folder), "the work area")
        return message


class SessionStore:
    """All open work areas of one server, under one private root folder.

    Parameters
    ----------
    root : Path or None
        Parent folder; ``None`` makes a private one in the system temporary folder (removed
        by :meth:`close_all`).
    max_sessions : int
        Most sessions open at once.
    ttl_s : float
        Idle time after which :meth:`sweep` removes a session that is not running a job.
    """

    def __init__(self, root: Path | None, *, max_sessions: int, ttl_s: float) -> None:
        self._own_root = root is None
        parent = Path(tempfile.gettempdir()) if root is None else root
        parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.removed_stale = sweep_stale_roots(parent)
        self.root = Path(tempfile.mkdtemp(prefix=ROOT_PREFIX, dir=parent))
        self._lock_fd = _hold_lock(self.root)
        root_marker(self.root).mkdir(mode=0o700)
        self.max_sessions = max_sessions
        self.ttl_s = ttl_s
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._sessions)

    def create(self) -> Session:
        """Open a new work area.

        Raises
        ------
        TooManySessions
            When ``max_sessions`` are open; the message says to finish or wait.
        """
        self.sweep()
        with self._lock:
            if len(self._sessions) >= self.max_sessions:
                raise TooManySessions(
                    f"The server is already working on {len(self._sessions)} scans, its limit. Finish one of them "
                    "(or wait until idle ones expire) and try again."
                )
            session_id = secrets.token_urlsafe(24)
            folder = self.root / secrets.token_hex(16)
            folder.mkdir(mode=0o700)
            session = Session(id=session_id, folder=folder)
            self._sessions[session_id] = session
        log.info("work area %s… opened (%d open)", session_id[:6], len(self._sessions))
        return session

    def get(self, session_id: str) -> Session:
        """Return the open session ``session_id``; :class:`SessionNotFound` otherwise."""
        if not SESSION_ID_PATTERN.match(session_id or ""):
            raise SessionNotFound()
        with self._lock:
            session = self._sessions.get(session_id)
        if session is None or session.closed:
            raise SessionNotFound()
        session.touch()
        return session

    def close(self, session_id: str) -> bool:
        """Remove a session and its folder; ``False`` if it was not open."""
        if not SESSION_ID_PATTERN.match(session_id or ""):
            return False
        with self._lock:
            session = self._sessions.pop(session_id, None)
        if session is None:
            return False
        self._remove(session)
        return True

    def _remove(self, session: Session) -> None:
        session.closed = True
        if session.lock.acquire(blocking=False):
            try:
                session.state.clear()
                shutil.rmtree(session.folder, ignore_errors=True)
            finally:
                session.lock.release()
            log.info("work area %s… removed", session.id[:6])
        else:  # a step is running on a worker thread: it removes the folder when it ends (see release_if_closed)
            log.info("work area %s… closed; removed when its running step ends", session.id[:6])

    @staticmethod
    def release_if_closed(session: Session) -> None:
        """Remove a closed session's folder after a step that was running when it was closed."""
        if session.closed:
            with session.lock:
                session.state.clear()
                shutil.rmtree(session.folder, ignore_errors=True)

    def sweep(self) -> int:
        """Remove idle sessions that are not running a job; return how many."""
        now = time.monotonic()
        with self._lock:
            expired = [s for s in self._sessions.values()
                       if now - s.touched > self.ttl_s and s.job.state not in ("queued", "running")]
            for session in expired:
                self._sessions.pop(session.id, None)
        for session in expired:
            self._remove(session)
        return len(expired)

    def close_all(self, wait_s: float = SHUTDOWN_WAIT_S) -> bool:
        """Remove every session and the root folder (on shutdown); safe to call again.

        Every session is closed first, so that a running defacing job stops at its next stage and no
        new step starts; then each folder is removed once the step working in it (if any) has ended,
        waiting up to ``wait_s`` seconds for it: a folder removed while a step writes into it can keep
        the step's last files.

        Returns
        -------
        bool
            Whether the root folder is gone.  If it is not, its marker is kept, so the next server
            started on the same parent folder removes it (:func:`sweep_stale_roots`).
        """
        with self._lock:
            sessions = list(self._sessions.values())
            self._sessions.clear()
        for session in sessions:
            session.closed = True
        for session in sessions:
            _remove_when_idle(session, wait_s)
        shutil.rmtree(self.root, ignore_errors=True)
        if self.root.exists():
            log.warning("could not remove all of the work folder %s; the next defacer serve on the same work folder "
                        "removes it", self.root)
            return False
        with contextlib.suppress(OSError):
            root_marker(self.root).rmdir()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        return True


def _remove_when_idle(session: Session, wait_s: float) -> None:
    """Remove a closed session's folder once no step holds it (at most ``wait_s`` seconds of waiting)."""
    if not session.lock.acquire(blocking=False):
        log.warning("waiting for the running step of work area %s… to end before deleting its files", session.id[:6])
        if not session.lock.acquire(timeout=wait_s):
            return  # the step removes the folder when it ends (release_if_closed)
    try:
        session.state.clear()
        shutil.rmtree(session.folder, ignore_errors=True)
    finally:
        session.lock.release()


def _hold_lock(folder: Path) -> int | None:
    """Hold an exclusive lock on ``folder`` for the life of this process (POSIX only); return its descriptor.

    The kernel drops the lock when the process dies, however it dies, so a folder whose lock can
    be taken belongs to no running server.
    """
    if fcntl is None:
        return None
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


def sweep_stale_roots(parent: Path) -> list[Path]:
    """Remove work folders left in ``parent`` by defacer servers that were killed (SIGKILL, power loss).

    Only folders that are recognisably a defacer server's own are touched: a real folder (not
    a link) named exactly as a server names it (:data:`ROOT_NAME`), with the server's marker
    beside it (:func:`root_marker`), owned by this user, older than :data:`STARTING_GRACE_S`, that no
    live process holds locked.  A running server holds the lock on its folder, so its folder is
    never removed; a user's own ``defacer-web-notes/`` in a ``--work-dir`` is not a server's.

    Returns
    -------
    list of Path
        The folders removed.
    """
    if fcntl is None:
        return []
    removed = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return []
    for entry in entries:
        if not ROOT_NAME.match(entry.name):
            continue
        try:
            info = entry.lstat()
            marker = root_marker(entry).lstat()
        except OSError:
            continue
        if not stat.S_ISDIR(marker.st_mode):
            continue
        if (not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid()
                or time.time() - info.st_mtime < STARTING_GRACE_S):
            continue
        try:
            fd = os.open(entry, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue  # a running server holds it
        try:
            shutil.rmtree(entry, ignore_errors=True)
            with contextlib.suppress(OSError):
                root_marker(entry).rmdir()
            removed.append(entry)
        finally:
            os.close(fd)
    if removed:
        log.info("removed %d work folder(s) left by a defacer server that was stopped abruptly", len(removed))
    return removed
