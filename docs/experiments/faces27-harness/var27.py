# FACES27 (session 27) build-only harness, kept for the record: copy beside FACES26's h.py (docs/experiments/faces26-harness,
# ROOT/B set to your worktree and build folder) and run from there with PYTHONPATH=<worktree>/src. Not part of the package or its tests.
"""FACES27 variants (build only): the nose removal's lower end as a chevron / trapezoid.

Lower end at (box bottom - DROP mm) + max(0, |dx| - FLAT mm) * SLOPE, dx the R offset from the nose centroid.
F27_DROP, F27_FLAT, F27_SLOPE env vars (SLOPE < 0: a lambda, sides lower); F27_CAP: never more than CAP mm below the
box bottom; F27_EXTREACH > 0: below the box bottom only within EXTREACH mm of the detected nose's centroid (the box's
own 55 mm ball elsewhere). The box is extended down to hold the new lower end; the eye covers' shields and the
protection gate apply as on main. Patched into both pipeline.distort_nose and distort_frame.distort_nose.
Run: F27_DROP=15 F27_FLAT=15 F27_SLOPE=1 F27_EXTREACH=48 python var27.py TRr48 [heads...]
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import sys

import numpy as np

import h
import defacer.pipeline as pl
import defacer.distort_frame as df
from defacer.distort import Edit

ORIG = pl.distort_nose


def chevron(image, region, head, *, keep=()):
    drop = float(os.environ.get("F27_DROP", "15"))
    flat = float(os.environ.get("F27_FLAT", "0"))
    slope = float(os.environ.get("F27_SLOPE", "1"))
    sx, sy, sz = region.spacing
    z0 = region.box[2].start
    cap = float(os.environ.get("F27_CAP", "25"))
    xs = (np.arange(region.box[0].start, region.box[0].stop) - region.centre[0]) * sx
    low_mm = np.maximum(-cap, -drop + np.maximum(0.0, np.abs(xs) - flat) * slope)
    ext = int(math.ceil(max(0.0, -low_mm.min()) / sz))
    box = (region.box[0], region.box[1], slice(max(0, z0 - ext), region.box[2].stop))
    reg = dataclasses.replace(region, box=box)
    e = ORIG(image, reg, head, keep=keep)
    x = (np.arange(box[0].start, box[0].stop) - region.centre[0]) * sx
    z = (np.arange(box[2].start, box[2].stop) - z0) * sz
    low = np.maximum(-cap, -drop + np.maximum(0.0, np.abs(x) - flat) * slope)
    keepz = z[None, :] >= low[:, None]
    mask = e.mask & keepz[:, None, :]
    ext_reach = float(os.environ.get("F27_EXTREACH", "0"))
    if ext_reach > 0:  # below the box x2's bottom, only within ext_reach mm of the detected nose's centroid
        axes = [((np.arange(s.start, s.stop) - c) * sp) ** 2 for s, c, sp in zip(box, region.centre, region.spacing)]
        near = axes[0][:, None, None] + axes[1][None, :, None] + axes[2][None, None, :] <= ext_reach ** 2
        below = (np.arange(box[2].start, box[2].stop) < z0)[None, None, :]
        mask &= ~below | near
    p = dict(e.params)
    p["f27"] = [drop, flat, slope]
    return Edit("nose", e.box, mask, e.values, p, shield=e.shield)


@contextlib.contextmanager
def patch():
    pl.distort_nose = chevron
    df.distort_nose = chevron
    try:
        yield
    finally:
        pl.distort_nose = ORIG
        df.distort_nose = ORIG


if __name__ == "__main__":
    name = sys.argv[1]
    heads = sys.argv[2:] or h.FIRING
    h.run_heads(heads, name, patch)
