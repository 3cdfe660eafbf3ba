"""``deface FOLDER OUT --labels L`` on a folder holding the series of two patients (or two studies): the one label map
was applied to every series, so the second patient's face was distorted at the first head's positions and reported
"distorted" (exit 0).  Now it is refused in words, listing the series to pick; one patient's series still share it."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from defacer.cli.main import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "batch"))
from batch_fixtures import write_dicom_phantom


@pytest.fixture(scope="module")
def two_heads(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("two_heads")
    write_dicom_phantom(base / "a", base / "a.labels.nii.gz", seed=0, voxel_size=6.0, patient="Doe^Jane")
    write_dicom_phantom(base / "b", base / "b.labels.nii.gz", seed=1, voxel_size=6.0, patient="Roe^John")
    return base


def test_one_label_map_for_two_patients_series_is_refused(two_heads: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "mixed"
    shutil.copytree(two_heads / "a", folder)
    for path in (two_heads / "b").iterdir():
        shutil.copy(path, folder / f"B{path.name}")
    before = sorted(os.listdir(tmp_path))
    assert main(["deface", str(folder), str(tmp_path / "out"), "--labels", str(two_heads / "a.labels.nii.gz")]) == 1
    err = capsys.readouterr().err
    assert "holds series of 2 patients" in err and "--series" in err and "[2] series" in err, err
    assert sorted(os.listdir(tmp_path)) == before, "nothing written"
    # each series with --series (both are number 1: picked by SeriesInstanceUID) and its own map is fine
    import pydicom

    uid = pydicom.dcmread(next((two_heads / "a").iterdir())).SeriesInstanceUID
    assert main(["deface", str(folder), str(tmp_path / "one"), "--series", str(uid),
                 "--labels", str(two_heads / "a.labels.nii.gz")]) == 0


def test_one_patients_two_series_still_share_a_label_map(two_heads: Path, tmp_path: Path) -> None:
    """The same head twice (one patient, one study, two series): allowed as before."""
    import pydicom
    from pydicom.uid import generate_uid

    folder = tmp_path / "study"
    shutil.copytree(two_heads / "a", folder)
    second = generate_uid()
    for path in sorted((two_heads / "a").iterdir()):
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID, ds.SeriesNumber = second, 2
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(folder / f"S2{path.name}")
    assert main(["deface", str(folder), str(tmp_path / "out"), "--labels", str(two_heads / "a.labels.nii.gz")]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.is_dir()) == ["01_series-1", "02_series-2"]
