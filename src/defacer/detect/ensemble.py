"""An ensemble graph's members, cut out of its ONNX bytes, so that onnxruntime can run them side by side.

``defacer train --ensemble`` exports the mean of N networks as one graph: the members' nodes, then
``Add(...Add(Add(m0, m1), m2)..., m{N-1})`` and a ``Div`` by the constant N (:class:`defacer.train.export.Ensemble`).
onnxruntime runs such a graph node after node, each operator split over the cores, which meet (or spin) at every
operator's end.  Run as N graphs of their own, one per thread with one onnxruntime thread each, the members no longer
wait for each other: on the project's 2-core VM the network took 6-9 % less CPU time (measured under load,
2026-12-06; docs/model-card.md, "Speed and size of v3"), and the probabilities are the same floats (the mean is taken
here with the same float32 additions, in the same order, and the same division).  The cost: both members'
activations are alive at once (the command's peak memory 420 -> about 530 MB on a 1 mm head).

Only the standard library reads the graph (the ``onnx`` package is not a run-time dependency): the protobuf wire
format is walked for the few fields needed (ONNX's ``onnx.proto``: the model's graph; the graph's nodes,
initializers, inputs and outputs; a node's inputs, outputs, type and its ``value`` attribute), and every other
field is copied as it is.  Anything that is not exactly the exported pattern gives ``None`` and the graph is run
as it is.
"""

from __future__ import annotations

import struct
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from defacer.threads import WaitedThread, wait_out

if TYPE_CHECKING:
    from defacer.detect.prefault import Prefault

# Field numbers of onnx.proto (ModelProto, GraphProto, NodeProto, ValueInfoProto, AttributeProto, TensorProto).
_MODEL_GRAPH = 7
_GRAPH_NODE, _GRAPH_INITIALIZER, _GRAPH_INPUT, _GRAPH_OUTPUT, _GRAPH_VALUE_INFO = 1, 5, 11, 12, 13
_NODE_INPUT, _NODE_OUTPUT, _NODE_OP_TYPE, _NODE_ATTRIBUTE = 1, 2, 4, 5
_VALUE_INFO_NAME = 1
_ATTRIBUTE_NAME, _ATTRIBUTE_TENSOR = 1, 5
_TENSOR_DIMS, _TENSOR_DATA_TYPE, _TENSOR_FLOAT_DATA, _TENSOR_NAME, _TENSOR_RAW_DATA = 1, 2, 4, 8, 9
_FLOAT = 1  # TensorProto.FLOAT

#: One protobuf field: (field number, wire type, value: an int for varints, else the field's bytes).
_Field = tuple[int, int, "int | bytes"]


@dataclass(frozen=True)
class _Node:
    """A node's raw bytes and the fields read from it."""

    raw: bytes
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    op_type: str


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    """The varint at ``pos`` and the position after it."""
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated or overlong varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(data: bytes) -> list[_Field]:
    """Every field of one protobuf message, in order.

    Raises
    ------
    ValueError
        On bytes that are not a protobuf message (a wire type of groups or an unknown one, a length past the end).
    """
    out: list[_Field] = []
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        value: int | bytes
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            value, pos = data[pos:pos + size], pos + size
        elif wire == 2:
            size, pos = _varint(data, pos)
            value, pos = data[pos:pos + size], pos + size
        else:
            raise ValueError(f"protobuf wire type {wire} is not read here")
        if pos > len(data):
            raise ValueError("field runs past the end of the message")
        out.append((number, wire, value))
    return out


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _encode(fields: list[_Field]) -> bytes:
    """The message of ``fields`` (the inverse of :func:`_fields`)."""
    out = bytearray()
    for number, wire, value in fields:
        out += _encode_varint(number << 3 | wire)
        if wire == 0:
            assert isinstance(value, int)
            out += _encode_varint(value)
        else:
            assert isinstance(value, bytes)
            out += (_encode_varint(len(value)) if wire == 2 else b"") + value
    return bytes(out)


def _strings(fields: list[_Field], number: int) -> tuple[str, ...]:
    return tuple(v.decode() for n, w, v in fields if n == number and w == 2 and isinstance(v, bytes))


def _node(raw: bytes) -> _Node:
    fields = _fields(raw)
    return _Node(raw, _strings(fields, _NODE_INPUT), _strings(fields, _NODE_OUTPUT),
                 (_strings(fields, _NODE_OP_TYPE) or ("",))[0])


