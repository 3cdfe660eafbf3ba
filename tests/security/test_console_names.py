"""Hostile file names on the console: a name holding a line feed, a carriage return or a terminal escape sequence is
printed escaped, never acted on (found by HOSTILE5; HOSTILE4's open question 9).

Printed raw, a file named ``x<LF>De-identified 99 DICOM file(s) ...`` faked a line of defacer's output, and
``ESC]0;...BEL`` / ``ESC[2J`` retitled or cleared the user's terminal; in the batch summary (rich) a scan named
``sub-01_[/x]T1w.nii.gz`` stopped the final table with a MarkupError ("unexpected error ... a bug") and
``[red]`` vanished from names.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest

from defacer.batch.manifest import DONE, FAILED, ScanRecord
from defacer.batch.summary import Progress, print_table
from defacer.cli.main import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "dicom"))
from dicom_factory import write_series

FAKE = "x\nDe-identified 99 DICOM file(s) into y"
ESCAPES = "z\x1b[2J\x1b]0;pwned\x07\rw"


def test_shown_escapes_control_characters_and_keeps_the_rest() -> None:
    from defacer.errors import shown

    assert shown("sub-01/anat/Jörg T1w.nii.gz") == "sub-01/anat/Jörg T1w.nii.gz"
    assert shown(FAKE) == "x\\nDe-identified 99 DICOM file(s) into y"
    assert shown(ESCAPES) == "z\\x1b[2J\\x1b]0;pwned\\x07\\rw"
    assert shown("a\u202eb\u2028c\x85d\x7f") == "a\\u202eb\\u2028c\\x85d\\x7f"
    assert shown("line one\n\tline two\x1b", lines=True) == "line one\n\tline two\\x1b"


def _no_raw_controls(text: str) -> None:
    assert not any(ch in text for ch in "\x1b\x07\r\u202e"), repr(text)


def test_anonymize_prints_a_hostile_name_on_one_line_escaped(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                              caplog: pytest.LogCaptureFixture) -> None:
    src = tmp_path / "in"
    files = write_series(src, (np.arange(8 * 8 * 2).reshape(8, 8, 2) % 50).astype(np.uint16))
    # another instance under the hostile name (a byte-identical copy is refused as one file twice since 1b3894e)
    import pydicom
    from pydicom.uid import generate_uid

    other = pydicom.dcmread(files[0])
    other.SOPInstanceUID = other.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    other.save_as(src / FAKE)
    (src / f"{ESCAPES}.txt").write_text("not DICOM")
    assert main(["anonymize", str(src), str(tmp_path / "out"), "--key", "k" * 32]) == 0
    out = capsys.readouterr()
    text = out.out + out.err + caplog.text
    _no_raw_controls(text)
    assert not any(line.startswith("De-identified 99") for line in text.splitlines()), text
    assert "z\\x1b[2J\\x1b]0;pwned\\x07\\rw" in out.out
    assert "z\\x1b[2J" in caplog.text  # the warning's argument escaped too


@pytest.mark.parametrize("rich", [True, False], ids=["rich", "plain"])
def test_the_final_table_shows_hostile_scan_names_escaped(rich: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if not rich:
        monkeypatch.setitem(sys.modules, "rich.table", None)
    records = [ScanRecord(key="sub-01/anat/sub-01_[/x]T1w.nii.gz", status=FAILED, error="bad [/b] header"),
               ScanRecord(key=f"sub-02/anat/{ESCAPES}.nii.gz", status=FAILED, error="truncated"),
               ScanRecord(key="sub-03/anat/sub-03_[red]T1w.nii.gz", status=FAILED, error="truncated")]
    stream = io.StringIO()
    print_table(records, wall_s=1.0, stream=stream)
    text = stream.getvalue()
    flat = "".join(line.strip("│ ") for line in text.splitlines())
    _no_raw_controls(text)
    assert "sub-01_[/x]T1w.nii.gz" in flat and "bad [/b] header" in flat, text
    assert "sub-03_[red]T1w.nii.gz" in flat, text


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_progress_bar_shows_a_hostile_scan_name_escaped() -> None:
    stream = _Terminal()
    with Progress(2, stream=stream) as progress:
        progress.advance(ScanRecord(key="sub-01_[/x]T1w.nii.gz", status=DONE))
        progress.advance(ScanRecord(key=f"{ESCAPES}.nii.gz", status=DONE))
    text = stream.getvalue()
    assert "sub-01_[/x]T1w.nii.gz" in text or "pwned" in text
    assert "]0;pwned" not in text.replace("\\x1b]0;pwned", "")


def test_a_log_file_gets_hostile_scan_names_escaped(tmp_path: Path) -> None:
    stream = io.StringIO()
    with Progress(1, stream=stream) as progress:
        progress.advance(ScanRecord(key=f"sub-01/{FAKE}.nii.gz", status=FAILED, error=f"cannot read {ESCAPES}"))
    text = stream.getvalue()
    _no_raw_controls(text)
    assert len(text.splitlines()) == 1, text


def test_the_evaluation_table_shows_a_hostile_scan_name_escaped() -> None:
    from defacer.verify.evaluate import format_row

    line = format_row({"name": FAKE, "error": f"cannot read {ESCAPES}"})
    _no_raw_controls(line)
    assert "\n" not in line and line.startswith("x\\nDe-identified")


def test_a_logged_error_naming_a_hostile_file_stays_on_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                caplog: pytest.LogCaptureFixture) -> None:
    """batch logs a refused file's error as an argument (log.warning("%s", err)): a BIDS JSON named with a line feed
    (not valid JSON, so refused) printed the rest of its name as a line of its own."""
    import logging

    from defacer.cli.main import _SHOWN_ARGUMENTS
    from defacer.errors import DefacerError

    record = logging.LogRecord("defacer.batch.layout", logging.WARNING, __file__, 1, "%s",
                               (DefacerError(f"The JSON file '{FAKE}.json' is not valid JSON."),), None)
    assert _SHOWN_ARGUMENTS.filter(record)
    assert "\n" not in record.getMessage() and "x\\nDe-identified" in record.getMessage()


@pytest.mark.parametrize("rich", [True, False], ids=["rich", "plain"])
def test_a_multi_line_error_is_printed_on_one_line_without_literal_escapes(rich: bool,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """HOSTILE10's leftover: a DICOM folder's "holds 2 image stacks" error lists each stack on a line of its own;
    the final table and the log lines printed its line breaks as a literal backslash-n."""
    if not rich:
        monkeypatch.setitem(sys.modules, "rich.table", None)
    error = "The folder holds 2 image stacks:\n  1.2.3 (axial, 20 slices)\n  1.2.4 (coronal, 20 slices)\nPass --series."
    records = [ScanRecord(key="sourcedata/sub-01/dicom", status=FAILED, error=error),
               ScanRecord(key=f"sub-02/{FAKE}.nii.gz", status=FAILED, error=f"cannot read {FAKE}")]
    stream = io.StringIO()
    print_table(records, wall_s=1.0, stream=stream)
    text = stream.getvalue()
    assert "\\n" not in text.replace("x\\nDe-identified", ""), text  # only the hostile name's own line feed escaped
    flat = " ".join(line.strip("│ ") for line in text.splitlines())
    assert "(axial, 20 slices)" in flat and "Pass --series." in flat, text
    assert not any(line.lstrip("│ ").startswith("De-identified 99") for line in text.splitlines()), text
    log = io.StringIO()
    with Progress(1, stream=log) as progress:
        progress.advance(records[0])
    assert len(log.getvalue().splitlines()) == 1 and "\\n" not in log.getvalue(), log.getvalue()
    assert "1.2.3 (axial, 20 slices) 1.2.4 (coronal" in log.getvalue()


def test_deface_and_verify_print_the_qc_folder_of_a_hostile_name_escaped(tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """``deface --verify`` printed the report, picture and QC folder lines, and its final verdict line, with the
    name as it was (main 3c01852, HOSTILE22): a scan named with ``ESC[2J`` or ``ESC]0;...BEL`` (a dataset from
    elsewhere, deface run in a loop over it) cleared or retitled the terminal there; ``verify`` likewise."""
    from defacer.phantom import make_phantom, save_phantom

    scan = tmp_path / f"{ESCAPES}.nii.gz"
    save_phantom(make_phantom(4.0), scan, tmp_path / "l.nii.gz")
    code = main(["deface", str(scan), "--labels", str(tmp_path / "l.nii.gz"), "--verify"])
    out, err = capsys.readouterr()
    assert code in (0, 3, 5) and "report: " in out and "QC pictures" in out
    defaced = tmp_path / f"{ESCAPES}_defaced.nii.gz"
    assert defaced.is_file()
    code = main(["verify", str(scan), str(defaced), "--out", str(tmp_path / f"{ESCAPES}-qc2")])
    out2, err2 = capsys.readouterr()
    assert code in (0, 3, 5) and "report: " in out2
    for text in (out, err, out2, err2):
        assert "\x1b" not in text and "\x07" not in text and "\r" not in text
    assert "z\\x1b[2J" in out and "z\\x1b[2J" in out2
