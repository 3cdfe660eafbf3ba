"""The detector's network run by OpenVINO's CPU plugin, behind onnxruntime's session calls.

:class:`OpenVinoSession` stands where :class:`defacer.detect.model.OnnxDetector` keeps an onnxruntime session
(:meth:`~OpenVinoSession.run`, :meth:`~OpenVinoSession.get_inputs`, :meth:`~OpenVinoSession.get_outputs`), so the
detector's stages around the network are the same code whatever runs it (:mod:`defacer.detect.backend`).  The
whole graph is compiled as it is: an ensemble's members side by side (:mod:`defacer.detect.ensemble`) helped
onnxruntime, whose threads meet at every operator's end, but made OpenVINO slower on 2 cores (0.8-1.25 s against
0.40-0.65 s for the whole graph on two threads, measured 2026-12-06).

Settings: float32 throughout (``INFERENCE_PRECISION_HINT``: on CPUs with bfloat16 or AMX units OpenVINO would
otherwise run in bfloat16 and the probabilities would move), ``threads`` inference threads, the latency hint (one
stream), and no pinning of threads to cores (``ENABLE_CPU_PINNING`` off: the batch's workers, one thread each,
would otherwise each be pinned from the first core on, all to the same one).
"""

from __future__ import annotations

import io
import threading
from dataclasses import dataclass
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


def settings(threads: int) -> dict[str, Any]:
    """The CPU plugin's settings for ``threads`` inference threads (at least 1); see the module's docstring."""
    return {"INFERENCE_NUM_THREADS": max(1, int(threads)), "INFERENCE_PRECISION_HINT": "f32",
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
        Inference threads (at least 1).

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
