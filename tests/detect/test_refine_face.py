"""The image-based re-shaping of the network's eyes and nose (defacer.detect.refine_face) on the phantom."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from defacer.detect import refine_face as rf
from defacer.detect.postprocess import air_threshold
from defacer.labels import Label
from defacer.phantom import make_phantom

#: The phantom's eyeball centres (radius 12 mm) and nose ellipsoid, in RAS mm (defacer.phantom).
EYES = [np.array([-31.0, 68.0, -8.0]), np.array([31.0, 68.0, -8.0])]
NOSE_CENTRE = np.array([0.0, 84.0, -38.0])


def _world(shape: tuple[int, ...], affine: np.ndarray) -> list[np.ndarray]:
    """RAS mm of every voxel of a diagonal-affine grid, as three broadcastable arrays."""
    return [(affine[a, a] * np.arange(n) + affine[a, 3]).reshape([-1 if b == a else 1 for b in range(3)])
            for a, n in enumerate(shape)]


def _anterior() -> np.ndarray:
    """The frame's anterior for a head with level eyes: the scanner's, pitched up by PITCH_DEG."""
    angle = np.radians(rf.PITCH_DEG)
    return np.array([0.0, np.cos(angle), np.sin(angle)])


def _network_map(shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    """A loose 'network' output: a ball of 8 mm per eye, 3 mm in front of each eyeball's centre, and a
    ball of 9 mm in the middle of the nose (far smaller than the reference rules' eyes and nose)."""
    x, y, z = _world(shape, affine)
    labels = np.zeros(shape, np.uint8)
    for centre in EYES:
        c = centre + rf.EYE_SEED_BACK_MM * _anterior()
        labels[(x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2 <= 8.0**2] = Label.EYES
    c = NOSE_CENTRE + [0.0, 10.0, 0.0]
    labels[(x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2 <= 9.0**2] = Label.NOSE
    return labels


def _extent(labels: np.ndarray) -> tuple[slice, ...]:
    idx = np.argwhere(labels > 0)
    return tuple(slice(a, b + 1) for a, b in zip(idx.min(axis=0), idx.max(axis=0), strict=True))


def _capsules(shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    """The reference eye rule's capsules from the phantom's true eyeball centres (before the head cut)."""
    x, y, z = _world(shape, affine)
    ant = _anterior()
    out = np.zeros(shape, bool)
    for c in EYES:
        px, py, pz = x - c[0], y - c[1], z - c[2]
        t = np.clip(px * ant[0] + py * ant[1] + pz * ant[2], 0.0, rf.EYE_FRONT_MM)
        out |= (px - t * ant[0]) ** 2 + (py - t * ant[1]) ** 2 + (pz - t * ant[2]) ** 2 <= rf.EYE_RADIUS_MM**2
    return out


@pytest.fixture(scope="module", params=[("T1", 2.0), ("CT", (2.0, 2.0, 4.0))], ids=["T1-2mm", "CT-thick"])
def phantom(request):
    contrast, voxel = request.param
    made = make_phantom(voxel, contrast=contrast)
    image = made.volume.values(np.float32)
    affine = np.asarray(made.volume.affine, float)
    return image, affine


def test_loose_network_eyes_become_the_reference_capsules_inside_the_head(phantom) -> None:
    image, affine = phantom
    network = _network_map(image.shape, affine)
    labels = network.copy()
    sources = rf.refine_face(image, affine, labels, _extent(labels))
    assert sources["eyes"] == ["image", "image"]
    eyes = labels == Label.EYES
    tissue = ndi.binary_dilation(ndi.gaussian_filter(image, 1.0) > air_threshold(image))
    expected = _capsules(image.shape, affine) & tissue
    assert ndi.label(eyes)[1] == 2
    # the network's balls held 15 % of it; the MR phantom's eyeball is a uniform ball without a lens, so an
    # 8 mm ball fits it alike anywhere within 4 mm of its middle and the vitreous rule's centre (MR since
    # issue 15, session 22) is fixed there only to within a few mm (measured 2.9 mm off: 74 %; a real globe's
    # lens and wall fix it); the CT's globe rule (issue 15, session 23) puts the eyes on the globes
    ct = rf.ct_like(image, float(rf.tissue_threshold(image)))
    assert (eyes & expected).sum() >= (0.8 if ct else 0.7) * expected.sum()
    assert (eyes & ~_capsules(image.shape, affine)).sum() <= 0.05 * eyes.sum()  # nothing outside the capsules
    assert not (eyes & ~tissue).any()  # no air in front of the face


def test_a_loose_network_nose_becomes_the_tissue_in_front_of_the_plane_behind_the_tip(phantom) -> None:
    image, affine = phantom
    labels = _network_map(image.shape, affine)
    sources = rf.refine_face(image, affine, labels, _extent(labels))
    assert sources["nose"] == ["image"]
    nose = labels == Label.NOSE
    x, y, z = _world(image.shape, affine)
    external = (image > air_threshold(image)) & (np.abs(x) <= 12) & (y >= 84 + 2) & (z >= -46) & (z <= -14)
    assert external.sum() > 500
    assert (nose & external).sum() >= 0.95 * external.sum()  # the whole external nose (the ball held 26 %)
    assert ndi.label(nose)[1] == 1
    tip_y = 108.0  # the phantom's nose tip; the plane behind it tilts with the pitch (< 4 mm up to the nasion)
    assert not (nose & (y < tip_y - rf.NOSE_BEHIND_TIP_MM - 6.0)).any()  # nothing deep in the face
    assert not (nose & (labels == Label.EYES)).any()


def test_a_refinement_that_finds_nothing_keeps_the_network_components() -> None:
    made = make_phantom(2.0)
    affine = np.asarray(made.volume.affine, float)
    # no head at all, only the noise of air: no tissue, no face, so no eye or nose can be shaped
    image = np.random.default_rng(0).rayleigh(10.0, made.labels.shape).astype(np.float32)
    network = _network_map(image.shape, affine)
    labels = network.copy()
    sources = rf.refine_face(image, affine, labels, _extent(labels))
    assert sources == {"eyes": ["network", "network"], "nose": ["network"]}
    assert np.array_equal(labels, network)


def test_a_flat_image_keeps_the_network_components() -> None:
    made = make_phantom(2.0)
    affine = np.asarray(made.volume.affine, float)
    network = _network_map(made.labels.shape, affine)
    labels = network.copy()
    sources = rf.refine_face(np.zeros(network.shape, np.float32), affine, labels, _extent(labels))
    assert sources == {"eyes": ["network", "network"], "nose": ["network"]}
    assert np.array_equal(labels, network)


def test_a_field_of_view_cut_through_the_face_never_drops_a_feature() -> None:
    made = make_phantom(2.0)
    affine = np.asarray(made.volume.affine, float)
    image = made.volume.values(np.float32)
    network = _network_map(image.shape, affine)
    cut = int(np.round((90.0 - affine[1, 3]) / affine[1, 1]))  # the field ends 90 mm in front: nose tip and lids cut
    image, network = image[:, :cut].copy(), network[:, :cut].copy()
    labels = network.copy()
    rf.refine_face(image, affine, labels, _extent(labels))
    for value in (Label.EYES, Label.NOSE):
        assert ndi.label(labels == value)[1] == ndi.label(network == value)[1]


def test_ears_are_never_overwritten_and_features_can_be_left_alone(phantom) -> None:
    image, affine = phantom
    network = _network_map(image.shape, affine)
    x, y, z = _world(image.shape, affine)
    network[(np.abs(x - EYES[1][0]) <= 4) & (y >= 78) & (y <= 82) & (np.abs(z - EYES[1][2]) <= 4)] = Label.EARS
    labels = network.copy()
    rf.refine_face(image, affine, labels, _extent(labels), features=("nose",))
    assert np.array_equal(labels == Label.EARS, network == Label.EARS)
    assert np.array_equal(labels == Label.EYES, network == Label.EYES)  # eyes not asked for: unchanged


def test_a_ct_padding_outside_the_field_is_not_taken_for_tissue() -> None:
    made = make_phantom(2.0, contrast="CT")
    affine = np.asarray(made.volume.affine, float)
    image = made.volume.values(np.float32)
    x, y, _ = _world(image.shape, affine)
    image = np.where(x**2 + y**2 <= 105.0**2, image, -2000.0).astype(np.float32)  # a circular field, -2000 outside
    labels = _network_map(image.shape, affine)
    assert rf.refine_face(image, affine, labels, _extent(labels))["eyes"] == ["image", "image"]
    air = ndi.gaussian_filter(image, 1.0) < -500.0
    assert not (ndi.binary_erosion(air) & (labels == Label.EYES)).any()  # the air in front of the lids stays out


def test_a_head_turned_in_the_scanner_gets_the_same_eyes_and_nose() -> None:
    made = make_phantom(2.0)
    affine = np.asarray(made.volume.affine, float)
    image = made.volume.values(np.float32)
    network = _network_map(image.shape, affine)
    turn = np.radians(25.0)  # the same array, its world frame yawed by 25 degrees and rolled by 10
    yaw = np.array([[np.cos(turn), -np.sin(turn), 0], [np.sin(turn), np.cos(turn), 0], [0, 0, 1]])
    roll = np.array([[np.cos(turn / 2.5), 0, -np.sin(turn / 2.5)], [0, 1, 0], [np.sin(turn / 2.5), 0, np.cos(turn / 2.5)]])
    turned = affine.copy()
    turned[:3] = (yaw @ roll) @ affine[:3]
    results = []
    for grid in (affine, turned):
        labels = network.copy()
        assert rf.refine_face(image, grid, labels, _extent(labels)) == {"eyes": ["image", "image"], "nose": ["image"]}
        results.append(labels)
    for value in (Label.EYES, Label.NOSE):
        a, b = results[0] == value, results[1] == value
        assert 2 * (a & b).sum() / (a.sum() + b.sum()) >= 0.9  # measured 0.98 (eyes), 0.96 (nose)


def _eye_heights(labels: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Mean height (RAS z, mm) of each eye component of ``labels``, left eye first."""
    pieces, count = ndi.label(labels == Label.EYES)
    centres = [affine[:3, :3] @ np.asarray(ndi.center_of_mass(pieces == i), float) + affine[:3, 3]
               for i in range(1, count + 1)]
    return np.array([c[2] for c in sorted(centres, key=lambda c: c[0])])


def _network_eyes_moved(medial_mm: float, up_mm: float, contrast: str = "T1") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 2 mm phantom (image, affine) and network eyes: 8 mm balls at each eye's seed point moved
    ``medial_mm`` towards the midline and ``up_mm`` up (label map, RAS grid)."""
    made = make_phantom(2.0, contrast=contrast)
    affine = np.asarray(made.volume.affine, float)
    image = made.volume.values(np.float32)
    x, y, z = _world(image.shape, affine)
    labels = np.zeros(image.shape, np.uint8)
    for centre in EYES:
        c = centre + rf.EYE_SEED_BACK_MM * _anterior() + [-np.sign(centre[0]) * medial_mm, 0.0, up_mm]
        labels[(x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2 <= 8.0**2] = Label.EYES
    return image, affine, labels


def _too_high(contrast: str) -> np.ndarray:
    """How far above the reference capsules' each refined eye lies (mm, left eye first) when both
    network eyes are drawn 4 mm too high on a 2 mm phantom of ``contrast``."""
    image, affine, labels = _network_eyes_moved(0.0, 4.0, contrast)
    assert rf.refine_face(image, affine, labels, _extent(labels), features=("eyes",)) == {"eyes": ["image", "image"]}
    tissue = ndi.binary_dilation(ndi.gaussian_filter(image, 1.0) > air_threshold(image))
    expected = np.zeros(image.shape, np.uint8)
    expected[_capsules(image.shape, affine) & tissue] = Label.EYES
    return _eye_heights(labels, affine) - _eye_heights(expected, affine)


def test_an_mr_network_eye_drawn_too_high_is_moved_onto_the_vitreous_centre() -> None:
    # MR: the eye's centre is the vitreous centre found by the reference labels' own rule
    # (defacer.detect.vitreous), not half-way from the network's seed: measured 0.2 / -0.7 mm;
    # 2.3 / 2.4 mm with the deepest point at half weight (the rule before, issue 15 session 22)
    too_high = _too_high("T1")
    assert np.all(np.abs(too_high) <= 1.2)


def test_a_ct_network_eye_drawn_too_high_is_moved_onto_the_globe() -> None:
    # CT (the pitched mricrogl_CT: both network eyes ~7 mm above the reference's): since issue 15, session 23
    # the eye's centre is the globe found by the CT reference labels' own rule (defacer.detect.ct_globe) at full
    # weight: measured -0.1 / 0.4 mm; the rule before (half-way to the deepest point) left them 2.3 / 1.7 mm high
    too_high = _too_high("CT")
    assert np.all(np.abs(too_high) <= 1.2)


def _with_orbital_fat(image: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """The CT phantom (HU) with orbital fat (-90 HU) 12-18 mm round each eyeball, inside the head (the phantom
    sets its eyes, 12 HU, in soft tissue, 40 HU): an orbit as a head CT shows it."""
    x, y, z = _world(image.shape, affine)
    out = image.copy()
    for eye in EYES:
        d2 = (x - eye[0]) ** 2 + (y - eye[1]) ** 2 + (z - eye[2]) ** 2
        out[(d2 > 12.0**2) & (d2 <= 18.0**2) & (image > -500.0) & (image < 100.0)] = -90.0
    return out


@pytest.mark.parametrize("rescaled", [False, True], ids=["HU", "rescaled-0-1"])
def test_a_ct_network_eye_drawn_too_high_in_an_orbit_of_fat_is_moved_onto_the_globe(rescaled: bool) -> None:
    # CT since issue 15, session 23: the eye's centre is the globe found by the CT reference labels' own rule
    # (defacer.detect.ct_globe: a water-density sphere in a shell that is not water), at full weight; the
    # rule before moved it half-way to the deepest point of the homogeneous body round the seed (measured
    # 2.3 / 1.7 mm high here, HU and rescaled).  A CT rescaled to 0-1 (mricrogl_CT) is read by its own levels.
    image, affine, labels = _network_eyes_moved(0.0, 4.0, "CT")
    image = _with_orbital_fat(image, affine)
    if rescaled:
        image = (image - image.min()) / (image.max() - image.min())
    assert rf.refine_face(image, affine, labels, _extent(labels), features=("eyes",)) == {"eyes": ["image", "image"]}
    tissue = ndi.binary_dilation(ndi.gaussian_filter(image, 1.0) > air_threshold(image))
    expected = np.zeros(image.shape, np.uint8)
    expected[_capsules(image.shape, affine) & tissue] = Label.EYES
    too_high = _eye_heights(labels, affine) - _eye_heights(expected, affine)
    assert np.all(np.abs(too_high) <= 1.2)


@pytest.mark.parametrize("contrast", ["T1", "T2", "PD", "FLAIR", "CT"])
def test_ct_like_tells_a_ct_from_an_mr_by_its_narrow_soft_tissue_peak(contrast: str) -> None:
    image = make_phantom(2.0, contrast=contrast).volume.values(np.float32)
    unit = (image - image.min()) / (image.max() - image.min())  # a CT rescaled out of HU (mricrogl_CT: 0-1)
    for values in (image, unit):
        assert rf.ct_like(values, rf.tissue_threshold(values)) == (contrast == "CT")


def test_an_eye_written_over_a_kept_network_nose_leaves_one_nose() -> None:
    # a network nose the image does not re-shape (here: eyes only) and that the eyes' capsules cut:
    # its largest piece stays (the rule before cleaned a re-shaped nose only: 1-3-voxel crumbs of seg3d's
    # nose under the eyes of the reference's rule; here 3 pieces of 34, 138 and 33 voxels)
    image, affine, labels = _network_eyes_moved(0.0, 0.0)
    x, y, z = _world(image.shape, affine)
    bar = np.broadcast_to((np.abs(x) <= 50) & (y >= 66) & (y <= 72) & (np.abs(z + 18) <= 1.5), labels.shape)
    labels[bar & (labels == 0)] = Label.NOSE
    assert ndi.label(labels == Label.NOSE)[1] == 1
    assert rf.refine_face(image, affine, labels, _extent(labels), features=("eyes",)) == {"eyes": ["image", "image"]}
    assert ndi.label(labels == Label.NOSE)[1] == 1
    assert (labels == Label.NOSE).sum() >= 100  # the nose itself stays (measured 147 voxels)


def test_the_globe_centre_does_not_depend_on_the_array_order(phantom) -> None:
    # the deepest point of a globe ties on a grid: the voxels tied for it count alike, so the same
    # head stored in another axis order gets the same eyes (the first of them in array order would not)
    image, affine = phantom
    network = _network_map(image.shape, affine)
    flip = np.eye(4)
    flip[0, 0], flip[1, 1] = -1.0, -1.0
    flip[0, 3], flip[1, 3] = image.shape[0] - 1, image.shape[1] - 1
    threshold = rf.tissue_threshold(image)  # its strided sample starts at the array's origin: given once
    results = []
    for values, grid, labels in ((image, affine, network.copy()),
                                 (image[::-1, ::-1].copy(), affine @ flip, network[::-1, ::-1].copy())):
        rf.refine_face(values, grid, labels, _extent(labels), features=("eyes",), threshold=threshold)
        results.append(labels)
    assert np.array_equal(results[0], results[1][::-1, ::-1])


def test_an_eye_written_over_the_nose_leaves_one_nose() -> None:
    # network eyes 14 mm too medial and 12 mm too low: their capsules cut across the nose's upper
    # corners (a 6-voxel second nose on the pitched CT, mricrogl_CT turned 25 degrees); the crumb goes
    image, affine, labels = _network_eyes_moved(14.0, -12.0)
    x, y, z = _world(image.shape, affine)
    c = NOSE_CENTRE + [0.0, 10.0, 0.0]
    labels[(x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2 <= 9.0**2] = Label.NOSE
    assert rf.refine_face(image, affine, labels, _extent(labels)) == {"eyes": ["image", "image"], "nose": ["image"]}
    assert ndi.label(labels == Label.NOSE)[1] == 1
    assert (labels == Label.NOSE).sum() > 1000  # the nose itself stays (measured 1773 voxels)


@pytest.mark.parametrize("contrast", ["T1", "CT"])
def test_the_tissue_level_from_a_sample_and_air_level_already_taken_is_the_same(contrast: str) -> None:
    """The detector takes the strided sample once and passes the air level: without an outside-the-field
    constant that is the tissue level itself; with one (a CT's -2000 round its field) it is computed."""
    from defacer.detect.postprocess import threshold_sample

    made = make_phantom(2.0, contrast=contrast)
    affine = np.asarray(made.volume.affine, float)
    image = made.volume.values(np.float32)
    if contrast == "CT":
        x, y, _ = _world(image.shape, affine)
        image = np.where(x**2 + y**2 <= 105.0**2, image, -2000.0).astype(np.float32)
    sample = threshold_sample(image)
    air = air_threshold(image, sample=sample)
    assert air == air_threshold(image)
    alone = rf.tissue_threshold(image)
    assert rf.tissue_threshold(image, sample=sample, air=air) == alone
    assert (alone == air) == (contrast != "CT")


def test_any_box_holding_the_eyes_and_nose_gives_the_same_refinement(phantom) -> None:
    """The detector passes its eyes' and nose's extent (not the ears' too): the box only bounds where the
    network's components are looked for, so a tight box and the whole grid give the same labels."""
    image, affine = phantom
    network = _network_map(image.shape, affine)
    network[2:6, 40:50, 30:40] = Label.EARS  # an 'ear' far outside the face: the wider extent holds it
    results = []
    for box in (_extent(np.where(network == Label.EARS, 0, network)), tuple(slice(0, n) for n in image.shape)):
        labels = network.copy()
        rf.refine_face(image, affine, labels, box)
        results.append(labels)
    np.testing.assert_array_equal(results[0], results[1])
    assert not np.array_equal(results[0], network)  # something was refined


def test_a_head_pitched_in_the_scanner_gets_the_same_eyes_and_nose_given_its_pitch() -> None:
    """The frame pitched with the head (``pitch_deg``, read by the detector from its ears) re-shapes a nodded head's
    eyes and nose as upright; the scanner's anterior (pitch 0, as before) tilts the nose's plane and the capsules."""
    from defacer.detect.pose import turned_affine

    made = make_phantom(2.0)
    affine = np.asarray(made.volume.affine, float)
    image = made.volume.values(np.float32)
    network = _network_map(image.shape, affine)
    upright = network.copy()
    rf.refine_face(image, affine, upright, _extent(upright))
    agreement = {}
    for degrees in (20.0, -25.0):
        pitched = turned_affine(affine, image.shape, "x", degrees)  # the same voxels, the chin raised (+) or lowered
        for pitch in (0.0, degrees):
            labels = network.copy()
            sources = rf.refine_face(image, pitched, labels, _extent(labels), pitch_deg=pitch)
            agreement[degrees, pitch] = [_dice(upright == v, labels == v) for v in (Label.EYES, Label.NOSE)], sources
        dice, sources = agreement[degrees, degrees]
        assert sources == {"eyes": ["image", "image"], "nose": ["image"]}
        assert min(dice) >= 0.95, agreement  # measured 1.00: the frame turns with the head
        # the scanner's anterior (as before): eyes 0.91 / 0.87, nose 0.76 / 0.24 (at -25 the network's nose is kept)
        assert min(agreement[degrees, 0.0][0]) <= 0.9, agreement


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(1, a.sum() + b.sum()))
