"""Finding scans in BIDS datasets, image folders and DICOM folders; include/exclude filters."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

import pytest

from defacer.batch.discover import discover, image_stem, matches, parse_bids_name
from defacer.errors import InputImageError


def _touch(path: Path, content: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def _fake_dicom(path: Path) -> Path:
    return _touch(path, b"\0" * 128 + b"DICM" + b"\0" * 16)


def test_parses_bids_entities_suffix_and_datatype() -> None:
    entities = parse_bids_name(PurePosixPath("sub-01/ses-2/anat/sub-01_ses-2_acq-mp2_run-1_T1w.nii.gz"))
    assert entities == {"sub": "01", "ses": "2", "acq": "mp2", "run": "1", "suffix": "T1w", "datatype": "anat"}


def test_image_stem_strips_only_image_endings() -> None:
    assert image_stem("a.nii.gz") == "a"
    assert image_stem("b.nhdr") == "b"
    assert image_stem("notes.txt") == "notes.txt"


def test_finds_every_anat_image_and_ct_but_not_masks_func_or_sourcedata(tmp_path: Path) -> None:
    ds = tmp_path / "ds"
    _touch(ds / "dataset_description.json", b"{}")
    for rel in ["sub-01/anat/sub-01_T1w.nii.gz", "sub-01/anat/sub-01_FLAIR.nii", "sub-01/anat/sub-01_defacemask.nii.gz",
                "sub-01/func/sub-01_task-rest_bold.nii.gz", "sub-02/ses-1/anat/sub-02_ses-1_PDw.nii.gz",
                "sub-02/ses-1/ct/sub-02_ses-1_ct.nii.gz", "sourcedata/sub-01/anat/sub-01_T1w.nii.gz",
                "derivatives/x/sub-01/anat/sub-01_T1w.nii.gz"]:
        _touch(ds / rel)
    _touch(ds / "sub-01/anat/sub-01_T1w.json", b"{}")
    found = discover(ds)
    assert found.layout == "bids"
    assert [s.key for s in found.scans] == [
        "sub-01/anat/sub-01_FLAIR.nii", "sub-01/anat/sub-01_T1w.nii.gz",
        "sub-02/ses-1/anat/sub-02_ses-1_PDw.nii.gz", "sub-02/ses-1/ct/sub-02_ses-1_ct.nii.gz",
    ]
    t1 = found.scans[1]
    assert t1.sidecar == ds / "sub-01/anat/sub-01_T1w.json"
    others = {str(p) for p in found.others}
    assert "sub-01/func/sub-01_task-rest_bold.nii.gz" in others
    assert "sub-01/anat/sub-01_defacemask.nii.gz" in others
    assert "sub-01/anat/sub-01_T1w.json" not in others, "a scan's sidecar is rewritten, not copied"
    assert not any(o.startswith(("sourcedata", "derivatives")) for o in others), "sourcedata may hold faces"


def test_a_head_outside_a_lowercase_anat_folder_is_still_defaced(tmp_path: Path) -> None:
    """A T1w in ``ANAT/`` or ``Anat/`` (one folder on a case-insensitive disk), or left in ``sub-01/`` or in a folder
    of its own: only images in ``anat/`` spelled so were defaced, the others carried to OUT with their faces."""
    ds = tmp_path / "ds"
    _touch(ds / "dataset_description.json", b"{}")
    heads = ["sub-01/ANAT/sub-01_T2w.nii.gz", "sub-01/ses-1/Anat/sub-01_ses-1_T1w.nii.gz", "sub-01/sub-01_FLAIR.nii.gz",
             "sub-02/T1/sub-02_T1w.nii.gz", "sub-02/CT/sub-02_ct.nii.gz", "sub-02/anat/sub-02_UNIT1.nii.gz"]
    carried = ["sub-01/fmap/sub-01_magnitude1.nii.gz", "sub-01/fmap/sub-01_TB1map.nii.gz",
               "sub-01/func/sub-01_task-rest_bold.nii.gz",
               "sub-01/ANAT/sub-01_desc-brain_mask.nii.gz", "sub-02/dwi/sub-02_dwi.nii.gz"]
    for rel in heads + carried:
        _touch(ds / rel)
    found = discover(ds)
    assert sorted(s.key for s in found.scans) == sorted(heads)
    assert sorted(str(p) for p in found.others if not str(p).endswith(".json")) == sorted(carried)


def test_an_image_below_anat_is_defaced_and_an_unexplained_one_is_warned_about(tmp_path: Path, caplog) -> None:
    """HOSTILE14: 'sub-01/anat/extra/head.nii.gz' (a real phantom head, in a batch) was carried to OUT byte for byte
    without a word: only an image directly in anat/, or one named with an anatomical suffix, was defaced.  Below
    anat/ (or ct/) at any depth it is a scan now; an image under sub-* that no datatype folder or suffix explains
    (sub-01/sub-01_head.nii.gz, sub-01/misc/scan.nii.gz) is still carried, with a warning naming it."""
    import logging

    ds = tmp_path / "ds"
    _touch(ds / "dataset_description.json", b"{}")
    heads = ["sub-01/anat/extra/head.nii.gz", "sub-01/ANAT/old/scan.nii.gz", "sub-02/ct/2019/scan.nii.gz",
             "sub-02/anat/sub-02_T1w.nii.gz"]
    unexplained = ["sub-01/misc/scan.nii.gz", "sub-01/sub-01_head.nii.gz"]
    explained = ["sub-01/func/sub-01_task-rest_bold.nii.gz", "sub-01/fmap/sub-01_magnitude1.nii.gz",
                 "sub-01/ses-1/dwi/extra/sub-01_dwi.nii.gz", "sub-01/anat/sub-01_desc-brain_mask.nii.gz",
                 "sub-01/sub-01_dseg.nii.gz"]
    for rel in heads + unexplained + explained:
        _touch(ds / rel)
    with caplog.at_level(logging.WARNING):
        found = discover(ds)
    assert sorted(s.key for s in found.scans) == sorted(heads)
    assert sorted(str(p) for p in found.others if not str(p).endswith(".json")) == sorted(unexplained + explained)
    warned = [r.getMessage() for r in caplog.records if "carried to the output as they are" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith("2 image(s)"), warned
    assert all(f"'{rel}'" in warned[0] for rel in unexplained)
    assert not any(rel in warned[0] for rel in explained)


def test_entity_and_glob_filters_select_scans(tmp_path: Path) -> None:
    ds = tmp_path / "ds"
    for rel in ["sub-01/anat/sub-01_T1w.nii.gz", "sub-01/anat/sub-01_T2w.nii.gz", "sub-02/anat/sub-02_T1w.nii.gz"]:
        _touch(ds / rel)
    keys = lambda **kw: [s.key for s in discover(ds, **kw).scans]
    assert keys(include=["suffix=T1w"]) == ["sub-01/anat/sub-01_T1w.nii.gz", "sub-02/anat/sub-02_T1w.nii.gz"]
    assert keys(exclude=["sub=02"]) == ["sub-01/anat/sub-01_T1w.nii.gz", "sub-01/anat/sub-01_T2w.nii.gz"]
    assert keys(include=["sub-01/*"], exclude=["*_T2w.nii.gz"]) == ["sub-01/anat/sub-01_T1w.nii.gz"]
    assert keys(include=["sub=0*", "suffix=T2w"]) == keys()  # includes are OR-ed
    found = discover(ds, exclude=["suffix=T2w"])
    assert found.excluded == [PurePosixPath("sub-01/anat/sub-01_T2w.nii.gz")]
    assert PurePosixPath("sub-01/anat/sub-01_T2w.nii.gz") not in found.others, "excluded scans are never copied"


def test_entity_filter_never_matches_a_missing_entity() -> None:
    assert not matches(PurePosixPath("a.nii.gz"), {}, "ses=1")
    assert matches(PurePosixPath("x/a.nii.gz"), {}, "a.nii.gz")


def test_rejects_an_empty_filter(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="Invalid filter"):
        discover(tmp_path, include=["=T1w"])


def test_folder_of_images_and_dicom_series(tmp_path: Path) -> None:
    root = tmp_path / "export"
    _touch(root / "a.nii.gz")
    _touch(root / "nested" / "b.mgz")
    _touch(root / "c.nhdr", b"NRRD0004\ntype: short\ndata file: c.raw.gz\n\n")
    _touch(root / "c.raw.gz")
    _touch(root / "notes.txt")
    for i in range(3):
        _fake_dicom(root / "patient1" / "series2" / f"IM{i:04d}")
    found = discover(root)
    assert found.layout == "files"
    assert [(s.key, s.kind) for s in found.scans] == [
        ("a.nii.gz", "file"), ("c.nhdr", "file"), ("nested/b.mgz", "file"), ("patient1/series2", "dicom"),
    ]
    assert [str(p) for p in found.others] == ["notes.txt"], "a .nhdr's data file is part of the scan, never copied"


def test_a_lone_dicom_series_folder_is_one_scan(tmp_path: Path) -> None:
    for i in range(2):
        _fake_dicom(tmp_path / "series" / f"{i}.dcm")
    found = discover(tmp_path / "series")
    assert [(s.key, s.kind) for s in found.scans] == [(".", "dicom")]


def test_input_must_be_a_folder(tmp_path: Path) -> None:
    (tmp_path / "head.nii.gz").write_bytes(b"")
    with pytest.raises(InputImageError, match="not a folder"):
        discover(tmp_path / "head.nii.gz")


def test_a_missing_input_is_said_to_be_missing_not_to_be_no_folder(tmp_path: Path) -> None:
    """A mistyped IN was reported as "is not a folder. Give a BIDS dataset...", as if it were a file."""
    with pytest.raises(InputImageError, match="'.*missing' does not exist"):
        discover(tmp_path / "missing")


def test_a_sidecar_linked_out_of_the_dataset_is_not_the_scans_and_is_warned_about_once(tmp_path: Path,
                                                                                          caplog: pytest.LogCaptureFixture) -> None:
    """A scan's ``.json`` linked to a private file elsewhere is not its sidecar (its contents would go into OUT's
    defaced sidecar) and is not carried; one linked into the dataset's git-annex store is the scan's sidecar."""
    ds = (tmp_path / "ds").resolve()
    anat = ds / "sub-01" / "anat"
    secret = _touch(tmp_path / "home" / "creds.json", b'{"Password": "hunter2"}')
    annexed = _touch(ds / ".git" / "annex" / "objects" / "aa" / "bb" / "SHA256E-s2--x.json", b"{}")
    for suffix, target in [("T1w", secret), ("T2w", Path(os.path.relpath(annexed, anat)))]:
        _touch(anat / f"sub-01_{suffix}.nii.gz")
        (anat / f"sub-01_{suffix}.json").symlink_to(target)
    found = discover(ds, layout="bids")
    assert {scan.relpath.name: scan.sidecar for scan in found.scans} == {
        "sub-01_T1w.nii.gz": None, "sub-01_T2w.nii.gz": anat / "sub-01_T2w.json"}
    assert found.others == []
    warning = "'sub-01/anat/sub-01_T1w.json' is a symbolic link to a file outside the input folder: not carried"
    assert caplog.text.count(warning) == 1


def test_dicom_files_in_a_bids_dataset_are_not_carried_and_are_warned_about(tmp_path: Path,
                                                                           caplog: pytest.LogCaptureFixture) -> None:
    """Before: a BIDS dataset's DICOM files outside sourcedata/ (a stray series in sub-01/dicom/, a slice left in
    anat/) were listed among the files to copy, so OUT received them as they were: the face and the full header."""
    root = tmp_path / "ds"
    _touch(root / "dataset_description.json", b"{}")
    _touch(root / "sub-01" / "anat" / "sub-01_T1w.nii.gz")
    _fake_dicom(root / "sub-01" / "anat" / "stray_slice")
    for i in range(3):
        _fake_dicom(root / "sub-01" / "dicom" / f"IM{i}.dcm")
    _touch(root / "sub-01" / "dicom" / "notes.txt")
    found = discover(root)
    assert [s.key for s in found.scans] == ["sub-01/anat/sub-01_T1w.nii.gz"]
    assert [str(p) for p in found.others] == ["dataset_description.json", "sub-01/dicom/notes.txt"]
    warned = [r.getMessage() for r in caplog.records if "outside sourcedata" in r.getMessage()]
    assert len(warned) == 2 and "'sub-01/dicom' holds 3 DICOM file(s)" in warned[1]


def test_image_files_in_a_dicom_series_folder_are_warned_about(tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    """The folder is one series; an image file beside its DICOM files is neither defaced nor copied. Before: not a
    word, so the scan was silently missing from OUT."""
    for i in range(2):
        _fake_dicom(tmp_path / "export" / "s1" / f"IM{i}.dcm")
    _touch(tmp_path / "export" / "s1" / "T1.nii.gz")
    found = discover(tmp_path / "export")
    assert [(s.key, s.kind) for s in found.scans] == [("s1", "dicom")]
    assert any("'s1' holds DICOM files and 1 image file(s) (T1.nii.gz)" in r.getMessage() for r in caplog.records)


def test_a_linked_folder_is_not_entered_and_is_warned_about(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Before: a folder that is a symbolic link (to another disk, or out of the dataset) was passed over without a
    word, so its scans were silently missing from OUT."""
    _touch(tmp_path / "export" / "a.nii.gz")
    _touch(tmp_path / "elsewhere" / "b.nii.gz")
    os.symlink(tmp_path / "elsewhere", tmp_path / "export" / "linked")
    found = discover(tmp_path / "export")
    assert [s.key for s in found.scans] == ["a.nii.gz"]
    assert any("'linked' is a symbolic link to a folder: not searched" in r.getMessage() for r in caplog.records)


