"""benchmarks/face_cues.py: a render pixel taken back onto the head it shows.

The diagnosis of a face detector's cues rests on this mapping (pixel -> surface point -> the edit under it), so it
is checked on the phantom: the point lies on the surface the render drew (the rendered cube below its iso-level
2 mm in front of it along the camera's axis, above it 2 mm behind), also from a view turned in yaw and pitch, and the pixels where the surface moved back lie on the
nose removal or the eye cover, the forehead on untouched tissue.
"""

from __future__ import annotations

import numpy as np
import pytest
from benchmark_module import load_benchmark
from scipy import ndimage
from truth_detector import TruthDetector

from defacer.labels import Label
from defacer.phantom import make_phantom
from defacer.pipeline import DefaceOptions, deface
from defacer.verify.render import View, _camera_axes, render_volume


@pytest.mark.parametrize("view", [View("front", 0.0, 0.0), View("turned", 10.0, -10.0)], ids=lambda v: v.name)
def test_a_pixel_is_taken_back_to_the_surface_and_the_edit_it_shows(view: View) -> None:
    cues = load_benchmark("face_cues")
    made = make_phantom(2.0, seed=3)
    result = deface(made.volume, TruthDetector(made.labels), DefaceOptions(seed=0))
    scene, before = render_volume(made.volume, (view,), size=96)
    defaced_scene, after = render_volume(result.volume, (view,), like=scene, reference=before)
    labels = np.asarray(result.labels)
    nose_mm = (made.volume.affine @ np.append(np.argwhere(labels == Label.NOSE).mean(axis=0), 1.0))[:3]
    render, original = after[view.name], before[view.name]
    forward = _camera_axes(view, scene.head_turn)[2]
    half = (scene.grid.shape[0] - 1) / 2.0
    hits = np.argwhere(np.isfinite(render.depth_mm) & np.isfinite(original.depth_mm))
    # where the depth map jumps (a rim, the silhouette) the upsampled render interpolates between two surfaces
    steep = ndimage.maximum_filter(np.nan_to_num(np.hypot(*np.gradient(render.depth_mm)), nan=99.0), size=3) > 1.5
    smooth = np.array([not steep[r, c] for r, c in hits])
    rng = np.random.default_rng(0)
    on_surface = 0
    sample = hits[smooth][rng.choice(int(smooth.sum()), 300, replace=False)]
    for row, col in sample:
        found = cues.where(render, original, scene, view, made.volume.affine, result.edit_mask, nose_mm,
                           (float(row), float(col)))
        world = nose_mm + np.asarray(found["ras_from_nose"])

        def value(at_mm: float, world: np.ndarray = world) -> float:
            cube = (world + at_mm * forward - scene.centre) / scene.step_mm + half
            return float(ndimage.map_coordinates(defaced_scene.grid, cube[:, None], order=1)[0])

        on_surface += value(-2.0) < scene.iso <= value(2.0)  # air in front along the ray, tissue behind
    assert on_surface >= 0.9 * len(sample)

    # the surface 3-12 mm deeper: the edit's own new surface (deeper, the phantom's dim soft tissue lets the ray
    # through the opening to the skull and brain: untouched tissue seen through the removal)
    moved = [(r, c) for r, c in hits if 3.0 < render.depth_mm[r, c] - original.depth_mm[r, c] < 12.0]
    assert len(moved) > 50  # the nose opening and the socket under the cover are seen
    found = [cues.where(render, original, scene, view, made.volume.affine, result.edit_mask, nose_mm,
                        (float(r), float(c))) for r, c in moved[:: max(1, len(moved) // 200)]]
    middle = [f["edit"] for f in found if abs(f["ras_from_nose"][0]) < 30.0]  # the face, not the ears at its sides
    assert len(middle) > 20
    assert sum(e in ("nose", "eyes") for e in middle) >= 0.9 * len(middle)
    top = int(np.flatnonzero(np.isfinite(render.depth_mm).any(axis=1))[0])  # the top of the head: the scalp
    crown = [(top + 4, c) for c in np.flatnonzero(np.isfinite(render.depth_mm[top + 4]))]
    assert crown
    assert all(cues.where(render, original, scene, view, made.volume.affine, result.edit_mask, nose_mm,
                          (float(r), float(c)))["edit"] == "untouched" for r, c in crown)
