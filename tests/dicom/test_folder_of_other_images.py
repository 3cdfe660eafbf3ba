"""``defacer deface FOLDER OUT`` on a folder of NIfTI (NRRD, MGH) files, not DICOM: the error said only "No DICOM
instance found ... not a DICOM file"; now it also says to give one file, or to use ``defacer batch``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from defacer.cli.main import main
from defacer.phantom import make_phantom, save_phantom


def test_a_folder_of_nifti_files_is_pointed_to_batch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "heads"
    folder.mkdir()
    save_phantom(make_phantom(6.0), folder / "a.nii.gz", tmp_path / "a.labels.nii.gz")
    (folder / "notes.txt").write_text("x")
    assert main(["deface", str(folder), str(tmp_path / "out"), "--labels", str(tmp_path / "a.labels.nii.gz")]) == 1
    err = capsys.readouterr().err
    assert "No DICOM instance found" in err
    assert "1 image file(s) of another format (a.nii.gz)" in err and f"defacer batch {folder} OUT" in err, err
    assert sorted(os.listdir(tmp_path)) == ["a.labels.nii.gz", "heads"]


def test_a_folder_without_images_gets_no_such_hint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("x")
    assert main(["deface", str(tmp_path / "notes"), str(tmp_path / "out")]) == 1
    assert "defacer batch" not in capsys.readouterr().err
