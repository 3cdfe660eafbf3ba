"""Which library runs the detector's network: onnxruntime (always installed) or OpenVINO (the ``openvino`` extra).

The network is a 3-D U-Net.  onnxruntime's CPU provider runs its 3-D convolutions as im2col and SGEMM (its
blocked NCHWc layout is for 2-D convolutions only); OpenVINO's CPU plugin runs them natively (oneDNN), and on the
project's 2-core VM took 0.40-0.65 s for a pass of the shipped two-member graph against onnxruntime's 0.9 s
(members side by side) to 1.1-1.4 s (the graph as it is) (docs/model-card.md, "OpenVINO").  Both read the same
``.onnx`` file; their probabilities differ by float rounding only (up to a few 1e-4).

The choice (:func:`chosen`): :data:`ENV` (``DEFACER_DETECTOR_BACKEND``) set to ``openvino`` or ``onnxruntime``
forces one; unset (or ``auto``), OpenVINO is used where it is installed (``pip install "defacer[openvino]"``),
else onnxruntime.  A forced backend that is not installed, or a value that names none, is a
:class:`~defacer.errors.DetectorError` saying what was asked, what is missing and what to do.

Nothing here imports either library: :func:`import_runtime` does, where the caller decides (the command line
imports it in its main thread before the detector is made in another, :func:`defacer.ahead.start_detector`).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import sys
import threading
from types import ModuleType

from defacer.errors import DetectorError

#: Environment variable that forces the network's library: ``openvino``, ``onnxruntime`` or ``auto`` (the default).
ENV = "DEFACER_DETECTOR_BACKEND"
OPENVINO = "openvino"
ONNXRUNTIME = "onnxruntime"
AUTO = "auto"
#: The backends by their import name, and the pip line that installs each.
INSTALL = {OPENVINO: 'pip install "defacer[openvino]"', ONNXRUNTIME: 'pip install onnxruntime'}
LABELS = {OPENVINO: "OpenVINO", ONNXRUNTIME: "onnxruntime"}


def requested() -> str:
    """The backend :data:`ENV` asks for: ``"openvino"``, ``"onnxruntime"`` or ``"auto"`` (unset or empty).

    Raises
    ------
    DetectorError
        For any other value, naming it and the values understood.
    """
    raw = os.environ.get(ENV, "")
    value = raw.strip().lower()
    if value in ("", AUTO):
        return AUTO
    if value not in (OPENVINO, ONNXRUNTIME):
        shown = raw if len(raw) <= 40 and raw.isprintable() else ascii(raw[:40])
        raise DetectorError(f"{ENV}={shown} names no backend for the detector's network: set it to openvino, "
                            f"onnxruntime or auto (the default: OpenVINO where installed, else onnxruntime), or unset it.")
    return value


def installed(name: str) -> bool:
    """Whether the package ``name`` can be found by the import system (without importing it)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a broken package, or a module object without a spec in sys.modules
        return False


def chosen() -> str:
    """The backend to use: the forced one (:data:`ENV`), else OpenVINO where installed, else onnxruntime.

    Raises
    ------
    DetectorError
        :data:`ENV` names no backend (:func:`requested`), or names one that is not installed.
    """
    want = requested()
    if want == AUTO:
        return OPENVINO if installed(OPENVINO) else ONNXRUNTIME
    if not installed(want):
        raise missing(want)
    return want


def forced() -> bool:
    """Whether :data:`ENV` forces a backend (an auto choice of OpenVINO falls back to onnxruntime where it fails to
    import; a forced one is an error)."""
    return requested() != AUTO


def missing(name: str, why: str = "is not installed") -> DetectorError:
    """The error for a forced backend that cannot be used: what was asked, what is missing, what to do."""
    return DetectorError(f"{ENV}={name} asks for {LABELS[name]} to run the detector's network, but the '{name}' "
                         f"package {why} in this Python ({sys.executable}). Install it ({INSTALL[name]}), or unset "
                         f"{ENV} to use whichever backend is installed.")


#: The module ``import openvino`` imports last, in a ``try`` that lets it be missing: OpenVINO's model converter,
#: whose import sends a usage event to Google Analytics (``openvino_telemetry``: on unless the user opted out, a
#: client id and a usage count written under ``~/intel``, the request made from a forked process that may wait
#: 3 s).  defacer reads the ONNX graph with the runtime's own reader and never converts, so it is kept out.
OPENVINO_CONVERTER = "openvino.tools.ovc"
_import_lock = threading.Lock()
#: onnxruntime's own switch for its telemetry (1DS events), read when it is imported: set to 1 unless the user set it.
ORT_TELEMETRY_ENV = "ORT_DISABLE_TELEMETRY"


