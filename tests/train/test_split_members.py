"""scripts/split_detector_members.py: the shipped ensemble cut into its two fold members, each with a card that
lets benchmarks/evaluate_detector.py score a head only with the member that never saw it."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "src" / "defacer" / "models" / "detector.onnx"


def _script():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("split_detector_members", REPO / "scripts" / "split_detector_members.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_members_average_to_the_shipped_graph_and_their_cards_leave_out_their_heads(tmp_path: Path) -> None:
    script = _script()
    paths = script.split(SHIPPED, tmp_path)
    assert sorted(paths) == ["foldA", "foldB"]
    shipped_card = json.loads(SHIPPED.with_suffix(".json").read_text())
    box = np.random.default_rng(1).normal(size=(1, 1, *shipped_card["box"]["shape"])).astype(np.float32)

    def run(path: Path) -> np.ndarray:
        return np.asarray(ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": box})[0])

    mean = (run(paths["foldA"]) + run(paths["foldB"])) / 2
    np.testing.assert_allclose(mean, run(SHIPPED), atol=1e-5)
    assert not np.allclose(run(paths["foldA"]), run(paths["foldB"]), atol=1e-3)  # two different networks
    for name, path in paths.items():
        card = json.loads(path.with_suffix(".json").read_text())
        assert card["class_weights"] == shipped_card["class_weights"] and card["mirror"] == shipped_card["mirror"]
        assert card["box"] == shipped_card["box"]
        held_out = set(script.HELD_OUT[name])
        assert held_out.isdisjoint(card["trained_on"])
        assert set(card["trained_on"]) | held_out == set(shipped_card["trained_on"])


def test_fold_files_already_there_are_kept_without_force(tmp_path: Path) -> None:
    script = _script()
    (tmp_path / "foldA.onnx").write_bytes(b"keep me")
    with pytest.raises(SystemExit, match="--force"):
        script.split(SHIPPED, tmp_path)
    assert (tmp_path / "foldA.onnx").read_bytes() == b"keep me"
