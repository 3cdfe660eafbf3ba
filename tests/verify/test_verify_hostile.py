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


def test_a_failed_verify_into_new_folders_leaves_none_of_them(phantom, tmp_path, capsys) -> None:
    """'verify ORIG DEFACED --out new/a/qc' ending in an error removed qc/ but left new/a/ behind, empty."""
    volume = phantom.volume
    _save(volume.raw, volume.affine, tmp_path / "head.nii.gz")
    _save(np.zeros_like(volume.raw), volume.affine, tmp_path / "head_defaced.nii.gz")
    code = main(["verify", str(tmp_path / "head.nii.gz"), str(tmp_path / "head_defaced.nii.gz"),
                 "--out", str(tmp_path / "new" / "a" / "qc")])
    assert code == 1 and "defaced scan shows no head" in capsys.readouterr().err
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


def _flipped(labels, affine):
    """The same labels in the other voxel order along the first axis (same world positions)."""
    flipped = affine.copy()
    flipped[:3, 3] = affine[:3, 3] + affine[:3, 0] * (labels.shape[0] - 1)
    flipped[:3, 0] *= -1
    return labels[::-1], flipped


@pytest.mark.parametrize(("what", "said"), [
    ("value 7", "values from 0 to 7"),
    ("half values", "non-integer values"),
    ("NaN", "non-integer values"),
    ("shifted 10 mm", "on another grid"),
    ("other voxel order", "on another grid"),
])
def test_a_label_map_that_is_not_this_scans_feature_labels_is_refused(phantom, tmp_path, capsys, what, said) -> None:
    """Before: --labels with a value 7, halves, or on another grid (shifted, or the other voxel order: counted voxel by
    voxel in the wrong places) was used as given for the per-feature counts, the outlines and the brain proxy's feature
    margins; a NaN was refused as 'defacer cannot estimate skin and air intensities from them'."""
    volume = phantom.volume
    labels, affine = phantom.labels.astype(np.float32), volume.affine.copy()
    if what == "value 7":
        labels[labels == 1] = 7
    elif what == "half values":
        labels[labels == 1] = 0.5
    elif what == "NaN":
        labels[0, 0, 0] = np.nan
    elif what == "shifted 10 mm":
        affine[0, 3] += 10
    else:
        labels, affine = _flipped(labels, affine)
    _save(volume.raw, volume.affine, tmp_path / "head.nii.gz")
    _save(volume.raw, volume.affine, tmp_path / "head_defaced.nii.gz")
    _save(labels, affine, tmp_path / "labels.nii.gz")
    code = main(["verify", str(tmp_path / "head.nii.gz"), str(tmp_path / "head_defaced.nii.gz"),
                 "--labels", str(tmp_path / "labels.nii.gz")])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert said in err and "label map" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["head.nii.gz", "head_defaced.nii.gz", "labels.nii.gz"]


@pytest.mark.parametrize("what", ["value 7", "other voxel order"])
def test_evaluate_gives_no_dice_against_a_reference_that_is_not_this_scans_labels(tmp_path, caplog, what) -> None:
    """Before: the reference was cast to uint8 and compared voxel by voxel when only its shape matched: a map with 7
    for its eyes gave eyes Dice 0.00, one in the other voxel order a Dice of the wrong voxels, without a word."""
    import json

    from defacer.phantom import make_phantom, save_phantom
    from defacer.verify.evaluate import find_scans

    scans, labels, reference = tmp_path / "scans", tmp_path / "labels", tmp_path / "reference"
    for folder in (scans, labels, reference):
        folder.mkdir()
    phantom = make_phantom(3.0)
    save_phantom(phantom, scans / "a.nii.gz", labels / "a.labels.nii.gz")
    ref, affine = phantom.labels.copy(), phantom.volume.affine.copy()
    if what == "value 7":
        ref[ref == 1] = 7
    else:
        ref, affine = _flipped(ref, affine)
    _save(ref, affine, reference / "a.labels.nii.gz")
    from defacer.evaluate import evaluate_folder

    evaluate_folder(scans, tmp_path / "eval", labels_dir=labels, reference_dir=reference, scans=find_scans(scans))
    record = json.loads((tmp_path / "eval" / "evaluation.json").read_text())["scans"][0]
    assert record["dice"] is None and record["reference"] is None, record
    assert "reference labels" in caplog.text and "skipped" in caplog.text, caplog.text


def test_verify_pair_still_takes_a_boolean_mask_as_labels() -> None:
    """A bool array (one feature's mask) was taken before the label check (b8840e7) and still is, as label 1."""
    from defacer.verify.check import feature_label_array
    from defacer.volume import Volume

    original = Volume(np.zeros((8, 9, 10), np.int16), np.eye(4))
    labels = feature_label_array(np.ones((8, 9, 10), bool), original)
    assert labels is not None and labels.dtype == np.uint8 and labels.max() == 1
