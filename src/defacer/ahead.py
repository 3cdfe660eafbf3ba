"""Work ``defacer deface`` begins ahead, in threads, while its main thread imports its libraries.

The command spends about half a second importing numpy, nibabel, SciPy and onnxruntime, on one core.
Two pieces of its later work run mostly outside Python's global lock and need little of those libraries,
so they run on the other core meanwhile:

* the scan's reading: a ``.nii.gz`` file read and decompressed (ISA-L, one call: 0.05-0.1 s for a 1 mm head)
  and its sha256 computed, begun by :func:`start_reading` as soon as the arguments are parsed.  The reading
  (:func:`defacer.io.nifti.read_nifti_like`) still reads and checks the header from the file as before and
  only takes the voxel bytes from here (:func:`take_bytes`); the provenance record takes the digest
  (:func:`input_sha256`);
* the shipped detector's making (the weights' sha256, onnxruntime's session built from the graph), begun by
  :func:`start_detector` once onnxruntime is imported, while the pipeline's own modules are imported, and
  taken by :func:`defacer.route.deface_path` (:func:`take_detector`) where it would have begun making it;
* with OpenVINO, the network's compilation (0.2-0.3 s, outside the GIL), begun by :func:`start_network` as soon
  as numpy and OpenVINO are imported, before nibabel and SciPy (:func:`defacer.detect.openvino_run.start_compiling`),
  and taken by the detector when it is made (:func:`take_network`).  Begun with the detector, the compilation
  started only once the pipeline's modules were imported, and the run waited for it.

Nothing here decides anything.  A file that is not a regular ``.nii.gz`` file, a header that is not a plain
NIfTI-1 header or declares more voxels than the limit, a gzip stream that ends early or fails, a file changed
since (another size, time or inode): each makes :func:`take_bytes` give ``None``, and the scan is read from
the file as without this (its errors and messages included).  The detector's errors (bad weights) are raised
where the route asks for it, as before.  This module imports only the standard library at its top, so the
command line can begin the reading before its heavy imports; neither thread imports anything (ISA-L, ctypes
and the detector's modules are imported by the caller first), so no thread waits on another's imports.
"""

from __future__ import annotations

import hashlib
import os
import stat
import struct

from defacer.threads import WaitedThread

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path
    from typing import Any

#: Most bytes decompressed ahead (256 MiB: a 0.5 mm head in 16 bits; a 1 mm head is ~30 MB): a larger scan is read
#: as usual.  The thread holds the decompressed bytes twice while it copies them out (ISA-L gives immutable bytes),
#: so this bounds what reading ahead adds to the run's memory, and the seconds such a scan takes anyway dwarf
#: the ~0.1 s gained.
MAX_BYTES = 256 << 20
#: Most bytes of header extensions decompressed ahead: :data:`defacer.io.nifti.MAX_EXTENSION_BYTES` (64 MiB),
#: the most the reading reads (not imported: it would import numpy before the command's imports).
MAX_EXTENSION_BYTES = 64 << 20


class _Reading:
    """A file read and decompressed in a thread: ``data`` (the decompressed bytes) and ``sha256`` (of the file)."""

    def __init__(self, path: str, status: os.stat_result, max_voxels: int | None, isal_zlib: Any,
                 trim: Callable[[int], object] | None) -> None:
        self.path = path
        self.identity = _identity(status)
        self.data: bytearray | None = None
        self.sha256: str | None = None
        self.thread = WaitedThread(target=self._read, args=(status, max_voxels, isal_zlib, trim),
                                   name="defacer-read-ahead", daemon=True)
        self.thread.start()

    def _read(self, status: os.stat_result, max_voxels: int | None, isal_zlib: Any,
              trim: Callable[[int], object] | None) -> None:
        """The thread: imports nothing (ISA-L and the C library's ``malloc_trim`` are resolved by the caller)."""
        try:
            # O_NONBLOCK: a named pipe put in the file's place since it was looked at would block the open for ever,
            # and the run's end waits for this thread (forget)
            with open(os.open(self.path, os.O_RDONLY | os.O_NONBLOCK), "rb") as handle:
                if _identity(os.fstat(handle.fileno())) != self.identity:
                    return
                packed = handle.read(status.st_size + 1)
            if len(packed) != status.st_size:
                return
            self.sha256 = hashlib.sha256(packed).hexdigest()
            size = _declared_size(isal_zlib.decompressobj(31).decompress(packed[:1 << 16], 348), max_voxels)
            if size is None:
                return
            data = isal_zlib.decompressobj(31).decompress(packed, size)
            del packed
            if len(data) == size:
                self.data = bytearray(data)  # writable, as nibabel's own reading gives it
            del data
        except Exception:  # noqa: BLE001 - anything wrong here: the file is read as usual, which reports it
            return
        finally:
            # The compressed file and the decompressed bytes copied out (40 MB for a 1 mm head) lie in this
            # thread's own glibc arena, which the main thread's arrays never reuse, and
            # defacer.memory.retain_freed_memory keeps freed memory otherwise: given back, or they stayed
            # resident (~30 MB more peak memory).
            if trim is not None:
                trim(0)

    def unchanged(self) -> bool:
        """Whether the file is still the one read (device, inode, size, modification time)."""
        try:
            return _identity(os.stat(self.path)) == self.identity
        except (OSError, ValueError):
            return False


