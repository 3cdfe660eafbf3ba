"""Renders follow the head: a head turned in the scanner is seen from its own front, not the scanner's."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from defacer.detect.pose import turned_affine
from defacer.phantom import make_phantom
from defacer.verify.render import View, render_view, render_volume
from defacer.volume import Volume

FRONT = View("front", 0.0, 0.0)


def _phantom(axis: str | None = None, degrees: float = 0.0) -> Volume:
    """The phantom with its header turned by ``degrees`` about world ``axis`` through the volume's centre."""
    ph = make_phantom(2.0, seed=3)
    affine = ph.volume.affine
    if axis is not None:
        affine = turned_affine(affine, ph.volume.shape, axis, degrees)
    return Volume(ph.volume.values(), affine, 1.0, 0.0, ph.volume.format)


def _mirror_match(depth_mm: np.ndarray) -> float:
    """How left-right symmetric a depth map is: the best correlation with its mirror image shifted sideways."""
    depth = np.nan_to_num(depth_mm, nan=float(np.nanmax(depth_mm)))
    mirrored = depth[:, ::-1]
    return max(float(np.corrcoef(depth.ravel(), np.roll(mirrored, shift, axis=1).ravel())[0, 1])
               for shift in range(-40, 41))


def test_an_upright_head_is_rendered_as_before() -> None:
    scene, renders = render_volume(_phantom(), (FRONT,))
    assert np.array_equal(scene.head_turn, np.eye(3))
    assert _mirror_match(renders["front"].depth_mm) >= 0.995


@pytest.mark.parametrize("axis,degrees", [("z", 35.0), ("z", -30.0), ("y", 20.0)])
def test_a_turned_head_is_seen_from_its_own_front(axis, degrees) -> None:
    scene, renders = render_volume(_phantom(axis, degrees), (FRONT,))
    assert not np.allclose(scene.head_turn, np.eye(3))
    assert _mirror_match(renders["front"].depth_mm) >= 0.995  # the face straight on: symmetric
    # the scanner's front would see it from the side
    scanners_front = render_view(dataclasses.replace(scene, head_turn=np.eye(3)), FRONT)
    assert _mirror_match(scanners_front.depth_mm) < 0.985


def test_the_defaced_copy_is_seen_with_the_originals_turn() -> None:
    original = _phantom("z", 35.0)
    scene, _ = render_volume(original, (FRONT,))
    values = original.values().copy()
    values[values < np.percentile(values, 60)] = 0.0  # any other image on the same grid
    copy_scene, _ = render_volume(Volume(values, original.affine, 1.0, 0.0, original.format), (FRONT,), like=scene)
    assert np.array_equal(copy_scene.head_turn, scene.head_turn)
