"""scripts/quantise_detector.py: an int8 variant of the shipped detector (measured in session 26, not shipped).

The members are the shipped ensemble's fold members (scripts/split_detector_members.py); the checks run the real
graphs with onnxruntime: the assembled ensemble is the members' mean and is cut again by the detector's own
``split_members``; a quantised member runs exactly the seven named convolutions in int8 and classes a box as the
float member does.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxruntime.quantization")

from defacer.detect.ensemble import split_members
from defacer.detect.model import default_weights_path

REPO = Path(__file__).resolve().parents[2]
SHIPPED = default_weights_path()
pytestmark = pytest.mark.skipif(not SHIPPED.is_file(), reason="shipped weights not built yet")


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def folds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return _load("split_detector_members").split(SHIPPED, tmp_path_factory.mktemp("folds"))


def _run(model: Path | bytes, box: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model if isinstance(model, bytes) else str(model), options,
                                   providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"image": box})[0])


def _box(seed: int) -> np.ndarray:
    return np.clip(np.random.default_rng(seed).normal(0.4, 0.3, size=(1, 1, 96, 96, 96)), 0, 1.5).astype(np.float32)


def test_the_assembled_ensemble_is_the_mean_of_its_members_and_splits_like_the_exported_one(folds, tmp_path) -> None:
    script = _load("quantise_detector")
    out = tmp_path / "ensemble.onnx"
    script.assemble([folds["foldA"], folds["foldB"]], SHIPPED, out)  # the float members: the shipped graph's function
    box = _box(5)
    assert np.array_equal(_run(out, box), _run(SHIPPED, box))
    members = split_members(out.read_bytes())
    assert members is not None and len(members) == 2
    assert [ort.InferenceSession(m, providers=["CPUExecutionProvider"]).get_outputs()[0].name for m in members] == [
        "/members.0/Div_output_0", "/members.1/Div_output_0"]
    script.check(out, [folds["foldA"], folds["foldB"]], SHIPPED, box)  # stops (SystemExit) on a mismatch


def test_a_quantised_member_runs_the_seven_named_convolutions_in_int8_and_classes_a_box_as_the_float_one(
        folds, tmp_path) -> None:
    script = _load("quantise_detector")
    out = tmp_path / "foldA-int8.onnx"
    script.quantise_member(folds["foldA"], [_box(1), _box(2)], out)
    nodes = onnx.load(str(out)).graph.node
    assert {n.name for n in nodes if n.op_type == "QLinearConv"} == {f"/net/{c}/Conv_quant" for c in script.INT8_CONVS}
    assert sum(n.op_type == "Conv" for n in nodes) == 27 - len(script.INT8_CONVS)
    box = _box(3)
    quantised, reference = _run(out, box), _run(folds["foldA"], box)
    assert (quantised.argmax(1) == reference.argmax(1)).mean() > 0.99
    assert not np.array_equal(quantised, reference)
