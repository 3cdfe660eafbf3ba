"""Output paths, dataset description, marked sidecars, carried-over files, refusals."""

from __future__ import annotations

import json
import os
from pathlib import Path, PurePosixPath

import pytest

from defacer.batch.discover import Scan
from defacer.batch.layout import (
    BIDSIGNORE_LINE,
    OutputLayout,
    carry_over,
    carry_over_targets,
    check_folders,
    dataset_description,
    defaced_sidecar,
    desc_defaced_name,
    prepare_output,
    remove_stale_temporaries,
    write_dataset_files,
)
from defacer.errors import OutputError


def _scan(root: Path, rel: str, sidecar: Path | None = None) -> Scan:
    return Scan(path=root / rel, relpath=PurePosixPath(rel), kind="file", sidecar=sidecar)


def test_desc_defaced_goes_right_before_the_suffix() -> None:
    assert desc_defaced_name("sub-01_ses-1_T1w") == "sub-01_ses-1_desc-defaced_T1w"
    assert desc_defaced_name("sub-01_desc-mp_T1w") == "sub-01_desc-mpdefaced_T1w"
    assert desc_defaced_name("head") == "head_desc-defaced"


def test_mirror_keeps_names_and_derivatives_add_desc(tmp_path: Path) -> None:
    scan = _scan(tmp_path / "in", "sub-01/anat/sub-01_T1w.nii.gz")
    mirror = OutputLayout(tmp_path / "in", tmp_path / "out", "mirror", bids=True)
    deriv = OutputLayout(tmp_path / "in", tmp_path / "out", "derivatives", bids=True)
    assert mirror.output_path(scan) == tmp_path / "out/sub-01/anat/sub-01_T1w.nii.gz"
    assert mirror.sidecar_path(scan) == tmp_path / "out/sub-01/anat/sub-01_T1w.json"
    assert deriv.output_path(scan) == tmp_path / "out/sub-01/anat/sub-01_desc-defaced_T1w.nii.gz"
    assert deriv.sidecar_path(scan) == tmp_path / "out/sub-01/anat/sub-01_desc-defaced_T1w.json"


def test_non_bids_scans_without_sidecar_get_none(tmp_path: Path) -> None:
    layout = OutputLayout(tmp_path / "in", tmp_path / "out", "mirror", bids=False)
    assert layout.sidecar_path(_scan(tmp_path / "in", "a.nii.gz")) is None


def test_dataset_description_gains_generated_by_or_becomes_a_derivative(tmp_path: Path) -> None:
    source = {"Name": "study", "BIDSVersion": "1.9.0", "GeneratedBy": [{"Name": "dcm2niix"}]}
    mirror = dataset_description(OutputLayout(tmp_path, tmp_path / "o", "mirror", True), source)
    assert mirror["Name"] == "study" and mirror["BIDSVersion"] == "1.9.0"
    assert [g["Name"] for g in mirror["GeneratedBy"]] == ["defacer", "dcm2niix"]
    deriv = dataset_description(OutputLayout(tmp_path, tmp_path / "o", "derivatives", True), source)
    assert deriv["DatasetType"] == "derivative"
    # Issue 11, defect 5: a relative reference to IN, never its absolute path.
    assert deriv["SourceDatasets"][0]["URL"] == ".."
    assert str(tmp_path) not in json.dumps(deriv)


