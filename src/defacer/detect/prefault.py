"""The network's working memory touched ahead, in a thread, so that its first pass takes no page faults.

On the project's 2-core VM the first touch of fresh memory costs 3-5 ms/MB of kernel time.  The ensemble's two
members (:class:`defacer.detect.ensemble.SideBySide`, each in a thread with one onnxruntime thread) plan about
140 MB of activations each for a 96^3 box; without an arena every pass maps that memory afresh, and one pass
faulted 71,000-92,000 new 4 kB pages (0.15-0.2 s of kernel CPU, inside the network's time).  Here the members'
sessions take their memory from one arena that onnxruntime keeps in its environment
(``onnxruntime.create_and_register_allocator``; each session opts in with ``session.use_env_allocators``), and a
tiny graph of our own (``ConstantOfShape`` of the members' need, its ``Shape`` the output) writes that much of the
arena ahead, in a thread begun when the detector is made: ``defacer deface`` makes the detector while it imports
its libraries and reads the scan, minutes of a core that would otherwise wait.  The first pass then carves its
activations from memory already mapped.  The array the members' mean is written to is touched there too.  After the
pass the arena's free memory goes back to the system (onnxruntime's ``memory.enable_memory_arena_shrinkage``,
asked for by one more run of the tiny graph), so the later stages and later passes find memory as before.

Only where the pass is run: the values written are the members' own (the same operators on the same inputs; where
a buffer lies changes no float).  If the arena cannot be registered (another component of the process registered
one first) or touching fails, the detector runs as without it.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from defacer.detect.ensemble import _encode, _Field
from defacer.threads import WaitedThread

#: Bytes of arena touched per member and per box voxel: the shipped members (96^3 box) need 287-288 MiB for both
#: (measured 2026-12-06: 272 MiB left one member's activations to fresh memory, 288 MiB none); 176 bytes gives
#: 297 MiB, a few per cent to spare.  Less than needed only costs the faults of what does not fit.
ARENA_BYTES_PER_VOXEL = 176

#: Most bytes touched ahead (the 1 GB peak-memory target): a user's card may declare a box up to 256^3 and an
#: ensemble up to 16 members, whose need (tens of GB) is not touched before the pass asks for it; such a
#: detector's members keep no shared arena and fault their memory as they go.
MAX_TOUCH_BYTES = 1 << 30

#: onnxruntime's run option that hands an arena's free memory back at the end of a run.
SHRINK = "memory.enable_memory_arena_shrinkage"

_registered: bool | None = None
_register_lock = threading.Lock()


def shared_arena(ort: Any) -> bool:
    """Register onnxruntime's CPU arena in its environment, once per process; whether one is there to use.

    The arena grows by what is asked (``arena_extend_strategy`` 1, "same as requested"), so the touched block is
    one region that later requests are carved from.
    """
    global _registered
    with _register_lock:
        if _registered is None:
            try:
                info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
                config = ort.OrtArenaCfg({"arena_extend_strategy": 1, "max_mem": 0,
                                          "initial_chunk_size_bytes": 1 << 20})
                ort.create_and_register_allocator(info, config)
                _registered = True
            except Exception:  # noqa: BLE001 - another arena registered first, or an onnxruntime without the call
                _registered = False
        return _registered


TOUCH_FILL = np.array(1.0, "<f4").tobytes()
"""The value the touching writes (float32 1.0, little-endian): any value but zero (:func:`touch_model`)."""


def touch_model() -> bytes:
    """A serialized ONNX model: input ``shape`` (int64, [1]) -> ``ConstantOfShape`` ones (float32, written) ->
    ``Shape`` -> output ``size`` (int64, [1]: the input again; the ones are never read, so the touching costs one
    write pass).  Written with the protobuf helpers of :mod:`defacer.detect.ensemble` (``onnx`` is no run-time
    dependency); opset 13, IR version 7."""
    def value_info(name: str, elem_type: int, dims: list[int]) -> bytes:
        shape = _encode([(1, 2, _encode([(1, 0, d)])) for d in dims])
        tensor_type = _encode([(1, 0, elem_type), (2, 2, shape)])
        return _encode([(1, 2, name.encode()), (2, 2, _encode([(1, 2, tensor_type)]))])

    # Ones, not zeros: a page of zeros may be taken back by the kernel and mapped to its shared zero page (the
    # shrinker of under-used transparent huge pages, KSM), and the pass's first write to it faults again.
    one = _encode([(1, 0, 1), (2, 0, 1), (9, 2, TOUCH_FILL)])  # dims [1], FLOAT, raw 1.0
    fill = _encode([(1, 2, b"shape"), (2, 2, b"ones"), (4, 2, b"ConstantOfShape"),
                    (5, 2, _encode([(1, 2, b"value"), (20, 0, 4), (5, 2, one)]))])  # attribute type TENSOR
    read = _encode([(1, 2, b"ones"), (2, 2, b"size"), (4, 2, b"Shape")])  # reads no value: no pass over them
    graph: list[_Field] = [(1, 2, fill), (1, 2, read), (2, 2, b"defacer-touch"),
                           (11, 2, value_info("shape", 7, [1])), (12, 2, value_info("size", 7, [1]))]
    opset = _encode([(1, 2, b""), (2, 0, 13)])
    return _encode([(1, 0, 7), (8, 2, opset), (7, 2, _encode(graph))])


class Prefault:
    """``nbytes`` of the shared arena, and an array of ``result_shape`` float32, touched in a thread of their own.

    Parameters
    ----------
    ort : module
        onnxruntime.
    make_session : callable
        Makes an onnxruntime session (with ``session.use_env_allocators``) from a serialized model.
    nbytes : int
        Bytes of arena to touch (the members' need).
    result_shape : tuple of int
        Shape of the members' mean, (1, C, *box): written to the touched array (:meth:`take`).
    """

    def __init__(self, ort: Any, make_session: Callable[[bytes], Any], nbytes: int,
                 result_shape: tuple[int, ...]) -> None:
        self._ort = ort
        self._session = make_session(touch_model())
        self._count = max(1, int(nbytes) // 4)
        self._shape = tuple(int(n) for n in result_shape)
        self._result: npt.NDArray[np.float32] | None = None
        self.touched = False
        # Not a daemon: a process that ends while the touching runs inside onnxruntime (a run refused before its
        # detector was used) aborted with "terminate called without an active exception" (SIGABRT, exit 134)
        # when the thread was a daemon; the interpreter now waits for it (a fraction of a second) before it ends,
        # and a wait for it that Ctrl-C interrupts still waits it out (defacer.threads: an interrupted join let the
        # exit pass it by, SIGABRT again).
        self._thread = WaitedThread(target=self._touch, name="defacer-prefault", daemon=False)
        self._thread.start()

    def _touch(self) -> None:
        try:
            self._session.run(None, {"shape": np.array([self._count], np.int64)})
            result = np.empty(self._shape, np.float32)
            result.fill(1.0)  # np.zeros would map its pages lazily; not zeros (touch_model: the kernel's zero page)
            self._result = result
            self.touched = True
        except Exception:  # noqa: BLE001 - only speed is at stake: the pass runs as without it
            self._result = None

    def wait(self) -> None:
        """Wait for the touching to end (a run that ends without a pass: no thread outlives it)."""
        self._thread.wait_out()  # through an interrupt too (defacer.threads)

    def take(self) -> npt.NDArray[np.float32] | None:
        """Wait for the touching; the touched array for the members' mean (once), or ``None`` where it failed."""
        self._thread.wait_out()  # through an interrupt too (defacer.threads)
        result, self._result = self._result, None
        return result

    def release(self) -> None:
        """Hand the arena's free memory back to the system (one tiny run of the touch graph, with shrinkage)."""
        self._thread.wait_out()  # through an interrupt too (defacer.threads)
        options = self._ort.RunOptions()
        options.add_run_config_entry(SHRINK, "cpu:0")
        with contextlib.suppress(Exception):  # else the memory stays with the arena: a cost in memory only
            self._session.run(None, {"shape": np.array([1], np.int64)}, options)


def arena_bytes(members: int, box_shape: tuple[int, ...]) -> int:
    """Bytes of arena ``members`` members need for one pass on a box of ``box_shape`` voxels
    (:data:`ARENA_BYTES_PER_VOXEL`)."""
    return int(members) * ARENA_BYTES_PER_VOXEL * math.prod(int(n) for n in box_shape)
