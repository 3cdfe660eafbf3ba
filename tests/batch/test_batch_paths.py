"""No name in a batch's output carries what the de-identified DICOM headers no longer hold.

A DICOM export names folders after the patient (``DOE^JOHN_19700101/``) or the original UIDs, and files after
their SOPInstanceUIDs. The headers are de-identified; a series whose output folders would keep such a name is
refused (recorded as failed, nothing written) unless ``--allow-identifying-paths``, and the files inside a written
series are named ``IM00001.dcm``... whatever the input's names. Every fixture is a synthetic phantom.
"""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
import pytest
from batch_fixtures import write_dicom_phantom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from defacer.batch.runner import BatchConfig, run_batch
from defacer.cli.main import main
from defacer.options import Deidentification
from defacer.phi.paths import IdentifyingPathError, check_series_path, header_identifiers, identifiers_in_path

KEY = b"paths-test-key-0123456789abcdef"
DEID = Deidentification(key=KEY)


def _rename_by_sop_uid(folder: Path, target: Path) -> dict[str, str]:
    """Move the series in ``folder`` to ``target``, each file named ``<SOPInstanceUID>.dcm`` (as PACS exports
    do); return its original UIDs and identifying values by keyword (one instance's)."""
    target.mkdir(parents=True)
    values: dict[str, str] = {}
    for path in sorted(folder.iterdir()):
        ds = pydicom.dcmread(path)
        path.rename(target / f"{ds.SOPInstanceUID}.dcm")
        values = {k: str(ds.get(k, "")) for k in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID",
                                                  "PatientName", "PatientID")}
    folder.rmdir()
    return values


@pytest.fixture(scope="module")
def pacs_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, str], dict[str, str]]:
    """``in/DOE^JOHN_19700101/<SeriesInstanceUID>/<SOPInstanceUID>.dcm`` (named after its headers) and
    ``in/study-02/T1/<SOPInstanceUID>.dcm`` (a neutral folder, another patient); labels beside."""
    base = tmp_path_factory.mktemp("pacs")
    write_dicom_phantom(base / "tmp1", base / "labels1.nii.gz", seed=0, patient="Doe^John")
    series_uid = str(pydicom.dcmread(next((base / "tmp1").iterdir())).SeriesInstanceUID)
    named = _rename_by_sop_uid(base / "tmp1", base / "in" / "DOE^JOHN_19700101" / series_uid)
    write_dicom_phantom(base / "tmp2", base / "labels2.nii.gz", seed=1, patient="Roe^Bruno")
    neutral = _rename_by_sop_uid(base / "tmp2", base / "in" / "study-02" / "T1")
    for labels, rel in ((base / "labels1.nii.gz", f"DOE^JOHN_19700101/{series_uid}"), (base / "labels2.nii.gz",
                                                                                        "study-02/T1")):
        target = base / "labels" / f"{rel}.labels.nii.gz"
        target.parent.mkdir(parents=True, exist_ok=True)
        labels.rename(target)
    return base / "in", base / "labels", named, neutral


def _every_name(out: Path) -> list[str]:
    return [p.relative_to(out).as_posix() for p in out.rglob("*")]


def test_a_series_in_folders_named_after_its_headers_is_not_written(tmp_path: Path, pacs_export) -> None:
    """Before: OUT/DOE^JOHN_19700101/<original SeriesInstanceUID>/ was written, exit 0, not a word said."""
    source, labels, named, neutral = pacs_export
    out = tmp_path / "out"
    summary = run_batch(BatchConfig(in_root=source, out_root=out, labels_dir=labels, deidentify=DEID, quiet=True))
    by_key = {r.key: r for r in summary.records}
    refused = by_key[f"DOE^JOHN_19700101/{named['SeriesInstanceUID']}"]
    assert (refused.status, refused.error_type) == ("failed", "IdentifyingPathError")
    assert "folder 'DOE^JOHN_19700101' holds the patient's name and the birth date" in refused.error
    assert "holds the original SeriesInstanceUID" in refused.error and "--allow-identifying-paths" in refused.error
    assert by_key["study-02/T1"].status == "done"
    assert summary.exit_code == 1, "a refused series is a failed scan"
    names = [n for n in _every_name(out) if not n.startswith(".defacer")]
    assert not (out / "DOE^JOHN_19700101").exists()
    originals = [v for v in (*named.values(), *neutral.values()) if v]
    leaks = [(n, v) for n in names for v in originals if v.lower() in n.lower()]
    assert not leaks, leaks
    written = sorted((out / "study-02" / "T1").iterdir())
    assert [p.name for p in written] == [f"IM{n:05d}.dcm" for n in range(1, len(written) + 1)], (
        "files are numbered, not named after the input's SOPInstanceUIDs")
    uids = {str(pydicom.dcmread(p).SOPInstanceUID) for p in written}
    assert not any(uid in n for uid in uids for n in names), "nor after the new ones"


