"""The exact maps between a file's voxel axes and RAS+ that the pipeline writes its edits through.

The pipeline writes each edit box by box onto the file's grid (no full-size RAS copy); these
tests check those box maps against the whole-array reorientation on all 48 axis orders, and
that defacing a scan stored in another axis order changes exactly the same voxels.
"""

from __future__ import annotations

import itertools

import nibabel.orientations as nio
import numpy as np
import pytest
from truth_detector import TruthDetector

from defacer.labels import Label
from defacer.phantom import make_phantom
from defacer.pipeline import deface
from defacer.volume import Volume, canonical_reorientation

#: Every axis order and direction a grid can have (6 permutations x 8 flips).
ALL_AXCODES = ["".join(codes) for codes in itertools.product("RL", "AP", "SI")]
ALL_AXCODES = sorted({"".join(p) for codes in ALL_AXCODES for p in itertools.permutations(codes)})


def _affine_for(axcodes: str) -> np.ndarray:
    """A voxel-to-RAS+ affine whose voxel axes point along ``axcodes`` (voxel sizes 1, 2, 3 mm)."""
    ornt = nio.axcodes2ornt(tuple(axcodes))
    affine = np.eye(4)
    affine[:3, :3] = 0.0
    for axis, (target, flip) in enumerate(ornt):
        affine[int(target), axis] = flip * (axis + 1.0)
    return affine


def test_there_are_48_axis_orders():
    assert len(ALL_AXCODES) == 48


@pytest.mark.parametrize("axcodes", ALL_AXCODES)
def test_box_maps_agree_with_the_whole_array_reorientation(axcodes: str):
    rng = np.random.default_rng(0)
    shape = (5, 7, 9)
    raw = rng.integers(-100, 100, size=shape).astype(np.int16)
    volume = Volume(raw, _affine_for(axcodes), 0.5, 3.0, "nifti", None, {})
    reo = canonical_reorientation(volume.affine, volume.shape)
    assert "".join(nio.aff2axcodes(reo.ras_affine)) == "RAS"
    ras = reo.to_ras(volume.values(np.float32))
    np.testing.assert_array_equal(reo.values_to_ras(volume, np.float32), ras)
    assert reo.values_to_ras(volume, np.float32).flags.c_contiguous
    for _ in range(20):
        box = tuple(slice(int(a), int(b)) for a, b in
                    (sorted(rng.choice(n + 1, size=2, replace=False)) for n in ras.shape))
        native_box = reo.box_from_ras(box)
        np.testing.assert_array_equal(reo.local_from_ras(ras[box]), volume.values(np.float32)[native_box])
    indices = np.argwhere(np.ones(shape, dtype=bool))
    ras_indices = reo.indices_to_ras(indices)
    np.testing.assert_array_equal(ras[tuple(ras_indices.T)], volume.values(np.float32)[tuple(indices.T)])


@pytest.mark.parametrize("axcodes", ["LPS", "PIR", "ILA"])
def test_defacing_is_the_same_in_every_axis_order(axcodes: str):
    """Edits written box by box through the file's axis order change exactly the voxels they change in RAS."""
    ras = make_phantom(3.0, axcodes="RAS", seed=2)
    other = make_phantom(3.0, axcodes=axcodes, seed=2)
    reo = canonical_reorientation(other.volume.affine, other.volume.shape)
    np.testing.assert_array_equal(reo.to_ras(other.volume.raw), ras.volume.raw)  # the same head, stored otherwise
    labels_ras = np.asarray(ras.labels, np.uint8)
    result_ras = deface(ras.volume, TruthDetector(labels_ras))
    result_other = deface(other.volume, TruthDetector(labels_ras))
    assert np.count_nonzero(result_ras.edit_mask == Label.EARS) > 0
    np.testing.assert_array_equal(reo.to_ras(result_other.volume.raw), result_ras.volume.raw)
    np.testing.assert_array_equal(reo.to_ras(result_other.edit_mask), result_ras.edit_mask)
    assert result_other.provenance["voxels_changed"] == result_ras.provenance["voxels_changed"]
    assert result_other.provenance["protection"]["changed_inside_protected"] == 0
    assert result_other.provenance["protection"]["changed_outside_edits"] == 0


@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.int32, np.float32, np.float64, ">i2", np.bool_])
def test_tiled_conversion_to_c_order_equals_numpys(dtype, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 3D array not in C order is converted to C order tile by tile: the same values (and dtype) as
    numpy.array, whatever the layout, flips, a shape not a multiple of the tile, or an empty axis."""
    import defacer.volume
    from defacer.volume import CONVERT_TILE, physical

    monkeypatch.setattr(defacer.volume, "CONVERT_TILED_VOXELS", 1)  # tiled whatever the size
    rng = np.random.default_rng(3)
    values = rng.normal(0.0, 3000.0, (37, 21, 2 * CONVERT_TILE + 3))
    values.flat[:5] = [np.nan, np.inf, -np.inf, 0.5, -0.5] if np.dtype(dtype).kind == "f" else [1, 2, 3, 4, 5]
    raw = np.asfortranarray(np.asarray(values).astype(dtype))
    for view in (raw, raw[::-1, :, ::-1], raw.transpose(1, 0, 2), np.ascontiguousarray(raw).transpose(2, 0, 1), raw[:, :0]):
        for slope, inter in ((1.0, 0.0), (0.37, -1024.0)):
            expected = np.array(view, dtype=np.float32, order="C")
            if slope != 1.0:
                expected *= np.float32(slope)
            if inter != 0.0:
                expected += np.float32(inter)
            got = physical(view, slope, inter, np.float32, order="C")
            assert got.flags.c_contiguous and got.dtype == np.float32 and got.shape == view.shape
            assert got.tobytes() == expected.tobytes()
