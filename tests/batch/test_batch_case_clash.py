"""Scans whose outputs differ only in letter case (or Unicode form) are one file on a case-insensitive disk (macOS,
Windows, exFAT): the later of each group is recorded as failed, in words, and nothing is written for it; the first and
every other scan are defaced as usual (before, both were written and on such a disk the later replaced the earlier)."""

from __future__ import annotations

import shutil
from pathlib import Path, PurePosixPath

import pytest

from defacer.batch.discover import Scan
from defacer.batch.manifest import DONE, FAILED, Manifest
from defacer.batch.runner import BatchConfig, run_batch
from defacer.cli.main import main


def _copy(input_path: Path, output_path: Path, **_: object) -> dict[str, object]:
    """Stand-in for the pipeline: writes the scan's bytes as its output (module level, so workers import it)."""
    Path(output_path).parent.mkdir(parents=True, exist_ok=True)
    Path(output_path).write_bytes(Path(input_path).read_bytes())
    return {"stand_in": True}


def _write(root: Path, rel: str, data: bytes) -> None:
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_bytes(data)


def test_the_later_scan_of_a_case_clash_fails_in_words_and_the_rest_runs(tmp_path: Path) -> None:
    src = tmp_path / "in"
    names = ["A/head.nii.gz", "a/head.nii.gz", "a/other.nii.gz", "caf\u00e9.nii.gz", "cafe\u0301.nii.gz",
             "scan-01.nii.gz", "SCAN-01.NII.GZ", "zz.nii.gz"]
    for index, rel in enumerate(names):
        _write(src, rel, f"scan {index}".encode())
    out = tmp_path / "out"
    summary = run_batch(BatchConfig(in_root=src, out_root=out, quiet=True), deface=_copy)
    status = {r.key: r.status for r in summary.records}
    # key order: 'A/...' < 'a/...', 'SCAN-01.NII.GZ' < 'scan-01.nii.gz', NFC 'é' (U+00E9) > 'e' + U+0301
    assert status == {"A/head.nii.gz": DONE, "a/head.nii.gz": FAILED, "a/other.nii.gz": DONE,
                      "cafe\u0301.nii.gz": DONE, "caf\u00e9.nii.gz": FAILED,
                      "SCAN-01.NII.GZ": DONE, "scan-01.nii.gz": FAILED, "zz.nii.gz": DONE}
    assert summary.exit_code == 1
    failed = next(r for r in summary.records if r.key == "a/head.nii.gz")
    assert failed.error_type == "OutputError"
    assert "'a/head.nii.gz' and 'A/head.nii.gz' differ only in letter case" in (failed.error or "")
    assert "case-insensitive disk" in (failed.error or "") and "Rename one of them" in (failed.error or "")
    assert str(tmp_path) not in (failed.error or ""), "the manifest never records where the user's files are"
    # nothing written for the refused scans; the first of each group is the defaced copy of its own input
    assert not (out / "a/head.nii.gz").exists() and not (out / "scan-01.nii.gz").exists()
    assert not (out / "caf\u00e9.nii.gz").exists()
    assert (out / "A/head.nii.gz").read_bytes() == b"scan 0" and (out / "SCAN-01.NII.GZ").read_bytes() == b"scan 6"
    assert (out / "a/other.nii.gz").read_bytes() == b"scan 2", "a folder shared under two spellings is no clash"
    assert "differ only in letter case" in summary.html_path.read_text()

    # a rerun: the first is skipped as done, the later refused again (never skipped, never written)
    again = run_batch(BatchConfig(in_root=src, out_root=out, quiet=True), deface=_copy)
    status = {r.key: r.status for r in again.records}
    assert status["A/head.nii.gz"] == "skipped" and status["a/head.nii.gz"] == FAILED
    assert not (out / "a/head.nii.gz").exists()


def test_the_cli_exits_1_and_the_dry_run_says_refuse(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      caplog: pytest.LogCaptureFixture) -> None:
    src = tmp_path / "in"
    for rel in ["sub-01_T1w.nii.gz", "sub-01_T1W.nii.gz"]:
        _write(src, rel, b"x")
    assert main(["batch", str(src), str(tmp_path / "out"), "--dry-run"]) == 1
    printed = capsys.readouterr()
    assert "refuse   sub-01_T1w.nii.gz" in printed.out, printed.out
    assert "1 to deface" in printed.out and "1 refused" in printed.out
    assert "'sub-01_T1w.nii.gz' and 'sub-01_T1W.nii.gz' differ only in letter case" in caplog.text
    assert not (tmp_path / "out").exists()


