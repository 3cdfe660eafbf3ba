"""benchmarks/detector_robustness.py's inverted contrasts: the first gives the head's partial-volume edge a rim
brighter than any tissue; "inverted, no bright rim" keeps the edge between the air and the inverted tissue.

On the held-out heads that rim swells the reference rule's smoothed head mask round the auricle (ROBUST26; model card,
"The inverted contrast's ear misses, diagnosed"); the rim-free variant measures the same inversion without it.
"""

from __future__ import annotations

import numpy as np
from benchmark_module import load_benchmark
from scipy import ndimage as ndi

from defacer.detect.preprocess import normalise
from defacer.phantom import make_phantom


def _phantom_contrasts() -> tuple[np.ndarray, dict[str, np.ndarray], object]:
    made = make_phantom(2.0, seed=1)
    values = made.volume.values(np.float32)
    dr = load_benchmark("detector_robustness")
    return normalise(values), dr.contrasts(values, made.volume.affine), dr


def test_the_rim_free_inversion_keeps_the_head_edge_between_air_and_tissue() -> None:
    t, out, dr = _phantom_contrasts()
    band = (t > dr.INVERT_FROM) & (t <= dr.RIM_TO)
    near_air = ndi.binary_dilation(t <= dr.INVERT_FROM, iterations=dr.RIM_VOXELS)
    edge = band & near_air  # the head's partial-volume layer
    tissue = t > dr.RIM_TO
    assert edge.sum() > 300 and tissue.sum() > 1000  # the phantom has both
    brightest_tissue = float(out["inverted inside the head"][tissue].max())
    # the first inversion: its edge is brighter than every voxel of inverted tissue (the rim)
    assert float(np.median(out["inverted inside the head"][edge])) > brightest_tissue
    # the rim-free one: no edge voxel above the inverted tissue's level next to it, none below the air's side,
    # and it rises with t (continuous at both ends of the ramp)
    rim_free = out["inverted, no bright rim"]
    assert float(rim_free[edge].max()) <= 1.3 - dr.RIM_TO + 1e-5
    assert float(rim_free[edge].min()) >= dr.INVERT_FROM - 1e-5
    order = np.argsort(t[edge])
    assert np.all(np.diff(rim_free[edge][order]) >= -1e-5)
    # inside the tissue (that dark on T1 away from the air included: the phantom's CSF, the vitreous) and in the air
    # the two inversions agree
    assert np.array_equal(rim_free[~edge], out["inverted inside the head"][~edge])
    assert (band & ~near_air).sum() > 100
    assert np.array_equal(rim_free[t <= dr.INVERT_FROM], t[t <= dr.INVERT_FROM])


def test_the_first_inversion_is_unchanged() -> None:
    """The row every earlier session measured: 1.3 - t above 0.08 of the normalised scale, at least 0.05."""
    t, out, _ = _phantom_contrasts()
    expected = np.where(t > 0.08, np.clip(1.3 - t, 0.05, None), t).astype(np.float32)
    assert np.array_equal(out["inverted inside the head"], expected)
