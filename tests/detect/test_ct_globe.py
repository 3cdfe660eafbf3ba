"""The globe's centre found in a CT (defacer.detect.ct_globe): one rule for the CT reference eye labels
(scripts/make_reference_labels.py) and the detector's CT eye refinement."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from defacer.detect import ct_globe
from defacer.phantom import make_phantom

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

import make_reference_labels as mrl

#: The synthetic globe's middle, RAS mm (anterior: +y).
GLOBE = np.array([0.3, 55.4, 0.6])
#: The phantom's eyeball centres (radius 12 mm), RAS mm (defacer.phantom).
PHANTOM_EYES = [np.array([-31.0, 68.0, -8.0]), np.array([31.0, 68.0, -8.0])]
#: A head CT's air and soft-tissue (brain) levels, HU.
AIR, TISSUE = -1000.0, 35.0


def _world(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    index = np.indices(shape).reshape(3, -1).T.astype(float)
    return (index @ affine[:3, :3].T + affine[:3, 3]).reshape(*shape, 3)


def _ct_orbit(affine: np.ndarray, shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """A CT orbit in HU on any grid: a globe of radius 12 mm (sclera 50, vitreous 12, lens 100 at its
    front) in fat (-90), four recti (55) behind it, a bony orbit (1,000) round it, the head's soft tissue
    (35: brain, temporalis) beyond it, lids (40) in front and air (-1,000) beyond the skin 15 mm in front
    of the globe's middle; noise sd 5 HU."""
    rng = np.random.default_rng(seed)
    world = _world(affine, shape)
    rel = world - GLOBE
    d2 = (rel**2).sum(-1)
    radial = np.hypot(rel[..., 0], rel[..., 2])  # distance from the orbit's axis
    image = np.full(shape, -90.0, np.float32)
    image[(rel[..., 2] > 24.0) | (rel[..., 1] < -32.0) | (radial > 27.0)] = TISSUE  # the head round the orbit
    for dx, dz in ((13.0, 0.0), (-13.0, 0.0), (0.0, 13.0), (0.0, -13.0)):  # recti, 4 mm thick, behind the equator
        image[(np.hypot(rel[..., 0] - dx, rel[..., 2] - dz) <= 2.5) & (rel[..., 1] < 0.0) & (rel[..., 1] > -35.0)] = 55.0
    image[(radial >= 19.0) & (radial <= 22.0) & (rel[..., 1] < 6.0)] = 1000.0
    image[d2 <= 12.0**2] = 50.0
    image[d2 <= 11.0**2] = 12.0
    image[((rel - [0.0, 8.5, 0.0]) ** 2).sum(-1) <= 4.0**2] = 100.0
    image[(rel[..., 1] > 12.0) & (radial < 19.0)] = 40.0
    image[rel[..., 1] > 15.0] = AIR
    return image + rng.normal(0.0, 5.0, shape).astype(np.float32)


def _grid(spacing: tuple[float, float, float], degrees: float) -> tuple[np.ndarray, tuple[int, int, int]]:
    """A voxel -> RAS affine of ``spacing`` mm turned ``degrees`` about the S axis, covering the orbit."""
    angle = np.radians(degrees)
    turn = np.array([[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0.0, 0.0, 1.0]])
    affine = np.eye(4)
    affine[:3, :3] = turn @ np.diag(spacing)
    shape = tuple(int(np.ceil(90.0 / s)) for s in spacing)
    centre = np.array([0.0, 50.0, 0.0])
    affine[:3, 3] = centre - affine[:3, :3] @ ((np.asarray(shape) - 1) / 2.0)
    return affine, shape  # type: ignore[return-value]


SEEDS = ([6.0, 0.0, 0.0], [0.0, 6.0, 3.0], [-3.0, -4.0, -5.0])


@pytest.mark.parametrize("spacing,degrees", [((1.0, 1.0, 1.0), 0.0), ((2.0, 2.0, 4.0), 0.0), ((1.0, 1.0, 3.0), 20.0)],
                         ids=["1mm", "2x2x4mm", "1x1x3mm-turned"])
def test_the_centre_is_the_globes_middle_on_any_grid(spacing, degrees) -> None:
    affine, shape = _grid(spacing, degrees)
    image = _ct_orbit(affine, shape)
    for offset in SEEDS:  # seeds 6-7 mm off
        found = ct_globe.ct_globe_centre(image, affine, GLOBE + offset, AIR, TISSUE)
        assert found is not None
        centre, score, levels = found
        assert np.linalg.norm(centre - GLOBE) <= 1.0 + max(spacing) / 2
        assert score >= 0.5
        assert 5.0 <= levels.water <= 20.0  # the vitreous, not the fat that fills the orbit


def test_a_ct_rescaled_out_of_hounsfield_units_gives_the_same_centre() -> None:
    # mricrogl_CT is rescaled to 0-1: the band comes from the image's own air and tissue levels, not from HU
    affine, shape = _grid((1.0, 1.0, 1.0), 0.0)
    image = _ct_orbit(affine, shape)
    hu = ct_globe.ct_globe_centre(image, affine, GLOBE + SEEDS[1], AIR, TISSUE)
    for low, high in ((-1000.0, 2000.0), (-1024.0, 3071.0)):  # to 0-1 and to 0-255 (float)
        for top in (1.0, 255.0):
            unit = (image - low) / (high - low) * top
            found = ct_globe.ct_globe_centre(unit, affine, GLOBE + SEEDS[1], (AIR - low) / (high - low) * top,
                                             (TISSUE - low) / (high - low) * top)
            assert hu is not None and found is not None
            assert np.allclose(found[0], hu[0], atol=1e-6)
            assert found[1] == pytest.approx(hu[1], abs=1e-5)