def test_a_derivative_keeps_the_source_licence_and_names_its_doi(tmp_path: Path) -> None:
    """`--derivatives` dropped IN's License and left the ``raw`` of the sidecars' ``bids:raw:`` URIs undefined: the defaced images are still the source's images, so a share-alike
    licence (the IXI heads are CC BY-SA 3.0) must travel with them; the source's DOI goes to SourceDatasets."""
    source = {"Name": "study", "BIDSVersion": "1.9.0", "License": "CC-BY-SA-3.0", "DatasetDOI": "doi:10.1/x",
              "Authors": ["A. Author"]}
    deriv = dataset_description(OutputLayout(tmp_path, tmp_path / "o", "derivatives", True), source)
    assert deriv["License"] == "CC-BY-SA-3.0"
    assert deriv["SourceDatasets"] == [{"URL": "..", "DOI": "doi:10.1/x"}]
    assert "DatasetDOI" not in deriv and "Authors" not in deriv, "the derivative's own DOI and authors are not IN's"
    # The sidecars' "Sources": ["bids:raw:sub-01/..."] need the dataset link "raw" defined (BIDS URIs).
    assert deriv["DatasetLinks"] == {"raw": ".."}
    plain = dataset_description(OutputLayout(tmp_path, tmp_path / "o", "derivatives", True), {"Name": "study"})
    assert "License" not in plain and plain["SourceDatasets"] == [{"URL": ".."}]


@pytest.mark.parametrize("listed", [5, "dcm2niix", {"Name": "dcm2niix"}, None])
def test_a_generated_by_that_is_no_list_is_warned_about_and_replaced(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                                     listed: object) -> None:
    """IN's description with ``"GeneratedBy": 5`` stopped the batch ('unexpected error: TypeError ... a bug in
    defacer'); a string or object there was dropped without a word."""
    source = {"Name": "study", "BIDSVersion": "1.9.0", "GeneratedBy": listed}
    described = dataset_description(OutputLayout(tmp_path, tmp_path / "o", "mirror", True), source)
    assert [g["Name"] for g in described["GeneratedBy"]] == ["defacer"]
    assert "GeneratedBy that is no list" in caplog.text


def test_sidecar_is_carried_over_and_marked_defaced(tmp_path: Path) -> None:
    sidecar = tmp_path / "in" / "sub-01_T1w.json"
    sidecar.parent.mkdir()
    sidecar.write_text(json.dumps({"RepetitionTime": 2.3}))
    scan = _scan(tmp_path / "in", "sub-01_T1w.nii.gz", sidecar)
    data = defaced_sidecar(scan, OutputLayout(tmp_path / "in", tmp_path / "o", "derivatives", True), ["eyes"], 7)
    assert data["RepetitionTime"] == 2.3
    assert data["Defaced"] is True
    assert data["DefacedBy"]["Features"] == ["eyes"] and data["DefacedBy"]["Seed"] == 7
    assert data["Sources"] == ["bids:raw:sub-01_T1w.nii.gz"]


