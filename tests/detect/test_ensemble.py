"""An ensemble graph's members run side by side (defacer.detect.ensemble): the same floats as the graph itself."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from defacer.detect.ensemble import split_members
from defacer.detect.model import OnnxDetector, default_weights_path
from defacer.detect.preprocess import to_box
from defacer.phantom import make_phantom
from defacer.volume import canonical_reorientation

SHIPPED = default_weights_path()
needs_weights = pytest.mark.skipif(not SHIPPED.is_file(), reason="shipped weights not built yet")


def _session(model: bytes) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])


def _phantom_box(detector: OnnxDetector) -> np.ndarray:
    ph = make_phantom(2.0, axcodes="LPS", seed=3)
    reo = canonical_reorientation(ph.volume.affine, ph.volume.shape)
    box, _ = to_box(reo.to_ras(ph.volume.values()).astype(np.float32), reo.ras_affine, detector.box_shape,
                    detector.box_spacing)
    return box


@needs_weights
def test_the_shipped_graph_splits_into_its_two_members_whose_mean_is_the_graphs_output() -> None:
    members = split_members(SHIPPED.read_bytes())
    assert members is not None and len(members) == 2
    whole = _session(SHIPPED.read_bytes())
    parts = [_session(m) for m in members]
    assert [s.get_outputs()[0].name for s in parts] == ["/members.0/Div_output_0", "/members.1/Div_output_0"]
    batch = np.random.default_rng(1).random((1, 1, 96, 96, 96), dtype=np.float32)
    (expected,) = whole.run(None, {"image": batch})
    a, b = (s.run(None, {"image": batch})[0] for s in parts)
    assert np.array_equal((a + b) / np.float32(2), expected)


@needs_weights
def test_members_side_by_side_give_the_graphs_probabilities_and_labels_float_for_float() -> None:
    side_by_side = OnnxDetector(threads=2)
    whole = OnnxDetector(threads=1)
    assert side_by_side.member_sessions == 2 and whole.member_sessions == 1
    box = _phantom_box(whole)
    assert np.array_equal(side_by_side.probabilities(box), whole.probabilities(box))
    assert np.array_equal(side_by_side.probabilities(box, mirror=True), whole.probabilities(box, mirror=True))
    ph = make_phantom(2.0, axcodes="RAS", seed=5)
    image = ph.volume.values().astype(np.float32)
    labels = side_by_side.predict(image, ph.volume.affine)
    assert np.array_equal(labels, whole.predict(image, ph.volume.affine))
    assert set(np.unique(labels)) == {0, 1, 2, 3}


@needs_weights
def test_a_members_error_is_raised_in_the_calling_thread() -> None:
    detector = OnnxDetector(threads=2)
    with pytest.raises(Exception, match="(?i)dimension|shape|invalid"):
        detector.probabilities(np.zeros((8, 8, 8), np.float32))


def _graph(members: list[list], count: float, extra: list | None = None) -> bytes:
    """A model ``mean of members`` in the exporter's form: ``Div(Add(Add(m0, m1), ...), Constant count)``."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    nodes, terms = [], []
    for i, chain in enumerate(members):
        value = chain[0] if isinstance(chain[0], str) else "x"  # a chain may start from another's value
        for j, (op, *attrs) in enumerate(c for c in chain if not isinstance(c, str)):
            out = f"/members.{i}/{op}_{j}"
            inputs = [value] + ([attrs[0]] if attrs else [])
            nodes.append(helper.make_node(op, inputs, [out]))
            value = out
        terms.append(value)
    nodes += extra or []
    total = terms[0]
    for k, term in enumerate(terms[1:]):
        nodes.append(helper.make_node("Add", [total, term], [f"/Add_{k}"]))
        total = f"/Add_{k}"
    nodes.append(helper.make_node("Constant", [], ["/n"], value=helper.make_tensor("", TensorProto.FLOAT, [], [count])))
    nodes.append(helper.make_node("Div", [total, "/n"], ["y"]))
    inits = [helper.make_tensor("w", TensorProto.FLOAT, [1], [3.0]), helper.make_tensor("v", TensorProto.FLOAT, [1], [-2.0])]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model.SerializeToString()


