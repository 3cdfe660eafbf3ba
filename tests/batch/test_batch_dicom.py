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
    # Folder names that hold nothing of the headers (a folder named after the patient is refused: test_batch_paths).
    names = {"pat1": "Doe^Alice", "pat2": "Roe^Bruno"}
    for patient, series, seed in [("pat1", "t1", 0), ("pat1", "t1_repeat", 1), ("pat2", "t1", 2)]:
        write_dicom_phantom(base / "in" / patient / series, base / "labels" / patient / f"{series}.labels.nii.gz",
                            seed=seed, patient=names[patient])
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
    assert not (tmp_path / "out" / "export_notes.txt").exists(), "a DICOM export's other files stay out by default"
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
    assert {str(d.PatientName) for d in after} == {"Roe^Bruno"}


def test_a_lone_series_folder_is_written_under_its_own_name(tmp_path: Path, dicom_export: tuple[Path, Path]) -> None:
    source, labels = dicom_export
    summary = run_batch(BatchConfig(in_root=source / "pat2" / "t1", out_root=tmp_path / "out", deidentify=DEID,
                                    labels_dir=labels / "pat2", quiet=True))
    assert summary.counts.done == 1, summary.records[0].error
    assert len(_series(tmp_path / "out" / "t1")) == len(_series(source / "pat2" / "t1"))
    assert (tmp_path / "out" / "t1.defacer.json").is_file()


def _long_options(command: str, capsys: pytest.CaptureFixture[str]) -> set[str]:
    import re

    assert main([command, "--help"]) == 0
    return set(re.findall(r"(?<![\w-])--[a-z][a-z-]+", capsys.readouterr().out))


