"""A batch's fingerprint holds the library that runs the detector's network (onnxruntime or OpenVINO,
``DEFACER_DETECTOR_BACKEND``) and its version, as the sidecar's ``detector.backend`` records them: a batch resumed
under the other library does again the scans the detector defaced (their labels differ by a few voxels between the
two), as it does after any other change of what shapes an output; scans defaced from label files are kept."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from defacer.batch.manifest import Manifest
from defacer.batch.runner import BatchConfig, run_batch
from defacer.detect import backend
from defacer.detect.model import default_weights_path
from defacer.phantom import make_phantom, save_phantom

needs_weights = pytest.mark.skipif(not default_weights_path().is_file(), reason="shipped weights not built yet")
needs_openvino = pytest.mark.skipif(not backend.installed("openvino"),
                                    reason="openvino is not installed (pip install 'defacer[openvino]')")


def _scans(root: Path) -> Path:
    root.mkdir()
    save_phantom(make_phantom(2.0, axcodes="RAS", seed=5), root / "head.nii.gz")
    return root


def _run(monkeypatch: pytest.MonkeyPatch, choice: str, ds: Path, out: Path) -> tuple[int, int]:
    monkeypatch.setenv(backend.ENV, choice)
    summary = run_batch(BatchConfig(in_root=ds, out_root=out, quiet=True))
    assert summary.exit_code == 0, [r.error for r in summary.records]
    return summary.counts.done, summary.counts.skipped


@needs_weights
@needs_openvino
def test_a_batch_resumed_under_the_other_backend_does_its_scans_again(tmp_path, monkeypatch) -> None:
    ds, out = _scans(tmp_path / "in"), tmp_path / "out"
    assert _run(monkeypatch, "onnxruntime", ds, out) == (1, 0)
    assert _run(monkeypatch, "onnxruntime", ds, out) == (0, 1)  # nothing changed: kept
    assert _run(monkeypatch, "openvino", ds, out) == (1, 0)  # the other library: done again
    sidecar = json.loads((out / "head.defacer.json").read_text())
    assert sidecar["detector"]["backend"]["name"] == "openvino"
    assert _run(monkeypatch, "openvino", ds, out) == (0, 1)
    assert _run(monkeypatch, "onnxruntime", ds, out) == (1, 0)
    (record,) = list(Manifest(out / ".defacer" / "manifest.jsonl"))
    assert record.provenance["detector"]["backend"]["name"] == "onnxruntime"


@needs_weights
def test_a_worker_whose_detector_runs_another_library_than_planned_leaves_its_scan_to_redo(tmp_path,
                                                                                           monkeypatch) -> None:
    """A batch plans the library from its own install (nothing imported); a worker with another install (a Dask
    worker elsewhere) or an OpenVINO that fails to import there runs another: the scan is written, its record
    says so, and the next run does it again rather than counting it as done with the planned library."""
    ds, out = _scans(tmp_path / "in"), tmp_path / "out"
    monkeypatch.setattr(backend, "planned", lambda: {"name": "onnxruntime", "version": "0.0-another-install"})
    assert _run(monkeypatch, "onnxruntime", ds, out) == (1, 0)
    (record,) = list(Manifest(out / ".defacer" / "manifest.jsonl"))
    assert record.fingerprint == "" and (out / "head.nii.gz").is_file()
    assert any("not onnxruntime 0.0-another-install as the batch planned" in w for w in record.warnings)
    monkeypatch.undo()
    assert _run(monkeypatch, "onnxruntime", ds, out) == (1, 0)  # done again, now as planned
    assert _run(monkeypatch, "onnxruntime", ds, out) == (0, 1)
