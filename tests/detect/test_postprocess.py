"""Post-processing keeps at most two eyes, one nose and two ears, each plausible."""

from __future__ import annotations

import numpy as np
import pytest

from defacer.detect.frame import EAR_OFFSET_MM, eye_frame
from defacer.detect.postprocess import Component, _mirrored_pair, find_components, unmirrored_ear

AFFINE = np.diag([4.0, 4.0, 4.0, 1.0])


def _ball(labels: np.ndarray, centre: tuple[int, int, int], radius: float, value: int) -> None:
    x, y, z = np.ogrid[: labels.shape[0], : labels.shape[1], : labels.shape[2]]
    labels[(x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2 <= radius**2] = value


def _head() -> np.ndarray:
    labels = np.zeros((64, 64, 64), np.uint8)
    _ball(labels, (24, 50, 32), 3, 1)
    _ball(labels, (40, 50, 32), 3, 1)
    _ball(labels, (32, 56, 26), 3.5, 2)
    _ball(labels, (12, 30, 28), 2, 3)
    _ball(labels, (52, 30, 28), 2, 3)
    return labels


def test_a_plausible_head_keeps_all_five_components() -> None:
    comps = find_components(_head(), AFFINE)
    assert [c.feature for c in comps] == ["eyes", "eyes", "nose", "ears", "ears"]


def test_extra_small_blobs_and_a_third_eye_are_dropped() -> None:
    labels = _head()
    _ball(labels, (32, 40, 50), 1, 1)  # a tiny third "eye"
    _ball(labels, (10, 10, 10), 1, 2)  # a stray "nose" voxel cluster
    comps = find_components(labels, AFFINE)
    assert sum(c.feature == "eyes" for c in comps) == 2
    assert sum(c.feature == "nose" for c in comps) == 1


def test_an_ear_in_front_of_the_eyes_is_not_an_ear() -> None:
    labels = _head()
    labels[labels == 3] = 0
    _ball(labels, (12, 60, 28), 2, 3)
    comps = find_components(labels, AFFINE)
    assert not any(c.feature == "ears" for c in comps)


def test_eyes_too_close_together_keep_only_the_larger() -> None:
    labels = np.zeros((64, 64, 64), np.uint8)
    _ball(labels, (30, 50, 32), 3, 1)
    _ball(labels, (37, 50, 32), 2.5, 1)
    labels[33:35] = 0
    comps = find_components(labels, AFFINE)
    assert len([c for c in comps if c.feature == "eyes"]) == 1


def test_empty_map_gives_no_components() -> None:
    assert find_components(np.zeros((16, 16, 16), np.uint8), AFFINE) == []


def test_nose_and_ear_labels_lose_their_air_voxels_but_eyes_keep_theirs() -> None:
    from defacer.detect.postprocess import restrict_to_tissue

    image = np.zeros((40, 40, 40), np.float32)
    image[:, :20] = 100.0  # tissue in the back half, air in front
    labels = np.zeros(image.shape, np.uint8)
    labels[5:10, 10:30, 5:10] = 3  # ear straddling tissue and air
    labels[20:25, 10:30, 20:25] = 1  # eye straddling tissue and air
    out = restrict_to_tissue(labels, image)
    assert (out[5:10, 10:19, 5:10] == 3).all()
    assert not (out[5:10, 23:30, 5:10] == 3).any()
    assert np.array_equal(out == 1, labels == 1)
    assert (labels[5:10, 25, 5:10] == 3).all(), "input not modified"


def test_crumbs_beyond_the_allowed_number_of_pieces_are_dropped() -> None:
    from defacer.detect.postprocess import keep_largest_pieces

    labels = np.zeros((30, 30, 30), np.uint8)
    labels[2:10, 2:10, 2:10] = 2  # the nose
    labels[20:22, 20:22, 20:22] = 2  # a crumb
    labels[2:6, 20:24, 2:6] = 1
    labels[10:14, 20:24, 2:6] = 1  # two eyes stay
    out = keep_largest_pieces(labels)
    assert (out == 2).sum() == 8**3
    assert (out == 1).sum() == 2 * 4**3
    assert (labels == 2).sum() == 8**3 + 8, "input not modified"


def test_a_small_second_ear_is_kept_beside_a_large_one() -> None:
    labels = _head()
    labels[labels == 3] = 0
    _ball(labels, (12, 30, 28), 4, 3)  # well-segmented right ear, ~16 cm^3
    _ball(labels, (52, 30, 28), 1.5, 3)  # under-segmented left ear, < a fifth of the right one
    comps = find_components(labels, AFFINE)
    ears = [c for c in comps if c.feature == "ears"]
    assert len(ears) == 2
    assert {bool(c.centre_mm[0] < 128) for c in ears} == {True, False}


def test_two_ear_pieces_on_one_side_keep_one_and_the_other_side_stays() -> None:
    labels = _head()
    _ball(labels, (10, 22, 28), 2, 3)  # a second piece on the right side
    comps = find_components(labels, AFFINE)
    ears = [c for c in comps if c.feature == "ears"]
    assert len(ears) == 2
    assert sorted(round(float(c.centre_mm[0])) for c in ears)[1] > 128, "the left ear survives"


def test_a_large_false_eye_does_not_break_the_real_pair() -> None:
    labels = _head()
    _ball(labels, (32, 10, 50), 4, 1)  # a big "eye" at the back of the head
    comps = find_components(labels, AFFINE)
    eyes = [c for c in comps if c.feature == "eyes"]
    assert len(eyes) == 2
    assert all(c.centre_mm[1] > 150 for c in eyes)
    assert sum(c.feature == "ears" for c in comps) == 2


def test_a_single_misplaced_eye_cannot_veto_the_ears() -> None:
    labels = _head()
    labels[labels == 1] = 0
    _ball(labels, (32, 12, 28), 3, 1)  # one "eye", behind the ears
    comps = find_components(labels, AFFINE)
    assert sum(c.feature == "ears" for c in comps) == 2


def test_a_nose_far_below_the_only_eye_is_not_a_nose() -> None:
    # the already-defaced studyforrest head: one eye-like blob, a "nose" 90 mm below it
    labels = _head()
    labels[labels == 2] = 0
    labels[:, :, 30:] = np.where(labels[:, :, 30:] == 1, 0, labels[:, :, 30:])
    _ball(labels, (24, 50, 32), 3, 1)
    _ball(labels, (30, 48, 6), 3.5, 2)  # 104 mm below the eye
    comps = find_components(labels, AFFINE)
    assert not any(c.feature == "nose" for c in comps)


def test_tissue_restriction_on_a_crop_with_the_scans_air_level_equals_it_on_the_whole_scan() -> None:
    from defacer.detect.postprocess import air_threshold, keep_largest_pieces, restrict_to_tissue

    rng = np.random.default_rng(5)
    image = rng.normal(10.0, 5.0, (50, 50, 50)).astype(np.float32)
    image[:, :25] += 300.0  # tissue behind, air in front
    labels = np.zeros(image.shape, np.uint8)
    labels[10:20, 15:35, 10:20] = 3
    labels[30:40, 18:33, 30:40] = 2
    labels[30:33, 40:42, 30:33] = 2  # a crumb in the air
    whole = keep_largest_pieces(restrict_to_tissue(labels, image))
    crop = (slice(8, 42), slice(12, 44), slice(9, 41))
    cropped = labels.copy()
    cropped[crop] = keep_largest_pieces(restrict_to_tissue(labels[crop], image[crop], threshold=air_threshold(image)))
    assert np.array_equal(cropped, whole)
    assert (whole == 3).sum() < (labels == 3).sum(), "air voxels were removed"


def _turned_head(axis: str, degrees: float) -> np.ndarray:
    """:func:`_head`'s five balls with their centres turned about the map's centre (yaw: z, roll: y)."""
    from scipy.spatial.transform import Rotation

    turn = Rotation.from_euler(axis, degrees, degrees=True).as_matrix()
    labels = np.zeros((64, 64, 64), np.uint8)
    for centre, radius, value in (((24, 50, 32), 3, 1), ((40, 50, 32), 3, 1), ((32, 56, 26), 3.5, 2),
                                  ((12, 30, 28), 2, 3), ((52, 30, 28), 2, 3)):
        turned = turn @ (np.asarray(centre, float) - 32.0) + 32.0
        _ball(labels, tuple(round(float(c)) for c in turned), radius, value)  # type: ignore[arg-type]
    return labels


@pytest.mark.parametrize(("axis", "degrees"), [("z", 30.0), ("z", -40.0), ("y", 25.0), ("x", 20.0)])
def test_a_head_turned_or_tilted_in_the_scanner_keeps_all_five_components(axis: str, degrees: float) -> None:
    # eyes 64 mm apart turned 30 degrees lie 32 mm apart front-to-back: a rule in the scanner's axes
    # (within 25 mm) dropped one eye, and the nose and ear rules followed the scanner's axes too
    comps = find_components(_turned_head(axis, degrees), AFFINE)
    assert [c.feature for c in comps] == ["eyes", "eyes", "nose", "ears", "ears"]
    left, right = (c for c in comps if c.feature == "ears")
    assert left.centre_mm @ np.array([1.0, 0.0, 0.0]) < right.centre_mm @ np.array([1.0, 0.0, 0.0])


def test_two_eyes_one_behind_the_other_are_not_a_pair() -> None:
    labels = np.zeros((64, 64, 64), np.uint8)
    _ball(labels, (32, 50, 32), 3, 1)
    _ball(labels, (34, 36, 32), 2.5, 1)  # 56 mm behind the first: no pair of eyes lies so
    comps = find_components(labels, AFFINE)
    assert len([c for c in comps if c.feature == "eyes"]) == 1


def test_a_larger_ear_candidate_on_the_cheek_yields_to_the_ear_where_ears_lie() -> None:
    # On a T2-like contrast a fold model called a piece of the left cheek "ear", larger than the
    # auricle behind it (ixi012, inverted): the largest-per-side rule kept the cheek.
    labels = _head()
    labels[labels == 3] = 0
    _ball(labels, (12, 30, 24), 2, 3)  # left auricle: 80 mm behind the eyes, 32 mm below
    _ball(labels, (10, 44, 12), 3, 3)  # left "cheek": 24 mm behind the eyes, 80 mm below, larger
    _ball(labels, (52, 30, 24), 2, 3)
    comps = find_components(labels, AFFINE)
    left = [c for c in comps if c.feature == "ears" and c.centre_mm[0] < 128]
    assert len(left) == 1
    np.testing.assert_allclose(left[0].centre_mm, [48.0, 120.0, 96.0], atol=1.0)


def test_an_ear_nowhere_near_where_ears_lie_is_still_kept_when_alone() -> None:
    labels = _head()
    labels[labels == 3] = 0
    _ball(labels, (10, 44, 12), 3, 3)  # the side's only candidate: implausible, but never dropped for that
    comps = find_components(labels, AFFINE)
    assert sum(c.feature == "ears" for c in comps) == 1


def test_component_centres_are_scipy_centres_of_mass_to_the_bit() -> None:
    """The centre from the component's bounding box only equals ndi.center_of_mass of the whole map, exactly."""
    from scipy import ndimage as ndi

    from defacer.detect.postprocess import _centre_of

    rng = np.random.default_rng(11)
    for _ in range(20):
        mask = np.zeros((40, 37, 29), bool)
        lo = rng.integers(0, 20, 3)
        size = rng.integers(1, 9, 3)
        mask[lo[0]:lo[0] + size[0], lo[1]:lo[1] + size[1], lo[2]:lo[2] + size[2]] = rng.random(tuple(size)) < 0.6
        mask[tuple(lo)] = True
        expected = np.asarray(ndi.center_of_mass(mask))
        assert np.array_equal(_centre_of(mask, ndi.find_objects(mask.astype(np.int32))[0]), expected)
        assert np.array_equal(_centre_of(mask, None), expected)


def test_candidates_labelled_on_the_features_extent_equal_those_of_the_whole_box() -> None:
    """find_components labels only the features' bounding box: the same components (numbered in the same
    raster order, so equal sizes keep their order), masks and centres as labelling the whole box."""
    from scipy import ndimage as ndi

    from defacer.detect.postprocess import _candidates
    from defacer.detect.preprocess import mask_box

    rng = np.random.default_rng(4)
    for trial in range(6):
        noise = ndi.gaussian_filter(rng.normal(size=(4, 40, 40, 40)), (0, 1.2, 1.2, 1.2))
        labels = noise.argmax(axis=0)
        labels[:, :, : 5 + 3 * trial] = 0  # an extent smaller than the box
        labels[:, : 4 + trial] = 0
        extent = mask_box(labels != 0)
        whole = tuple(slice(0, n) for n in labels.shape)
        for feature, value in (("eyes", 1), ("nose", 2), ("ears", 3)):
            cropped = _candidates(feature, labels[extent] == value, extent, labels.shape, AFFINE, 1.0)
            full = _candidates(feature, labels == value, whole, labels.shape, AFFINE, 1.0)
            assert len(cropped) == len(full) > 0
            for a, b in zip(cropped, full):
                assert np.array_equal(a.mask, b.mask)
                assert a.centre_mm.tobytes() == b.centre_mm.tobytes() and a.volume_mm3 == b.volume_mm3


def _left_ears(comps) -> list:
    return [c for c in comps if c.feature == "ears" and c.centre_mm[0] < 128]


def test_a_larger_jaw_candidate_yields_to_the_ear_that_mirrors_the_other_side() -> None:
    """Issue 15: on a T2-like contrast a held-out fold model called the left jaw "ear" (ixi014_T1w_2mm, inverted:
    9,219 mm^3 at 4.3 SD, 45 mm from the mirrored right ear) beside the left ear it also found (3,781 mm^3, 1.0 SD,
    2 mm): the largest plausibly placed candidate per side kept the jaw.  The left ear that mirrors the right one
    and lies where ears lie is kept instead."""
    labels = _head()
    labels[labels == 3] = 0
    _ball(labels, (52, 26, 24), 2, 3)  # right ear: 96 mm behind the eyes, 32 mm below (0.7 SD)
    _ball(labels, (12, 26, 24), 2, 3)  # left ear, the mirror of the right one
    _ball(labels, (10, 31, 14), 3, 3)  # left "jaw": 76 mm behind, 72 mm below (4.0 SD), larger
    comps = find_components(labels, AFFINE)
    left = _left_ears(comps)
    assert len(left) == 1
    np.testing.assert_allclose(left[0].centre_mm, [48.0, 104.0, 96.0], atol=1.0)
    assert sum(c.feature == "ears" for c in comps) == 2


def test_an_ear_that_does_not_mirror_the_other_stays_without_a_better_placed_one() -> None:
    """The jaw-like candidate stays where its side has no candidate that both mirrors the other ear and lies
    more plausibly: alone, or beside one placed as implausibly (the rule only ever swaps within a side)."""
    labels = _head()
    labels[labels == 3] = 0
    _ball(labels, (52, 26, 24), 2, 3)
    _ball(labels, (10, 31, 14), 3, 3)
    left = _left_ears(find_components(labels, AFFINE))
    np.testing.assert_allclose(left[0].centre_mm, [40.0, 124.0, 56.0], atol=1.0)
    _ball(labels, (12, 19, 24), 1.5, 3)  # 28 mm behind the right ear's mirror, but 4.5 SD: no better placed
    left = _left_ears(find_components(labels, AFFINE))
    np.testing.assert_allclose(left[0].centre_mm, [40.0, 124.0, 56.0], atol=1.0)


def test_the_ears_of_a_pitched_head_stay_a_pair() -> None:
    """Both ears turned alike (a pitched head: 76 mm behind the eyes, 72 mm below, 4.0 SD) with a smaller candidate
    on the left where an unpitched ear would lie (0.7 SD): the pair mirrors itself, so the left ear stays."""
    labels = _head()
    labels[labels == 3] = 0
    _ball(labels, (52, 31, 14), 3, 3)
    _ball(labels, (12, 31, 14), 3, 3)
    _ball(labels, (12, 26, 24), 1.5, 3)
    left = _left_ears(find_components(labels, AFFINE))
    np.testing.assert_allclose(left[0].centre_mm, [48.0, 124.0, 56.0], atol=1.0)


def _tied_ears() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Eyes' frame (origin, axes) of eyes at x = -30 / +30 mm, and a left and a right ear 20 mm above and below where
    ears lie (1.57 SD each, an exact tie) and 40 mm apart in (anterior, up): neither mirrors the other."""
    origin, axes, _ = eye_frame([-30.0, 0.0, 0.0], [30.0, 0.0, 0.0])
    left = np.array([-70.0, EAR_OFFSET_MM[0], EAR_OFFSET_MM[1] + 20.0])
    right = np.array([70.0, EAR_OFFSET_MM[0], EAR_OFFSET_MM[1] - 20.0])
    return origin, axes, left, right


def test_one_rule_says_which_ear_does_not_mirror_the_other_and_a_tie_doubts_only_when_asked() -> None:
    """The shared test of :func:`_mirrored_pair` and the fallback's drop (``ear_fallback._unmirrored``): the less
    plausibly placed ear of an unmirrored pair is doubted; at an exact tie of scores the second one only when
    ``doubt_at_tie`` (the swap may still happen, the drop does not)."""
    origin, axes, left, right = _tied_ears()
    assert unmirrored_ear(left, right, origin, axes, doubt_at_tie=True) == 1
    assert unmirrored_ear(right, left, origin, axes, doubt_at_tie=True) == 1
    assert unmirrored_ear(left, right, origin, axes, doubt_at_tie=False) is None
    closer = right + [0.0, 0.0, 1.0]  # 1 mm nearer where ears lie: no tie
    assert unmirrored_ear(left, closer, origin, axes, doubt_at_tie=False) == 0
    assert unmirrored_ear(closer, left, origin, axes, doubt_at_tie=False) == 1
    assert unmirrored_ear(left, left * [-1, 1, 1], origin, axes, doubt_at_tie=True) is None  # a mirrored pair
    far = np.array([70.0, EAR_OFFSET_MM[0], EAR_OFFSET_MM[1] - 60.0])  # both 4.7 SD, 120 mm apart: no anchor
    assert unmirrored_ear(far, far * [-1, 1, 1] + [0.0, 0.0, 120.0], origin, axes, doubt_at_tie=True) is None


def test_at_a_tie_the_right_ear_still_yields_to_one_that_mirrors_the_left() -> None:
    """:func:`_mirrored_pair` at an exact tie of the two ears' scores keeps its old order: the left ear is the anchor,
    and a right candidate placed more plausibly that mirrors it replaces the right ear."""
    origin, axes, left, right = _tied_ears()
    empty = np.zeros((2, 2, 2), bool)
    comps = [Component("ears", empty, c, 1000.0)
             for c in (left, right, np.array([70.0, EAR_OFFSET_MM[0], EAR_OFFSET_MM[1] + 15.0]))]
    kept_left, kept_right = _mirrored_pair(comps, comps[0], comps[1], origin, axes)
    assert kept_left[0] is comps[0] and kept_right[0] is comps[2]