def test_fixed_hounsfield_units_would_miss_a_rescaled_globe() -> None:
    # the same 0-1 image read with the HU levels finds nothing: the levels must be the image's own
    affine, shape = _grid((2.0, 2.0, 2.0), 0.0)
    unit = (_ct_orbit(affine, shape) + 1000.0) / 3000.0
    assert ct_globe.ct_globe_centre(unit, affine, GLOBE, AIR, TISSUE) is None


def test_without_a_globe_nothing_is_found() -> None:
    affine, shape = _grid((2.0, 2.0, 2.0), 0.0)
    image = _ct_orbit(affine, shape)
    world = _world(affine, shape)
    fat = image.copy()
    fat[((world - GLOBE) ** 2).sum(-1) <= 12.0**2] = -90.0  # the globe filled with fat
    assert ct_globe.ct_globe_centre(fat, affine, GLOBE, AIR, TISSUE) is None
    water = np.full(shape, 12.0, np.float32) + np.random.default_rng(1).normal(0.0, 5.0, shape).astype(np.float32)
    assert ct_globe.ct_globe_centre(water, affine, GLOBE, AIR, TISSUE) is None  # water everywhere: no sphere


def test_a_seed_outside_the_grid_or_the_field_finds_nothing() -> None:
    affine, shape = _grid((2.0, 2.0, 2.0), 0.0)
    image = _ct_orbit(affine, shape)
    assert ct_globe.ct_globe_centre(image, affine, GLOBE + [0.0, 0.0, 500.0], AIR, TISSUE) is None
    assert ct_globe.ct_globe_centre(image, affine, GLOBE, AIR, TISSUE, field=np.zeros(shape, bool)) is None


def test_scan_levels_are_the_air_median_and_the_tissue_mode() -> None:
    rng = np.random.default_rng(2)
    sample = np.concatenate([rng.normal(-1000.0, 5.0, 5000), rng.normal(35.0, 4.0, 8000), rng.normal(-90.0, 5.0, 1500),
                             rng.uniform(300.0, 1500.0, 1500)])
    air, tissue = ct_globe.scan_levels(sample, -400.0)
    assert air == pytest.approx(-1000.0, abs=1.0)
    assert tissue == pytest.approx(35.0, abs=3.0)
    assert ct_globe.scan_levels(sample[sample > -400.0], -400.0) is None  # no air


def test_the_reference_labels_use_the_same_function() -> None:
    # one implementation: the reference's CT eye centre is ct_globe_centre on its 1 mm work grid, with the
    # levels of every third voxel in the field
    affine, shape = _grid((1.0, 1.0, 1.0), 0.0)
    image = _ct_orbit(affine, shape)
    valid = np.ones(shape, bool)
    seed = GLOBE + [3.0, 5.0, -4.0]
    reference = mrl.ct_globe_in_image(image, valid, affine, seed)
    levels = ct_globe.scan_levels(image[::3, ::3, ::3], mrl.CT_TISSUE_HU)
    assert levels is not None
    shared = ct_globe.ct_globe_centre(image, affine, seed, *levels, search_mm=mrl.GLOBE_SEARCH_MM, field=valid)
    assert reference is not None and shared is not None
    assert np.array_equal(reference[0], shared[0]) and reference[1] == shared[1]
    found = mrl.eye_centre(image, np.ones(shape, bool), valid, affine, seed, 1.0, is_ct=True)
    assert found is not None and found[1] == "ct_globe" and np.array_equal(found[0], shared[0])


def phantom_with_orbits(voxel_mm: float = 2.0, noise: float = 0.005) -> tuple[np.ndarray, np.ndarray]:
    """The CT head phantom (defacer.phantom, HU) with orbital fat (-90 HU) 12-18 mm round each eyeball, inside
    the head: the phantom itself sets its eyes (12 HU) in soft tissue (40 HU).  Returns (image, affine), RAS."""
    made = make_phantom(voxel_mm, contrast="CT", noise=noise)
    affine = np.asarray(made.volume.affine, float)
    image = made.volume.values(np.float32).copy()
    world = _world(affine, image.shape)
    for eye in PHANTOM_EYES:
        d2 = ((world - eye) ** 2).sum(-1)
        image[(d2 > 12.0**2) & (d2 <= 18.0**2) & (image > -500.0) & (image < 100.0)] = -90.0
    return image, affine


def test_on_the_ct_phantom_the_centre_is_each_eyeballs() -> None:
    image, affine = phantom_with_orbits()
    levels = ct_globe.scan_levels(image[::3, ::3, ::3], -400.0)
    assert levels is not None
    for eye in PHANTOM_EYES:
        for offset in SEEDS:
            found = ct_globe.ct_globe_centre(image, affine, eye + offset, *levels)
            assert found is not None
            assert np.linalg.norm(found[0] - eye) <= 1.5
