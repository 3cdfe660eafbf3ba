"""`defacer verify` on scans that cannot be compared: the error names which scan and why, and leaves no QC folder."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from defacer.cli.main import main

pytestmark = pytest.mark.usefixtures("detectors")


def _save(raw, affine, path) -> None:
    nib.save(nib.Nifti1Image(raw, affine), str(path))


@pytest.mark.parametrize("what", ["empty", "another scale"])
def test_a_defaced_scan_with_no_head_at_the_originals_skin_level_is_named_and_leaves_no_qc_folder(
        phantom, tmp_path, capsys, what) -> None:
    """Before: 'No surface above the iso-level 172.7 after resampling. Check the scan's affine and values.' (which
    scan?), exit 1, and a new QC folder holding README.txt and the ownership record was left behind."""
    volume = phantom.volume
    raw = np.zeros_like(volume.raw) if what == "empty" else (volume.raw // 50).astype(volume.raw.dtype)
    _save(volume.raw, volume.affine, tmp_path / "head.nii.gz")
    _save(raw, volume.affine, tmp_path / "head_defaced.nii.gz")
    code = main(["verify", str(tmp_path / "head.nii.gz"), str(tmp_path / "head_defaced.nii.gz")])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "Traceback" not in err
    assert "defaced scan shows no head" in err and "not made from this original" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["head.nii.gz", "head_defaced.nii.gz"]


def test_an_empty_original_is_named_as_the_original(phantom, tmp_path, capsys) -> None:
    volume = phantom.volume
    _save(np.zeros_like(volume.raw), volume.affine, tmp_path / "head.nii.gz")
    _save(volume.raw, volume.affine, tmp_path / "head_defaced.nii.gz")
    code = main(["verify", str(tmp_path / "head.nii.gz"), str(tmp_path / "head_defaced.nii.gz"),
                 "--out", str(tmp_path / "qc")])
    err = capsys.readouterr().err
    assert code == 1 and "original scan cannot be rendered" in err and "flat" in err, err
    assert not (tmp_path / "qc").exists()


def test_a_failed_verification_keeps_an_existing_qc_folder(phantom, tmp_path, capsys) -> None:
    volume = phantom.volume
    _save(volume.raw, volume.affine, tmp_path / "head.nii.gz")
    _save(np.zeros_like(volume.raw), volume.affine, tmp_path / "head_defaced.nii.gz")
    (tmp_path / "qc").mkdir()
    (tmp_path / "qc" / "notes.txt").write_text("mine")
    code = main(["verify", str(tmp_path / "head.nii.gz"), str(tmp_path / "head_defaced.nii.gz"),
                 "--out", str(tmp_path / "qc")])
    capsys.readouterr()
    assert code == 1
    assert (tmp_path / "qc" / "notes.txt").read_text() == "mine"
