"""A head exported into a larger grid with an exact-constant frame (zero-padding) is defaced as the head itself."""

from __future__ import annotations

import contextlib
import io
import json

import nibabel as nib
import numpy as np

from defacer.cli.main import main


def _deface(path, out, mask):
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["deface", str(path), str(out), "--save-mask", str(mask)]) == 0
    sidecar = json.loads(out.with_name(out.name.replace(".nii.gz", ".defacer.json")).read_text())
    before, after = np.asarray(nib.load(path).dataobj), np.asarray(nib.load(out).dataobj)
    return sidecar, after != before, np.asarray(nib.load(mask).dataobj)


def test_a_zero_padded_field_with_noisy_air_keeps_the_threshold_and_the_edit(tmp_path):
    """Hostile pass, defect left: the phantom (noisy air) padded into a larger grid with exact zeros lowered the
    air/tissue threshold (81.6 -> 12.3 on the 3 mm phantom in 160^3), the sealed head grew into the noise and
    protection kept most of the nose box: nose changed 1,224 voxels instead of 8,317, exit 0, 'distorted'.
    The frame's constant is now left out of the threshold's sample (head.border_padding_value), as a CT's
    outside-the-field constant was."""
    from defacer.phantom import make_phantom

    phantom = make_phantom(3.0)
    data = phantom.volume.raw.astype(np.int16)
    size = 160
    start = [(size - n) // 2 for n in data.shape]
    field = tuple(slice(s, s + n) for s, n in zip(start, data.shape, strict=True))
    padded = np.zeros((size,) * 3, np.int16)
    padded[field] = data
    affine = phantom.volume.affine.copy()
    affine[:3, 3] -= affine[:3, :3] @ np.array(start, float)
    nib.save(nib.Nifti1Image(data, phantom.volume.affine), tmp_path / "plain.nii.gz")
    nib.save(nib.Nifti1Image(padded, affine), tmp_path / "padded.nii.gz")
    plain, plain_changed, plain_labels = _deface(tmp_path / "plain.nii.gz", tmp_path / "plain_defaced.nii.gz",
                                                 tmp_path / "plain_mask.nii.gz")
    pad, pad_changed, pad_labels = _deface(tmp_path / "padded.nii.gz", tmp_path / "padded_defaced.nii.gz",
                                           tmp_path / "padded_mask.nii.gz")
    assert pad["head"]["threshold"] == plain["head"]["threshold"]
    assert np.array_equal(pad_labels[field] == 2, plain_labels == 2)  # the same nose found
    # the nose box may reach past the original field into the frame (set to air there): inside it, the same edit
    assert pad["voxels_changed"]["nose"] >= plain["voxels_changed"]["nose"]
    assert np.count_nonzero(pad_changed[field] ^ plain_changed) <= 0.01 * np.count_nonzero(plain_changed)


def test_the_frame_rule_takes_only_a_constant_that_is_rare_inside_the_field():
    from defacer.head import border_padding_value

    rng = np.random.default_rng(0)
    noisy = rng.uniform(1.0, 100.0, (20, 20, 20))
    framed = np.zeros((30, 30, 30))
    framed[5:25, 3:23, 5:25] = noisy
    assert border_padding_value(framed) == 0.0
    assert border_padding_value(noisy) is None  # no frame
    # an MR whose air is itself exact 0 (most real heads): 0 is air all over the field, not a frame
    zero_air = framed.copy()
    zero_air[5:25, 3:23, 5:25][rng.random((20, 20, 20)) < 0.3] = 0.0
    assert border_padding_value(zero_air) is None
    # a frame one plane thick on one face only is still a frame, if it fills 2 % of the volume
    one_face = noisy.copy()
    one_face[0] = 7.0
    assert border_padding_value(one_face) == 7.0
