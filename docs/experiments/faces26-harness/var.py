# FACES26 (session 26) build-only harness, kept for the record: copy to build/f26/ and run from there with
# PYTHONPATH=<worktree>/src; paths are FACES26's worktree's (ROOT in h.py). Not part of the package or its tests.
"""FACES26 variants as monkeypatches of the pipeline's distort_nose (build only).

SF: the nose removal's floor sealed, as --whole-face seals its cut: inside the removal, voxels less than CUT mm below
the rolled-off head surface become air, the SKIN mm under that this scan's skin, anything deeper is left as it is.
CUT = protect depth - gate slack - SKIN (the whole-face rule), or F26_CUT if set.
"""
from __future__ import annotations

import contextlib
import os
import sys

import numpy as np

import h
import defacer.pipeline as pl
from defacer.distort import Edit
from defacer.distort_face import smooth_depth
from defacer.head import depth_below_surface

ORIG = pl.distort_nose
_D: dict = {}


def sealed(image, region, head, *, keep=()):
    e = ORIG(image, region, head, keep=keep)
    spacing = region.spacing
    depth = _D.get(id(head))
    if depth is None:
        depth = _D[id(head)] = depth_below_surface(head, spacing)
    below = smooth_depth(depth, head, e.box)
    skin_mm = float(os.environ.get("F26_SKIN", "3"))
    slack = head.coarse_slack(spacing)
    cut = float(os.environ.get("F26_CUT", str(max(0.0, 10.0 - slack - skin_mm))))
    local = np.asarray(image[e.box], dtype=np.float32)
    sup = (local > head.threshold) & (below < 3.0)
    skin = float(np.median(local[sup])) if sup.any() else float(head.threshold)
    for k in keep:
        if k.params.get("skin_value") is not None:
            skin = float(k.params["skin_value"])
    mask = e.mask & (below < cut + skin_mm)
    values = np.where(below < cut, np.float32(head.background), np.float32(skin)).astype(np.float32)
    p = dict(e.params)
    p["f26_cut_mm"] = cut
    return Edit("nose", e.box, mask, values, p)


@contextlib.contextmanager
def patch_sf():
    pl.distort_nose = sealed
    try:
        yield
    finally:
        pl.distort_nose = ORIG


def sealed_top(image, region, head, *, keep=()):
    """SF above the detected nose's centroid (+ F26_TOP_MM along S) only; below it main's removal."""
    e = ORIG(image, region, head, keep=keep)
    s = sealed(image, region, head, keep=keep)
    z = np.arange(e.box[2].start, e.box[2].stop)
    top = ((z - region.centre[2]) * region.spacing[2] >= float(os.environ.get("F26_TOP_MM", "0")))[None, None, :]
    mask = np.where(top, s.mask, e.mask)
    values = np.where(top, s.values, e.values).astype(np.float32)
    return Edit("nose", e.box, mask, values, s.params)


@contextlib.contextmanager
def patch_st():
    pl.distort_nose = sealed_top
    try:
        yield
    finally:
        pl.distort_nose = ORIG


if __name__ == "__main__":
    name = sys.argv[1]
    heads = sys.argv[2:] or h.FIRING
    h.run_heads(heads, name, patch_st if name.startswith("ST") else patch_sf)

