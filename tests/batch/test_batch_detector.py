"""Engines agree byte for byte with an ONNX detector in the loop (not only with label files).

With the trained weights, multi-threaded BLAS in some workers and not others once moved a few
voxels (seen at 1.5 mm); every engine now runs one BLAS thread per worker.  This tiny stand-in
network does not reproduce that effect, so ``test_batch_real.py`` also compares engines on real
heads with the shipped weights.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from defacer.batch.runner import BatchConfig, run_batch

onnx = pytest.importorskip("onnx")


def _tiny_onnx_detector(path: Path) -> Path:
    """A 1x1x1 convolution + softmax: classes are intensity bands (a stand-in network, not a trained one)."""
    from onnx import TensorProto, helper, numpy_helper

    weights = numpy_helper.from_array(np.array([0.0, 1.0, 2.0, 3.0], np.float32).reshape(4, 1, 1, 1, 1), "W")
    bias = numpy_helper.from_array(np.array([3.0, 1.5, 0.0, -1.6], np.float32), "B")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "W", "B"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1)],
        "tiny", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 1, None, None, None])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [1, 4, None, None, None])],
        initializer=[weights, bias])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, path)
    return path


def _images(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.nii.gz"))}


def test_serial_processes_and_dask_agree_with_an_onnx_detector(
        tmp_path: Path, bids_template: tuple[Path, Path, list[str]]) -> None:
    pytest.importorskip("distributed")
    ds, _, _ = bids_template
    weights = _tiny_onnx_detector(tmp_path / "tiny.onnx")
    outputs = {}
    for name, extra in [("serial", {}), ("processes", {"jobs": 2}), ("dask", {"jobs": 2, "scheduler": "local"})]:
        # The stand-in network finds no feature after post-processing: write the scans anyway.
        summary = run_batch(BatchConfig(in_root=ds, out_root=tmp_path / name, weights_path=weights,
                                        include=["sub=01"], quiet=True, allow_missing=True,
                                        **extra))  # type: ignore[arg-type]
        assert summary.counts.done == 2, [r.error for r in summary.records]
        assert summary.records[0].provenance["detector"]["weights_sha256"]
        outputs[name] = _images(tmp_path / name)
    assert outputs["serial"] == outputs["processes"] == outputs["dask"]


@pytest.mark.parametrize("case", ["no-backend", "not-installed"])
def test_a_detector_backend_that_cannot_be_used_stops_the_batch_once_before_anything_is_written(
        tmp_path: Path, bids_template: tuple[Path, Path, list[str]], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], case: str) -> None:
    """SAFE29: ``DEFACER_DETECTOR_BACKEND`` naming no backend (a typo), or forcing one not installed, failed every
    scan of a batch one by one, each "FAILED" with the same words, after OUT had been set up (its dataset
    description, ``.bidsignore`` and ``.defacer/``), exit 1.  ``deface`` says it once, before anything is written;
    so does ``batch`` now, with its input untouched and no OUT."""
    from defacer.cli.main import main
    from defacer.detect import backend

    ds, _, _ = bids_template
    before = {p: p.read_bytes() for p in ds.rglob("*") if p.is_file()}
    if case == "no-backend":
        monkeypatch.setenv(backend.ENV, "openvino\u200b")  # a zero-width space pasted with the name
    else:
        monkeypatch.setenv(backend.ENV, backend.OPENVINO)
        monkeypatch.setattr(backend, "installed", lambda name: False)
    out = tmp_path / "out"
    code = main(["batch", str(ds), str(out), "--include", "sub=01"])
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert code == 1, text
    words = "names no backend" if case == "no-backend" else "package is not installed"
    assert text.count(words) == 1 and backend.ENV in text, text
    assert "Traceback" not in text and "FAILED" not in text, text
    assert not out.exists(), sorted(p.name for p in out.rglob("*"))
    assert {p: p.read_bytes() for p in ds.rglob("*") if p.is_file()} == before
