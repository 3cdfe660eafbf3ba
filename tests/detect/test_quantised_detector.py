"""The shipped detector: the trained float ensemble with six low-resolution convolutions per member in int8.

scripts/quantise_detector.py makes it from the folds of scripts/split_detector_members.py (docs/model-card.md,
"Speed and size of v3", session 26).  These tests read the shipped graph's nodes (the ``onnx`` package), run it and
the float ensemble on the same box, and rebuild it from the real heads where they are present.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from defacer.detect.ensemble import split_members
from defacer.detect.model import OnnxDetector, default_weights_path

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

REPO = Path(__file__).resolve().parents[2]
SHIPPED = default_weights_path()
FLOAT = SHIPPED.parent / "float" / "detector.onnx"
DATA = REPO.parent / "shared" / "data"
needs_weights = pytest.mark.skipif(not SHIPPED.is_file(), reason="shipped weights not built yet")
needs_float = pytest.mark.skipif(not FLOAT.is_file(), reason="the float ensemble (models/float) is not present")


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(model: Path | bytes, box: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model if isinstance(model, bytes) else str(model), options,
                                   providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"image": box})[0])


@needs_weights
def test_each_member_runs_its_low_resolution_convolutions_in_int8_and_the_rest_in_float() -> None:
    int8 = _load("quantise_detector").INT8_CONVS
    graph = onnx.load(str(SHIPPED)).graph
    for member in (0, 1):
        quantised = {n.name for n in graph.node if n.op_type == "QLinearConv" and n.name.startswith(f"members.{member}.")}
        floats = {n.name for n in graph.node if n.op_type == "Conv" and n.name.startswith(f"members.{member}.")}
        assert quantised == {f"members.{member}./net/{c}/Conv_quant" for c in int8}
        assert len(floats) == 27 - len(int8)
        assert f"members.{member}./net/decoders.2/decoders.2.0/Conv" in floats  # the full-resolution ones float
    assert SHIPPED.stat().st_size < 20_000_000


@needs_weights
@needs_float
def test_the_card_names_the_float_ensemble_it_was_made_from() -> None:
    card = json.loads(SHIPPED.with_suffix(".json").read_text())
    recorded = card["quantisation"]["float_model"]
    assert recorded["sha256"] == hashlib.sha256(FLOAT.read_bytes()).hexdigest()
    assert card["sha256"] == hashlib.sha256(SHIPPED.read_bytes()).hexdigest()
    # each member calibrated only on heads the ensemble trained on, never on a head held out from that member
    held_out = _load("split_detector_members").HELD_OUT
    for (member, heads), fold in zip(card["quantisation"]["calibration_heads"].items(), ("foldA", "foldB")):
        assert fold in member and heads and not set(heads) & set(held_out[fold])


@needs_weights
@needs_float
def test_the_shipped_graph_is_the_mean_of_its_members_and_classes_a_box_as_the_float_ensemble() -> None:
    box = np.clip(np.random.default_rng(3).normal(0.4, 0.3, size=(1, 1, 96, 96, 96)), 0, 1.5).astype(np.float32)
    members = split_members(SHIPPED.read_bytes())
    assert members is not None and len(members) == 2
    whole = _run(SHIPPED, box)
    assert np.array_equal(whole, (_run(members[0], box) + _run(members[1], box)) / np.float32(2))
    reference = _run(FLOAT, box)
    assert (whole.argmax(1) == reference.argmax(1)).mean() > 0.999
    detector = OnnxDetector(SHIPPED)
    assert detector.member_sessions == (2 if detector.cores >= 2 else 1)  # cut and run side by side as before


@needs_weights
@needs_float
@pytest.mark.skipif(not (DATA / "heads").is_dir(), reason="the real heads (../shared/data) are not present")
def test_the_script_rebuilds_the_shipped_graph_from_the_float_folds(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime.quantization")
    folds = _load("split_detector_members").split(FLOAT, tmp_path / "folds")
    script = _load("quantise_detector")
    card = json.loads(FLOAT.with_suffix(".json").read_text())
    quantised = []
    for name in script.FOLDS:
        heads = json.loads(folds[name].with_suffix(".json").read_text())["trained_on"]
        _, boxes = script.calibration_boxes(heads, DATA, card["box"])
        quantised.append(tmp_path / f"{name}-int8.onnx")
        script.quantise_member(folds[name], boxes, quantised[-1])
    script.assemble(quantised, FLOAT, tmp_path / "detector.onnx")
    assert (tmp_path / "detector.onnx").read_bytes() == SHIPPED.read_bytes()
