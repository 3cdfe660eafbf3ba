"""``--retain-patient-characteristics`` keeps ages, but none over 89 (HIPAA Safe Harbor).

On main 7312a66 (HOSTILE20, 2026-12-06 01:13 UTC) ``defacer anonymize --retain-patient-characteristics`` wrote
PatientAge ``095Y`` as it was, while HIPAA Safe Harbor (which docs/dicom.md names) aggregates every age over 89 into
one category of 90 or older.  Now such an age is written ``090Y`` (months, weeks and days compared as years), said once.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

from defacer.cli.main import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "dicom"))
from dicom_factory import write_series

_NOTICE = "over 89 years is written as 090Y"


def _series(folder: Path, age: str) -> None:
    for path in write_series(folder, np.arange(4 * 4 * 3, dtype=np.uint16).reshape(4, 4, 3)):
        ds = pydicom.dcmread(path)
        ds.PatientAge = age
        ds.save_as(path)


def _ages(folder: Path) -> set[str | None]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.endswith(".json"))
    assert files
    return {str(pydicom.dcmread(p).get("PatientAge")) if "PatientAge" in pydicom.dcmread(p) else None for p in files}


@pytest.mark.parametrize(("age", "written", "said"), [
    ("095Y", "090Y", True),
    ("120Y", "090Y", True),
    ("090Y", "090Y", False),
    ("089Y", "089Y", False),
    ("061Y", "061Y", False),
    ("006M", "006M", False),
], ids=["95y", "120y", "90y", "89y", "61y", "6m"])
def test_a_kept_age_over_89_is_written_as_90_or_older(tmp_path, caplog, age, written, said):
    _series(tmp_path / "in", age)
    with caplog.at_level(logging.WARNING):
        assert main(["anonymize", str(tmp_path / "in"), str(tmp_path / "out"), "--key", "k" * 24,
                     "--retain-patient-characteristics"]) == 0
    assert _ages(tmp_path / "out") == {written}
    told = [r for r in caplog.records if _NOTICE in r.getMessage()]
    assert len(told) == (1 if said else 0)
    assert all(age not in r.getMessage() for r in told)
    assert {str(pydicom.dcmread(p).PatientAge) for p in (tmp_path / "in").rglob("*") if p.is_file()} == {age}


def test_without_the_option_the_age_is_removed(tmp_path):
    _series(tmp_path / "in", "095Y")
    assert main(["anonymize", str(tmp_path / "in"), str(tmp_path / "out"), "--key", "k" * 24]) == 0
    assert _ages(tmp_path / "out") == {None}


def test_a_json_sidecars_kept_age_over_89_is_pooled_too():
    from defacer.phi.options import DeidOptions
    from defacer.phi.sidecar import scrub_sidecar

    kept, removed = scrub_sidecar({"PatientAge": "095Y", "Custom": {"PatientAge": 96}, "PatientSex": "F"},
                                  DeidOptions(retain_patient_characteristics=True))
    assert kept == {"PatientAge": "090Y", "Custom": {"PatientAge": 90}, "PatientSex": "F"}
    assert removed == []


def test_a_batch_table_keeps_no_age_over_89_under_the_option(tmp_path):
    from defacer.batch.layout import _deidentified_text
    from defacer.phi.options import DeidOptions

    table = tmp_path / "participants.tsv"
    table.write_text("participant_id\tage\tsex\nsub-01\t93\tF\nsub-02\t61\tM\n", encoding="utf-8")
    cleaned, said = _deidentified_text(table, DeidOptions(retain_patient_characteristics=True))
    assert cleaned == "participant_id\tage\tsex\nsub-01\t89+\tF\nsub-02\t61\tM\n"
    assert "89+" in said
    assert table.read_text(encoding="utf-8").splitlines()[1] == "sub-01\t93\tF"


_UNREADABLE = "is not a DICOM age"


@pytest.mark.parametrize(("age", "written", "unreadable"), [
    ("abc", "", True),
    ("12", "", True),
    ("45 years", "", True),
    ("Doe^John 61", "", True),
    (" 045Y", "045Y", False),
    (" 090Y", "090Y", False),
    ("95", "090Y", False),
    ("061Y", "061Y", False),
], ids=["letters", "bare-number", "words", "a-name", "padded-45y", "padded-90y", "bare-95", "61y"])
def test_a_kept_age_that_is_no_dicom_age_is_emptied_and_said_once(tmp_path, caplog, age, written, unreadable):
    """HOSTILE20's leftover: under the option a PatientAge that pooled_age could not read ('abc', '12', a name) was
    written as it was, unexamined (main 3c01852, HOSTILE22): it cannot be checked against 89 years and may hold any
    text. Now it is emptied, said once per run without the value; DICOM ages keep their value, padding dropped."""
    _series(tmp_path / "in", age)
    with caplog.at_level(logging.WARNING):
        assert main(["anonymize", str(tmp_path / "in"), str(tmp_path / "out"), "--key", "k" * 24,
                     "--retain-patient-characteristics"]) == 0
    assert _ages(tmp_path / "out") == {written}
    told = [r for r in caplog.records if _UNREADABLE in r.getMessage()]
    assert len(told) == (1 if unreadable else 0)
    assert all(age.strip() not in r.getMessage() for r in told)
    assert {str(pydicom.dcmread(p).PatientAge) for p in (tmp_path / "in").rglob("*") if p.is_file()} == {age}


def test_a_json_sidecars_kept_age_that_is_no_age_is_emptied():
    from defacer.phi.options import DeidOptions
    from defacer.phi.sidecar import scrub_sidecar

    kept, _ = scrub_sidecar({"PatientAge": "Doe^John", "Other": {"PatientAge": ["045Y", "abc", "95"]}},
                            DeidOptions(retain_patient_characteristics=True))
    assert kept == {"PatientAge": "", "Other": {"PatientAge": ["045Y", "090Y"]}}


def test_anonymize_with_several_workers_says_each_age_notice_once(tmp_path):
    """HOSTILE20's leftover: with ``--jobs 2`` each chunk of files had its own copy of the scrubber, whose notices
    said "once per run" were said once per chunk (main 3c01852, HOSTILE22: 40 files, two workers, 3 times each).
    Run as the console does, in a process of its own (the workers' log lines go to its stderr)."""
    import os
    import subprocess

    folder = tmp_path / "in"
    for index, path in enumerate(write_series(folder, np.arange(4 * 4 * 40, dtype=np.uint16).reshape(4, 4, 40))):
        ds = pydicom.dcmread(path)
        ds.PatientAge = "095Y" if index % 2 else "abc"
        ds.save_as(path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    result = subprocess.run([sys.executable, "-m", "defacer", "anonymize", str(folder), str(tmp_path / "out"),
                             "--key", "k" * 24, "--jobs", "2", "--retain-patient-characteristics"],
                            capture_output=True, text=True, env=env, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    assert _ages(tmp_path / "out") == {"090Y", ""}
    for notice in (_NOTICE, _UNREADABLE):
        said = [line for line in result.stderr.splitlines() if notice in line]
        assert len(said) == 1, result.stderr