def test_batch_offers_every_option_deface_has(capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 12, item 3: batch lacked --protect-depth, --eye-band, the --retain-* flags and --allow-burned-in.
    Only the options that name one output (or one input) stay deface's own."""
    one_output_only = {"--save-mask", "--series", "--labels", "--mapping-file", "--what-if", "--describe", "--help"}
    missing = _long_options("deface", capsys) - _long_options("batch", capsys) - one_output_only
    assert not missing, f"batch lacks {sorted(missing)}"


def test_batch_options_reach_every_scan(tmp_path: Path, dicom_export: tuple[Path, Path]) -> None:
    """The flags are not only parsed: --retain-uids keeps the UIDs, --eye-band reaches the pipeline, and the
    fingerprint changes with them (a resumed batch redoes the scans)."""
    source, labels = dicom_export
    out = tmp_path / "out"
    args = ["batch", str(source / "pat2"), str(out), "--labels-dir", str(labels / "pat2"), "--key",
            KEY.decode(), "-q"]
    assert main([*args, "--retain-uids", "--eye-band", "4", "--protect-depth", "12"]) == 0
    before, after = _series(source / "pat2" / "t1"), _series(out / "t1")
    assert {d.SOPInstanceUID for d in before} == {d.SOPInstanceUID for d in after}
    sidecar = (out / "t1.defacer.json").read_text()
    assert '"eye_band_mm": 4.0' in sidecar and '"protect_depth_mm": 12.0' in sidecar
    assert "113110" in sidecar, "Retain UIDs Option recorded among the method codes"
    # The same options again: nothing to do; other options: the scan is redone.
    assert main([*args, "--retain-uids", "--eye-band", "4", "--protect-depth", "12"]) == 0
    assert '"eye_band_mm": 4.0' in (out / "t1.defacer.json").read_text()
    assert main(args) == 0
    after = _series(out / "t1")
    assert {d.SOPInstanceUID for d in before}.isdisjoint({d.SOPInstanceUID for d in after})
    assert '"eye_band_mm": 6.0' in (out / "t1.defacer.json").read_text()


def test_a_bids_dataset_never_carries_its_dicom_files_into_the_output(tmp_path: Path) -> None:
    """Before: DICOM files in a BIDS dataset outside sourcedata/ were copied to OUT as they were (pixels with the
    face, the header with the patient's name); exit 0."""
    from batch_fixtures import write_bids_phantoms

    ds, labels = tmp_path / "ds", tmp_path / "labels"
    write_bids_phantoms(ds, labels, [("01", None, "T1w", "T1")])
    write_dicom_phantom(ds / "sub-01" / "dicom", tmp_path / "unused.nii.gz", patient="Quexworth^Ambrose")
    summary = run_batch(BatchConfig(in_root=ds, out_root=tmp_path / "out", labels_dir=labels, quiet=True))
    assert summary.counts.done == 1
    out_files = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert not [p for p in out_files if p.suffix == ".dcm"]
    assert not [p for p in out_files if b"Quexworth" in p.read_bytes()]


def _pacs_media(root: Path, labels: Path) -> None:
    """A PACS CD/DVD layout: DICOMDIR and a report at the top, the series in DICOM/<series>/."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    for name, seed in (("S1", 0), ("S2", 1)):
        write_dicom_phantom(root / "DICOM" / name, labels / "DICOM" / f"{name}.labels.nii.gz", seed=seed,
                            patient="Quexworth^Ambrose")
    directory = Dataset()
    directory.file_meta = FileMetaDataset()
    directory.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    directory.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.1.3.10"
    directory.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    record = Dataset()
    record.DirectoryRecordType, record.PatientName, record.PatientID = "PATIENT", "Quexworth^Ambrose", "MRN778899"
    directory.DirectoryRecordSequence = Sequence([record])
    directory.save_as(root / "DICOMDIR", enforce_file_format=True)
    (root / "report.txt").write_text("Quexworth Ambrose, MRN778899: MR head\n")


def test_a_pacs_media_export_is_defaced_series_by_series_and_its_other_files_stay_out(tmp_path: Path) -> None:
    """Before: the DICOMDIR at the top made the whole export one 'series' whose subfolders were not searched, so
    the batch failed with 'holds 2 image stacks; choose one with --series' (a flag batch has not); with one series
    it was written as OUT/<IN's name>. And a DICOM export's report was copied into OUT as it was."""
    _pacs_media(tmp_path / "in", tmp_path / "labels")
    out = tmp_path / "out"
    summary = run_batch(BatchConfig(in_root=tmp_path / "in", out_root=out, labels_dir=tmp_path / "labels",
                                    deidentify=DEID, quiet=True))
    assert sorted(r.key for r in summary.records if r.status == "done") == ["DICOM/S1", "DICOM/S2"]
    assert not (out / "DICOMDIR").exists() and not (out / "report.txt").exists()
    assert not [p for p in out.rglob("*") if p.is_file() and b"Quexworth" in p.read_bytes()]
    copied = run_batch(BatchConfig(in_root=tmp_path / "in", out_root=tmp_path / "copied", labels_dir=tmp_path / "labels",
                                   deidentify=DEID, others="copy", quiet=True))
    assert copied.counts.done == 2 and (tmp_path / "copied" / "report.txt").is_file(), "--others copy carries them"
    assert not (tmp_path / "copied" / "DICOMDIR").exists(), "never the directory of patients"


def test_a_folder_mixing_two_series_fails_saying_to_split_it(tmp_path: Path) -> None:
    """Before: the error told the batch user to 'choose one with --series', a flag batch has not."""
    import shutil

    write_dicom_phantom(tmp_path / "in" / "mixed", tmp_path / "labels" / "mixed.labels.nii.gz", seed=0)
    write_dicom_phantom(tmp_path / "other", tmp_path / "unused.nii.gz", seed=1)
    for path in sorted((tmp_path / "other").iterdir())[:5]:
        shutil.copy(path, tmp_path / "in" / "mixed" / f"x{path.name}")
    summary = run_batch(BatchConfig(in_root=tmp_path / "in", out_root=tmp_path / "out", deidentify=DEID,
                                    labels_dir=tmp_path / "labels", quiet=True))
    error = summary.records[0].error or ""
    assert "holds 2 image stacks. Put each series in a folder of its own (what 'defacer batch' needs)" in error


@pytest.mark.parametrize("where", ["in", "out"])
def test_a_key_file_inside_in_or_out_is_refused(tmp_path: Path, where: str, capsys) -> None:
    """Before: 'batch IN OUT --key-file IN/secret.key' carried the key into OUT with the de-identified data (a BIDS
    dataset's other files are copied), where anyone could recompute the pseudonyms of a guessed patient ID."""
    from batch_fixtures import write_bids_phantoms

    ds, labels = tmp_path / "in", tmp_path / "labels"
    write_bids_phantoms(ds, labels, [("01", None, "T1w", "T1")])
    (tmp_path / "out").mkdir()
    key = tmp_path / where / "secret.key"
    key.write_bytes(KEY)
    code = main(["batch", str(ds), str(tmp_path / "out"), "--labels-dir", str(labels), "--key-file", str(key),
                 "-q", "--force"])
    assert code == 1
    assert f"lies inside the batch {'input' if where == 'in' else 'output'}" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == (["secret.key"] if where == "out" else [])


def test_a_dicom_export_sorted_into_sub_folders_is_a_folder_of_series(tmp_path: Path) -> None:
    """A DICOM export in sub-01/ct/, sub-02/t1/ (no dataset_description.json, no image file) was taken for a BIDS
    dataset: every series was passed over as 'DICOM outside sourcedata/' and the batch ended 'No scans found ...
    (as a bids folder)', exit 1, while the warning told the user to run 'defacer batch' on the folder they had
    given (seen on copies of the real ge-headct and fnndsc series)."""
    source = tmp_path / "in"
    for subject, series, seed in (("sub-01", "ct", 0), ("sub-02", "t1", 1)):
        write_dicom_phantom(source / subject / series, tmp_path / "labels" / subject / f"{series}.labels.nii.gz",
                            seed=seed, patient=f"Doe^{subject[-1]}")
    summary = run_batch(BatchConfig(in_root=source, out_root=tmp_path / "out", labels_dir=tmp_path / "labels",
                                    deidentify=DEID, quiet=True))
    assert [(r.key, r.status) for r in summary.records] == [("sub-01/ct", "done"), ("sub-02/t1", "done")]
    assert len(list((tmp_path / "out" / "sub-02" / "t1").glob("IM*.dcm"))) == len(list((source / "sub-02" / "t1")
                                                                                        .iterdir()))
    assert not (tmp_path / "out" / "dataset_description.json").exists(), "no BIDS dataset is made up"


def test_series_written_by_earlier_header_rules_are_done_again(tmp_path: Path, dicom_export: tuple[Path, Path],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """HOSTILE5 taught the header rules to replace or remove more (original UIDs in unlisted attributes, web
    addresses, unlisted dates); the fingerprint named only the version and the key, so the rerun of a batch over an
    OUT written before skipped those series, keeping what the new rules remove."""
    from defacer.batch import runner
    from defacer.batch.discover import discover

    source, labels = dicom_export
    config = BatchConfig(in_root=source, out_root=tmp_path / "out", labels_dir=labels, quiet=True, deidentify=DEID)
    series = next(s for s in discover(source).scans if s.kind == "dicom")
    seen: list[dict] = []
    monkeypatch.setattr(runner, "options_fingerprint", lambda fields: seen.append(fields) or "x")
    runner._fingerprint(config, series, None, "d", config.deidentify)
    runner._fingerprint(config, series, None, "d", None)
    assert seen[0]["dicom_rules"] == runner.DICOM_RULES_REVISION >= 1
    assert "dicom_rules" not in seen[1], "--no-deidentify: headers kept, nothing to redo"


def test_a_series_holding_one_instance_in_two_different_files_fails_alone(tmp_path: Path,
                                                                         dicom_export: tuple[Path, Path]) -> None:
    """SAFE27 (6af328a) refuses a DICOM input where two different files carry one SOP Instance UID; in a batch that
    scan fails with the refusal's words, nothing written for it, and the other series are defaced (one bad scan never
    stops a batch)."""
    import shutil

    source, labels = dicom_export
    copy = tmp_path / "in"
    shutil.copytree(source, copy)
    slices = sorted((copy / "pat1" / "t1").glob("*.dcm"))
    twin = pydicom.dcmread(slices[3])
    twin.SeriesDescription = "edited by hand"  # the same instance, another header
    twin.save_as(copy / "pat1" / "t1" / "zz_reexported.dcm")
    before = {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    out = tmp_path / "out"
    summary = run_batch(BatchConfig(in_root=copy, out_root=out, labels_dir=labels, deidentify=DEID, quiet=True))
    status = {r.key: r for r in summary.records}
    assert (summary.counts.done, summary.counts.failed) == (2, 1), {k: r.status for k, r in status.items()}
    failed = next(r for r in summary.records if r.status == "failed")
    assert failed.key.startswith("pat1/t1") and not failed.key.startswith("pat1/t1_repeat"), failed.key
    assert "two different files of one instance" in (failed.error or ""), failed.error
    assert "zz_reexported.dcm" in (failed.error or ""), failed.error
    assert not list((out / "pat1" / "t1").glob("*.dcm")), "nothing written for the refused series"
    assert list((out / "pat1" / "t1_repeat").glob("*.dcm")) and list((out / "pat2" / "t1").glob("*.dcm"))
    assert {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()} == before, "the input is never modified"