def _constant_scalar(node: _Node) -> float | None:
    """The float32 scalar of a ``Constant`` node's ``value`` attribute, else ``None``."""
    if node.op_type != "Constant":
        return None
    for number, _, attribute in _fields(node.raw):
        if number != _NODE_ATTRIBUTE or not isinstance(attribute, bytes):
            continue
        attr = _fields(attribute)
        if _strings(attr, _ATTRIBUTE_NAME) != ("value",):
            continue
        tensors = [v for n, w, v in attr if n == _ATTRIBUTE_TENSOR and isinstance(v, bytes)]
        if len(tensors) != 1:
            return None
        tensor = _fields(tensors[0])
        if [v for n, _, v in tensor if n == _TENSOR_DATA_TYPE] != [_FLOAT] or any(n == _TENSOR_DIMS for n, _, _ in tensor):
            return None
        raw = [v for n, _, v in tensor if n in (_TENSOR_RAW_DATA, _TENSOR_FLOAT_DATA) and isinstance(v, bytes)]
        if len(raw) != 1 or len(raw[0]) != 4:
            return None
        return float(struct.unpack("<f", raw[0])[0])
    return None


def _needed(nodes: list[_Node], output: str) -> tuple[set[int], set[str]]:
    """The indices of the nodes ``output`` is computed from, and every value name they read or write."""
    names, picked = {output}, set()
    for index in range(len(nodes) - 1, -1, -1):
        if names.intersection(nodes[index].outputs):
            picked.add(index)
            names.update(nodes[index].inputs)
            names.update(nodes[index].outputs)
    names.discard("")  # an omitted optional input
    return picked, names


def split_members(model: bytes) -> list[bytes] | None:
    """The member graphs of an ensemble graph exported by ``defacer train --ensemble``, else ``None``.

    Parameters
    ----------
    model : bytes
        A serialized ONNX ``ModelProto``.

    Returns
    -------
    list of bytes or None
        N serialized models, member ``i`` computing the ``i``-th term of the graph's mean (its input as the
        graph's, its one output shaped as the graph's output, its name that term's), in the sum's order;
        ``None`` where the graph is not the mean of N >= 2 members that share nothing but the input (a single
        network, another structure, bytes that are no ONNX model).
    """
    try:
        return _split(model)
    except (ValueError, UnicodeDecodeError, struct.error):
        return None


def _split(model: bytes) -> list[bytes] | None:
    top = _fields(model)
    graphs = [v for n, w, v in top if n == _MODEL_GRAPH and w == 2 and isinstance(v, bytes)]
    if len(graphs) != 1:
        return None
    graph = _fields(graphs[0])
    nodes = [_node(v) for n, w, v in graph if n == _GRAPH_NODE and isinstance(v, bytes)]
    outputs = [v for n, w, v in graph if n == _GRAPH_OUTPUT and isinstance(v, bytes)]
    if len(outputs) != 1:
        return None
    output_info = _fields(outputs[0])
    (output,) = _strings(output_info, _VALUE_INFO_NAME) or ("",)
    producer = {name: i for i, node in enumerate(nodes) for name in node.outputs}
    # the mean: Div(sum, Constant N), the sum a left-nested chain of N - 1 Adds
    mean = producer.get(output)
    if mean is None or nodes[mean].op_type != "Div" or len(nodes[mean].inputs) != 2:
        return None
    total, divisor = nodes[mean].inputs
    constant = producer.get(divisor)
    count = _constant_scalar(nodes[constant]) if constant is not None else None
    if count is None or count != int(count) or not 2 <= count <= 16:
        return None
    glue, terms = {mean, constant}, []
    for _ in range(int(count) - 1):
        add = producer.get(total)
        if add is None or nodes[add].op_type != "Add" or len(nodes[add].inputs) != 2:
            return None
        glue.add(add)
        total, term = nodes[add].inputs
        terms.append(term)
    terms.append(total)
    terms.reverse()  # m0, m1, ..., in the order the chain adds them
    slices = [_needed(nodes, term) for term in terms]
    picked = [indices for indices, _ in slices]
    # a Constant node two members read (the exporter writes one for both softmaxes' axes) goes into each
    computed = [{i for i in p if nodes[i].op_type != "Constant"} for p in picked]
    if any(glue & p for p in computed) or sum(map(len, computed)) != len(set().union(*computed)) or \
            set().union(glue, *picked) != set(range(len(nodes))):
        return None  # members sharing a computed node, or nodes that belong to no member
    members = []
    for term, (indices, names) in zip(terms, slices):
        kept: list[_Field] = []
        for field in graph:
            number, wire, value = field
            if number == _GRAPH_NODE or number == _GRAPH_VALUE_INFO:
                continue  # nodes added below; shapes of intermediate values are inferred again
            if number == _GRAPH_OUTPUT:
                renamed = [f if f[0] != _VALUE_INFO_NAME else (f[0], f[1], term.encode()) for f in output_info]
                kept.append((number, wire, _encode(renamed)))
                continue
            if number in (_GRAPH_INITIALIZER, _GRAPH_INPUT) and isinstance(value, bytes):
                name_field = _TENSOR_NAME if number == _GRAPH_INITIALIZER else _VALUE_INFO_NAME
                if not set(_strings(_fields(value), name_field)) & names:
                    continue  # another member's weights (or an input this member does not read)
            kept.append(field)
        body = [(_GRAPH_NODE, 2, nodes[i].raw) for i in sorted(indices)] + kept
        members.append(_encode([f if f[0] != _MODEL_GRAPH else (f[0], f[1], _encode(body)) for f in top]))
    return members