def test_a_dicom_series_folder_where_another_scan_writes_inside_is_a_clash(tmp_path: Path) -> None:
    """A series written as folder 'Series' and a file written into 'series/': one folder on such a disk, where the
    series' folder replaces what is there."""
    from defacer.batch.layout import OutputLayout, folded_clashes

    out = tmp_path / "out"
    layout = OutputLayout(in_root=tmp_path / "in", out_root=out)
    series = Scan(path=tmp_path / "in/Series", relpath=PurePosixPath("Series"), kind="dicom", entities={})
    inside = Scan(path=tmp_path / "in/series/x/a.nii.gz", relpath=PurePosixPath("series/x/a.nii.gz"), kind="file",
                  entities={})
    assert folded_clashes(layout, [series, inside]) == {"series/x/a.nii.gz": ("Series", out / "series")}
    assert folded_clashes(layout, [inside, series]) == {"Series": ("series/x/a.nii.gz", out / "Series")}
    apart = Scan(path=tmp_path / "in/Other", relpath=PurePosixPath("Other"), kind="dicom", entities={})
    assert folded_clashes(layout, [series, apart]) == {}


def test_a_bids_dataset_with_a_case_clash_defaces_the_rest_with_the_real_pipeline(
        tmp_path: Path, bids: tuple[Path, Path, list[str]]) -> None:
    ds, template_labels, relpaths = bids
    labels = tmp_path / "labels"
    shutil.copytree(template_labels, labels)  # the template's is shared by other tests
    later = relpaths[0]  # sub-01/anat/sub-01_T1w.nii.gz
    first = later.replace("_T1w", "_T1W")  # 'W' sorts before 'w': this one is defaced
    (ds / first).write_bytes((ds / relpaths[2]).read_bytes())  # another head, same name in another case
    (labels / first.replace(".nii.gz", ".labels.nii.gz")).write_bytes(
        (labels / relpaths[2].replace(".nii.gz", ".labels.nii.gz")).read_bytes())
    before = {p: p.read_bytes() for p in ds.rglob("*") if p.is_file()}
    out = tmp_path / "out"
    code = main(["batch", str(ds), str(out), "--labels-dir", str(labels), "--quiet"])
    assert code == 1
    records = {r.key: r for r in Manifest(out / ".defacer" / "manifest.jsonl")}
    assert records[later].status == FAILED and "differ only in letter case" in (records[later].error or "")
    assert all(records[rel].status == DONE for rel in [first, *relpaths[1:]])
    assert not (out / later).exists() and not (out / later.replace(".nii.gz", ".defacer.json")).exists()
    assert not (out / later.replace(".nii.gz", ".json")).exists()
    assert (out / first).is_file() and (out / first.replace(".nii.gz", ".json")).is_file()
    assert {p: p.read_bytes() for p in ds.rglob("*") if p.is_file()} == before, "IN is never modified"


@pytest.mark.parametrize(("a", "b"), [("x/y.nii.gz", "x__y.nii.gz"), ("x_/y.nii.gz", "x/_y.nii.gz"),
                                      ("p/q__r.nii.gz", "p__q/r.nii.gz")])
def test_two_scans_never_share_a_verification_folder(tmp_path: Path, a: str, b: str) -> None:
    """``/`` is written ``__`` in the QC folder's names: 'x/y' and 'x__y' both got 'x__y', and the later scan's
    report and pictures replaced the earlier's (both records then showed the later's evidence)."""
    from defacer.batch.layout import OutputLayout

    layout = OutputLayout(in_root=tmp_path / "in", out_root=tmp_path / "out")
    dirs = [layout.verify_dir(Scan(path=tmp_path / "in" / rel, relpath=PurePosixPath(rel), kind="file", entities={}))
            for rel in (a, b)]
    assert dirs[0] != dirs[1] and all(d.parent == tmp_path / "out-qc" for d in dirs)
    plain = Scan(path=tmp_path / "in/sub-01/anat/sub-01_T1w.nii.gz",
                 relpath=PurePosixPath("sub-01/anat/sub-01_T1w.nii.gz"), kind="file", entities={})
    assert layout.verify_dir(plain).name == "sub-01__anat__sub-01_T1w", "unambiguous names are as before"


def test_a_batch_verifies_x_slash_y_and_x__y_into_folders_of_their_own(tmp_path: Path) -> None:
    import nibabel as nib
    import numpy as np

    from defacer.phantom import make_phantom, save_phantom

    pytest.importorskip("defacer.verify")
    src, labels = tmp_path / "in", tmp_path / "labels"
    (src / "x").mkdir(parents=True)
    (labels / "x").mkdir(parents=True)
    save_phantom(make_phantom(4.0), src / "x/y.nii.gz", labels / "x/y.labels.nii.gz")
    save_phantom(make_phantom(4.0, seed=3), src / "x__y.nii.gz", labels / "x__y.labels.nii.gz")
    summary = run_batch(BatchConfig(in_root=src, out_root=tmp_path / "out", labels_dir=labels, verify=True,
                                    quiet=True))
    folders = {r.key: (r.verify or {}).get("folder") for r in summary.records}
    assert None not in folders.values() and len(set(folders.values())) == 2, folders
    for record in summary.records:
        kept = nib.load(tmp_path / "out-qc" / folders[record.key] / "labels.nii.gz")
        own = nib.load(labels / record.key.replace(".nii.gz", ".labels.nii.gz"))
        assert np.array_equal(np.asarray(kept.dataobj) > 0, np.asarray(own.dataobj) > 0), record.key


