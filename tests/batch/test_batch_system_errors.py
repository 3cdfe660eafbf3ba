"""A scan that fails for the system (a full disk, a read-only or forbidden place) is recorded in words with what to do,
as ``defacer deface`` says it; before, the batch recorded it like a bug: "OSError: [Errno 28] No space left on device
(at igzip_threaded.py:472)"."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import pytest

from defacer.batch.manifest import DONE, FAILED, SKIPPED
from defacer.batch.runner import BatchConfig, run_batch


def _disk_full_on_the_second(input_path: Path, output_path: Path, **_: object) -> dict[str, object]:
    """Stand-in for the pipeline: the scan of sub-02 meets a full disk, the others are copied."""
    if "sub-02" in Path(input_path).name:
        raise OSError(errno.ENOSPC, "No space left on device", str(output_path))
    Path(output_path).parent.mkdir(parents=True, exist_ok=True)
    Path(output_path).write_bytes(Path(input_path).read_bytes())
    return {"stand_in": True}


def _files(root: Path) -> Path:
    root.mkdir()
    for name in ("sub-01.nii.gz", "sub-02.nii.gz", "sub-03.nii.gz"):
        (root / name).write_bytes(name.encode())
    return root


def test_a_full_disk_is_recorded_in_words_not_as_a_bug(tmp_path: Path) -> None:
    src = _files(tmp_path / "in")
    summary = run_batch(BatchConfig(in_root=src, out_root=tmp_path / "out", quiet=True),
                        deface=_disk_full_on_the_second)
    status = {r.key: r.status for r in summary.records}
    assert status == {"sub-01.nii.gz": DONE, "sub-02.nii.gz": FAILED, "sub-03.nii.gz": DONE}
    failed = next(r for r in summary.records if r.status == FAILED)
    assert "the disk is full: free some space or write the output to another disk" in (failed.error or ""), failed
    assert "(at " not in (failed.error or ""), "no source file and line: it is not a bug"
    assert str(tmp_path) not in (failed.error or ""), "OUT is written OUT in the manifest"
    assert "OUT/sub-02.nii.gz" in (failed.error or "")


@pytest.mark.skipif(shutil.which("mount") is None, reason="needs mount")
def test_a_real_full_disk_fails_the_scans_that_do_not_fit_in_words(tmp_path: Path, small_disk) -> None:
    from defacer.phantom import make_phantom, save_phantom

    disk = small_disk("300k")
    src, labels = tmp_path / "in", tmp_path / "labels"
    src.mkdir()
    labels.mkdir()
    for name in ("a", "b"):  # ~190 kB each: the second does not fit
        save_phantom(make_phantom(4.0), src / f"{name}.nii.gz", labels / f"{name}.labels.nii.gz")
    summary = run_batch(BatchConfig(in_root=src, out_root=disk / "out", labels_dir=labels, quiet=True))
    failed = [r for r in summary.records if r.status == FAILED]
    assert failed and all("the disk is full" in (r.error or "") and "(at " not in (r.error or "")
                          for r in failed), [r.error for r in failed]
    assert not [p for p in (disk / "out").rglob("*") if ".defacer-tmp" in p.name], "no temporary left"


def test_an_error_about_an_output_never_reads_as_one_about_the_input(tmp_path: Path) -> None:
    """HOSTILE10: where OUT's path begins with IN's ('data', 'data-out'), the manifest's IN/OUT replacement wrote
    IN over the start of OUT's path: "File name too long ('INo/sub-01_xxx...')", as if defacer wrote into its input."""
    src = _files(tmp_path / "data")
    summary = run_batch(BatchConfig(in_root=src, out_root=tmp_path / "data-out", quiet=True),
                        deface=_disk_full_on_the_second)
    failed = next(r for r in summary.records if r.status == FAILED)
    assert "OUT/sub-02.nii.gz" in (failed.error or ""), failed.error
    assert "IN-out" not in (failed.error or "") and str(tmp_path) not in (failed.error or "")


