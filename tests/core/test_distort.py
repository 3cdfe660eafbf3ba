"""Each distortion does what the mission says, reproducibly, and never touches the brain."""

from __future__ import annotations

import numpy as np
import pytest
from truth_detector import TruthDetector

from defacer.distort import grow_box, nose_box
from defacer.head import CLEAR_OUTLINE
from defacer.labels import Label
from defacer.phantom import make_phantom
from defacer.pipeline import DefaceOptions, deface
from defacer.volume import Volume


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
    """Every tissue voxel the nose feature changes becomes air (the mouth fill below the nose only
    turns air into skin: tests/core/test_distort_mouth.py)."""
    result = deface(phantom.volume, TruthDetector(phantom.labels), DefaceOptions(features=("nose",)))
    tissue = phantom.volume.values() > result.provenance["head"]["threshold"]
    values = result.volume.values()[(result.edit_mask == Label.NOSE) & tissue]
    assert values.size > 1000
    background = result.provenance["head"]["background"]
    assert np.all(np.abs(values - background) <= 0.5)
    assert np.abs(background) < 50, "MR air is near zero"


def test_ct_background_is_air_in_hounsfield_units():
    ct = make_phantom(3.0, contrast="CT")
    result = deface(ct.volume, TruthDetector(ct.labels), DefaceOptions(features=("nose",)))
    assert result.provenance["head"]["background"] < -900
    assert not (result.volume.raw != ct.volume.raw)[ct.brain].any()


def test_ears_become_noise_from_the_scans_own_air(phantom):
    """The auricle becomes air noise; only the edit's voxels below the head surface (its root) take skin values."""
    result = deface(phantom.volume, TruthDetector(phantom.labels), DefaceOptions(features=("ears",)))
    ears = result.edit_mask == Label.EARS
    auricle = phantom.labels == Label.EARS
    assert ears.sum() > 0.8 * auricle.sum()
    threshold = result.provenance["head"]["threshold"]
    new = result.volume.values()[ears]
    skin_filled = sum(e["voxels_skin_filled"] for e in result.provenance["edits"] if e["feature"] == "ears")
    assert np.count_nonzero(new > threshold) <= skin_filled < 0.1 * ears.sum(), "all but the root is air"
    assert np.mean(result.volume.values()[auricle] <= threshold) >= 0.9, "the auricle itself is gone"
    noise = new[new <= threshold]
    assert noise.mean() < 0.2 * 650, "the phantom's auricle is 650; air is near 0"
    assert noise.std() > 0, "noise, not a constant"


def test_eyes_are_covered_by_a_smooth_skin_band(phantom):
    result = deface(phantom.volume, TruthDetector(phantom.labels), DefaceOptions(features=("eyes",)))
    edits = [e for e in result.provenance["edits"] if e["feature"] == "eyes"]
    assert len(edits) == 1 and edits[0]["eyes_covered"] == 2, "one cover over both eyes, across the nasal bridge"
    for edit in edits:
        assert 600 < edit["skin_value"] < 900, "the phantom's scalp is 780"
    changed = result.edit_mask == Label.EYES
    new = result.volume.values()[changed]
    skin = np.mean([e["skin_value"] for e in edits])
    background = result.provenance["head"]["background"]
    # Every changed voxel became skin (the layer and the filled socket), air (tissue in front of the cover),
    # or, where the new surface crosses a voxel, the share of skin it covers.
    assert np.all((new >= background - 1) & (new <= skin + 10))
    assert np.mean(np.abs(new - skin) < 10) > 0.5


def _eye_changes_outside_the_cover(result, labels, spacing_mm, slack_mm):
    """Changed eye voxels lying more than ``slack_mm`` outside the cover region (in R and S): the
    stadium that the ellipse 2x each eye, grown by its 10 mm soft edge, sweeps between the eyes."""
    from defacer.distort import components, eye_region

    changed = np.argwhere(result.edit_mask == Label.EYES)
    regions = [eye_region(labels == Label.EYES, c, (spacing_mm,) * 3, 2.0) for c in components(labels == Label.EYES, 2)]
    a_r = np.mean([semi[0] for _, semi in regions]) + 10.0 + slack_mm
    a_s = np.mean([semi[1] for _, semi in regions]) + 10.0 + slack_mm
    p = np.stack([changed[:, 0] * spacing_mm / a_r, changed[:, 2] * spacing_mm / a_s], axis=1)
    q = np.array([[c[0] * spacing_mm / a_r, c[1] * spacing_mm / a_s] for c, _ in regions])
    d = q[-1] - q[0]
    t = np.clip(((p - q[0]) @ d) / max(float(d @ d), 1e-9), 0, 1)
    distance = np.linalg.norm(p - q[0] - t[:, None] * d, axis=1)
    return int(np.count_nonzero(distance > 1.0)), changed