class DetectorLoading:
    """A detector made in a thread of its own: :meth:`result` waits for it and re-raises its error there.

    Parameters
    ----------
    make : callable
        Makes the detector; it must import nothing its caller has not imported (the other thread may be
        importing meanwhile).
    name : str, optional
        The thread's name (``defacer-network`` for the network compiled ahead, :func:`start_network`).
    """

    def __init__(self, make: Callable[[], Any], name: str = "defacer-detector") -> None:
        self._outcome: list[Any] = []
        self._thread = WaitedThread(target=self._make, args=(make,), name=name, daemon=True)
        self._thread.start()

    def _make(self, make: Callable[[], Any]) -> None:
        try:
            self._outcome.append(make())
        except BaseException as err:  # noqa: BLE001 - handed to the caller's thread by result()
            self._outcome.append(err)

    def wait(self) -> None:
        """Wait for the thread, through an interrupt too (:mod:`defacer.threads`: it may be inside onnxruntime)."""
        self._thread.wait_out()

    def settle(self) -> None:
        """Wait for the thread, and for the threads the detector made began (``settle()``, where it has one:
        :meth:`defacer.detect.model.OnnxDetector.settle`); a detector that failed to be made has none."""
        self.wait()
        made = self._outcome[0] if self._outcome else None
        settle = getattr(made, "settle", None) if not isinstance(made, BaseException) else None
        if settle is not None:
            settle()

    def result(self) -> Any:
        """The detector, once made; its error, raised here."""
        self.wait()
        (outcome,) = self._outcome
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


#: What was begun ahead and not taken yet: the scan's reading, (weights path, loading) of the detector, and
#: (key, loading) of the detector's network compiled ahead (:func:`start_network`).
_readings: list[_Reading] = []
_detectors: list[tuple[object, DetectorLoading]] = []
_networks: list[tuple[object, DetectorLoading]] = []


def _identity(status: os.stat_result) -> tuple[int, ...]:
    return (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns)


def start_reading(path: Path, max_voxels: int | None) -> bool:
    """Begin reading and decompressing ``path`` (a ``.nii.gz`` file) in a daemon thread; return whether it began.

    Parameters
    ----------
    path : Path
        The scan as the command will read it.
    max_voxels : int or None
        The command's voxel limit: a header declaring more is not decompressed ahead (the reading refuses it).
    """
    if _readings or not str(path).lower().endswith(".nii.gz"):
        return False
    try:
        status = os.stat(path)
    except (OSError, ValueError):
        return False
    if not stat.S_ISREG(status.st_mode) or status.st_size > MAX_BYTES:
        return False
    try:  # imported here, so that the thread imports nothing while this one imports the libraries
        from isal import isal_zlib
    except ImportError:
        return False
    try:
        reading = _Reading(str(path), status, max_voxels, isal_zlib, _malloc_trim())
    except RuntimeError:  # the system refuses a thread (a memory limit): read as usual, which says so if it must
        return False
    _readings.append(reading)
    return True


def _malloc_trim() -> Callable[[int], object] | None:
    """glibc's ``malloc_trim`` (gives a process's freed heap pages back to the system), or ``None`` elsewhere."""
    try:
        import ctypes

        trim: Callable[[int], object] = ctypes.CDLL(None).malloc_trim
    except (ImportError, OSError, AttributeError):
        return None
    return trim


def _reading(path: Path) -> _Reading | None:
    """The reading of ``path`` begun ahead, finished (waited for), if the file is unchanged since."""
    if not _readings or _readings[0].path != str(path):
        return None
    reading = _readings[0]
    # waited out through Ctrl-C (defacer.threads): an interrupted join returned at once, the thread still running
    # and, on Python 3.11, marked ended, so that the exit no longer waited for it
    reading.thread.wait_out()
    return reading if reading.unchanged() else None


def take_bytes(path: Path) -> bytearray | None:
    """The decompressed bytes of ``path`` read ahead (the whole NIfTI file: header, extensions, voxels), or ``None``.

    Waits for the thread.  Given once (the sha256 stays for :func:`input_sha256`).  ``None`` unless ``path`` is
    the file :func:`start_reading` was given, unchanged since, and its decompression ended without error.
    """
    reading = _reading(path)
    if reading is None:
        return None
    data, reading.data = reading.data, None
    return data


def input_sha256(path: Path) -> str | None:
    """The sha256 of ``path``'s bytes as read ahead (the bytes the scan was read from), if unchanged since, or ``None``."""
    reading = _reading(path)
    return reading.sha256 if reading is not None else None