def test_dataset_files_linked_out_of_the_input_are_not_read_and_annexed_ones_are(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """IN's ``dataset_description.json`` linked to a private file elsewhere is not read (warned); its
    ``.bidsignore`` linked into the dataset's git-annex store is (DataLad datasets are made of such links)."""
    secret = tmp_path / "home" / "creds.json"
    secret.parent.mkdir()
    secret.write_text('{"Name": "x", "Password": "hunter2"}')
    ds = tmp_path / "ds"
    annexed = ds / ".git" / "annex" / "objects" / "aa" / "bb" / "SHA256E-s13--x"
    annexed.parent.mkdir(parents=True)
    annexed.write_text("derivatives/\n")
    (ds / ".bidsignore").symlink_to(os.path.relpath(annexed, ds))
    (ds / "dataset_description.json").symlink_to(secret)
    out = tmp_path / "out"
    out.mkdir()
    write_dataset_files(OutputLayout(ds, out, "mirror", bids=True))
    assert "hunter2" not in (out / "dataset_description.json").read_text()
    assert (out / ".bidsignore").read_text().splitlines() == ["derivatives/", BIDSIGNORE_LINE]
    assert "'dataset_description.json' is a symbolic link to a file outside the input folder: not read" in caplog.text


def _write_or_grow(path: Path, content: bytes | None) -> None:
    """Write ``content`` to ``path``, or (``None``) make it a sparse file one byte over the 16 MiB read at most."""
    if content is None:
        with path.open("wb") as handle:
            handle.truncate(16 * 2**20 + 1)
    else:
        path.write_bytes(content)


@pytest.mark.parametrize(("name", "content"), [
    ("dataset_description.json", b"[1, 2]"),
    ("dataset_description.json", b'"a text"'),
    ("dataset_description.json", b"{not json"),
    ("dataset_description.json", None),
    (".bidsignore", b"\xff\xfe not UTF-8"),
    (".bidsignore", None),
])
def test_a_dataset_file_of_the_input_that_cannot_be_read_is_warned_about_and_written_anew(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, name: str, content: bytes | None) -> None:
    """A dataset description that is no JSON object or a .bidsignore that is no UTF-8 text stopped the batch
    (TypeError, UnicodeDecodeError); one that is no JSON at all was dropped without a word."""
    ds = tmp_path / "ds"
    ds.mkdir()
    _write_or_grow(ds / name, content)
    out = tmp_path / "out"
    out.mkdir()
    write_dataset_files(OutputLayout(ds, out, "mirror", bids=True))
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["Name"] == "ds" and description["GeneratedBy"][0]["Name"] == "defacer"
    assert (out / ".bidsignore").read_text() == BIDSIGNORE_LINE + "\n"
    assert f"'{ds / name}'" in caplog.text and "fix the file in IN" in caplog.text


@pytest.mark.parametrize("content", [b"[1]", b"{not json", b"\xff not UTF-8", None])
def test_a_sidecar_that_cannot_be_read_is_warned_about_and_replaced_by_the_defaced_record(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, content: bytes | None) -> None:
    """A scan's JSON sidecar that is no JSON object (or too large) was dropped without a word."""
    sidecar = tmp_path / "in" / "sub-01_T1w.json"
    sidecar.parent.mkdir()
    _write_or_grow(sidecar, content)
    scan = _scan(tmp_path / "in", "sub-01_T1w.nii.gz", sidecar)
    data = defaced_sidecar(scan, OutputLayout(tmp_path / "in", tmp_path / "o", "mirror", True), ["eyes"], 7)
    assert set(data) == {"Defaced", "DefacedBy"}
    assert f"'{sidecar}'" in caplog.text and "fix the file in IN" in caplog.text


@pytest.mark.parametrize("mode", ["copy", "hardlink", "symlink"])
def test_non_image_files_are_copied_or_linked_and_kept_on_rerun(tmp_path: Path, mode: str) -> None:
    (tmp_path / "in" / "sub-01").mkdir(parents=True)
    (tmp_path / "in" / "sub-01" / "events.tsv").write_text("onset\n1\n")
    layout = OutputLayout(tmp_path / "in", tmp_path / "out", "mirror", True)
    rel = [PurePosixPath("sub-01/events.tsv")]
    assert carry_over(layout, rel, mode) == (1, 0)
    target = tmp_path / "out" / "sub-01" / "events.tsv"
    assert target.read_text() == "onset\n1\n"
    assert target.is_symlink() == (mode == "symlink")
    if mode == "hardlink":
        assert os.path.samefile(target, tmp_path / "in" / "sub-01" / "events.tsv")
    assert carry_over(layout, rel, mode) == (0, 1)



def test_a_file_hard_linked_by_an_earlier_run_becomes_a_copy_when_copies_are_asked_for(tmp_path: Path) -> None:
    """Found by HOSTILE5 (HOSTILE4's open question 8): a non-table file an earlier --others hardlink run had linked
    had the same size as a copy, so it stayed a hard link after switching to --others copy: an edit of OUT's file in
    place changed the input."""
    (tmp_path / "in" / "sub-01").mkdir(parents=True)
    source = tmp_path / "in" / "sub-01" / "events.tsv"
    source.write_text("onset\n1\n")
    layout = OutputLayout(tmp_path / "in", tmp_path / "out", "mirror", True)
    rel = [PurePosixPath("sub-01/events.tsv")]
    target = tmp_path / "out" / "sub-01" / "events.tsv"
    assert carry_over(layout, rel, "hardlink") == (1, 0) and os.path.samefile(source, target)
    assert carry_over_targets(layout, rel, "copy") == [target]
    assert carry_over(layout, rel, "copy") == (1, 0)
    assert not os.path.samefile(source, target) and target.read_bytes() == source.read_bytes()
    assert carry_over(layout, rel, "copy") == (0, 1)
    assert carry_over(layout, rel, "hardlink") == (0, 1)  # a copy is good enough for a link: left alone

def test_output_inside_or_around_the_input_is_refused(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="overlaps the input"):
        check_folders(tmp_path / "ds", tmp_path / "ds" / "derivatives" / "defaced")
    with pytest.raises(OutputError, match="overlaps the input"):
        check_folders(tmp_path / "ds", tmp_path)
    with pytest.raises(OutputError, match="overlaps the input"):
        check_folders(tmp_path / "ds", tmp_path / "ds")


def test_non_empty_output_without_manifest_needs_force(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "something").write_text("x")
    layout = OutputLayout(tmp_path / "in", tmp_path / "out")
    with pytest.raises(OutputError, match="not empty"):
        prepare_output(layout, force=False)
    assert prepare_output(layout, force=True) is False


def test_stale_temporaries_of_a_killed_run_are_removed(tmp_path: Path) -> None:
    """defacer's own temporaries go (a folder as atomic_outputs names it, a file as atomic_file names it); a
    user's look-alikes, links and files stay."""
    folder = tmp_path / "a" / ".defacer-tmp-0123abcd-4242-ab_cd123"
    folder.mkdir(parents=True)
    (folder / "x.nii.gz").write_bytes(b"half")
    (tmp_path / "a" / ".defacer-tmp-9f8e7d6c-sub-01_T1w.json").write_text("{")
    (tmp_path / "a" / "keep.nii.gz").write_bytes(b"whole")
    (tmp_path / "a" / ".defacer-tmp-notes.txt").write_text("a user's")
    (tmp_path / "a" / ".defacer-tmp-mine").mkdir()
    (tmp_path / "a" / ".defacer-tmp-mine" / "keep.txt").write_text("a user's")
    (tmp_path / "a" / ".defacer-tmp-link1234").symlink_to(tmp_path / "a" / ".defacer-tmp-mine")
    removed = remove_stale_temporaries(tmp_path)
    assert len(removed) == 2
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [
        ".defacer-tmp-link1234", ".defacer-tmp-mine", ".defacer-tmp-notes.txt", "keep.nii.gz"]
    assert (tmp_path / "a" / ".defacer-tmp-mine" / "keep.txt").is_file()


def test_an_unreadable_bidsignore_of_the_output_is_warned_about_and_left_alone(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """OUT's own .bidsignore edited into bytes that are no UTF-8 text stopped the batch at its end
    (UnicodeDecodeError); it is now left as it is, with a warning naming the line to add."""
    ds = tmp_path / "ds"
    ds.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / ".bidsignore").write_bytes(b"\xff\xfe edited")
    write_dataset_files(OutputLayout(ds, out, "mirror", bids=True))
    assert (out / ".bidsignore").read_bytes() == b"\xff\xfe edited"
    assert "not UTF-8" in caplog.text and BIDSIGNORE_LINE in caplog.text
    assert json.loads((out / "dataset_description.json").read_text())["GeneratedBy"][0]["Name"] == "defacer"


@pytest.mark.parametrize("bids", [False, True], ids=["folder", "bids"])
def test_two_scans_that_would_write_one_file_refuse_the_batch_before_writing(tmp_path: Path, bids: bool,
                                                                             capsys) -> None:
    """Before: 'head.nii' and 'head.nii.gz' in one folder both wrote 'head.defacer.json' (in BIDS also the JSON
    sidecar 'head.json'): the second replaced the first's provenance, exit 0, and every rerun found the other's
    damaged and redid it."""
    import nibabel as nib

    from defacer.cli.main import main
    from defacer.phantom import make_phantom

    root = tmp_path / "in" / ("sub-01/anat" if bids else "")
    root.mkdir(parents=True)
    stem = "sub-01_T1w" if bids else "head"
    phantom = make_phantom(3.0)
    for ending in (".nii", ".nii.gz"):
        nib.save(nib.Nifti1Image(phantom.volume.raw, phantom.volume.affine), root / f"{stem}{ending}")
    out = tmp_path / "out"
    assert main(["batch", str(tmp_path / "in"), str(out), "-q"]) == 1
    err = capsys.readouterr().err
    rel = "sub-01/anat/" if bids else ""
    assert f"'{rel}{stem}.nii' and '{rel}{stem}.nii.gz' both write '{rel}{stem}.defacer.json'" in err
    assert (f"both write '{rel}{stem}.json'" in err) == bids
    assert "--exclude" in err and not out.exists()
    assert main(["batch", str(tmp_path / "in"), str(out), "-q", "--dry-run"]) == 1, "the dry run says so too"


@pytest.mark.parametrize("dry_run", [False, True], ids=["run", "dry-run"])
def test_a_linked_bookkeeping_folder_in_out_is_refused_and_nothing_is_written_through_it(
        tmp_path: Path, bids_template: tuple[Path, Path, list[str]], dry_run: bool, capsys) -> None:
    """Before: 'batch IN OUT --force' with OUT/.defacer a link to another folder wrote the manifest, lock, ownership
    record and summary.html there, outside OUT (replacing a summary.html of that folder)."""
    from defacer.cli.main import main

    ds, labels, _ = bids_template
    elsewhere, out = tmp_path / "elsewhere", tmp_path / "out"
    elsewhere.mkdir()
    (elsewhere / "summary.html").write_text("my own page\n")
    out.mkdir()
    os.symlink(elsewhere, out / ".defacer")
    args = ["batch", str(ds), str(out), "--labels-dir", str(labels), "-q", "--force", *(["-n"] if dry_run else [])]
    assert main(args) == 1
    assert "is a symbolic link or a file, not the batch's own folder" in capsys.readouterr().err
    assert sorted(p.name for p in elsewhere.iterdir()) == ["summary.html"]
    assert (elsewhere / "summary.html").read_text() == "my own page\n"
    assert sorted(p.name for p in out.iterdir()) == [".defacer"]


@pytest.mark.parametrize("name", ["manifest.jsonl", "owned.jsonl", "lock", "summary.html"])
def test_a_linked_bookkeeping_file_in_out_is_refused(tmp_path: Path, bids_template: tuple[Path, Path, list[str]],
                                                     name: str, capsys) -> None:
    """Before: a link OUT/.defacer/<name> -> a user's file made the batch append to it or write through it."""
    from defacer.cli.main import main

    ds, labels, _ = bids_template
    victim, out = tmp_path / "notes.txt", tmp_path / "out"
    victim.write_text("my notes\n")
    (out / ".defacer").mkdir(parents=True)
    os.symlink(victim, out / ".defacer" / name)
    assert main(["batch", str(ds), str(out), "--labels-dir", str(labels), "-q", "--force"]) == 1
    assert f"{name}' is a symbolic link" in capsys.readouterr().err
    assert victim.read_text() == "my notes\n"


@pytest.mark.parametrize("mode", ["copy", "hardlink", "symlink"])
def test_bids_tables_are_carried_de_identified_as_a_file_of_their_own_whatever_the_mode(
        tmp_path: Path, mode: str, caplog: pytest.LogCaptureFixture) -> None:
    """A HeuDiConv scans.tsv (acquisition date and time, operator) and a participants.tsv with an age over 89 were
    copied or linked to OUT as they were."""
    ds = tmp_path / "in"
    (ds / "sub-01").mkdir(parents=True)
    scans = ds / "sub-01" / "sub-01_scans.tsv"
    scans.write_text("filename\tacq_time\toperator\nanat/sub-01_T1w.nii.gz\t2023-03-14T09:12:44\tQuexworth^Jane\n")
    (ds / "participants.tsv").write_text("participant_id\tage\nsub-01\t93\n")
    before = scans.read_bytes()
    layout = OutputLayout(ds, tmp_path / "out", "mirror", True)
    rel = [PurePosixPath("sub-01/sub-01_scans.tsv"), PurePosixPath("participants.tsv")]
    assert len(carry_over_targets(layout, rel, mode, clean_tables=True)) == 2
    assert carry_over(layout, rel, mode, clean_tables=True) == (2, 0)
    out_scans = tmp_path / "out" / "sub-01" / "sub-01_scans.tsv"
    assert out_scans.read_text() == "filename\tacq_time\toperator\nanat/sub-01_T1w.nii.gz\tn/a\tn/a\n"
    assert (tmp_path / "out" / "participants.tsv").read_text() == "participant_id\tage\nsub-01\t89+\n"
    assert not out_scans.is_symlink() and not os.path.samefile(out_scans, scans)
    assert scans.read_bytes() == before, "IN is never modified"
    assert "acq_time (1 row), operator (1 row)" in caplog.text and "--no-deidentify" in caplog.text
    assert carry_over_targets(layout, rel, mode, clean_tables=True) == []
    assert carry_over(layout, rel, mode, clean_tables=True) == (0, 2)


def test_without_de_identification_bids_tables_are_carried_as_they_are(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "participants.tsv").write_text("participant_id\tage\nsub-01\t93\n")
    layout = OutputLayout(tmp_path / "in", tmp_path / "out", "mirror", True)
    assert carry_over(layout, [PurePosixPath("participants.tsv")], "copy") == (1, 0)
    assert (tmp_path / "out" / "participants.tsv").read_text() == "participant_id\tage\nsub-01\t93\n"


def test_a_bids_table_that_is_not_text_is_not_carried_and_is_warned_about(tmp_path: Path,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "sub-01_sessions.tsv").write_bytes(b"session_id\tacq_date\nses-1\t2023-03-14\xff\n")
    layout = OutputLayout(tmp_path / "in", tmp_path / "out", "mirror", True)
    rel = [PurePosixPath("sub-01_sessions.tsv")]
    assert carry_over(layout, rel, "copy", clean_tables=True) == (0, 0)
    assert not (tmp_path / "out" / "sub-01_sessions.tsv").exists()
    assert "cannot be de-identified" in caplog.text


def test_a_crlf_bids_table_already_carried_is_not_written_again(tmp_path: Path) -> None:
    """Found by HOSTILE4: the copy in OUT was read back with universal newlines, so a table with CRLF (or CR) line
    endings never matched its cleaned text: rewritten on every rerun and listed by --dry-run as to be written."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "participants.tsv").write_bytes(b"participant_id\tage\r\nsub-01\t93\r\nsub-02\t40\r")
    layout = OutputLayout(tmp_path / "in", tmp_path / "out", "mirror", True)
    rel = [PurePosixPath("participants.tsv")]
    assert carry_over(layout, rel, "copy", clean_tables=True) == (1, 0)
    assert (tmp_path / "out" / "participants.tsv").read_bytes() == b"participant_id\tage\r\nsub-01\t89+\r\nsub-02\t40\r"
    assert carry_over_targets(layout, rel, "copy", clean_tables=True) == []
    assert carry_over(layout, rel, "copy", clean_tables=True) == (0, 1)


@pytest.mark.parametrize("mode", ["copy", "hardlink", "symlink"])
def test_json_sidecars_of_images_carried_as_they_are_lose_their_identifying_keys(
        tmp_path: Path, mode: str, caplog: pytest.LogCaptureFixture) -> None:
    """Found by HOSTILE4: only a defaced scan's sidecar was de-identified (5d39c23); the sidecars of the images carried
    as they are (func/, dwi/, fmap/, and a top-level task-rest_bold.json that BIDS inherits to every run) went to OUT,
    copied or linked, with a converter's PatientName, PatientBirthDate, InstitutionName and acquisition date."""
    from defacer.phi.options import DeidOptions

    ds = tmp_path / "in"
    (ds / "sub-01" / "func").mkdir(parents=True)
    bold = ds / "sub-01" / "func" / "sub-01_task-rest_bold.json"
    bold.write_text(json.dumps({"RepetitionTime": 2.0, "PatientName": "Quexworth^Jane", "TaskName": "rest",
                                "AcquisitionDateTime": "2023-03-14T09:12:44", "InstitutionName": "Quexworth Clinic"}))
    (ds / "task-rest_bold.json").write_text('{"TaskName": "rest", "PatientBirthDate": "19610412"}\n')
    plain = '{"TaskName": "rest",   "Instructions": "keep still"}\n'
    (ds / "task-rest_events.json").write_text(plain)
    (ds / "broken.json").write_text('{"PatientName": "Quexworth^Jane"')
    before = bold.read_bytes()
    layout = OutputLayout(ds, tmp_path / "out", "mirror", True)
    rel = [PurePosixPath(p) for p in ("sub-01/func/sub-01_task-rest_bold.json", "task-rest_bold.json",
                                      "task-rest_events.json", "broken.json")]
    assert carry_over(layout, rel, mode, clean_tables=True, profile=DeidOptions()) == (3, 0)
    out = tmp_path / "out"
    carried = json.loads((out / rel[0]).read_text())
    assert carried == {"RepetitionTime": 2.0, "TaskName": "rest"}
    assert json.loads((out / "task-rest_bold.json").read_text()) == {"TaskName": "rest"}
    assert (out / "task-rest_events.json").read_text() == plain  # nothing removed: byte for byte
    assert not (out / "broken.json").exists()
    for name in rel[:3]:
        assert not (out / name).is_symlink() and not os.path.samefile(out / name, ds / name)
    assert bold.read_bytes() == before, "IN is never modified"
    assert "PatientName, AcquisitionDateTime, InstitutionName removed" in caplog.text
    assert carry_over_targets(layout, rel, mode, clean_tables=True, profile=DeidOptions()) == []
    assert carry_over(layout, rel, mode, clean_tables=True, profile=DeidOptions()) == (0, 3)
    assert carry_over(layout, rel[:1], "copy") == (1, 0)  # --no-deidentify: carried as it is
    assert (out / rel[0]).read_bytes() == before


@pytest.mark.parametrize("name", ["participants.tsv", "task-rest_bold.json"])
def test_a_table_or_json_file_hard_linked_by_an_earlier_run_becomes_a_copy_of_its_own(tmp_path: Path,
                                                                                    name: str) -> None:
    """Found by HOSTILE4: a file with nothing to clean that an earlier --others hardlink run (without
    de-identification) had linked held the same text as its cleaned copy, so it stayed a hard link to IN's file:
    a later edit in IN (ages over 89 added) reached OUT at once, not de-identified."""
    from defacer.phi.options import DeidOptions

    (tmp_path / "in").mkdir()
    source = tmp_path / "in" / name
    source.write_text("participant_id\tsex\nsub-01\tF\n" if name.endswith(".tsv") else '{"TaskName": "rest"}\n')
    layout = OutputLayout(tmp_path / "in", tmp_path / "out", "mirror", True)
    rel = [PurePosixPath(name)]
    assert carry_over(layout, rel, "hardlink") == (1, 0)  # --no-deidentify
    target = tmp_path / "out" / name
    assert os.path.samefile(source, target)
    assert carry_over_targets(layout, rel, "hardlink", clean_tables=True, profile=DeidOptions()) == [target]
    assert carry_over(layout, rel, "hardlink", clean_tables=True, profile=DeidOptions()) == (1, 0)
    assert not os.path.samefile(source, target) and target.read_bytes() == source.read_bytes()


def test_json_holding_an_escaped_lone_surrogate_is_written_back_as_an_escape(tmp_path: Path) -> None:
    """Found by HOSTILE4: '"\\udcff"' in a JSON file of IN reads as a lone surrogate, which UTF-8 cannot encode:
    a carried JSON file (or dataset_description.json) holding one stopped the whole batch with "'utf-8' codec can't
    encode character '\\udcff'", a scan sidecar holding one failed its scan."""
    from defacer.batch.layout import json_text, write_json_atomic
    from defacer.phi.options import DeidOptions

    value = {"Note": "caf\udce9", "Name": "Zoë"}
    assert json.loads(json_text(value)) == value and "Zoë" not in json_text(value)  # escaped only when needed
    assert "Zoë" in json_text({"Name": "Zoë"})
    write_json_atomic(tmp_path / "sidecar.json", value)
    assert json.loads((tmp_path / "sidecar.json").read_text(encoding="utf-8")) == value
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "task-rest_bold.json").write_text('{"PatientName": "Quexworth^Jane", "Note": "\\udcff"}')
    layout = OutputLayout(tmp_path / "in", tmp_path / "out", "mirror", True)
    rel = [PurePosixPath("task-rest_bold.json")]
    assert carry_over(layout, rel, "copy", clean_tables=True, profile=DeidOptions()) == (1, 0)
    assert json.loads((tmp_path / "out" / "task-rest_bold.json").read_text()) == {"Note": "\udcff"}
    assert carry_over(layout, rel, "copy", clean_tables=True, profile=DeidOptions()) == (0, 1)