def test_eye_cover_is_confined_to_the_eye_region_not_the_forehead(phantom):
    """Nothing changes outside the cover region (the ellipse 2x each eye plus its 10 mm soft edge,
    swept from eye to eye), so nothing far above the brow: at most one eye height and 10 mm above
    the eyes' centre, where the old x3 box reached 1.5 eye heights and 10 mm."""
    result = deface(phantom.volume, TruthDetector(phantom.labels), DefaceOptions(features=("eyes",)))
    outside, changed = _eye_changes_outside_the_cover(result, phantom.labels, 2.0, 2.0)
    assert outside == 0
    eyes = np.nonzero(phantom.labels == Label.EYES)
    height = eyes[2].max() + 1 - eyes[2].min()
    assert changed[:, 2].max() <= eyes[2].mean() + height + 10.0 / 2.0 + 1
    assert changed[:, 2].min() >= eyes[2].mean() - height - 10.0 / 2.0 - 1


def test_eye_cover_meets_a_smooth_face_without_a_step():
    """On a face with no socket (and no nose) the cover is nearly invisible: where the face looks
    forward (slope below 45 degrees; the side of the head is steep along A) the new surface
    stays within 2 mm of the old one (a voxel of rounding either way; the old +/- 6 mm band over a
    box was a 6 mm plate with a step at its edge), and neighbouring columns differ no more than
    they did, plus one voxel."""
    from defacer.distort import _surface_height
    from defacer.phantom import HEAD_AXES

    smooth = make_phantom(1.0, fov_mm=(200, 240, 200))
    coords = [(np.arange(n) - (n - 1) / 2.0) for n in smooth.labels.shape]
    x, y, z = np.meshgrid(*coords, indexing="ij", sparse=True)
    outside_head = sum((c / ax) ** 2 for c, ax in zip((x, y, z), HEAD_AXES, strict=True)) >= 1
    raw = np.where((smooth.labels == Label.NOSE) & outside_head, np.int16(0), smooth.volume.raw)
    volume = smooth.volume.with_raw(raw.astype(smooth.volume.raw.dtype))
    labels = np.where(smooth.labels == Label.EYES, smooth.labels, 0).astype(np.uint8)
    result = deface(volume, TruthDetector(labels), DefaceOptions(features=("eyes",)))
    edits = [e for e in result.provenance["edits"] if e["feature"] == "eyes"]
    assert edits
    for edit in edits:
        box = tuple(slice(a, b) for a, b in edit["box"])
        before, present = _surface_height(volume.raw[box] > 400)
        after, present_after = _surface_height(result.volume.raw[box] > 400)
        assert np.array_equal(present, present_after)
        g_r, g_s = np.gradient(before)
        facing = present & (np.hypot(g_r, g_s) <= 1.0)
        assert facing.mean() > 0.5
        assert np.abs(after - before)[facing].max() <= 2.0
        for axis in (0, 1):
            pairs = facing[1:, :] & facing[:-1, :] if axis == 0 else facing[:, 1:] & facing[:, :-1]
            jump_before = np.abs(np.diff(before, axis=axis))[pairs].max()
            assert np.abs(np.diff(after, axis=axis))[pairs].max() <= jump_before + 1


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
    # Eyes and nose never write in the conservative region; ears only in its slack band at exact depth <= 10 mm
    # (counted by changed_inside_protected above).
    assert not ((result.edit_mask != 0) & (result.edit_mask != Label.EARS) & result.protected).any()