def test_of_other_files_differing_only_in_case_only_the_first_is_carried(tmp_path: Path,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    """'README' and 'readme' were both copied: on a case-insensitive OUT the later replaced the earlier (and each
    rerun found the other's size and copied again)."""
    src = tmp_path / "in"
    _write(src, "scan.nii.gz", b"scan")
    _write(src, "README", b"upper")
    _write(src, "readme", b"lower, longer")
    _write(src, "notes/a.txt", b"a")
    out = tmp_path / "out"
    summary = run_batch(BatchConfig(in_root=src, out_root=out, quiet=True), deface=_copy)
    assert summary.counts.done == 1
    assert (out / "README").read_bytes() == b"upper" and not (out / "readme").exists()
    assert (out / "notes/a.txt").read_bytes() == b"a"
    assert "'readme' is not carried to the output: on a case-insensitive disk" in caplog.text
    assert "same file as 'README'" in caplog.text


def _copy_with_record(input_path: Path, output_path: Path, **_: object) -> dict[str, object]:
    """:func:`_copy` that also writes the provenance record beside the output, as the pipeline does."""
    from defacer.provenance import sidecar_path

    _copy(input_path, output_path)
    sidecar_path(Path(output_path)).write_text('{"record": "of this run"}')
    return {"stand_in": True}


def test_an_other_file_named_as_a_scans_record_is_not_carried(tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    """Before: ``a.defacer.json`` in IN (an earlier record) was carried, then replaced by the scan's record, and each
    rerun copied it back over that record (and the scan was defaced again); ``A.defacer.json`` was carried beside
    it, on a case-insensitive disk the same file."""
    src = tmp_path / "in"
    _write(src, "a.nii.gz", b"scan")
    _write(src, "a.defacer.json", b'{"note": "an earlier record"}')
    _write(src, "A.defacer.json", b'{"note": "another spelling"}')
    _write(src, "notes.json", b'{"note": "carried"}')
    out = tmp_path / "out"
    for _ in range(2):
        summary = run_batch(BatchConfig(in_root=src, out_root=out, quiet=True), deface=_copy_with_record)
        assert summary.exit_code == 0
        assert sorted(p.name for p in out.iterdir() if p.name != ".defacer") == \
            ["a.defacer.json", "a.nii.gz", "notes.json"]
        assert (out / "a.defacer.json").read_text() == '{"record": "of this run"}'
    assert {r.key: r.status for r in summary.records} == {"a.nii.gz": "skipped"}, "the rerun has nothing to do"
    assert "'A.defacer.json' is not carried to the output: defacing 'a.nii.gz' writes" in caplog.text


def test_an_include_run_of_the_later_scan_of_a_clash_is_refused_where_the_first_was_written(tmp_path: Path) -> None:
    """Before: ``--include`` selecting only ``sub-01`` (the later of ``SUB-01``/``sub-01``) wrote it beside the
    ``SUB-01`` output of the earlier run: on a case-insensitive disk it replaced that one."""
    src = tmp_path / "in"
    _write(src, "SUB-01.nii.gz", b"first")
    _write(src, "sub-01.nii.gz", b"second")
    out = tmp_path / "out"
    first = run_batch(BatchConfig(in_root=src, out_root=out, quiet=True, include=["SUB-*"]), deface=_copy)
    assert {r.key: r.status for r in first.records} == {"SUB-01.nii.gz": DONE}
    later = run_batch(BatchConfig(in_root=src, out_root=out, quiet=True, include=["sub-*"]), deface=_copy)
    assert {r.key: r.status for r in later.records} == {"sub-01.nii.gz": FAILED}
    assert "differ only in letter case" in (later.records[0].error or "")
    assert not (out / "sub-01.nii.gz").exists() and (out / "SUB-01.nii.gz").read_bytes() == b"first"
    # into another folder (the refusal's own advice) it runs
    apart = run_batch(BatchConfig(in_root=src, out_root=tmp_path / "apart", quiet=True, include=["sub-*"]),
                      deface=_copy)
    assert {r.key: r.status for r in apart.records} == {"sub-01.nii.gz": DONE}
