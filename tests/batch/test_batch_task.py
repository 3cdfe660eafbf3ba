"""Per-scan pieces: seeds, the once-per-worker detector, file lists."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pytest

from defacer.batch import task as task_module
from defacer.batch.discover import Scan
from defacer.batch.task import input_files, scan_seed, worker_detector


def test_each_scan_has_its_own_stable_seed() -> None:
    assert scan_seed(0, "sub-01/anat/sub-01_T1w.nii.gz") == scan_seed(0, "sub-01/anat/sub-01_T1w.nii.gz")
    assert scan_seed(0, "sub-01/anat/sub-01_T1w.nii.gz") != scan_seed(0, "sub-02/anat/sub-02_T1w.nii.gz")
    assert scan_seed(0, "a") != scan_seed(1, "a")
    assert 0 <= scan_seed(123, "a") < 2**32


def test_the_detector_is_loaded_once_per_worker_process(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, object]] = []

    def fake_load_detector(labels_path: object = None, weights_path: object = None, threads: int = 0) -> object:
        calls.append({"weights_path": weights_path})
        return object()

    import defacer.pipeline

    monkeypatch.setattr(defacer.pipeline, "load_detector", fake_load_detector)
    monkeypatch.setattr(task_module, "_DETECTORS", {})
    first = worker_detector(None, 1)
    assert worker_detector(None, 1) is first
    assert len(calls) == 1
    worker_detector(Path("other.onnx"), 1)
    assert len(calls) == 2, "other weights are another detector"


def test_a_series_reads_every_file_of_its_folder_and_a_nhdr_its_data_file(tmp_path: Path) -> None:
    (tmp_path / "s").mkdir()
    for name in ("1.dcm", "2.dcm", ".hidden"):
        (tmp_path / "s" / name).write_bytes(b"x")
    series = Scan(path=tmp_path / "s", relpath=PurePosixPath("s"), kind="dicom")
    assert [p.name for p in input_files(series)] == ["1.dcm", "2.dcm"]
    (tmp_path / "h.nhdr").write_text("NRRD0004\n")
    (tmp_path / "h.raw.gz").write_bytes(b"x")
    header = Scan(path=tmp_path / "h.nhdr", relpath=PurePosixPath("h.nhdr"), kind="file",
                  companions=(tmp_path / "h.raw.gz",))
    assert [p.name for p in input_files(header)] == ["h.nhdr", "h.raw.gz"]