def test_no_features_detected_leaves_the_scan_bit_identical(phantom):
    result = deface(phantom.volume, TruthDetector(np.zeros_like(phantom.labels)))
    np.testing.assert_array_equal(result.volume.raw, phantom.volume.raw)
    assert len(result.provenance["warnings"]) == 3


def test_between_the_eyes_the_nose_removal_takes_the_cover_up_to_the_eye_line(phantom):
    """Between the two detected eyes (no globe lies behind there) the nose removal goes through the eye cover up to
    the eyes' centre line: the old rule shielded the whole cover, which stood as a ledge over the removal (a nose
    tip with its nostrils' shadow to the face detectors).  Inside the nose region, in the columns between the eye
    labels and below that line, no voxel is left to the cover and the removal writes some; the globes stay
    shielded (the test above)."""
    from defacer.distort import components

    result = deface(phantom.volume, TruthDetector(phantom.labels), DefaceOptions(features=("eyes", "nose")))
    eyes = phantom.labels == Label.EYES
    left, right = sorted(components(eyes, 2), key=lambda box: box[0].start)
    line = int(np.floor(np.nonzero(eyes)[2].mean()))
    nose = next(e for e in result.provenance["edits"] if e["feature"] == "nose")
    region = np.zeros(eyes.shape, dtype=bool)
    (r0, r1), (a0, a1), (s0, s1) = nose["box"]
    region[r0:r1, a0:a1, s0:s1] = True
    coords = np.meshgrid(*[np.arange(n) for n in eyes.shape], indexing="ij", sparse=True)
    region &= sum(((c - centre) * 2.0) ** 2 for c, centre in zip(coords, nose["centre_voxel"], strict=True)) \
        <= nose["reach_mm"] ** 2
    region[: left[0].stop + 1] = False  # one column of slack beside each eye label
    region[right[0].start - 1:] = False
    region[:, :, line:] = False
    assert region.any()
    assert int(np.count_nonzero(result.edit_mask[region] == Label.EYES)) == 0, "the cover stays between the eyes"
    assert np.count_nonzero(result.edit_mask[region] == Label.NOSE) > 0
    cover = next(e for e in result.provenance["edits"] if e["feature"] == "eyes")
    low, high = cover["open_to_nose_r_voxel"]  # recorded: the R range opened to the nose removal
    assert left[0].start < low < high < right[0].stop


def test_provenance_records_what_was_sampled(phantom):
    result = deface(phantom.volume, TruthDetector(phantom.labels), DefaceOptions(seed=5))
    record = result.provenance
    assert record["options"]["seed"] == 5
    assert {e["feature"] for e in record["edits"]} == {"eyes", "nose", "ears"}
    assert record["detector"]["name"] == "truth"
    assert all(v > 0 for v in record["voxels_changed"].values())


def _globes(phantom_voxel_mm: float, shape: tuple[int, int, int]) -> np.ndarray:
    """The phantom's two eyeballs (radius 12 mm at (+-31, 68, -8) mm from the grid centre), RAS grid."""
    coords = [(np.arange(n) - (n - 1) / 2.0) * phantom_voxel_mm for n in shape]
    x, y, z = np.meshgrid(*coords, indexing="ij", sparse=True)
    globes = np.zeros(shape, dtype=bool)
    for cx in (-31.0, 31.0):
        globes |= ((x - cx) ** 2 + (y - 68.0) ** 2 + (z + 8.0) ** 2) <= 12.0**2
    return globes


def test_nose_removal_never_opens_a_window_onto_the_globes(phantom):
    """The nose box x2 reaches the medial half of the phantom's globes; with the eye cover it
    removes nothing under the cover: every globe voxel is unchanged and tissue still lies in front
    of the globe in every column through it."""
    globes = _globes(2.0, phantom.labels.shape)
    nose_only = deface(phantom.volume, TruthDetector(phantom.labels), DefaceOptions(features=("nose",)))
    assert (nose_only.edit_mask.astype(bool) & globes).any(), "the nose box alone does reach the globes"
    result = deface(phantom.volume, TruthDetector(phantom.labels), DefaceOptions(features=("eyes", "nose")))
    assert not (result.edit_mask == Label.NOSE)[globes].any(), "the nose removal changed a globe voxel"
    threshold = result.provenance["head"]["threshold"]
    tissue = result.volume.values() > threshold
    a = np.arange(globes.shape[1])[None, :, None]
    globe_front = np.where(globes, a, -1).max(axis=1)
    in_front = (tissue & (a > globe_front[:, None, :])).any(axis=1)
    columns = globes.any(axis=1)
    assert in_front[columns].all(), "some column through a globe has no tissue left in front of it"
    assert any(e["voxels_left_to_eye_cover"] > 0 for e in result.provenance["edits"] if e["feature"] == "nose")