def _start(begun: list[tuple[object, DetectorLoading]], key: object, make: Callable[[], Any], name: str) -> bool:
    """Begin ``make`` in a thread named ``name`` (:class:`DetectorLoading`), kept in ``begun`` under ``key``;
    ``False`` where one was begun there already or the system refuses a thread (a memory limit: the caller's later
    step then makes it itself, as before, and says so in words if it must)."""
    if begun:
        return False
    try:
        loading = DetectorLoading(make, name=name)
    except RuntimeError:
        return False
    begun.append((key, loading))
    return True


def _take(begun: list[tuple[object, DetectorLoading]], key: object) -> DetectorLoading | None:
    """What was begun in ``begun`` under ``key`` (:func:`_start`), or ``None``; given once."""
    if begun and begun[0][0] == key:
        return begun.pop()[1]
    return None


def start_detector(weights_path: object, make: Callable[[], Any]) -> bool:
    """Begin making the detector of ``weights_path`` with ``make`` in a thread (:class:`DetectorLoading`, thread
    ``defacer-detector``), to be taken by :func:`take_detector`; ``False`` where one was begun already or the
    system refuses a thread (made where the route makes it)."""
    return _start(_detectors, weights_path, make, "defacer-detector")


def take_detector(weights_path: object) -> DetectorLoading | None:
    """The detector begun ahead for these weights (``None``: the shipped ones), or ``None``; given once."""
    return _take(_detectors, weights_path)


def start_network(key: object, make: Callable[[], Any]) -> bool:
    """Begin compiling the detector's network with ``make`` in a thread (:class:`DetectorLoading`, thread
    ``defacer-network``), to be taken by the detector whose graph and settings ``key`` names
    (:func:`defacer.detect.openvino_run.start_compiling`); ``False`` where one was begun already or the system
    refuses a thread (the detector then compiles its network itself, as before)."""
    return _start(_networks, key, make, "defacer-network")


def take_network(key: object) -> DetectorLoading | None:
    """The network begun ahead (:func:`start_network`) under this ``key``, or ``None``; given once."""
    return _take(_networks, key)


def forget() -> None:
    """Drop what was begun ahead and not taken, waiting for its threads, so that none outlives the run.

    Every thread is waited out, through Ctrl-C too (:mod:`defacer.threads`); an interrupt meanwhile is raised once
    all are out (the detector's threads are waited for even when the reading's wait was interrupted).
    """
    interrupt: BaseException | None = None
    while _readings:
        reading = _readings.pop()
        try:
            reading.thread.wait_out()
        except BaseException as err:  # noqa: BLE001 - raised below, once every thread is out
            interrupt = interrupt if interrupt is not None else err
    while _detectors:
        loading = _detectors.pop()[1]
        try:
            loading.settle()  # the detector made, and what it began (its memory touched ahead)
        except BaseException as err:  # noqa: BLE001 - raised below, once every thread is out
            interrupt = interrupt if interrupt is not None else err
    while _networks:  # a network compiled ahead that no detector took (a run refused before, another backend)
        loading = _networks.pop()[1]
        try:
            loading.wait()
        except BaseException as err:  # noqa: BLE001 - raised below, once every thread is out
            interrupt = interrupt if interrupt is not None else err
    if interrupt is not None:
        raise interrupt


def _declared_size(header: bytes, max_voxels: int | None) -> int | None:
    """Bytes up to the end of the voxel data a NIfTI-1 header declares (``vox_offset`` + voxels x bytes per voxel),
    or ``None`` for anything else (NIfTI-2, a damaged header, more voxels than ``max_voxels``, over
    :data:`MAX_BYTES`, a ``vox_offset`` beyond :data:`MAX_EXTENSION_BYTES` of extensions)."""
    if len(header) < 348:
        return None
    for order in "<>":
        if struct.unpack_from(order + "i", header, 0)[0] == 348:
            break
    else:
        return None
    dims = struct.unpack_from(order + "8h", header, 40)
    bitpix = struct.unpack_from(order + "h", header, 72)[0]
    vox_offset = struct.unpack_from(order + "f", header, 108)[0]
    # A vox_offset past the most extensions the reading reads is no scan's: a few megabytes of gzip declaring a
    # gigabyte of extensions were decompressed whole here before the reading refused them (1.17 GB resident).
    if not 1 <= dims[0] <= 7 or bitpix <= 0 or bitpix % 8 or not 352 <= vox_offset <= 352 + MAX_EXTENSION_BYTES:
        return None
    voxels = 1
    for n in dims[1:dims[0] + 1]:
        if n < 1:
            return None
        voxels *= n
    if max_voxels is not None and voxels > max_voxels:
        return None
    size = int(vox_offset) + voxels * (bitpix // 8)
    return size if size <= MAX_BYTES else None
