"""Batches of DICOM series folders: pixels defaced, headers de-identified consistently, engines agree."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from batch_fixtures import write_dicom_phantom

from defacer.batch.runner import BatchConfig, run_batch
from defacer.cli.main import main
from defacer.options import Deidentification

KEY = b"batch-test-key-0123456789abcdef"
DEID = Deidentification(key=KEY)


@pytest.fixture(scope="module")
def dicom_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two patients, three axial phantom series, plus a stray text file; labels beside."""
    base = tmp_path_factory.mktemp("dicom_export")
    for patient, series, seed in [("pat1", "t1", 0), ("pat1", "t1_repeat", 1), ("pat2", "t1", 2)]:
        write_dicom_phantom(base / "in" / patient / series, base / "labels" / patient / f"{series}.labels.nii.gz",
                            seed=seed, patient=f"Doe^{patient}")
    (base / "in" / "export_notes.txt").write_text("exported by PACS\n")
    return base / "in", base / "labels"


def _series(folder: Path) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(p) for p in sorted(folder.rglob("*.dcm"))]


def _volume(datasets: list[pydicom.Dataset]) -> np.ndarray:
    ordered = sorted(datasets, key=lambda d: float(d.ImagePositionPatient[2]))
    return np.stack([d.pixel_array for d in ordered])


def test_each_series_is_defaced_and_de_identified(tmp_path: Path, dicom_export: tuple[Path, Path]) -> None:
    source, labels = dicom_export
    summary = run_batch(BatchConfig(in_root=source, out_root=tmp_path / "out", labels_dir=labels, deidentify=DEID,
                                    quiet=True))
    assert (summary.counts.done, summary.counts.failed) == (3, 0)
    assert (tmp_path / "out" / "export_notes.txt").is_file()
    patient_ids = {}
    for rel in ["pat1/t1", "pat1/t1_repeat", "pat2/t1"]:
        before, after = _series(source / rel), _series(tmp_path / "out" / rel)
        assert len(after) == len(before)
        changed = _volume(before) != _volume(after)
        assert 0 < changed.sum() < 0.05 * changed.size
        assert all(str(d.PatientName) != str(before[0].PatientName) for d in after)
        assert all(d.PatientIdentityRemoved == "YES" and "PatientBirthDate" not in d or not d.PatientBirthDate
                   for d in after)
        patient_ids[rel] = {str(d.PatientID) for d in after}
        assert (tmp_path / "out" / f"{rel}.defacer.json").is_file()
    assert patient_ids["pat1/t1"] == patient_ids["pat1/t1_repeat"] != patient_ids["pat2/t1"], (
        "one key gives one pseudonym per patient across series and workers")


def test_dicom_batches_resume_and_agree_across_engines(tmp_path: Path, dicom_export: tuple[Path, Path]) -> None:
    source, labels = dicom_export
    serial = run_batch(BatchConfig(in_root=source, out_root=tmp_path / "serial", labels_dir=labels, deidentify=DEID,
                                   quiet=True))
    again = run_batch(BatchConfig(in_root=source, out_root=tmp_path / "serial", labels_dir=labels, deidentify=DEID,
                                  quiet=True))
    assert (serial.counts.done, again.counts.skipped) == (3, 3)
    parallel = run_batch(BatchConfig(in_root=source, out_root=tmp_path / "jobs2", labels_dir=labels, deidentify=DEID,
                                     jobs=2, quiet=True))
    assert parallel.counts.done == 3
    for path in sorted((tmp_path / "serial").rglob("*.dcm")):
        twin = tmp_path / "jobs2" / path.relative_to(tmp_path / "serial")
        assert path.read_bytes() == twin.read_bytes(), f"{path.name} differs between engines"


def test_without_a_key_dicom_series_are_redone_on_every_run(tmp_path: Path, dicom_export: tuple[Path, Path],
                                                            caplog: pytest.LogCaptureFixture) -> None:
    source, labels = dicom_export
    config = BatchConfig(in_root=source, out_root=tmp_path / "out", labels_dir=labels, include=["pat2/*"], quiet=True)
    assert run_batch(config).counts.done == 1
    assert "random key" in caplog.text
    assert run_batch(config).counts.done == 1, "a new random key means new pseudonyms, so the series is redone"


def test_no_deidentify_keeps_headers_from_the_command_line(tmp_path: Path, dicom_export: tuple[Path, Path]) -> None:
    source, labels = dicom_export
    code = main(["batch", str(source), str(tmp_path / "out"), "--labels-dir", str(labels), "--no-deidentify",
                 "--include", "pat2/*", "--quiet"])
    assert code == 0
    after = _series(tmp_path / "out" / "pat2" / "t1")
    assert {str(d.PatientName) for d in after} == {"Doe^pat2"}


def test_a_lone_series_folder_is_written_under_its_own_name(tmp_path: Path, dicom_export: tuple[Path, Path]) -> None:
    source, labels = dicom_export
    summary = run_batch(BatchConfig(in_root=source / "pat2" / "t1", out_root=tmp_path / "out", deidentify=DEID,
                                    labels_dir=labels / "pat2", quiet=True))
    assert summary.counts.done == 1, summary.records[0].error
    assert len(_series(tmp_path / "out" / "t1")) == len(_series(source / "pat2" / "t1"))
    assert (tmp_path / "out" / "t1.defacer.json").is_file()
