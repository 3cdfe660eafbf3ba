"""A flat auricle on thick slices, on a real head (skipped when ../shared/data is missing)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from defacer.detect.model import default_weights_path
from defacer.io import load_volume
from defacer.labels import Label
from defacer.pipeline import DefaceOptions, deface, load_detector

REFERENCE_LABELS = Path(__file__).resolve().parents[2] / "reference_labels"
needs_weights = pytest.mark.skipif(not default_weights_path().is_file(), reason="shipped weights not built yet")


@needs_weights
@pytest.mark.realdata
def test_a_flat_auricle_in_the_lowest_thick_slices_is_changed_whole(shared_data) -> None:
    """Issue 14: fernando_T2w_thick's left auricle lies in the lowest 9 of its 5.5 mm axial slices, and the
    shipped detector's ear lies 2.5-12.6 mm behind it there.  On such slices the tissue above the head's
    threshold breaks the auricle up (what the usual opening separates is smaller than any auricle); delimited
    again with the wide opening on the reference rule's smoothed head mask as well
    (distort_ears.WIDE_REFERENCE_MASK), 0.90 of it changed (0.70 before), at the edge of the 0.9 target; with a
    flat ear's outer layer over its edit's side footprint (distort_ears.flat_ear) 0.94, nothing in the protected
    region."""
    name = "fernando_T2w_thick"
    volume = load_volume(shared_data / "heads" / f"{name}.nii.gz")
    reference = np.asarray(load_volume(REFERENCE_LABELS / f"{name}.labels.nii.gz", strict=False).raw, np.uint8)
    result = deface(volume, load_detector(threads=2), DefaceOptions(seed=0))
    regions, _ = ndi.label(reference == Label.EARS)
    sizes = np.bincount(regions.ravel())[1:]
    parts = [regions == index for index in np.argsort(sizes)[::-1][:2] + 1]
    # RAS+: the subject's left lies at -x in the world
    left = min(parts, key=lambda part: float((np.argwhere(part).mean(axis=0) @ volume.affine[:3, :3].T)[0]))
    changed = result.edit_mask > 0
    assert changed[left].mean() >= 0.92, changed[left].mean()  # 0.94; 0.901 before the flat ear's layer, 0.701 earlier
    assert result.provenance["protection"]["changed_inside_protected"] == 0
