"""ROBUST26's prototype (issue 15, 2026-12-06), shipped since by ROBUST27 as
``defacer.detect.ear_fallback._more_plausible_auricle`` (kept as the record of what was measured): a network ear whose own auricle lies apart from it gives
way to the auricle the image shows at the predicted ear, where that one is more plausibly placed (a lower
``ear_offset_score``) and shares no voxel with the network's ear either.

A wrapper around ``defacer.detect.model.add_missing_ears`` (main 94e6b44's ``ear_fallback``, after REVIEW26's
``_Searched``), run as::

    PYTHONPATH=src python docs/experiments/robust26_ear_apart_rule.py benchmarks/detector_robustness.py \
        --weights build/folds/foldA.onnx build/folds/foldB.onnx --variants "inverted, no bright rim"

It prints a RULE line where it fires.  Measured (fold members, 10:03-10:19 UTC, load 7-9): fired on 1 of 88 rows
(ixi034 on "inverted, no bright rim": 1/2+1, 0.56 -> 2/2+0, 0.82; that variant 21/22+1, 0.611 -> 22/22+0, 0.635);
on none of the other 175 rows of the 16 variants x 11 heads (10:03-10:33 UTC).  Before shipping it in ``ear_fallback``: a phantom test, the other variants, evaluate_detector,
compare_deface_outputs with the shipped model, tests/core and tests/detect.
"""
import sys

import numpy as np

from defacer.detect import ear_fallback as F
from defacer.detect import model as M
from defacer.detect.frame import ear_offset_score, eye_frame
from defacer.head import depth_below_surface
from defacer.labels import Label

orig = M.add_missing_ears
def centre_of(box, mask, affine):
    idx = np.argwhere(mask).mean(0) + [b.start for b in box]
    return affine[:3, :3] @ idx + affine[:3, 3]
def add(image, affine, labels, eyes, head=None, **kw):
    if len(eyes) != 2:
        return orig(image, affine, labels, eyes, head=head, **kw)
    affine = np.asarray(affine, float)
    origin, axes, _ = eye_frame(eyes[0], eyes[1])
    present = F._ear_components(labels, affine, origin, axes, kw.get("ears_within"))
    out, sources = orig(image, affine, labels, eyes, head=head, **kw)
    if head is None:
        return out, sources
    depth = depth_below_surface(head, F.voxel_sizes(affine))
    names = {1: "right", -1: "left"}
    for side, (crop, comp, centre) in present.items():
        if sources.get(names[side]) != "network":
            continue
        if not (out[crop][comp] == Label.EARS).all():
            continue  # the refinement replaced it
        found = F.auricle_at(image, affine, centre, side * axes[0], head, depth)
        if found is None or F._touches((found.box, found.mask), (crop, comp)):
            continue
        near = F._search_side(image, affine, origin, axes, side, head, depth, F.EAR_OFFSET_MM)
        near = getattr(near, "found", near)
        if near is None or F._touches(near, (crop, comp)):
            continue
        if ear_offset_score(centre_of(*near, affine), origin, axes) >= ear_offset_score(centre, origin, axes):
            continue
        print(f"RULE fired side {side}: net sd {ear_offset_score(centre, origin, axes):.2f} -> image sd "
              f"{ear_offset_score(centre_of(*near, affine), origin, axes):.2f}", flush=True)
        out[crop][comp] = 0
        F._clear_side(out, affine, origin, axes, side, kw.get("ears_within"))
        F._label_image_ear(out, near)
        sources[names[side]] = "image"
    return out, sources
M.add_missing_ears = add
import runpy

script = sys.argv[1]
sys.argv = sys.argv[1:]
sys.path.insert(0, "benchmarks")
runpy.run_path(script, run_name="__main__")