def test_a_scans_label_map_beside_it_is_neither_a_scan_nor_carried(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    """Label maps kept beside their scans (``--labels-dir IN``, or a user who forgot it) were taken for scans: the
    detector "found" features in a label map, which came out "done" in OUT with most of the ears' shapes."""
    root = tmp_path / "export"
    _touch(root / "a.nii.gz")
    _touch(root / "a.labels.nii.gz")
    _touch(root / "nested" / "B.mgz")
    _touch(root / "nested" / "b.LABELS.nrrd")
    for i in range(3):
        _fake_dicom(root / "patient1" / "series2" / f"IM{i:04d}")
    _touch(root / "patient1" / "series2.labels.nii")
    _touch(root / "c.labels.nii.gz")  # no scan 'c' beside it: a scan of its own
    ds = tmp_path / "ds"
    _touch(ds / "dataset_description.json", b"{}")
    _touch(ds / "sub-01" / "anat" / "sub-01_T1w.nii.gz")
    _touch(ds / "sub-01" / "anat" / "sub-01_T1w.labels.nii.gz")
    found = discover(root)
    assert [s.key for s in found.scans] == ["a.nii.gz", "c.labels.nii.gz", "nested/B.mgz", "patient1/series2"]
    assert found.others == []
    warned = [r.getMessage() for r in caplog.records if "label map" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith("3 file(s)") and "neither defaced nor carried" in warned[0]
    found = discover(ds)
    assert [s.key for s in found.scans] == ["sub-01/anat/sub-01_T1w.nii.gz"]
    assert [str(p) for p in found.others] == ["dataset_description.json"]


def test_names_that_are_not_utf8_are_skipped_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A file or folder name that is not UTF-8 (Latin-1 'é' from an old export) reached the manifest and the ownership
    record, whose UTF-8 writes failed: the whole batch stopped with "'utf-8' codec can't encode character
    '\\udcff' ... surrogates not allowed"."""
    root = tmp_path / "export"
    _touch(root / "a.nii.gz")
    _touch(root / os.fsdecode(b"s\xff.nii.gz"))
    _touch(root / os.fsdecode(b"note\xfe.txt"))
    _touch(root / os.fsdecode(b"sub\xe9") / "b.nii.gz")
    for i in range(3):
        _fake_dicom(root / "series" / f"IM{i:04d}")
    _fake_dicom(root / "series" / os.fsdecode(b"IM\xe90003"))
    for i in range(3):
        _fake_dicom(root / "series2" / f"IM{i:04d}")
    found = discover(root)
    assert [s.key for s in found.scans] == ["a.nii.gz", "series2"]
    assert found.others == []
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "'s\\xff.nii.gz' has a name that is not UTF-8 text: it is neither defaced nor carried" in warned
    assert "'sub\\xe9' has a name that is not UTF-8 text: the folder and everything under it are neither" in warned
    assert "'note\\xfe.txt'" in warned
    assert "The DICOM series folder 'series' holds 1 file(s) whose names are not UTF-8 text" in warned


def test_a_label_maps_detached_data_file_and_sidecar_are_not_carried_either(tmp_path: Path,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    """Found by HOSTILE4: a label map beside its scan is neither defaced nor carried (9a61bfc), but the data file a
    detached 'a.labels.nrrd' names (the label voxels: the ears' and nose's shapes) and its sidecar were carried to
    OUT as other files, while the warning said "neither defaced nor carried"."""
    root = tmp_path / "export"
    _touch(root / "a.nii.gz")
    _touch(root / "a.labels.nrrd", b"NRRD0004\ntype: uint8\ndimension: 3\nsizes: 2 2 2\nencoding: raw\n"
                                   b"data file: a.labels.raw\n")
    _touch(root / "a.labels.raw", bytes(8))
    _touch(root / "a.labels.json", b"{}")
    _touch(root / "notes.txt")
    found = discover(root)
    assert [s.key for s in found.scans] == ["a.nii.gz"]
    assert [str(p) for p in found.others] == ["notes.txt"]


def test_label_maps_saved_as_mgh_or_detached_nrrd_are_label_maps_too(tmp_path: Path) -> None:
    """'deface --save-mask a.labels.mgh' (or '.labels.nhdr') writes a label map that batch, beside its scan, took for a
    scan of its own and defaced (HOSTILE4's open question 1): only .nii.gz, .nii, .nrrd and .mgz were label endings."""
    root = tmp_path / "export"
    _touch(root / "a.nii.gz")
    _touch(root / "a.labels.mgh")
    _touch(root / "b.mgz")
    _touch(root / "b.labels.nhdr", b"NRRD0004\ntype: uint8\ndimension: 3\nsizes: 2 2 2\nencoding: raw\n"
                                   b"data file: b.labels.raw\n")
    _touch(root / "b.labels.raw", bytes(8))
    assert [s.key for s in discover(root).scans] == ["a.nii.gz", "b.mgz"]


def test_names_that_are_one_on_a_case_insensitive_disk_are_warned_about(tmp_path: Path, caplog) -> None:
    """``sub-01_T1w.nii.gz`` and ``sub-01_T1W.nii.gz`` (or ``café`` in its two Unicode forms) are two files in IN but one
    in an OUT on macOS, Windows or exFAT: the later defaced output silently replaced the earlier one."""
    ds = tmp_path / "ds"
    _touch(ds / "dataset_description.json", b"{}")
    for rel in ["sub-01/anat/sub-01_T1w.nii.gz", "sub-01/anat/sub-01_T1W.nii.gz", "sub-02/anat/sub-02_T1w.nii.gz",
                "sub-02/anat/caf\u00e9.txt", "sub-02/anat/cafe\u0301.txt"]:
        _touch(ds / rel)
    discover(ds)
    assert "2 group(s) of files in IN differ only in letter case or Unicode form" in caplog.text
    assert "'sub-01/anat/sub-01_T1W.nii.gz' and 'sub-01/anat/sub-01_T1w.nii.gz'" in caplog.text
    caplog.clear()
    (ds / "sub-01/anat/sub-01_T1W.nii.gz").unlink()
    (ds / "sub-02/anat/cafe\u0301.txt").unlink()
    discover(ds)
    assert "letter case" not in caplog.text


@pytest.mark.parametrize("layout", ["bids", "files"])
def test_a_scan_linked_out_of_the_input_is_not_read(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                    layout: str) -> None:
    """HOSTILE12: a DICOM file or a sidecar linked out of IN is not read, but an image was: a hostile dataset's
    'sub-02/anat/sub-02_T1w.nii.gz -> /home/you/study/patient.nii.gz' (or any image name so linked) was defaced into
    OUT, ready to be sent back, without a word.  Now it is left out, warned about; a link inside IN is a scan, and a
    broken link (a DataLad file not fetched) is still a scan, reported when it is read."""
    root = tmp_path / "ds"
    if layout == "bids":
        _touch(root / "dataset_description.json", b'{"Name": "x", "BIDSVersion": "1.8.0"}')
    _touch(root / "sub-01" / "anat" / "sub-01_T1w.nii.gz")
    private = _touch(tmp_path / "home" / "study" / "patient.nii.gz")
    (root / "sub-02" / "anat").mkdir(parents=True)
    (root / "sub-02" / "anat" / "sub-02_T1w.nii.gz").symlink_to(private)
    (root / "sub-02" / "anat" / "sub-02_T2w.nii.gz").symlink_to(root / "sub-01" / "anat" / "sub-01_T1w.nii.gz")
    (root / "sub-02" / "anat" / "sub-02_FLAIR.nii.gz").symlink_to(tmp_path / "annex" / "not-fetched")
    found = discover(root, layout=layout)
    keys = [s.key for s in found.scans]
    assert "sub-02/anat/sub-02_T1w.nii.gz" not in keys  # main: defaced into OUT
    assert "sub-02/anat/sub-02_T1w.nii.gz" not in [rel.as_posix() for rel in found.others]
    assert {"sub-01/anat/sub-01_T1w.nii.gz", "sub-02/anat/sub-02_T2w.nii.gz", "sub-02/anat/sub-02_FLAIR.nii.gz"} <= set(keys)
    warned = [r.getMessage() for r in caplog.records if "sub-02_T1w" in r.getMessage()]
    assert len(warned) == 1 and "symbolic link to a file outside the input folder: not read" in warned[0]
