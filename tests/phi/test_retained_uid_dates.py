"""``--retain-uids`` keeping UIDs that hold the study's own dates is said.

Many scanners write the acquisition date and time into their UIDs (Siemens ``...2022040715044210837860713``; 3 of
the 4 real DICOM heads in the shared data).  On main 2401ebd (HOSTILE19, 2026-12-06 01:07 UTC) ``anonymize
--retain-uids`` emptied StudyDate and kept those UIDs without a word, so the dates removed could be read back.
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


def _series(folder: Path, series_uid: str) -> None:
    for path in write_series(folder, np.arange(4 * 4 * 3, dtype=np.uint16).reshape(4, 4, 3), series_uid=series_uid):
        ds = pydicom.dcmread(path)
        ds.StudyDate = ds.SeriesDate = "20220407"
        ds.save_as(path)


@pytest.mark.parametrize(("uid", "flags", "said"), [
    ("1.3.12.2.1107.5.2.43.67060.2022040715044210837860713.0.0.0", ["--retain-uids"], True),
    ("1.3.12.2.1107.5.2.43.67060.2022040715044210837860713.0.0.0", [], False),
    ("1.3.12.2.1107.5.2.43.67060.2022040715044210837860713.0.0.0", ["--retain-uids", "--retain-full-dates"], False),
    ("1.2.826.0.1.3680043.9.4245.311513863083572999", ["--retain-uids"], False),
], ids=["dated-uid-kept", "uids-replaced", "dates-kept-too", "undated-uid"])
def test_kept_uids_holding_the_studys_dates_are_said_once(tmp_path, caplog, uid, flags, said):
    _series(tmp_path / "in", uid)
    with caplog.at_level(logging.WARNING):
        assert main(["anonymize", str(tmp_path / "in"), str(tmp_path / "out"), "--key", "k" * 24, *flags]) == 0
    told = [r for r in caplog.records if "--retain-uids keeps UIDs that hold the study's own dates" in r.getMessage()]
    assert len(told) == (1 if said else 0)
    assert all(uid not in r.getMessage() for r in told)
