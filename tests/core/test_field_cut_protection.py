"""A field of view that cuts the head at the ears: its cut face is no surface, whatever ear rule runs (issue 14).

uih_T1w_dicom's 160 mm left-right field cuts both auricles; 59 % / 57 % of its reference auricles lie deeper than
the protection depth below the head's surface, measured with the head continued past the cut, so no edit may change
them (EARS24, EARS26).  Measuring depth from the cut face instead would make every voxel within 10 mm of it
writable: on uih the temporal lobe lies 7-12 mm medial of the cut above the auricle (by eye, coronal slices, EARS21
and EARS26), and a narrower field cuts through the skull itself.  These tests hold the decision: with the phantom's
field cutting its auricles, its scalp or its skull, an ear edit grown from the cut face into the brain changes no
brain voxel.  With the cut face counted as skin (the coarse depth map's samples at the field's R ends taken as
outside, tried in EARS26 and not shipped) the last two cases changed 40 and 660 brain voxels.
"""

from __future__ import annotations

import numpy as np
import pytest
from truth_detector import TruthDetector

from defacer import pipeline
from defacer.distort import Edit
from defacer.labels import Label
from defacer.phantom import HEAD_AXES, make_phantom
from defacer.protection_check import changed_mask

VOXEL_MM = 2.0


def _slab_from_the_cut(shape: tuple[int, int, int], ear_rows: tuple[slice, slice], brain_x: np.ndarray,
                       into_brain_mm: float) -> list[Edit]:
    """A stand-in ear rule grown as far as any might: per side, every voxel from the field's cut face to
    ``into_brain_mm`` inside the brain, over the ears' extent along A and S, set to 0 (uih's reference auricles are
    the tissue within 8 mm of the cut: ``scripts/make_reference_labels.py``, ``CUT_EARS``)."""
    steps = round(into_brain_mm / VOXEL_MM)
    edits = []
    for x in (slice(0, int(brain_x.min()) + steps), slice(int(brain_x.max()) + 1 - steps, shape[0])):
        box = (x, *ear_rows)
        size = tuple(s.stop - s.start for s in box)
        edits.append(Edit("ears", box, np.ones(size, dtype=bool), np.zeros(size, dtype=np.float32)))
    return edits


@pytest.mark.parametrize("edge_mm", [78.0, 72.0, 68.0])
def test_an_ear_edit_grown_from_the_cut_face_never_reaches_the_brain(edge_mm, monkeypatch):
    """The field ends ``edge_mm`` from the head's midline on both sides: 78 keeps the inner 4 mm of each auricle (a
    stump, as uih's), 72 cuts 2 mm into the head's side (the brain 11 mm from the cut, as on uih above the ear), 68
    cuts through the skull (the brain 7 mm from the cut)."""
    made = make_phantom(VOXEL_MM, fov_mm=(2.0 * edge_mm, 240.0, 240.0))
    whole = make_phantom(VOXEL_MM)  # the same A and S grid, the auricles in view
    y, z = np.nonzero((whole.labels == Label.EARS).any(axis=0))
    ear_rows = (slice(int(y.min()), int(y.max()) + 1), slice(int(z.min()), int(z.max()) + 1))
    brain_x = np.nonzero(made.brain.any(axis=(1, 2)))[0]
    assert brain_x.min() > 0 and brain_x.max() < made.brain.shape[0] - 1, "the brain lies inside the field"
    if edge_mm < HEAD_AXES[0] - 5.0:
        # the brain within 10 mm of the cut face: a depth measured from it would leave the brain unprotected
        reach = round(10.0 / VOXEL_MM)
        assert made.brain[:reach].any() and made.brain[-reach:].any()
    if edge_mm > HEAD_AXES[0]:
        assert (made.labels == Label.EARS).any(), "the stumps of the auricles are in view"

    monkeypatch.setattr(pipeline, "distort_ears",
                        lambda *a, **k: _slab_from_the_cut(made.brain.shape, ear_rows, brain_x, 6.0))
    result = pipeline.deface(made.volume, TruthDetector(made.labels))  # the independent check raises on any slip
    changed = changed_mask(made.volume.raw, result.volume.raw)
    ears = [e for e in result.provenance["edits"] if e["feature"] == "ears"]
    assert all(e["voxels_protected"] > 0 for e in ears), "the stand-in reaches into the protected region"
    assert not (changed & made.brain).any(), int((changed & made.brain).sum())
    assert result.provenance["protection"]["changed_inside_protected"] == 0
    if edge_mm > HEAD_AXES[0]:  # not vacuous: the stump's tissue near the air round it is written
        assert all(e["voxels_written"] > 200 for e in ears), [e["voxels_written"] for e in ears]