def test_three_members_split_in_the_sums_order_and_each_keeps_only_its_own_weights() -> None:
    model = _graph([[("Mul", "w"), ("Sigmoid",)], [("Add", "v")], [("Relu",), ("Mul", "w")]], 3.0)
    members = split_members(model)
    assert members is not None and len(members) == 3
    x = np.random.default_rng(2).standard_normal((2, 3)).astype(np.float32)
    outs = [_session(m).run(None, {"x": x})[0] for m in members]
    assert np.allclose(outs[0], 1 / (1 + np.exp(-3 * x)), atol=1e-6)
    assert np.array_equal(outs[1], x + np.float32(-2))
    assert np.array_equal(outs[2], np.maximum(x, 0) * np.float32(3))
    (expected,) = _session(model).run(None, {"x": x})
    assert np.array_equal((outs[0] + outs[1] + outs[2]) / np.float32(3), expected)
    assert [len(m) < len(model) for m in members] == [True] * 3


@pytest.mark.parametrize("case", ["single network", "count is not the members", "shared node", "stray node",
                                  "no model"])
def test_anything_but_the_exported_mean_of_members_is_run_as_it_is(case: str) -> None:
    pytest.importorskip("onnx")
    from onnx import helper

    if case == "single network":
        model = _graph([[("Mul", "w")]], 1.0)  # Div by 1 of one term: no Add, no members
    elif case == "count is not the members":
        model = _graph([[("Mul", "w")], [("Relu",)]], 3.0)
    elif case == "shared node":  # both members read one computed value
        model = _graph([[("Sigmoid",), ("Mul", "w")], ["/members.0/Sigmoid_0", ("Relu",)]], 2.0)
    elif case == "stray node":  # a node no member needs
        model = _graph([[("Mul", "w")], [("Relu",)]], 2.0, extra=[helper.make_node("Neg", ["x"], ["unused"])])
    else:
        model = b"\x08\x07not an onnx model"
    assert split_members(model) is None


#: A process interrupted (a real SIGINT, at argv[1] seconds) while a member of the shipped graph runs in its thread
#: beside the calling one, which then waits for it (member 0 is a one-node graph, done at once): it exits 1.
EXIT_WHILE_A_MEMBER_RUNS = """
import os, signal, sys, threading
import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper
from defacer.detect.ensemble import SideBySide, split_members
from defacer.detect.model import default_weights_path
options = ort.SessionOptions()
options.log_severity_level = 3
options.intra_op_num_threads = 1
slow = ort.InferenceSession(split_members(default_weights_path().read_bytes())[1], sess_options=options,
                            providers=["CPUExecutionProvider"])
name = slow.get_inputs()[0].name
graph = helper.make_graph([helper.make_node("Identity", [name], ["y"])], "at-once",
                          [helper.make_tensor_value_info(name, TensorProto.FLOAT, None)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
fast = ort.InferenceSession(helper.make_model(graph).SerializeToString(), providers=["CPUExecutionProvider"])
box = np.random.default_rng(7).random((1, 1, 96, 96, 96), dtype=np.float32)
threading.Timer(float(sys.argv[1]), lambda: os.kill(os.getpid(), signal.SIGINT)).start()
try:
    SideBySide([fast, slow]).run(None, {name: box})
except KeyboardInterrupt:
    print("interrupted", [t.name for t in threading.enumerate() if t.name.startswith("defacer-member")],
          file=sys.stderr)
    sys.exit(1)
sys.exit(2)
"""


@needs_weights
def test_a_process_interrupted_while_a_member_runs_exits_with_its_own_status(tmp_path) -> None:
    """The members beside the calling thread were daemons, joined with ``Thread.join``: Ctrl-C while the calling
    thread waited for one raised at once, and the command's exit then ended the process while the member ran inside
    onnxruntime: SIGABRT, "terminate called without an active exception" (3 of 4 such exits at 0.3-0.4 s; the same
    with the thread no daemon, since an interrupted ``join`` marks its thread as ended).  The interrupt is now raised
    once the members are out of onnxruntime, none left running: every exit gives the status the program asked for."""
    import os
    import subprocess
    import sys

    pytest.importorskip("onnx")
    script = tmp_path / "exit_while_a_member_runs.py"
    script.write_text(EXIT_WHILE_A_MEMBER_RUNS)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    codes = []
    for delay in (0.2, 0.3, 0.4, 0.3):
        done = subprocess.run([sys.executable, str(script), str(delay)], env=env, capture_output=True, text=True,
                              check=False, timeout=120)
        codes.append((delay, done.returncode, done.stderr.strip()[-200:]))
    assert all(code == 1 and "interrupted []" in err for _, code, err in codes), codes