def test_a_label_maps_error_never_records_where_the_label_maps_are(tmp_path: Path) -> None:
    """IN and OUT are recorded as 'IN'/'OUT', but a --labels-dir label map refused for its grid was recorded with its
    whole path ('/home/.../Quexworth_study/labels/a.labels.nii.gz' in OUT/.defacer/manifest.jsonl and summary.html;
    HOSTILE12). Now 'LABELS/a.labels.nii.gz'."""
    import nibabel as nib
    import numpy as np

    from defacer.phantom import make_phantom, save_phantom

    src, labels = tmp_path / "in", tmp_path / "Quexworth_study" / "labels"
    src.mkdir()
    labels.mkdir(parents=True)
    save_phantom(make_phantom(4.0), src / "a.nii.gz", tmp_path / "unused.labels.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((5, 5, 5), np.uint8), np.eye(4)), str(labels / "a.labels.nii.gz"))
    out = tmp_path / "out"
    summary = run_batch(BatchConfig(in_root=src, out_root=out, labels_dir=labels, quiet=True))
    (record,) = summary.records
    assert record.status == FAILED and "LABELS/a.labels.nii.gz" in (record.error or ""), record.error
    for written in (out / ".defacer" / "manifest.jsonl", out / ".defacer" / "summary.html"):
        text = written.read_text(encoding="utf-8")
        assert "Quexworth" not in text and str(tmp_path) not in text, written.name  # main: the label map's path


def test_a_record_the_disk_refuses_stops_the_batch_saying_what_was_done(tmp_path: Path, monkeypatch) -> None:
    """HOSTILE14: on a disk that filled up between scans, sub-02 was written whole but its manifest line was cut
    short, and the batch stopped with the bare disk-full message ("no half-written output was left"): nothing said
    which scans were done, that sub-02 would be done again, or that the same command resumes.  Found on a real
    936 kB tmpfs; here the manifest's append meets the full disk."""
    from defacer.batch import manifest as manifest_module
    from defacer.errors import OutputError

    src = _files(tmp_path / "in")
    original = manifest_module.Manifest.append
    calls = []

    def append(self, record):  # the second finished scan's line meets a full disk
        calls.append(record.key)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(self.path))
        return original(self, record)

    monkeypatch.setattr(manifest_module.Manifest, "append", append)
    config = BatchConfig(in_root=src, out_root=tmp_path / "out", quiet=True)
    with pytest.raises(OutputError) as refused:
        run_batch(config, deface=_copy)
    message = str(refused.value)
    assert message.startswith("The batch stopped") and "the disk is full" in message
    assert "1 of the 3 scans to do finished and are recorded" in message
    assert "'sub-02.nii.gz' was written but is not recorded" in message and "1 were not started" in message
    assert "run the same command again" in message
    monkeypatch.setattr(manifest_module.Manifest, "append", original)
    summary = run_batch(config, deface=_copy)  # the same command resumes: sub-01 kept, the others done
    assert sorted((r.key, r.status) for r in summary.records) == [
        ("sub-01.nii.gz", SKIPPED), ("sub-02.nii.gz", DONE), ("sub-03.nii.gz", DONE)]


def _copy(input_path: Path, output_path: Path, **_: object) -> dict[str, object]:
    """Stand-in for the pipeline: the scan copied as it is."""
    Path(output_path).parent.mkdir(parents=True, exist_ok=True)
    Path(output_path).write_bytes(Path(input_path).read_bytes())
    return {"stand_in": True}


@pytest.mark.skipif(shutil.which("mount") is None, reason="needs mount")
def test_a_full_disk_at_the_ownership_record_stops_the_batch_saying_what_was_done(tmp_path: Path, small_disk) -> None:
    """HOSTILE15 (HOSTILE14's leftover), on a real tmpfs: a rerun with new scans met a full disk where it appends their
    names to OUT/.defacer/owned.jsonl, before any scan: the bare disk-full message ("no half-written output was
    left under its name"), nothing on what earlier runs left or that the same command resumes, and the record's
    last page filled with the start of a cut line.  Now: the batch stopped before defacing any scan, which file, how
    many are recorded, run the same command again; the record as it was, byte for byte."""
    from defacer.errors import OutputError

    disk = small_disk("1m")
    src = _files(tmp_path / "in")
    config = BatchConfig(in_root=src, out_root=disk / "out", quiet=True)
    run_batch(config, deface=_copy)
    record = disk / "out" / ".defacer" / "owned.jsonl"
    before = record.read_bytes()
    for number in range(4, 64):  # their names fill more than what is left of the record's last page
        (src / f"sub-{number:02d}_{'x' * 150}.nii.gz").write_bytes(b"new")
    with pytest.raises(OSError), (disk / "filler").open("wb", buffering=0) as filler:
        while True:  # the rest of the disk, to the last page
            filler.write(b"\0" * 4096)
    with pytest.raises(OutputError) as refused:
        run_batch(config, deface=_copy)
    message = str(refused.value)
    assert message.startswith("The batch stopped before defacing any scan") and "owned.jsonl" in message
    assert "the disk is full" in message and "None of the 63 scans found was started" in message, message
    assert "3 recorded by earlier runs are kept" in message and "run the same command again" in message
    assert record.read_bytes() == before, "no line of the record is left cut short"
    (disk / "filler").unlink()
    summary = run_batch(config, deface=_copy)  # the same command resumes
    status = {r.key: r.status for r in summary.records}
    assert len(status) == 63 and sum(s == SKIPPED for s in status.values()) == 3
    assert all(s in (SKIPPED, DONE) for s in status.values())


def test_a_full_disk_at_the_dataset_files_stops_the_batch_saying_so(tmp_path: Path, monkeypatch) -> None:
    """HOSTILE15: a BIDS batch whose disk refused OUT's dataset_description.json (written before any scan) stopped
    with the bare disk-full message; now it says it stopped before any scan, what it was writing, and to rerun."""
    import json

    from defacer.batch import layout as layout_module
    from defacer.errors import OutputError

    src = tmp_path / "ds"
    (src / "sub-01" / "anat").mkdir(parents=True)
    (src / "dataset_description.json").write_text(json.dumps({"Name": "x", "BIDSVersion": "1.8.0"}))
    (src / "sub-01" / "anat" / "sub-01_T1w.nii.gz").write_bytes(b"scan")

    def full_disk(*_: object, **__: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(layout_module, "write_json_atomic", full_disk)
    config = BatchConfig(in_root=src, out_root=tmp_path / "out", quiet=True)
    with pytest.raises(OutputError) as refused:
        run_batch(config, deface=_copy)
    message = str(refused.value)
    assert message.startswith("The batch stopped before defacing any scan: the dataset files of"), message
    assert "the disk is full" in message and "run the same command again" in message
    assert not (tmp_path / "out" / "sub-01").exists()
    monkeypatch.undo()
    summary = run_batch(config, deface=_copy)
    assert [(r.key, r.status) for r in summary.records] == [("sub-01/anat/sub-01_T1w.nii.gz", DONE)]