def quiet_onnxruntime() -> None:
    """Turn onnxruntime's telemetry off for its import to come: onnxruntime (1.32 measured) starts an upload a few
    seconds after it is imported (a DNS query for ``mobile.events.data.microsoft.com`` seen by strace; its
    ``disable_telemetry_events()`` does not stop it); its own switch :data:`ORT_TELEMETRY_ENV`, read at import,
    does.  Set to 1 in this process's environment where the user has not set it."""
    os.environ.setdefault(ORT_TELEMETRY_ENV, "1")


def import_runtime(name: str) -> ModuleType:
    """``import name`` (``"openvino"`` or ``"onnxruntime"``), the module returned.

    onnxruntime is imported with its telemetry off (:data:`ORT_TELEMETRY_ENV` set to 1 in the environment where the
    user has not set it; where the process imported onnxruntime before, that is too late).  OpenVINO is imported
    without its model converter (:data:`OPENVINO_CONVERTER`, so without its telemetry): the
    converter's name is marked missing in ``sys.modules`` (the import system's own way of refusing a module) for
    the length of the import only, so a caller that imports the converter itself later still can.  Where the process
    imported ``openvino`` before, it is taken as it is.

    Raises
    ------
    DetectorError
        Where the import fails (:func:`missing`, with the import's own words).
    """
    try:
        if name == ONNXRUNTIME:
            quiet_onnxruntime()
        if name != OPENVINO or name in sys.modules:
            return importlib.import_module(name)
        with _import_lock:
            refused = OPENVINO_CONVERTER not in sys.modules
            if refused:
                sys.modules[OPENVINO_CONVERTER] = None  # type: ignore[assignment]
            try:
                return importlib.import_module(name)
            finally:
                if refused and sys.modules.get(OPENVINO_CONVERTER, 0) is None:
                    del sys.modules[OPENVINO_CONVERTER]
    except Exception as err:  # ImportError, or a broken install's own error at import
        if _interrupted(err):  # Ctrl-C inside the library's initialisation, turned into its own error there
            raise KeyboardInterrupt from err
        raise missing(name, f"could not be imported ({type(err).__name__}: {err})") from err


def _interrupted(err: BaseException) -> bool:
    """Whether a ``KeyboardInterrupt`` lies in ``err``'s chain of causes and contexts."""
    seen: set[int] = set()
    found: BaseException | None = err
    while found is not None and id(found) not in seen:
        if isinstance(found, KeyboardInterrupt):
            return True
        seen.add(id(found))
        found = found.__cause__ or found.__context__
    return False


def identity(name: str) -> dict[str, str]:
    """``{"name": name, "version": ...}``: a backend and the version of its package installed in this Python (its
    distribution's version, read without importing it: ``"2026.4.1"`` for OpenVINO, whose sidecar record,
    :func:`version`, adds the build, ``"2026.4.1-22982-..."``; ``"?"`` where the package is not installed)."""
    try:
        found = importlib.metadata.version(name)
    except (importlib.metadata.PackageNotFoundError, ValueError):
        found = "?"
    return {"name": name, "version": found}


def planned() -> dict[str, str]:
    """The backend a detector made now in this process would run, as :func:`identity` (nothing imported): part
    of a batch's fingerprint (:func:`defacer.batch.runner._fingerprint`), so that a batch resumed under another
    backend or another version of it does its scans again.  An automatic choice of an OpenVINO that then fails
    to import falls back to onnxruntime: the batch's worker compares what ran (:func:`ran`).

    Raises
    ------
    DetectorError
        As :func:`chosen`.
    """
    return identity(chosen())


def ran(detector: object) -> dict[str, str] | None:
    """The backend that ``detector`` runs its network with, as :func:`identity` (``None`` for a detector without
    a network library: a stand-in, or labels given)."""
    name = getattr(detector, "backend", None)
    return identity(name) if name in LABELS else None


def version(module: ModuleType) -> str:
    """The library's version string (``"?"`` where it has none)."""
    return str(getattr(module, "__version__", "?"))