def test_allow_identifying_paths_writes_them_with_a_warning(tmp_path: Path, pacs_export, capsys) -> None:
    source, labels, named, _ = pacs_export
    out = tmp_path / "out"
    code = main(["batch", str(source), str(out), "--labels-dir", str(labels), "--key", KEY.decode(),
                 "--allow-identifying-paths", "--include", "DOE*"])
    assert code == 0
    series = out / "DOE^JOHN_19700101" / named["SeriesInstanceUID"]
    assert len(list(series.glob("IM*.dcm"))) > 0
    assert {str(pydicom.dcmread(p).PatientName) for p in series.iterdir()} != {"Doe^John"}
    records = [json.loads(line) for line in (out / ".defacer" / "manifest.jsonl").read_text().splitlines()]
    warnings = [w for r in records for w in r.get("warnings", [])]
    assert any("holds the patient's name and the birth date" in w and "Before sharing the output" in w for w in warnings)
    assert "1 scan has warnings" in capsys.readouterr().err


def test_headers_kept_as_they_are_are_not_checked(tmp_path: Path, pacs_export) -> None:
    """--no-deidentify keeps every identifier in the headers: the folder names add nothing, so no refusal."""
    source, labels, _, _ = pacs_export
    summary = run_batch(BatchConfig(in_root=source, out_root=tmp_path / "out", labels_dir=labels, deidentify=None,
                                    include=["DOE*"], quiet=True))
    assert summary.counts.done == 1


def _instance(folder: Path, **values: str) -> Path:
    """One small DICOM file (no pixels) with the given attributes."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "x.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


HEADER = {"PatientName": "Doe^John", "PatientID": "MRN483920", "AccessionNumber": "ACC99812",
          "PatientBirthDate": "19600131", "OtherPatientIDs": "X7"}


@pytest.mark.parametrize(("folder", "kinds"), [
    ("DOE^JOHN", ["PatientName"]),
    ("john_doe_T1", ["PatientName"]),
    ("JohnDoe", ["PatientName"]),
    ("doe-t1", ["PatientName"]),
    ("MRN483920", ["PatientID"]),
    ("mrn-483920_head", ["PatientID"]),
    ("ACC99812_MR", ["AccessionNumber"]),
    ("1960-01-31", ["PatientBirthDate"]),
    ("31.01.1960", ["PatientBirthDate"]),
    ("Doe_John_19600131", ["PatientName", "PatientBirthDate"]),
    # nothing of the header
    ("sub-01", []), ("T1_MPRAGE", []), ("Doedel", []), ("johnson", []), ("1960", []), ("x7", []),
])
def test_folder_names_are_compared_with_the_headers(tmp_path: Path, folder: str, kinds: list[str]) -> None:
    found = header_identifiers([_instance(tmp_path, **HEADER)])
    assert identifiers_in_path([folder], found) == ([(folder, kinds)] if kinds else [])


def test_original_uids_in_a_folder_name_are_found(tmp_path: Path) -> None:
    path = _instance(tmp_path)
    ds = pydicom.dcmread(path)
    found = header_identifiers([path])
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        assert identifiers_in_path([f"series_{ds[keyword].value}"], found)[0][1] == [keyword]


def test_placeholders_and_unreadable_files_refuse_nothing(tmp_path: Path) -> None:
    path = _instance(tmp_path / "anonymous", PatientName="Anonymous", PatientID="removed")
    (tmp_path / "anonymous" / "junk.dcm").write_bytes(b"not dicom at all")
    check_series_path("anonymous/removed", sorted((tmp_path / "anonymous").iterdir()), allow=False)
    with pytest.raises(IdentifyingPathError, match="original SOPInstanceUID"):
        check_series_path(f"a/{pydicom.dcmread(path).SOPInstanceUID}", [path], allow=False)


def test_a_dry_run_says_which_series_would_be_refused_and_why(tmp_path: Path, pacs_export, capsys,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    """Before: the dry run listed the identifying series as 'deface ... -> OUT/DOE^JOHN_19700101/...' (exit 0)."""
    source, labels, named, _ = pacs_export
    out = tmp_path / "out"
    args = ["batch", str(source), str(out), "--labels-dir", str(labels), "--key", KEY.decode(), "--dry-run"]
    assert main(args) == 1
    captured = capsys.readouterr()
    assert f"refuse   DOE^JOHN_19700101/{named['SeriesInstanceUID']}\n" in captured.out
    assert "deface   study-02/T1 -> " in captured.out and "1 refused (see the warnings)" in captured.out
    assert any("folder 'DOE^JOHN_19700101' holds the patient's name and the birth date" in m for m in caplog.messages)
    assert not out.exists()
    assert main([*args, "--allow-identifying-paths"]) == 0
    assert "2 to deface" in capsys.readouterr().out


def test_uids_the_headers_keep_are_not_counted(tmp_path: Path, pacs_export) -> None:
    """--retain-uids keeps the original UIDs in the headers, so a folder named by one links nothing more; the
    patient's name in a folder still counts."""
    from defacer.phi.options import DeidOptions

    path = _instance(tmp_path)
    series = str(pydicom.dcmread(path).SeriesInstanceUID)
    check_series_path(f"export/{series}", [path], allow=False, retain_uids=True)
    with pytest.raises(IdentifyingPathError):
        check_series_path(f"export/{series}", [path], allow=False)
    source, labels, _, _ = pacs_export
    kept = Deidentification(key=KEY, profile=DeidOptions(retain_uids=True))
    summary = run_batch(BatchConfig(in_root=source, out_root=tmp_path / "out", labels_dir=labels, deidentify=kept,
                                    include=["DOE*"], quiet=True))
    assert summary.records[0].error is not None and "the original SeriesInstanceUID" not in summary.records[0].error
    assert "holds the patient's name and the birth date" in summary.records[0].error
