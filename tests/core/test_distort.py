"""Each distortion does what the mission says, reproducibly, and never touches the brain."""

from __future__ import annotations

import numpy as np
import pytest

from defacer.distort import grow_box, nose_box
from defacer.labels import Label
from defacer.phantom import make_phantom
from defacer.pipeline import DefaceOptions, deface


class TruthDetector:
    """Returns a fixed RAS label map (the phantom is made in RAS, so no reordering is needed)."""

    name = "truth"
    weights_sha256 = None

    def __init__(self, labels: np.ndarray) -> None:
        self.labels = labels

    def predict(self, image_ras: np.ndarray, ras_affine: np.ndarray) -> np.ndarray:
        return self.labels


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(2.0, seed=3)


def test_only_selected_features_change(phantom):
    result = deface(phantom.volume, TruthDetector(phantom.labels), DefaceOptions(features=("nose",)))
    changed = result.edit_mask
    assert (changed == Label.NOSE).any()
    assert not np.isin(changed, [Label.EYES, Label.EARS]).any()


def test_nose_box_is_the_doubled_bounding_box_clipped_to_the_front_of_the_head(phantom):
    nose = phantom.labels == Label.NOSE
    idx = np.nonzero(nose)
    box = nose_box(nose, nose.shape, 2.0)
    for axis in (0, 1, 2):
        extent = idx[axis].max() + 1 - idx[axis].min()
        stop = min(nose.shape[axis], idx[axis].max() + 1 + extent // 2 + 1)
        expected = min(2 * extent, stop - max(0, idx[axis].min() - extent // 2))
        assert box[axis].stop - box[axis].start == pytest.approx(expected, abs=2)
    limit = nose.shape[1] // 2 + 5
    clipped = nose_box(nose, nose.shape, 6.0, posterior_limit=limit)
    assert clipped[1].start == limit, "the box never reaches behind the head's centre"


def test_nose_box_is_set_to_the_scans_background(phantom):
    result = deface(phantom.volume, TruthDetector(phantom.labels), DefaceOptions(features=("nose",)))
    values = result.volume.values()[result.edit_mask == Label.NOSE]
    background = result.provenance["head"]["background"]
    assert np.all(np.abs(values - background) <= 0.5)
    assert np.abs(background) < 50, "MR air is near zero"


def test_ct_background_is_air_in_hounsfield_units():
    ct = make_phantom(3.0, contrast="CT")
    result = deface(ct.volume, TruthDetector(ct.labels), DefaceOptions(features=("nose",)))
    assert result.provenance["head"]["background"] < -900
    assert not (result.volume.raw != ct.volume.raw)[ct.brain].any()


def test_ears_become_noise_from_the_scans_own_air(phantom):
    result = deface(phantom.volume, TruthDetector(phantom.labels), DefaceOptions(features=("ears",)))
    ears = result.edit_mask == Label.EARS
    assert ears.sum() > 0.8 * (phantom.labels == Label.EARS).sum()
    new = result.volume.values()[ears]
    assert new.max() <= result.provenance["head"]["threshold"], "air noise stays below the tissue threshold"
    assert new.mean() < 0.2 * 650, "the phantom's auricle is 650; air is near 0"
    assert new.std() > 0, "noise, not a constant"


def test_eyes_are_covered_by_a_smooth_skin_band(phantom):
    result = deface(phantom.volume, TruthDetector(phantom.labels), DefaceOptions(features=("eyes",)))
    edits = [e for e in result.provenance["edits"] if e["feature"] == "eyes"]
    assert len(edits) == 2
    for edit in edits:
        assert 600 < edit["skin_value"] < 900, "the phantom's scalp is 780"
    changed = result.edit_mask == Label.EYES
    new = result.volume.values()[changed]
    skin = np.mean([e["skin_value"] for e in edits])
    background = result.provenance["head"]["background"]
    # Every changed voxel became skin (the band and the filled socket) or air (tissue standing out of the band).
    assert np.all((np.abs(new - skin) < 10) | (np.abs(new - background) < 1))
    assert np.mean(np.abs(new - skin) < 10) > 0.5


def test_eye_cover_spans_the_orbit_and_brow_with_a_thick_band(phantom):
    """Each eye's box is scaled x3 about the globe (orbit, brow, lids) and the band is +/- 6 mm thick."""
    result = deface(phantom.volume, TruthDetector(phantom.labels), DefaceOptions(features=("eyes",)))
    edits = [e for e in result.provenance["edits"] if e["feature"] == "eyes"]
    assert {e["band_mm"] for e in edits} == {6.0}
    eyes = phantom.labels == Label.EYES
    from defacer.distort import components

    for edit, component in zip(edits, components(eyes, 2), strict=True):
        for axis in (0, 2):  # R and S: at least three times the globe, unless the image edge clips it
            extent = component[axis].stop - component[axis].start
            box = edit["box"][axis]
            clipped = box[0] == 0 or box[1] == eyes.shape[axis]
            assert clipped or box[1] - box[0] >= 3 * extent


def test_eye_band_hides_the_shape_of_the_eye_region():
    """After defacing, the face surface over the eyes is smooth: its height map varies far less."""
    from defacer.distort import _surface_height

    phantom = make_phantom(1.0, fov_mm=(200, 240, 200))
    # Carve eye sockets into the phantom's face so there is a shape to hide.
    raw = phantom.volume.raw.copy()
    eyes = phantom.labels == Label.EYES
    socket = eyes & (np.arange(raw.shape[1])[None, :, None] > np.nonzero(eyes)[1].max() - 8)
    raw[socket] = 0
    volume = phantom.volume.with_raw(raw)
    result = deface(volume, TruthDetector(phantom.labels), DefaceOptions(features=("eyes",)))
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in np.nonzero(eyes))
    box = (box[0], slice(box[1].start, raw.shape[1]), box[2])

    def roughness(data: np.ndarray) -> float:
        from scipy import ndimage

        height, _ = _surface_height(data[box] > 300)
        core = (slice(8, -8), slice(8, -8))  # away from the box edges, where the band blends back
        return float(np.std((height - ndimage.gaussian_filter(height, 8.0))[core]))

    assert roughness(result.volume.raw) < 0.5 * roughness(raw)


def test_same_seed_gives_identical_output_and_other_seed_other_noise(phantom):
    detector = TruthDetector(phantom.labels)
    a = deface(phantom.volume, detector, DefaceOptions(seed=7)).volume.raw
    b = deface(phantom.volume, detector, DefaceOptions(seed=7)).volume.raw
    c = deface(phantom.volume, detector, DefaceOptions(seed=8)).volume.raw
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("contrast", ["T1", "T2", "PD", "FLAIR", "CT"])
@pytest.mark.parametrize("axcodes", ["RAS", "LPS", "PIR"])
def test_brain_never_changes_even_when_the_detector_labels_the_brain(contrast, axcodes):
    phantom = make_phantom(3.0, contrast=contrast, axcodes=axcodes)
    from defacer.volume import canonical_reorientation

    reorientation = canonical_reorientation(phantom.volume.affine, phantom.volume.shape)
    labels = reorientation.to_ras(phantom.labels).copy()
    brain = reorientation.to_ras(phantom.brain)
    # A detector gone wrong: the whole brain labelled as ears and a nose inside the head.
    labels[brain] = Label.EARS
    box = grow_box(tuple(slice(int(i.min()), int(i.max()) + 1) for i in np.nonzero(brain)), brain.shape, 0.3)
    labels[box] = Label.NOSE
    result = deface(phantom.volume, TruthDetector(labels))
    assert not (result.volume.raw != phantom.volume.raw)[phantom.brain].any()
    assert result.provenance["protection"]["changed_inside_protected"] == 0
    assert not (result.edit_mask.astype(bool) & result.protected).any()


def test_no_features_detected_leaves_the_scan_bit_identical(phantom):
    result = deface(phantom.volume, TruthDetector(np.zeros_like(phantom.labels)))
    np.testing.assert_array_equal(result.volume.raw, phantom.volume.raw)
    assert len(result.provenance["warnings"]) == 3


def test_provenance_records_what_was_sampled(phantom):
    result = deface(phantom.volume, TruthDetector(phantom.labels), DefaceOptions(seed=5))
    record = result.provenance
    assert record["options"]["seed"] == 5
    assert {e["feature"] for e in record["edits"]} == {"eyes", "nose", "ears"}
    assert record["detector"]["name"] == "truth"
    assert all(v > 0 for v in record["voxels_changed"].values())
