"""An output folder's ownership record is read bounded.

On main 6b6c6a3 (HOSTILE20, 2026-12-06 01:17 UTC; HOSTILE18's note) ``output_guard.owned_files`` read the record
beside an output folder (``.<name>.defacer-output.json``) whole, with no size bound (``is_owner_record`` had 64 MiB):
a record padded past any size defacer writes was read into memory and, still valid JSON, made ``--force``
(``check_replaceable``) and a batch's ownership check count the folder as defacer's.  Now one over 64 MiB is refused
in words, unread, and nothing is replaced.  (``anonymize``/``deface`` of a series already refused such a record
through ``is_owner_record`` before reaching it.)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from defacer.batch.ownership import OwnershipRecord
from defacer.cli.main import main
from defacer.errors import OutputError
from defacer.io.output_guard import _MAX_RECORD_BYTES, check_replaceable, owner_record

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "dicom"))
from dicom_factory import write_series


@pytest.fixture
def padded_output(tmp_path):
    """A series folder ``out`` written by ``defacer anonymize``, its (valid) record padded past 64 MiB."""
    write_series(tmp_path / "in", np.arange(4 * 4 * 3, dtype=np.uint16).reshape(4, 4, 3))
    (tmp_path / "key.txt").write_text("k" * 32, encoding="utf-8")
    (tmp_path / "key.txt").chmod(0o600)
    out = tmp_path / "out"
    assert main(["anonymize", str(tmp_path / "in"), str(out), "--key-file", str(tmp_path / "key.txt")]) == 0
    record = owner_record(out)
    with open(record, "ab") as f:  # still valid JSON: whitespace after the object
        f.write(b" " * (_MAX_RECORD_BYTES + 16 - record.stat().st_size))
    yield out
    record.unlink()


def test_force_refuses_a_folder_whose_record_is_larger_than_any_defacer_writes(padded_output):
    before = {p.name: p.stat().st_mtime_ns for p in padded_output.iterdir()}
    with pytest.raises(OutputError, match="is larger than any defacer writes .*nothing was replaced"):
        check_replaceable(padded_output, force=True)
    assert {p.name: p.stat().st_mtime_ns for p in padded_output.iterdir()} == before


def test_a_batch_counts_a_folder_with_such_a_record_as_not_its_own(padded_output, tmp_path):
    ownership = OwnershipRecord(tmp_path / ".defacer" / "owned.jsonl", tmp_path)
    assert ownership.foreign([padded_output]) == [padded_output]


def test_a_batch_ownership_record_line_longer_than_defacer_writes_is_skipped_unread(tmp_path, caplog) -> None:
    """``OUT/.defacer/owned.jsonl`` was read line by line with no bound on a line (HOSTILE20's note; main de9c2db): a
    line padded past any defacer writes (still valid JSON) was read whole and its name counted as defacer's, so a
    batch would replace that user's file.  Now such a line is skipped unread, with a warning; the others count."""
    import logging

    import nibabel as nib

    from defacer.batch.ownership import RECORD_NAME

    out = tmp_path / "out"
    (out / ".defacer").mkdir(parents=True)
    for name in ("a.nii.gz", "users.nii.gz", "c.nii.gz"):
        nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), dtype=np.int16), np.eye(4)), out / name)
    padded = b'{"path": "users.nii.gz", "pad": "' + b"x" * (1024 * 1024) + b'"}\n'
    (out / ".defacer" / RECORD_NAME).write_bytes(b'{"path": "a.nii.gz"}\n' + padded + b'{"path": "c.nii.gz"}\n')
    with caplog.at_level(logging.WARNING):
        record = OwnershipRecord(out / ".defacer" / RECORD_NAME, out)
    assert record.names == {"a.nii.gz", "c.nii.gz"}
    assert record.foreign([out / n for n in ("a.nii.gz", "users.nii.gz", "c.nii.gz")]) == [out / "users.nii.gz"]
    with pytest.raises(OutputError, match="users.nii.gz"):
        record.check([out / "users.nii.gz"])
    assert "1 line(s) longer than any defacer writes" in caplog.text and "not read" in caplog.text
    # a line of defacer's own, however long its name, is read: a path of 4,096 non-UTF-8 bytes, escaped
    (out / ".defacer" / RECORD_NAME).write_text(json.dumps({"path": "d/" + "\udce9" * 4094}) + "\n")
    assert OwnershipRecord(out / ".defacer" / RECORD_NAME, out).names == {"d/" + "\udce9" * 4094}


def test_a_batch_ownership_record_of_more_lines_than_defacer_writes_is_read_up_to_a_bound(tmp_path, caplog) -> None:
    """The line bound above left the number of lines free (HOSTILE21's note): a record of millions of short names
    (or one name repeated) was read whole at every run and every name held (main 3c01852, 03:28 UTC, load 6: 5 million
    names, a 260 MB record, grew the reader by 588 MB in 13 s of CPU; now 124 MB, 3.1 s).  Now at most MAX_RECORD_LINES lines and MAX_RECORD_BYTES bytes are read, with a warning; a name past
    the bound does not count as defacer's, so the file it names is refused, not replaced."""
    import logging

    import nibabel as nib

    from defacer.batch import ownership

    out = tmp_path / "out"
    (out / ".defacer").mkdir(parents=True)
    for name in ("a.nii.gz", "users.nii.gz"):
        nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), dtype=np.int16), np.eye(4)), out / name)
    path = out / ".defacer" / ownership.RECORD_NAME
    with path.open("wb") as handle:
        handle.write(b'{"path": "a.nii.gz"}\n')
        handle.writelines(b'{"path": "x/%07d"}\n' % n for n in range(1_000_000))
        handle.write(b'{"path": "users.nii.gz"}\n')
    with caplog.at_level(logging.WARNING):
        record = OwnershipRecord(path, out)
    assert "a.nii.gz" in record.names and "users.nii.gz" not in record.names
    assert len(record.names) == 1_000_000
    assert "longer than any defacer writes (expected at most 1000000 lines and 256 MiB" in caplog.text
    with pytest.raises(OutputError, match="users.nii.gz"):
        record.check([out / "a.nii.gz", out / "users.nii.gz"])
    # the byte bound, made small here: a record of few but long lines stops there too
    caplog.clear()
    path.write_bytes(b'{"path": "a.nii.gz"}\n' + b'{"path": "%s"}\n' % (b"y" * 900_000) * 4
                     + b'{"path": "users.nii.gz"}\n')
    ownership_bytes = ownership.MAX_RECORD_BYTES
    try:
        ownership.MAX_RECORD_BYTES = 2 * 1024 * 1024
        with caplog.at_level(logging.WARNING):
            record = OwnershipRecord(path, out)
    finally:
        ownership.MAX_RECORD_BYTES = ownership_bytes
    assert "a.nii.gz" in record.names and "users.nii.gz" not in record.names and len(record.names) <= 3
    assert "longer than any defacer writes" in caplog.text
    # a record within the bounds is read whole, without a word
    caplog.clear()
    path.write_bytes(b'{"path": "a.nii.gz"}\n{"path": "users.nii.gz"}\n')
    with caplog.at_level(logging.WARNING):
        assert OwnershipRecord(path, out).names == {"a.nii.gz", "users.nii.gz"}
    assert not caplog.text