def test_whole_auricle_goes_when_the_detection_covers_only_its_core(phantom):
    """A detection of only the concha (within 9 mm of the ear canal) still removes >= 90% of each
    auricle, located by the detection and delimited by the image; the head under it stays."""
    shape = phantom.labels.shape
    coords = [(np.arange(n) - (n - 1) / 2.0) * 2.0 for n in shape]
    x, y, z = np.meshgrid(*coords, indexing="ij", sparse=True)
    near_canal = np.zeros(shape, dtype=bool)
    for side in (-1, 1):
        near_canal |= ((x - side * 77.0) ** 2 + (y + 2.0) ** 2 + (z + 6.0) ** 2) <= 9.0**2
    ears = phantom.labels == Label.EARS
    core = phantom.labels.copy()
    core[ears & ~near_canal] = 0
    assert (core == Label.EARS).sum() < 0.3 * ears.sum()
    result = deface(phantom.volume, TruthDetector(core), DefaceOptions(features=("ears",)))
    changed = result.edit_mask == Label.EARS
    for side in (-1, 1):
        auricle = ears & ((x * side) > 0)
        assert changed[auricle].mean() >= 0.9
    # Never the head behind the ear: nothing changes deeper than 4 mm (+ one voxel) below its surface,
    # except under where the auricle joins the head around the canal (distort_ears.pressed_layer: no air
    # between auricle and head there), and nothing there deeper than 10 mm.
    from defacer.phantom import HEAD_AXES

    inner, deep = (sum(((c / (ax - by)) ** 2) for c, ax in zip((x, y, z), HEAD_AXES, strict=True)) < 1
                   for by in (6.0, 10.0))
    joint = np.zeros(shape, dtype=bool)
    for side in (-1, 1):
        joint |= ((x - side * 77.0) ** 2 + (y + 2.0) ** 2 + (z + 6.0) ** 2) <= 16.0**2
    assert not (changed & inner & ~joint).any()
    assert not (changed & deep).any()
    assert not (result.volume.raw != phantom.volume.raw)[phantom.brain].any()
    # The old distortion changed only the detected core (dilated 1 mm).
    assert changed.sum() > 3 * (core == Label.EARS).sum()


def test_ct_padding_outside_the_field_is_not_taken_for_air():
    """A CT whose circular field of view is padded with -2000 (a quarter of the voxels): the air/tissue
    threshold still falls between air and tissue, the air value is the real air, and the auricles go."""
    ct = make_phantom(3.0, contrast="CT", fov_mm=(240.0, 240.0, 240.0))
    raw = ct.volume.raw.copy()
    n = raw.shape[0]
    r2 = ((np.arange(n) - (n - 1) / 2.0)[:, None] ** 2 + (np.arange(raw.shape[1]) - (raw.shape[1] - 1) / 2.0)[None, :] ** 2)
    outside = np.broadcast_to((r2 > (0.45 * n) ** 2)[:, :, None], raw.shape)
    assert outside.mean() > 0.2
    padded = ct.volume.with_raw(np.where(outside, np.int16(-2000), raw))
    result = deface(padded, TruthDetector(ct.labels), DefaceOptions(features=("ears",)))
    head = result.provenance["head"]
    assert -950 < head["threshold"] < 0
    assert -1100 < head["background"] < -900
    ears = ct.labels == Label.EARS
    assert (result.edit_mask[ears] == Label.EARS).mean() >= 0.9


def _world_mm(shape, spacing_mm):
    """Coordinates (mm) of every voxel along R, A, S, broadcastable (sparse)."""
    return np.meshgrid(*[np.arange(n) * spacing_mm for n in shape], indexing="ij", sparse=True)


