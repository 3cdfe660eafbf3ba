"""The batch manifest: one record per scan, crash-safe, and the basis for resuming.

The manifest is a JSON Lines file (``OUT/.defacer/manifest.jsonl``).  The first line is a
header; every later line is a :class:`ScanRecord`.  Only the main batch process writes it, by
appending one line per finished scan and calling ``fsync``, so a killed run loses at most the
scans that were in flight; a half-written last line is ignored when reading.  When several
records share a key, the last one wins.  :meth:`Manifest.compact` rewrites the file with one
record per scan through a temporary file and a rename.

A scan is skipped on a rerun only if its last record says ``done``, the options that shape
the output are the same, the input is unchanged (size and modification time, or else its
sha256) and every recorded output file still exists with its recorded sha256.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import stat as stat_mode
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from defacer.errors import OutputError
from defacer.files import file_sha256, make_folders

#: Format version of the manifest file.
MANIFEST_VERSION = 1
#: Longest manifest line read (bytes, its line feed included).  A scan's record holds its options, provenance,
#: warnings and one stamp (~250 bytes) per input and output file: a DICOM series of 10,000 files is about 5 MB.  A
#: longer line is no record of defacer's and is skipped unread, a damaged line (the scan is done again): it was read
#: whole (HOSTILE22: a 300 MB line took a rerun of a one-scan batch to 1.29 GB resident; 62 MB without it).
MAX_MANIFEST_LINE_BYTES = 16 * 1024 * 1024
#: Most lines and bytes of a manifest read (HOSTILE22).  A batch compacts its manifest to one line per scan at its
#: end: a million lines is a million scans.  Past either bound the rest is not read, with a warning (the scans
#: recorded there only are defaced again): 2 million minimal records took 1.46 GB and 24 s of CPU to read (now 740 MB,
#: 12 s).
MAX_MANIFEST_LINES = 1_000_000
MAX_MANIFEST_BYTES = 2 * 1024 * 1024 * 1024
#: Bytes read at a time while skipping a line longer than the bound.
_SKIP_CHUNK = 64 * 1024


def bounded_lines(handle: Any, limit: int) -> Iterator[bytes | None]:
    """The lines of a binary file open for reading, each at most ``limit`` bytes long (its line feed included);
    ``None`` for a longer line, which is skipped in chunks of 64 KiB without being held in memory."""
    while True:
        line = handle.readline(limit + 1)
        if not line:
            return
        if len(line) <= limit:
            yield line
            continue
        while not line.endswith(b"\n"):
            line = handle.readline(_SKIP_CHUNK)
            if not line:
                break
        yield None
#: Record statuses.
DONE, FAILED, SKIPPED = "done", "failed", "skipped"
#: No requested feature / not every requested feature was found or distorted: nothing was
#: written for the scan (unless ``--allow-missing``, which makes it ``done``).
NOTHING_FOUND, INCOMPLETE = "nothing-found", "incomplete"


@dataclass
class FileStamp:
    """Identity of one file: path relative to its root, size, modification time, sha256."""

    path: str
    size: int
    mtime_ns: int
    sha256: str


@dataclass
class ScanRecord:
    """What happened to one scan.

    Attributes
    ----------
    key : str
        The scan's path relative to the input folder.
    status : str
        ``"done"``, ``"failed"``, ``"nothing-found"`` (no requested feature was found: nothing
        written), ``"incomplete"`` (some requested feature was not found: nothing written) or
        ``"skipped"`` (already done by an earlier run; never written to the manifest, only
        reported).
    inputs, outputs : list of FileStamp
        Input files (one image, or each file of a DICOM series) relative to IN, and every
        output file (image, sidecars) relative to OUT.
    input_sha256 : str
        sha256 over the input (for a series: over the sorted names and digests of its files).
    fingerprint : str
        Digest of the options that shape the output (see :func:`options_fingerprint`).
    seed : int
        The scan's own random seed.
    error, error_type : str or None
        Why the scan failed, for ``failed``.
    timings : dict
        Seconds per stage (``hash``, ``deface``, ``verify``, ``total``) and ``cpu``, the CPU
        seconds the worker process spent on the scan (all its threads).
    started, finished : str
        UTC timestamps (ISO 8601).
    worker : str
        Host and process id that ran the scan.
    provenance : dict
        The pipeline's provenance record.
    verify : dict or None
        Verification outcome and report path, when ``--verify`` is on.
    attempts : int
        How many times the scan was tried in its run (a dead worker's scans are retried).
    warnings : list of str
        Warnings logged while defacing it (for example "no ears detected").
    """

    key: str
    status: str
    inputs: list[FileStamp] = field(default_factory=list)
    outputs: list[FileStamp] = field(default_factory=list)
    input_sha256: str = ""
    fingerprint: str = ""
    seed: int = 0
    error: str | None = None
    error_type: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    started: str = ""
    finished: str = ""
    worker: str = ""
    provenance: dict[str, Any] = field(default_factory=dict)
    verify: dict[str, Any] | None = None
    attempts: int = 1
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        """One JSON line (no newline)."""
        return json.dumps(asdict(self), ensure_ascii=False, sort_keys=True, default=str)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScanRecord:
        """Rebuild a record from :meth:`to_json` output (unknown keys are dropped).

        Raises
        ------
        TypeError, ValueError
            For anything :meth:`to_json` does not write: a field of another type, a file stamp whose
            path is absolute or climbs out of its root with ``..`` (the manifest in OUT may have been
            edited: '/dev/zero' as an output was hashed for ever on the rerun).
        """
        if not isinstance(data, dict):
            raise TypeError("a manifest record is a JSON object")
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        for name, value in known.items():
            if name not in ("inputs", "outputs") and not isinstance(value, _FIELD_TYPES[name]):
                raise TypeError(f"the manifest field {name!r} holds {type(value).__name__}")
        if not all(isinstance(v, int | float) for v in known.get("timings", {}).values()) or not all(
                isinstance(w, str) for w in known.get("warnings", [])):
            raise TypeError("the manifest's timings are numbers and its warnings text")
        known["inputs"] = [_file_stamp(s) for s in _listed(known.get("inputs", []))]
        known["outputs"] = [_file_stamp(s) for s in _listed(known.get("outputs", []))]
        return cls(**known)


#: The JSON types :meth:`ScanRecord.to_json` writes for each field (``bool`` is an ``int`` to Python: refused apart).
_FIELD_TYPES: dict[str, type | tuple[type, ...]] = {
    "key": str, "status": str, "input_sha256": str, "fingerprint": str, "seed": int, "error": (str, type(None)),
    "error_type": (str, type(None)), "timings": dict, "started": str, "finished": str, "worker": str,
    "provenance": dict, "verify": (dict, type(None)), "attempts": int, "warnings": list,
}


def _listed(value: Any) -> list[Any]:
    """A manifest list field, or a :class:`TypeError`."""
    if not isinstance(value, list):
        raise TypeError("the manifest's file stamps are a JSON list")
    return value


def _file_stamp(data: Any) -> FileStamp:
    """A :class:`FileStamp` read from the manifest, its types checked and its path a relative path within its root."""
    if not isinstance(data, dict):
        raise TypeError("a file stamp is a JSON object")
    item = FileStamp(**data)
    if not (isinstance(item.path, str) and isinstance(item.sha256, str) and isinstance(item.size, int)
            and isinstance(item.mtime_ns, int)):
        raise TypeError("a file stamp holds a path, a size, a time and a sha256")
    parts = PurePosixPath(item.path).parts
    if not parts or parts[0] == "/" or ".." in parts or "\0" in item.path:
        raise ValueError(f"the file stamp's path {item.path!r} is not a path inside its folder")
    return item


def ends_with_newline(path: Path) -> bool:
    """Whether a non-empty file's last byte is a newline (an append then starts on a fresh line)."""
    with path.open("rb") as handle:
        handle.seek(0, os.SEEK_END)
        if handle.tell() == 0:
            return False
        handle.seek(-1, os.SEEK_END)
        return handle.read(1) == b"\n"


@contextlib.contextmanager
def batch_lock(state_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on a batch output so two runs never write it at once.

    The lock is an ``flock`` on ``state_dir/lock``; the system releases it when the process
    ends, so a killed run never leaves a stale lock.

    Raises
    ------
    OutputError
        If another batch holds the lock.
    """
    make_folders(state_dir)
    try:
        import fcntl
    except ImportError:  # not POSIX (Windows): run without the lock
        logging.getLogger(__name__).warning("no file locking on this system: do not run two batches on one OUT")
        yield
        return
    with (state_dir / "lock").open("a+") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:  # held by another process
            raise OutputError(
                f"Another defacer batch is writing to '{state_dir.parent}' right now. Wait for it to finish, "
                "or choose another output folder."
            ) from err
        except OSError:  # a disk that takes no locks (ENOLCK, EOPNOTSUPP on some network shares): no other batch
            logging.getLogger(__name__).warning("no file locking on the disk of '%s': do not run two batches on "
                                                "one OUT", state_dir.parent)
            yield
            return
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def sha256_file(path: Path) -> str:
    """sha256 of a file's bytes (:func:`defacer.files.file_sha256`)."""
    return file_sha256(path)


def stamp(path: Path, root: Path, sha256: str | None = None) -> FileStamp:
    """Stamp a file (size, mtime, sha256), naming it relative to ``root``."""
    info = path.stat()
    return FileStamp(
        path=path.relative_to(root).as_posix(),
        size=info.st_size,
        mtime_ns=info.st_mtime_ns,
        sha256=sha256 or sha256_file(path),
    )


def combined_sha256(stamps: list[FileStamp]) -> str:
    """One digest for several files: sha256 over ``name:sha256`` lines in name order."""
    if len(stamps) == 1:
        return stamps[0].sha256
    digest = hashlib.sha256()
    for item in sorted(stamps, key=lambda s: s.path):
        digest.update(f"{item.path}:{item.sha256}\n".encode())
    return digest.hexdigest()


def options_fingerprint(options: dict[str, Any]) -> str:
    """Short digest of the options that shape a scan's output (features, seed, detector...)."""
    text = json.dumps(options, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def file_unchanged(item: FileStamp, root: Path, *, rehash: bool = False) -> bool:
    """Whether a stamped file still has its stamped content.

    Same size and modification time count as unchanged unless ``rehash``; otherwise the
    sha256 decides (a file touched but not changed is still unchanged).
    """
    path = root / item.path
    try:
        info = path.stat()
    except OSError:
        return False
    if not stat_mode.S_ISREG(info.st_mode):  # a pipe or device would be read for ever
        return False
    if info.st_size != item.size:
        return False
    if not rehash and info.st_mtime_ns == item.mtime_ns:
        return True
    return sha256_file(path) == item.sha256


def is_up_to_date(
    record: ScanRecord | None,
    *,
    fingerprint: str,
    in_root: Path,
    out_root: Path,
    input_files: list[Path],
    rehash: bool = False,
) -> bool:
    """Whether a scan can be skipped: done before, same options, same input, outputs intact."""
    if record is None or record.status != DONE or record.fingerprint != fingerprint:
        return False
    recorded = {item.path for item in record.inputs}
    current = {p.relative_to(in_root).as_posix() for p in input_files}
    if recorded != current:
        return False
    if not all(file_unchanged(item, in_root, rehash=rehash) for item in record.inputs):
        return False
    return bool(record.outputs) and all(file_unchanged(item, out_root, rehash=rehash) for item in record.outputs)


class Manifest:
    """Append-only record of a batch, read back for resuming.

    Parameters
    ----------
    path : Path
        ``OUT/.defacer/manifest.jsonl``; created with a header line if absent.
    read_only : bool
        Only read (a missing file is an empty manifest); never create, repair or append.
    """

    def __init__(self, path: Path, *, read_only: bool = False) -> None:
        self.path = path
        self.records: dict[str, ScanRecord] = {}
        self.damaged_lines = 0
        if path.is_file():
            self._read()
            if not read_only and (self.damaged_lines or not ends_with_newline(path)):
                self.compact()  # so the next append starts on a fresh line
        elif read_only:
            return
        else:
            make_folders(path.parent)
            self._write_all([])

    def _read(self) -> None:
        long_lines = 0
        with self.path.open("rb") as handle:
            for number, line in enumerate(bounded_lines(handle, MAX_MANIFEST_LINE_BYTES)):
                if number >= MAX_MANIFEST_LINES or handle.tell() > MAX_MANIFEST_BYTES:
                    logging.getLogger(__name__).warning(
                        "The batch manifest '%s' is longer than any defacer writes (expected at most %d lines and %d "
                        "MiB, found more): read up to there only; a scan recorded further on is defaced again. A "
                        "dataset this large is best split into several batches (--include).", self.path,
                        MAX_MANIFEST_LINES, MAX_MANIFEST_BYTES // (1024 * 1024))
                    break
                if line is None:
                    long_lines += 1
                    self.damaged_lines += 1
                    continue
                text = line.strip()
                if not text:
                    continue
                try:
                    data = json.loads(text.decode("utf-8"))
                except (ValueError, RecursionError):  # UnicodeDecodeError too; JSON nested thousands deep
                    self.damaged_lines += 1  # a line cut short by a killed run
                    continue
                if number == 0 and isinstance(data, dict) and "defacer_manifest" in data:
                    version = data["defacer_manifest"]
                    if not isinstance(version, int) or isinstance(version, bool):
                        self.damaged_lines += 1
                        continue
                    if version > MANIFEST_VERSION:
                        raise OutputError(
                            f"The batch manifest '{self.path}' was written by a newer defacer (format "
                            f"{version}, this one reads {MANIFEST_VERSION}). Upgrade defacer."
                        )
                    continue
                try:
                    record = ScanRecord.from_dict(data)
                except (TypeError, KeyError, ValueError):  # damaged, or edited into what defacer never writes
                    self.damaged_lines += 1
                    continue
                self.records[record.key] = record
        if long_lines:
            logging.getLogger(__name__).warning(
                "The batch manifest '%s' has %d line(s) longer than any defacer writes (expected at most %d MiB a "
                "line, found more): not read, as damaged lines are; a scan recorded there only is defaced again.",
                self.path, long_lines, MAX_MANIFEST_LINE_BYTES // (1024 * 1024))

    def get(self, key: str) -> ScanRecord | None:
        """The last record of a scan, or ``None``."""
        return self.records.get(key)

    def __iter__(self) -> Iterator[ScanRecord]:
        return iter(self.records.values())

    def __len__(self) -> int:
        return len(self.records)

    def append(self, record: ScanRecord) -> None:
        """Add a record durably (one line, flushed and fsynced)."""
        self.records[record.key] = record
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(record.to_json() + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def compact(self) -> None:
        """Rewrite the file with the last record of each scan, atomically."""
        self._write_all(sorted(self.records.values(), key=lambda r: r.key))

    def _write_all(self, records: list[ScanRecord]) -> None:
        from defacer.io.atomic import write_text_atomic

        header = json.dumps({"defacer_manifest": MANIFEST_VERSION})
        write_text_atomic(self.path, "".join(line + "\n" for line in [header, *(r.to_json() for r in records)]),
                          durable=True)