class SideBySide:
    """The members of an ensemble graph, each an onnxruntime session, run at once in threads of their own.

    Stands where the graph's own session would (:meth:`run`, :meth:`get_inputs`, :meth:`get_outputs`): one
    call runs member 0 in the calling thread and every other member in a thread of its own (onnxruntime lets go of
    Python's lock while it runs), then sums their outputs in the graph's order and divides by their count, in
    float32: the operations of the graph's own ``Add`` and ``Div`` nodes, so the result is the same floats.

    Parameters
    ----------
    sessions : list of onnxruntime.InferenceSession
        One per member (:func:`split_members`), in the sum's order; each takes the graph's input and gives one
        output shaped as the graph's.
    prefault : Prefault, optional
        Where the sessions take their memory from onnxruntime's shared arena: its touching ahead, whose memory
        the first pass uses (the mean written to its touched array) and which hands the arena's memory back
        after every pass, in a thread beside what follows (the mean then written to an array of its own, the
        members' outputs let go first).
    """

    def __init__(self, sessions: list[Any], prefault: Prefault | None = None) -> None:
        self.sessions = list(sessions)
        #: the shared arena's touching (:mod:`defacer.detect.prefault`), for the first pass; kept to hand the
        #: arena's memory back after every pass
        self._prefault = self._arena = prefault
        self._releasing: WaitedThread | None = None
        self._lock = threading.Lock()

    def settle(self) -> None:
        """Wait for the threads begun beside the passes: the memory's touching ahead (where no pass took it) and
        the last pass's hand-back, so that none outlives a run (:func:`defacer.ahead.forget`)."""
        with self._lock:
            ahead, releasing = self._prefault, self._releasing
        if ahead is not None:
            ahead.wait()
        if releasing is not None:
            releasing.wait_out()

    def get_inputs(self) -> list[Any]:
        """The first member's inputs (every member takes the graph's input)."""
        return list(self.sessions[0].get_inputs())

    def get_outputs(self) -> list[Any]:
        """The first member's outputs (shaped as the graph's)."""
        return list(self.sessions[0].get_outputs())

    def run(self, names: list[str] | None, feed: dict[str, Any]) -> list[npt.NDArray[np.float32]]:
        """``[mean of the members' outputs]`` for ``feed`` (``names`` is ignored: the one output).

        Raises
        ------
        Exception
            The first member's error (onnxruntime's own types), raised in the calling thread.
        """
        outs: list[Any] = [None] * len(self.sessions)
        errors: list[BaseException] = []

        def member(index: int) -> None:
            try:
                (outs[index],) = self.sessions[index].run(None, feed)
            except BaseException as err:  # noqa: BLE001 - raised again in the calling thread
                errors.append(err)

        # Not daemons, and waited for even when the calling thread is interrupted (defacer.threads.wait_out): a process that ended
        # while a member ran inside onnxruntime (Ctrl-C while the calling thread waited for it, then the command's
        # exit) aborted ("terminate called without an active exception", SIGABRT), as the memory's touching did
        # (defacer.detect.prefault).
        others = [WaitedThread(target=member, args=(i,), name=f"defacer-member-{i}", daemon=False)
                  for i in range(1, len(self.sessions))]
        with self._lock:
            first, self._prefault = self._prefault, None
            releasing, self._releasing = self._releasing, None
        if releasing is not None:  # the last pass's memory handed back first
            releasing.wait_out()
        touched = first.take() if first is not None else None  # waits for the touching, if not done yet
        try:
            for thread in others:
                thread.start()
            member(0)
        finally:
            wait_out(others)  # those started
        try:
            if errors:
                raise errors[0]
            if self._arena is None:
                total, added = np.asarray(outs[0], np.float32), 1  # this call's own array: summed in place
            else:  # the members' outputs lie in the arena, handed back below: the sum goes to an array of its own
                fits = touched is not None and touched.shape == np.shape(outs[0])
                total, added = np.add(outs[0], outs[1], out=touched if fits else None, dtype=np.float32), 2
            for out in outs[added:]:
                total += out  # the graph's Add, in its order
            total /= np.float32(len(outs))  # its Div by the member count
        finally:
            if self._arena is not None:  # its memory handed back beside the stages that follow
                outs.clear()
                self._releasing = WaitedThread(target=self._arena.release, name="defacer-arena-release")
                self._releasing.start()  # not a daemon: an interpreter that exits waits for it
        return [total]
