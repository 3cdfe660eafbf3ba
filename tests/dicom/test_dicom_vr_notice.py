"""pydicom's "VR lookup failed" once per series and element, not once per file (HOSTILE14's leftover): an
implicit-VR series of 8 files holding two elements no dictionary knows printed 16 log lines and Python's own copy of
each warning on top, through `anonymize` and `deface`."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_factory import write_series
from pydicom.uid import ImplicitVRLittleEndian

from defacer.cli.main import main

KEY = "vr-notice-test-key-0123456789"
UNKNOWN = (0x0018ABCD, 0x00181234)  # public (even) groups, elements no DICOM dictionary defines


def _implicit_series(folder: Path, *, files: int = 8) -> Path:
    """A real implicit-VR little-endian series whose files each hold the two unknown elements and a lowercase CS value
    (pydicom warns about that one on every file: a warning that must stay)."""
    raw = np.arange(16 * 16 * files, dtype=np.int16).reshape(16, 16, files)
    for path in write_series(folder, raw):
        ds = pydicom.dcmread(path)
        for tag in UNKNOWN:
            ds.add_new(tag, "LO", "planted")
        ds.add_new(0x00180020, "CS", "se")  # ScanningSequence in lowercase: an invalid CS value
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        ds.save_as(path, implicit_vr=True, little_endian=True)
    return folder


@pytest.mark.parametrize("command", ["anonymize", "anonymize-twice", "clean-descriptors"])
def test_an_unknown_element_of_an_implicit_series_is_said_once_per_series(tmp_path: Path, caplog, command: str) -> None:
    first = _implicit_series(tmp_path / "a")
    second = _implicit_series(tmp_path / "b")
    caplog.set_level(logging.WARNING)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # --clean-descriptors first walks every file for the study's identifying values (120 lines on 37102b9)
        extra = ["--clean-descriptors"] if command == "clean-descriptors" else []
        assert main(["anonymize", str(first), str(tmp_path / "out-a"), "--key", KEY, *extra]) == 0
        if command == "anonymize-twice":  # another series in the same process is said again, once
            assert main(["anonymize", str(second), str(tmp_path / "out-b"), "--key", KEY]) == 0
    messages = [record.getMessage() for record in caplog.records]
    series = 2 if command == "anonymize-twice" else 1
    for tag in ("(0018,ABCD)", "(0018,1234)"):
        said = [m for m in messages if tag in m]
        assert len(said) == series, said  # main: 8 per series, the raw "VR lookup failed ..."
        assert all("read as unknown bytes (VR UN)" in m and "once per series" in m for m in said), said
    named = sorted(m.split("'")[1] for m in messages if "(0018,ABCD)" in m)
    assert named == [str(first), str(second)][:series], "each said once, naming its series folder"
    assert not [w for w in caught if "VR lookup failed" in str(w.message)], "Python's copy is not shown too"
    other = [m for m in messages if "Invalid value for VR CS" in m]
    assert len(other) >= 8 * series, "pydicom's other warnings are not hidden"


def test_anonymize_with_several_workers_says_an_unknown_element_once(tmp_path: Path) -> None:
    """HOSTILE15's leftover: `anonymize --jobs N` said the folded line once per worker process (each kept its own
    record of what it had said).  The workers now hand their notices back and the main process says each once.
    Run as the console does, in a process of its own (the workers' log lines go to its stderr)."""
    import os
    import subprocess
    import sys

    series = _implicit_series(tmp_path / "a", files=40)  # 40 files: three chunks of 16 for two workers
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(Path(__file__).parents[2] / "src"),
                                                                     os.environ.get("PYTHONPATH", "")) if p)}
    result = subprocess.run([sys.executable, "-m", "defacer", "anonymize", str(series), str(tmp_path / "out"),
                             "--key", KEY, "--jobs", "2"], capture_output=True, text=True, env=env, timeout=300,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "out").rglob("*.dcm"))) == 40
    for tag in ("(0018,ABCD)", "(0018,1234)"):
        said = [line for line in result.stderr.splitlines() if tag in line]
        assert len(said) == 1 and "read as unknown bytes (VR UN)" in said[0], result.stderr


def test_an_implicit_series_without_a_character_set_says_no_unknown_encoding_per_file(tmp_path: Path,
                                                                                     caplog) -> None:
    """HOSTILE25: looking for the patient's values in the raw bytes of an unknown element, the scrubber passed the
    instance's character set to pydicom as ``tuple(ds._character_set)``; without a Specific Character Set that is
    the string ``'iso8859'``, so pydicom was asked for the encodings 'i', 's', 'o', ... and logged "Unknown encoding
    'i' - using default encoding instead" twice per file: 80 console lines for this 40-file series, with or
    without --jobs (main d5a6fe9).  Now the default set is one encoding, and nothing of that probe is logged."""
    series = _implicit_series(tmp_path / "a", files=40)
    caplog.set_level(logging.WARNING)
    assert main(["anonymize", str(series), str(tmp_path / "out"), "--key", KEY]) == 0
    assert len(list((tmp_path / "out").rglob("*.dcm"))) == 40
    said = [record.getMessage() for record in caplog.records]
    assert not [m for m in said if "Unknown encoding" in m or "Failed to decode" in m], said[:5]
    assert sum("read as unknown bytes (VR UN)" in m for m in said) == 2  # the notices that must stay, once each


def test_a_name_in_the_instances_own_character_set_is_still_found_in_an_unknown_element(tmp_path: Path) -> None:
    """The probe still reads raw bytes in the instance's own character set (ISO 2022 Japanese): the patient's name
    planted there is removed, and undecodable bytes in another such element are said nowhere."""
    import pydicom.charset

    series = _implicit_series(tmp_path / "a", files=2)
    name = "山田^太郎"
    for path in sorted(series.iterdir()):
        ds = pydicom.dcmread(path)
        ds.SpecificCharacterSet = ["", "ISO 2022 IR 87"]
        ds.PatientName = name
        raw = pydicom.charset.encode_string(name, ["iso8859", "iso2022_jp"])
        ds.add_new(0x0018ABCD, "LO", "x")
        ds[0x0018ABCD].value = raw
        ds.save_as(path, implicit_vr=True, little_endian=True)
    assert main(["anonymize", str(series), str(tmp_path / "out"), "--key", KEY]) == 0
    for path in (tmp_path / "out").rglob("*.dcm"):
        ds = pydicom.dcmread(path)
        assert 0x0018ABCD not in ds or raw not in bytes(ds[0x0018ABCD].value or b"")
