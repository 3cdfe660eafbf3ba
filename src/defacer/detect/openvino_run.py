"""The detector's network run by OpenVINO's CPU plugin, behind onnxruntime's session calls.

:class:`OpenVinoSession` stands where :class:`defacer.detect.model.OnnxDetector` keeps an onnxruntime session
(:meth:`~OpenVinoSession.run`, :meth:`~OpenVinoSession.get_inputs`, :meth:`~OpenVinoSession.get_outputs`), so the
detector's stages around the network are the same code whatever runs it (:mod:`defacer.detect.backend`).  The
whole graph is compiled as it is: an ensemble's members side by side (:mod:`defacer.detect.ensemble`) helped
onnxruntime, whose threads meet at every operator's end, but made OpenVINO slower on 2 cores (0.8-1.25 s against
0.40-0.65 s for the whole graph on two threads, measured 2026-12-06).

Settings: float32 throughout (``INFERENCE_PRECISION_HINT``: on CPUs with bfloat16 or AMX units OpenVINO would
otherwise run in bfloat16 and the probabilities would move), ``threads`` inference threads but never fewer than
:data:`MIN_THREADS`, the latency hint (one stream), and no pinning of threads to cores (``ENABLE_CPU_PINNING`` off:
the batch's workers would otherwise each be pinned from the first core on, all to the same one).

Why never one thread: OpenVINO 2026.4.1's CPU plugin sums an instance normalisation's mean and variance (its MVN
kernel) in another order on one thread than on several, so a graph compiled for one thread gives other
probabilities (up to 5.7e-4 on a random box; the first MVN of the shipped graph already differs by 7e-4) and label
maps a few voxels apart (1-12 voxels on 6 of 7 real heads; OV29, 2026-12-06, on the project's 2-core VM, where
OpenVINO caps the count at the 2 cores it sees, so more threads were not tried).  A batch's workers get one thread
each there (``--jobs 2``): their outputs differed from a serial batch's and from ``defacer deface``'s, against the
batch's promise of the same bytes whatever the engine.  A worker given one core now runs two inference threads on
it (its CPU per pass about the same: 0.81-0.95 s against 0.86-0.91 s, two workers at once, load 12-15).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import threading
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class Port:
    """A graph input or output as onnxruntime describes it: its name and shape (a named axis as a string)."""

    name: str
    shape: list[int | str]


def _port(output: Any) -> Port:
    shape = output.get_partial_shape()
    dims: list[int | str] = [int(d.get_length()) if d.is_static else "?" for d in shape] if shape.rank.is_static \
        else ["?"]
    return Port(str(output.get_any_name()), dims)


#: The fewest inference threads a graph is compiled for: one thread gives other floats than two or more (see the
#: module's docstring).
MIN_THREADS = 2


def settings(threads: int) -> dict[str, Any]:
    """The CPU plugin's settings for ``threads`` inference threads (at least :data:`MIN_THREADS`); see the module's
    docstring."""
    return {"INFERENCE_NUM_THREADS": max(MIN_THREADS, int(threads)), "INFERENCE_PRECISION_HINT": "f32",
            "PERFORMANCE_HINT": "LATENCY", "ENABLE_CPU_PINNING": False}


class OpenVinoSession:
    """An ONNX graph compiled by OpenVINO for the CPU, run as onnxruntime's ``InferenceSession.run`` is.

    Parameters
    ----------
    ov : module
        ``openvino``.
    graph : bytes
        The serialized ONNX model (the bytes whose sha256 the detector checked).
    threads : int
        Inference threads the caller may use (compiled for at least :data:`MIN_THREADS`: :func:`settings`).

    Notes
    -----
    One detector may serve several threads (the web page's jobs): a run takes an infer request of its own from a
    pool (made on first need; one request is made here, whose memory the first pass fills), and each run's
    outputs are copies of its own (writeable).
    """

    def __init__(self, ov: ModuleType, graph: bytes, threads: int) -> None:
        core = ov.Core()
        model = core.read_model(io.BytesIO(graph))
        self._compiled = core.compile_model(model, "CPU", settings(threads))
        if len(self._compiled.inputs) != 1 or len(self._compiled.outputs) != 1:
            self._requests: list[Any] = []  # refused by the detector's graph check (one input, one output)
        else:
            self._requests = [self._compiled.create_infer_request()]
        self._lock = threading.Lock()
        self.threads = max(1, int(threads))

    def get_inputs(self) -> list[Port]:
        """The graph's inputs (name, shape)."""
        return [_port(i) for i in self._compiled.inputs]

    def get_outputs(self) -> list[Port]:
        """The graph's outputs (name, shape)."""
        return [_port(o) for o in self._compiled.outputs]

    def run(self, names: list[str] | None, feed: dict[str, npt.NDArray[np.float32]]) -> list[npt.NDArray[np.float32]]:
        """``[output]`` for ``feed`` (one array: the graph's one input; ``names`` is ignored: the one output)."""
        (array,) = feed.values()
        with self._lock:
            request = self._requests.pop() if self._requests else self._compiled.create_infer_request()
        try:
            result = request.infer({0: np.ascontiguousarray(array, dtype=np.float32)})
            out = np.asarray(result[0])
        finally:
            with self._lock:
                self._requests.append(request)
        return [out]


#: Largest weights file compiled ahead (:func:`start_compiling`), bytes: the shipped graph is 2.8 MB; a larger
#: file is read and compiled where the detector is made, as before.
MAX_AHEAD_BYTES = 64 << 20


def cores(threads: int) -> int:
    """Cores the network may use: ``threads`` where given (above 0), else the cores this process may run on."""
    if threads > 0:
        return int(threads)
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # no affinity call on this system (macOS, Windows)
        return os.cpu_count() or 1


def start_compiling(ov: ModuleType, weights: Path, threads: int = 0) -> bool:
    """Begin compiling the graph of ``weights`` in a thread (:func:`defacer.ahead.start_network`), for the
    :class:`~defacer.detect.model.OnnxDetector` made later with these weights and ``threads`` to take
    (:func:`take_compiled`); return whether it was begun.

    ``defacer deface`` calls it once numpy and OpenVINO are imported, before nibabel, SciPy and the pipeline's
    modules: OpenVINO compiles outside Python's global lock, so on two cores the compilation (0.2-0.3 s on the
    project's VM) runs beside those imports instead of after them.  Only bytes the weights' card vouches for are
    compiled: the card beside the weights (``<stem>.json``) must record their sha256.  Anything else (no card, no
    digest, another digest, a file that is not regular or over :data:`MAX_AHEAD_BYTES`, an unreadable one) begins
    nothing, and the detector reads, checks and compiles the file as before, its errors included.  The
    compilation's own error (a graph OpenVINO refuses) is raised where the detector takes it, as where it compiled.

    The detector reads and hashes the file again: kept so on purpose (reviewed by SAFE30).  It takes the network
    only where the sha256 of bytes it read itself is the one compiled (the key), so it never runs bytes it did not
    check.  Handing it the bytes read here would save only the read (the sha256 it must still compute is 1.4 ms of
    the 1.6-5 ms that the read and hash of the 2.8 MB graph take on the project's VM, 2026-12-06 22:52 UTC, load 3.5,
    in the detector's thread beside the imports); handing it the digest too would make it trust a check it did
    not make.

    Parameters
    ----------
    ov : module
        ``openvino``, imported (:func:`defacer.detect.backend.import_runtime`).
    weights : Path
        The ``.onnx`` file.
    threads : int, optional
        As :class:`~defacer.detect.model.OnnxDetector`'s ``threads`` (0: every core this process may run on).
    """
    from defacer import ahead

    try:
        with open(os.open(weights, os.O_RDONLY | os.O_NONBLOCK), "rb") as handle:  # a pipe never blocks the open
            status = os.fstat(handle.fileno())
            if not stat.S_ISREG(status.st_mode) or status.st_size > MAX_AHEAD_BYTES:
                return False
            graph = handle.read(MAX_AHEAD_BYTES + 1)
        card_path = weights.with_suffix(".json")
        if not card_path.is_file() or card_path.stat().st_size > MAX_AHEAD_BYTES:
            return False
        card = json.loads(card_path.read_bytes())
    except (OSError, ValueError, RecursionError):  # the detector's own reading says what is wrong
        return False
    digest = hashlib.sha256(graph).hexdigest()
    if not isinstance(card, dict) or card.get("sha256") != digest:
        return False
    count = cores(threads)
    return ahead.start_network((digest, count), lambda: OpenVinoSession(ov, graph, count))


def take_compiled(weights_sha256: str, threads: int) -> OpenVinoSession | None:
    """The session compiled ahead (:func:`start_compiling`) from the bytes whose sha256 is ``weights_sha256``, for
    ``threads`` inference threads (waited for), or ``None`` where none was begun for them.

    Raises
    ------
    Exception
        The compilation's own error.
    """
    from defacer import ahead

    loading = ahead.take_network((weights_sha256, threads))
    return loading.result() if loading is not None else None