def test_nose_removal_stays_within_its_reach_of_a_detection_run_into_the_lip(phantom):
    """A nose detection that runs 40 mm down into the lip makes the box x2 reach far below the nose
    (onto the lip and the cheeks); the removal stays within NOSE_REACH_MM of the detected nose's
    centroid, and still removes the whole nose."""
    from defacer.distort import NOSE_REACH_MM

    spacing = 2.0
    nose = phantom.labels == Label.NOSE
    long_nose = nose.copy()
    for shift in range(1, int(40 / spacing) + 1):
        long_nose[:, :, :-shift] |= nose[:, :, shift:]  # the label smeared 40 mm down (towards -S)
    labels = np.where(long_nose & (phantom.labels == 0), np.uint8(Label.NOSE), phantom.labels).astype(np.uint8)
    detected = labels == Label.NOSE
    centre = [float(i.mean()) * spacing for i in np.nonzero(detected)]
    r, a, s = _world_mm(labels.shape, spacing)
    distance = np.sqrt((r - centre[0]) ** 2 + (a - centre[1]) ** 2 + (s - centre[2]) ** 2)
    box = nose_box(detected, detected.shape, 2.0)
    assert distance[box].max() > NOSE_REACH_MM + 20, "the box x2 alone does reach far past the bound"
    result = deface(phantom.volume, TruthDetector(labels), DefaceOptions(features=("nose",)))
    removed = result.edit_mask == Label.NOSE
    assert removed.any()
    assert distance[removed].max() <= NOSE_REACH_MM + spacing, "the nose removal reached past its bound"
    from defacer.phantom import HEAD_AXES

    coords = [(np.arange(n) - (n - 1) / 2.0) * spacing for n in labels.shape]
    x, y, z = np.meshgrid(*coords, indexing="ij", sparse=True)
    protruding = sum((c / ax) ** 2 for c, ax in zip((x, y, z), HEAD_AXES, strict=True)) >= 1
    nose_tissue = nose & protruding & (phantom.volume.values() > result.provenance["head"]["threshold"])
    assert nose_tissue.sum() > 1000
    assert removed[nose_tissue].mean() > 0.99, "the nose itself (what stands out of the head) is still removed"
    edit = next(e for e in result.provenance["edits"] if e["feature"] == "nose")
    assert edit["reach_mm"] == NOSE_REACH_MM


def test_eye_cover_stays_within_its_bound_for_an_oversized_detection(phantom):
    """An eye detection swollen to 80 mm tall (into the brow and the cheek) would, at x2, spread the
    cover 80 mm above the eyes; the cover's semi-axes stay at most EYE_SEMI_MAX_MM (plus its soft
    edge), and nothing changes beyond that."""
    from scipy import ndimage

    from defacer.distort import EYE_SEMI_MAX_MM

    spacing = 2.0
    eyes = phantom.labels == Label.EYES
    swollen = ndimage.binary_dilation(eyes, np.ones((1, 1, 3), dtype=bool), iterations=int(24 / spacing))
    labels = np.where(swollen, np.uint8(Label.EYES), np.where(phantom.labels == Label.EYES, 0, phantom.labels))
    labels = labels.astype(np.uint8)
    height_mm = (np.ptp(np.nonzero(labels == Label.EYES)[2]) + 1) * spacing
    assert 2.0 * height_mm / 2.0 > EYE_SEMI_MAX_MM[1] + 20, "unbounded, the cover would reach much further"
    result = deface(phantom.volume, TruthDetector(labels), DefaceOptions(features=("eyes",)))
    edits = [e for e in result.provenance["edits"] if e["feature"] == "eyes"]
    assert len(edits) == 1
    feather = edits[0]["feather_mm"]
    assert edits[0]["outer_semi_axes_rs_mm"][0] <= EYE_SEMI_MAX_MM[0] + feather
    assert edits[0]["outer_semi_axes_rs_mm"][1] <= EYE_SEMI_MAX_MM[1] + feather
    changed = np.argwhere(result.edit_mask == Label.EYES)
    centre_s = np.mean([c[1] for c in edits[0]["centres_rs_voxel"]]) * spacing
    reach = changed[:, 2] * spacing - centre_s
    assert reach.max() <= EYE_SEMI_MAX_MM[1] + feather + spacing, "the cover reached past its bound above the eyes"
    assert reach.min() >= -(EYE_SEMI_MAX_MM[1] + feather + spacing), "the cover reached past its bound below the eyes"