def test_json_saved_with_a_byte_order_mark_is_read(tmp_path: Path) -> None:
    """Found by HOSTILE4: json.loads refuses a leading byte order mark (Windows editors write one): a scan sidecar so
    saved lost its fields in OUT ("not valid JSON ... Unexpected UTF-8 BOM"), and a carried JSON was not carried."""
    from defacer.phi.options import DeidOptions

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.json").write_bytes(b'\xef\xbb\xbf{"EchoTime": 0.003}')
    (tmp_path / "in" / "task-rest_bold.json").write_bytes(b'\xef\xbb\xbf{"RepetitionTime": 2, "PatientName": "Q^J"}')
    layout = OutputLayout(tmp_path / "in", tmp_path / "out", "mirror", False)
    scan = _scan(tmp_path / "in", "a.nii.gz", sidecar=tmp_path / "in" / "a.json")
    assert defaced_sidecar(scan, layout, ["eyes"], 1)["EchoTime"] == 0.003
    rel = [PurePosixPath("task-rest_bold.json")]
    assert carry_over(layout, rel, "copy", clean_tables=True, profile=DeidOptions()) == (1, 0)
    assert json.loads((tmp_path / "out" / "task-rest_bold.json").read_text()) == {"RepetitionTime": 2}


def test_the_retain_options_reach_the_bids_tables(tmp_path: Path) -> None:
    from defacer.phi.options import DeidOptions

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "sub-01_scans.tsv").write_text("filename\tacq_time\nanat/x.nii.gz\t2023-03-14T09:12:44\n")
    layout = OutputLayout(tmp_path / "in", tmp_path / "out", "mirror", True)
    rel = [PurePosixPath("sub-01_scans.tsv")]
    carry_over(layout, rel, "copy", clean_tables=True, profile=DeidOptions(retain_long_full_dates=True))
    assert "2023-03-14T09:12:44" in (tmp_path / "out" / "sub-01_scans.tsv").read_text()
    carry_over(layout, rel, "copy", clean_tables=True, profile=DeidOptions())
    assert "2023-03-14" not in (tmp_path / "out" / "sub-01_scans.tsv").read_text()
