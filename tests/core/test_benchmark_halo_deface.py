"""benchmarks/halo_deface.py: how deep the changed voxels lie, and how many fall in the original's brain proxy.

A changed voxel deep in the middle of the head (tens of mm below the surface, far from every feature) is in
the brain proxy; the same voxel with a feature voxel beside it is deeper than 20 mm but not in the proxy; a
voxel at the surface is neither, and the greatest depth is reported with the feature whose edit changed it.
"""

from __future__ import annotations

import sys

import numpy as np
from benchmark_module import BENCHMARKS, load_benchmark

from defacer.head import analyse_head, depth_below_surface
from defacer.labels import Label
from defacer.phantom import make_phantom
from defacer.verify.check import PROXY_DEPTH_MM


def test_deep_changes_counts_the_brain_proxy_and_the_deepest_voxel() -> None:
    if str(BENCHMARKS) not in sys.path:  # halo_deface imports detector_robustness, a sibling script
        sys.path.append(str(BENCHMARKS))
    hd = load_benchmark("halo_deface")
    spacing = (2.0, 2.0, 2.0)
    made = make_phantom(2.0, seed=3)
    image = made.volume.values(np.float32)
    head = analyse_head(image, spacing)
    depth = depth_below_surface(head, spacing)
    centre = np.array([n // 2 for n in image.shape])
    surface = np.argwhere(made.labels == Label.NOSE)[:1]  # a nose voxel: at the surface
    features = np.argwhere(made.labels > 0)
    changed = np.vstack([centre[None], surface])
    which = np.array([int(Label.EARS), int(Label.NOSE)])

    out = hd.deep_changes(changed, which, head, depth, spacing, features)
    assert out["max_depth_mm"] > 40.0  # the phantom's centre
    assert out["max_depth_feature"] == "ears"
    assert out["deeper_than_proxy"] == 1 and out["brain_proxy"] == 1

    # a feature voxel 4 mm from the centre: still deeper than 20 mm, no longer in the proxy
    beside = np.vstack([features, centre[None] + [2, 0, 0]])
    out = hd.deep_changes(changed, which, head, depth, spacing, beside)
    assert out["deeper_than_proxy"] == 1 and out["brain_proxy"] == 0

    # only the surface voxel changed: nothing deep
    out = hd.deep_changes(surface, which[1:], head, depth, spacing, features)
    assert out["max_depth_mm"] < PROXY_DEPTH_MM and out["brain_proxy"] == 0 and out["max_depth_feature"] == "nose"

    empty = hd.deep_changes(np.zeros((0, 3), np.intp), np.zeros(0, np.intp), head, depth, spacing, features)
    assert empty == {"max_depth_mm": 0.0, "max_depth_feature": None, "deeper_than_proxy": 0, "brain_proxy": 0}