def _face_heights(n_r: int = 120, n_s: int = 80) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Columns (R, S) of a synthetic face at 1 mm: flat at A = 100, an elliptic eye region in the middle."""
    r = np.arange(n_r, dtype=np.float32)[:, None]
    s = np.arange(n_s, dtype=np.float32)[None, :]
    surface = np.full((n_r, n_s), 100.0, dtype=np.float32)
    inside = ((r - n_r / 2) / 45.0) ** 2 + ((s - n_s / 2) / 20.0) ** 2 < 1.0
    return surface, np.ones_like(inside), inside


def test_eye_cover_does_not_cut_the_cheeks_of_a_head_pitched_chin_up():
    """A head pitched chin-up has its cheeks 10 mm and more in front of its brow along the whole width
    of the cover; that is not a nose, and the cover leaves the cheek at its lower edge where it is
    (the old rule took every such edge for a nose and cut up to 16 mm into the cheeks of the pitched
    CT)."""
    from defacer.distort import _span_socket

    surface, present, inside = _face_heights()
    s = np.arange(surface.shape[1], dtype=np.float32)[None, :]
    surface = surface + 0.6 * (surface.shape[1] / 2 - s)  # 0.6 mm forward per mm downward (about 31 degrees)
    cover = _span_socket(surface, present, inside, (1.0, 1.0, 1.0))
    lowest = np.argmax(inside, axis=1)
    columns = np.nonzero(inside.any(axis=1))[0]
    cut = (surface - cover)[columns, lowest[columns]]
    assert cut.max() <= 2.0


def test_eye_cover_still_spans_a_nose_below_the_bridge_flat():
    """A nose (25 mm wide, 20 mm in front of the face) under the eye region's lower edge is moved back to
    the face's level beside it, so the cover does not climb onto the nose."""
    from defacer.distort import _span_socket

    surface, present, inside = _face_heights()
    r = np.arange(surface.shape[0])[:, None]
    s = np.arange(surface.shape[1])[None, :]
    nose = (np.abs(r - surface.shape[0] / 2) < 12.5) & (s < surface.shape[1] / 2)
    surface = np.where(nose, surface + 20.0, surface).astype(np.float32)
    cover = _span_socket(surface, present, inside, (1.0, 1.0, 1.0))
    middle = surface.shape[0] // 2
    column = inside[middle]
    rows = np.nonzero(column)[0]
    lower_half = rows[rows < surface.shape[1] / 2]
    # the cover over the nose's columns stays near the face level (100), far behind the nose (120)
    assert cover[middle, lower_half].max() < 110.0


def test_a_halo_round_the_head_is_reported_as_a_warning(phantom, caplog):
    """A head whose air is lifted towards its skin (gamma 0.5) is defaced with a warning in the sidecar that
    names the cause and says to verify, also logged (batch keeps a scan's logged warnings in its record);
    the untouched phantom gets no such warning."""
    image = phantom.volume.values(np.float32)
    lo, hi = np.percentile(image, [0.5, 99.5])
    halo = (np.sqrt(np.clip((image - lo) / (hi - lo), 0.0, 1.5)) * 1000.0).astype(np.float32)
    volume = Volume(halo, phantom.volume.affine, 1.0, 0.0, phantom.volume.format)
    warned = deface(volume, TruthDetector(phantom.labels), DefaceOptions(features=("nose",))).provenance
    clean = deface(phantom.volume, TruthDetector(phantom.labels), DefaceOptions(features=("nose",))).provenance
    # the first analysis is doubtful; the head then used is the one at the sharpest level (test_pipeline_halo)
    assert warned["head"]["bright_air"]["first_outline_contrast"] < CLEAR_OUTLINE <= clean["head"]["outline_contrast"]
    assert any("halo" in w and "defacer verify" in w for w in warned.get("warnings", []))
    assert not any("halo" in w for w in clean.get("warnings", []))
    assert sum("halo" in r.getMessage() for r in caplog.records if r.levelname == "WARNING") == 1
