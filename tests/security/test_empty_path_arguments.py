"""An empty file or folder name on the command line is refused, never read as the current folder.

``Path("")`` is ``Path(".")``: ``verify A B --out ""`` (``--out "$QC"`` with QC unset) wrote the renders of the
original face, the report and a README into the current folder; ``deface ""`` read the current folder as a DICOM
series; ``deface A B --labels ""`` was refused for a wrong reason (the output "lies inside the input folder").
"""

from __future__ import annotations

import pytest

from defacer.cli.main import main
from defacer.phantom import make_phantom, save_phantom


@pytest.fixture()
def scans(tmp_path, monkeypatch):
    save_phantom(make_phantom(6.0), tmp_path / "a.nii.gz", tmp_path / "a.labels.nii.gz")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("argv", [
    ["verify", "a.nii.gz", "a.nii.gz", "--out", ""],
    ["verify", "a.nii.gz", "a.nii.gz", "--out", "  "],
    ["verify", "a.nii.gz", "a.nii.gz", "--labels", ""],
    ["deface", ""],
    ["deface", "a.nii.gz", "b.nii.gz", "--labels", ""],
    ["deface", "a.nii.gz", "b.nii.gz", "--labels", "a.labels.nii.gz", "--save-mask", ""],
    ["deface", "a.nii.gz", ""],
    ["anonymize", "", "out"],
    ["evaluate", "", "--out", "ev"],
    ["evaluate", ".", "--out", ""],
    ["batch", "", "out"],
    ["batch", "in", "", "--labels-dir", "x"],
    ["batch", "in", "out", "--labels-dir", ""],
    ["train", "--out", "", "--epochs", "0"],
    ["serve", "--work-dir", ""],
])
def test_an_empty_path_argument_is_a_usage_error_and_nothing_is_written(scans, capsys, argv):
    before = sorted(p.name for p in scans.iterdir())
    try:
        status = main(argv)
    except SystemExit as stopped:
        status = stopped.code
    assert status == 2
    err = capsys.readouterr().err
    assert "expected a file or folder name" in err and "write '.' for the current folder" in err
    assert sorted(p.name for p in scans.iterdir()) == before
