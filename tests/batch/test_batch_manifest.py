"""The manifest: durable appends, tolerance of a cut-short line, compaction, up-to-date checks."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from defacer.batch.manifest import (
    DONE,
    FAILED,
    Manifest,
    ScanRecord,
    batch_lock,
    is_up_to_date,
    sha256_file,
    stamp,
)
from defacer.errors import OutputError


def _done_record(tmp_path: Path) -> tuple[ScanRecord, Path, Path]:
    (tmp_path / "in").mkdir()
    (tmp_path / "out").mkdir()
    src = tmp_path / "in" / "a.nii.gz"
    dst = tmp_path / "out" / "a.nii.gz"
    src.write_bytes(b"input")
    dst.write_bytes(b"output")
    record = ScanRecord(key="a.nii.gz", status=DONE, inputs=[stamp(src, tmp_path / "in")],
                        outputs=[stamp(dst, tmp_path / "out")], fingerprint="f")
    return record, src, dst


def _up_to_date(record: ScanRecord, tmp_path: Path, src: Path, **kw: object) -> bool:
    return is_up_to_date(record, fingerprint=kw.pop("fingerprint", "f"), in_root=tmp_path / "in",  # type: ignore[arg-type]
                         out_root=tmp_path / "out", input_files=[src], **kw)  # type: ignore[arg-type]


def test_records_survive_reopening_and_the_last_one_wins(tmp_path: Path) -> None:
    manifest = Manifest(tmp_path / "m.jsonl")
    manifest.append(ScanRecord(key="a", status=FAILED, error="boom"))
    manifest.append(ScanRecord(key="b", status=DONE))
    manifest.append(ScanRecord(key="a", status=DONE, timings={"total": 1.5}))
    again = Manifest(tmp_path / "m.jsonl")
    assert len(again) == 2
    record = again.get("a")
    assert record is not None and record.status == DONE and record.timings == {"total": 1.5}


def test_a_line_cut_short_by_a_kill_is_ignored_and_later_appends_stay_readable(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    manifest = Manifest(path)
    manifest.append(ScanRecord(key="a", status=DONE))
    with path.open("a") as handle:
        handle.write('{"key": "b", "status": "do')  # killed mid-write
    reopened = Manifest(path)
    assert reopened.damaged_lines == 1 and [r.key for r in reopened] == ["a"]
    reopened.append(ScanRecord(key="c", status=DONE))
    assert sorted(r.key for r in Manifest(path)) == ["a", "c"]


def test_compaction_keeps_one_line_per_scan(tmp_path: Path) -> None:
    manifest = Manifest(tmp_path / "m.jsonl")
    for status in (FAILED, FAILED, DONE):
        manifest.append(ScanRecord(key="a", status=status))
    manifest.compact()
    lines = (tmp_path / "m.jsonl").read_text().splitlines()
    assert len(lines) == 2 and "defacer_manifest" in lines[0]


def test_done_scan_with_intact_input_and_output_is_up_to_date(tmp_path: Path) -> None:
    record, src, _ = _done_record(tmp_path)
    assert _up_to_date(record, tmp_path, src)
    assert _up_to_date(record, tmp_path, src, rehash=True)


def test_changed_input_changed_options_or_damaged_output_are_redone(tmp_path: Path) -> None:
    record, src, dst = _done_record(tmp_path)
    assert not _up_to_date(record, tmp_path, src, fingerprint="other")
    dst.write_bytes(b"outpuX")  # same size, new content and mtime
    assert not _up_to_date(record, tmp_path, src)
    dst.write_bytes(b"output")
    assert _up_to_date(record, tmp_path, src)
    src.write_bytes(b"changed input")
    assert not _up_to_date(record, tmp_path, src)


def test_touched_but_unchanged_file_is_still_up_to_date(tmp_path: Path) -> None:
    record, src, _ = _done_record(tmp_path)
    os.utime(src, ns=(1, 1))
    assert _up_to_date(record, tmp_path, src)


def test_failed_scans_are_never_up_to_date(tmp_path: Path) -> None:
    record, src, _ = _done_record(tmp_path)
    record.status = FAILED
    assert not _up_to_date(record, tmp_path, src)


def test_second_batch_on_the_same_output_is_refused(tmp_path: Path) -> None:
    with batch_lock(tmp_path), pytest.raises(OutputError, match="Another defacer batch"), batch_lock(tmp_path):
        pass
    with batch_lock(tmp_path):  # released after the first
        pass


def test_sha256_matches_hashlib(tmp_path: Path) -> None:
    import hashlib

    (tmp_path / "f").write_bytes(b"abc" * 1000)
    assert sha256_file(tmp_path / "f") == hashlib.sha256(b"abc" * 1000).hexdigest()


@pytest.mark.parametrize("path", ["/dev/zero", "../../in/a.nii.gz", "", "a\0b"])
def test_an_edited_manifest_never_makes_a_rerun_read_outside_out(tmp_path: Path, path: str) -> None:
    """Found by HOSTILE4: the manifest in OUT is read back as it is; an output stamp edited to '/dev/zero' (size 0,
    another time) was hashed for ever on the rerun (the batch hung), and '../..' paths were read outside OUT."""
    record, _, _ = _done_record(tmp_path)
    manifest = Manifest(tmp_path / "m.jsonl")
    manifest.append(record)
    text = (tmp_path / "m.jsonl").read_text()
    edited = text.replace('"outputs": [{', '"outputs": [{"mtime_ns": 1, "path": ' + json.dumps(path)
                          + ', "sha256": "' + "0" * 64 + '", "size": 0}, {')
    (tmp_path / "m.jsonl").write_text(edited)
    reopened = Manifest(tmp_path / "m.jsonl")
    assert reopened.get("a.nii.gz") is None and reopened.damaged_lines == 1  # so the scan is done again


def test_an_output_that_became_a_pipe_or_device_is_not_read(tmp_path: Path) -> None:
    record, src, dst = _done_record(tmp_path)
    dst.unlink()
    os.mkfifo(dst)
    record.outputs[0].size, record.outputs[0].mtime_ns = 0, 1
    assert not _up_to_date(record, tmp_path, src)  # answered, not waiting for a writer


@pytest.mark.parametrize("line", ['5', 'null', '"text"', '[1]', '{"defacer_manifest": "x"}', '{"key": 5, "status": "done"}',
                                  '{"key": "a", "status": "done", "outputs": "x"}',
                                  '{"key": "a", "status": "done", "timings": {"total": "slow"}}',
                                  '{"key": "a", "status": "done", "attempts": "2"}'])
def test_manifest_lines_defacer_never_writes_are_damaged_lines_not_a_crash(tmp_path: Path, line: str) -> None:
    """Found by HOSTILE4: such a first line stopped the batch with "unexpected error: TypeError ... This is a bug"."""
    path = tmp_path / "m.jsonl"
    path.write_text(line + "\n" + '{"key": "b", "status": "done"}\n')
    manifest = Manifest(path)
    assert manifest.damaged_lines == 1 and [r.key for r in manifest] == ["b"]


def test_a_manifest_line_that_is_not_utf8_is_a_damaged_line(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_bytes(b'{"defacer_manifest": 1}\n{"key": "\xff", "status": "done"}\n{"key": "b", "status": "done"}\n')
    manifest = Manifest(path)
    assert manifest.damaged_lines == 1 and [r.key for r in manifest] == ["b"]


def test_a_manifest_line_longer_than_defacer_writes_is_skipped_unread(tmp_path: Path, caplog) -> None:
    """``OUT/.defacer/manifest.jsonl`` was read a line at a time with no bound on a line (main 3c01852, HOSTILE22): a
    300 MB line appended to a one-scan batch's manifest took its rerun to 1.29 GB resident (62 MB without it).  A line
    longer than MAX_MANIFEST_LINE_BYTES (16 MiB) is now a damaged line, skipped without being held, with a warning;
    the records around it are read."""
    import logging
    import tracemalloc

    path = tmp_path / "m.jsonl"
    manifest = Manifest(path)
    manifest.append(ScanRecord(key="a", status=DONE))
    with path.open("ab") as handle:
        handle.write(b'{"key": "b", "status": "done", "error": "' + b"x" * (17 * 1024 * 1024) + b'"}\n')
    manifest.append(ScanRecord(key="c", status=DONE))
    tracemalloc.start()
    try:
        with caplog.at_level(logging.WARNING):
            reopened = Manifest(path, read_only=True)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert sorted(r.key for r in reopened) == ["a", "c"] and reopened.damaged_lines == 1
    assert peak < 40 * 1024 * 1024, peak  # at most the bound is held (twice: a read and its copy)
    assert "1 line(s) longer than any defacer writes" in caplog.text
    Manifest(path)  # a writable open compacts it: the long line is gone, the records stay
    assert path.stat().st_size < 10_000 and sorted(r.key for r in Manifest(path)) == ["a", "c"]


def test_a_manifest_of_more_lines_than_defacer_writes_is_read_up_to_a_bound(tmp_path: Path, caplog) -> None:
    """Nor was the number of lines bounded (main 3c01852, HOSTILE22: 2 million minimal records took 1.46 GB and 24 s
    of CPU to read). At most MAX_MANIFEST_LINES lines are read now, with a warning; a scan recorded further on is
    defaced again (its record is not read)."""
    import logging

    lines = 1_000_000  # MAX_MANIFEST_LINES
    path = tmp_path / "m.jsonl"
    Manifest(path).append(ScanRecord(key="first", status=DONE))
    with path.open("a", encoding="utf-8") as handle:
        handle.writelines(f'{{"key": "k{n:07d}", "status": "done"}}\n' for n in range(lines))
    with caplog.at_level(logging.WARNING):
        reopened = Manifest(path, read_only=True)
    assert reopened.get("first") is not None and reopened.get(f"k{lines - 1:07d}") is None
    assert len(reopened) == lines - 1  # the header line counts
    assert "longer than any defacer writes (expected at most 1000000 lines" in caplog.text


def test_a_disk_that_takes_no_locks_is_no_other_batch_nor_training_run(tmp_path: Path, monkeypatch, caplog) -> None:
    """flock answering ENOLCK or EOPNOTSUPP (some network shares) was read as "Another defacer batch is writing to
    ... right now" (and "Another defacer training run"), so every run there was refused (main fe65594, HOSTILE22).
    Only a lock another process holds refuses now; the batch warns that it runs unlocked."""
    import errno
    import fcntl
    import logging

    from defacer.cli.train import only_run_in

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with caplog.at_level(logging.WARNING), batch_lock(tmp_path / "out" / ".defacer"):
        pass
    assert "no file locking on the disk" in caplog.text
    with only_run_in(tmp_path / "checkpoints"):
        pass
