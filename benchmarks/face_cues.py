#!/usr/bin/env python
"""What a face detector uses in a defaced render: landmarks and occlusion, mapped back onto the head.

``benchmarks/facemesh_jitter.py --all-detectors`` counts the views of the 18-view grid where a counted detector
(Face Mesh, dlib CNN, BlazeFace short-range at the verify thresholds) still finds a face after defacing.  This
script says *why*, for every such view (or the views named with ``--views``):

* **landmarks**: where Face Mesh puts its eyes, nose tip, lips and chin, where BlazeFace puts its six key points
  and, inside dlib CNN's box, where dlib's 68-point shape model puts its eyes, nose and mouth;
* **occlusion** (``--occlusion``): square patches of the render (``--patch`` pixels, every ``--stride``) flattened
  to their mean grey, the detector run again; a patch is *decisive* where the detection is lost (dlib CNN: no box
  left; BlazeFace: score under its threshold; Face Mesh: no landmarks);

and each point is taken back to 3D through the render's depth map: its offset from the detected nose's centroid
(R, A, S in mm, world axes), the edit under it (``eyes``, ``nose``, ``ears`` or ``untouched``, read along the
ray from 4 mm in front of to 4 mm behind the defaced surface) and how far the surface moved there (defaced minus
original depth, mm; positive: the surface lies deeper).  ``untouched`` with a large positive move is original
tissue laid bare by the nose removal (the opening's floor).  An occlusion map is printed as letters (``e`` eye
cover, ``n`` nose removal, ``a`` ear, ``u`` untouched; upper case: detection lost there).

Nothing is written but the JSON summary (``--out``); with ``--png DIR`` the firing renders with their landmarks
and decisive patches go to DIR, which must lie under ``build/`` (renders of real faces are never committed).
Needs the ``verify`` extra (mediapipe, dlib).  dlib CNN's occlusion runs the detector once per patch (about
150-200 patches, 0.2-1 s each): use ``--only`` and ``--views``.

Usage::

    python benchmarks/face_cues.py --only ixi033_T1w_2mm
    python benchmarks/face_cues.py --only ixi034_T1w_2mm --views yaw+5_pitch-10 --occlusion --png build/cues
"""

from __future__ import annotations

import argparse
import json
import sys
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT / "benchmarks"))

#: Face Mesh landmark indices reported (of 468).
FACEMESH_POINTS = {"eye_r_outer": 33, "eye_r_inner": 133, "eye_l_outer": 263, "eye_l_inner": 362,
                   "nose_tip": 1, "nose_base": 2, "lip_upper": 13, "lip_lower": 14, "mouth_r": 61,
                   "mouth_l": 291, "chin": 152}
#: BlazeFace's six key points, in its order.
BLAZEFACE_POINTS = ("eye_r", "eye_l", "nose_tip", "mouth", "ear_r", "ear_l")
#: dlib's 68-point model, grouped (mean of the points).
DLIB_POINTS = {"eye_r": range(36, 42), "eye_l": range(42, 48), "nose_tip": [30], "nose_base": [33],
               "lip_top": [51], "mouth": [62, 66], "lip_bottom": [57], "chin": [8]}
EDIT_NAMES = {0: "untouched", 1: "eyes", 2: "nose", 3: "ears"}
#: Points are (row, column) in render pixels.
Point = tuple[float, float]


def where(render: Any, before: Any, scene: Any, view: Any, affine: npt.NDArray[np.float64],
          edit_mask: npt.NDArray[np.uint8], nose_mm: npt.NDArray[np.float64], point: Point) -> dict[str, Any]:
    """Where a render pixel lies on the head.

    Parameters
    ----------
    render, before : defacer.verify.render.Rendering
        The defaced and the original render of ``view`` (same scene).
    scene : defacer.verify.render.Scene
    view : defacer.verify.render.View
    affine : ndarray, shape (4, 4)
        Voxel -> world (RAS+ mm) of the scan's grid (``edit_mask``'s).
    edit_mask : ndarray, uint8, scan grid
        :attr:`defacer.pipeline.DefaceResult.edit_mask`.
    nose_mm : ndarray, shape (3,)
        The detected nose's centroid, world mm.
    point : (row, column)
        Pixel of the render (``size * upsample`` square).

    Returns
    -------
    dict
        ``ras_from_nose`` (mm), ``edit`` and ``moved_mm`` (defaced minus original depth), or ``{"edit": None}``
        where no surface is hit.
    """
    from defacer.verify.render import _camera_axes

    n = scene.grid.shape[0]
    size = render.depth_mm.shape[0]
    up = size // n
    row = round(min(max(point[0], 0), size - 1))
    col = round(min(max(point[1], 0), size - 1))
    depth = float(render.depth_mm[row, col])
    if not np.isfinite(depth):
        return {"edit": None}
    half = (n - 1) / 2.0
    right, upward, forward = _camera_axes(view, scene.head_turn)
    basis = np.stack([-upward, right, forward], axis=1)  # view (row, col, depth) -> cube, as render.py's
    view_index = np.array([(row + 0.5) / up - 0.5, (col + 0.5) / up - 0.5, depth / scene.step_mm])
    world = scene.centre + scene.step_mm * (basis @ (view_index - half))
    to_voxel = np.linalg.inv(affine)
    found = []
    for t in np.arange(-4.0, 4.01, 0.5):
        index = np.round((to_voxel @ np.append(world + t * forward, 1.0))[:3]).astype(int)
        if all(0 <= index[k] < edit_mask.shape[k] for k in range(3)):
            found.append(int(edit_mask[tuple(index)]))
    label = max((v for v in found if v), key=found.count, default=0)
    moved = float(render.depth_mm[row, col] - before.depth_mm[row, col])
    return {"ras_from_nose": [round(float(v), 1) for v in world - nose_mm], "edit": EDIT_NAMES.get(label, str(label)),
            "moved_mm": round(moved, 1) if np.isfinite(moved) else None}


@lru_cache(maxsize=1)
def _dlib_shape() -> Any:
    import dlib

    from defacer.verify.faces import dlib_model_path

    return dlib.shape_predictor(str(dlib_model_path("shape_predictor_68_face_landmarks.dat")))


def landmarks(rgb: npt.NDArray[np.uint8]) -> dict[str, dict[str, Point]]:
    """Face Mesh's, BlazeFace short-range's and (inside dlib CNN's box) dlib's 68-point landmarks, by name."""
    import dlib

    from defacer.verify import faces

    out: dict[str, dict[str, Point]] = {}
    with faces.native_quiet():
        mesh = faces._facemesh().process(rgb)
        blaze = faces._blazeface(0).process(rgb)
    if mesh.multi_face_landmarks:
        pts = mesh.multi_face_landmarks[0].landmark
        out["facemesh"] = {k: (pts[i].y * rgb.shape[0], pts[i].x * rgb.shape[1]) for k, i in FACEMESH_POINTS.items()}
    best = max(blaze.detections or [], key=lambda d: float(d.score[0]) if d.score else 0.0, default=None)
    if best is not None:
        kp = best.location_data.relative_keypoints
        out["blazeface_short"] = {BLAZEFACE_POINTS[i]: (kp[i].y * rgb.shape[0], kp[i].x * rgb.shape[1])
                                  for i in range(min(len(kp), len(BLAZEFACE_POINTS)))}
    box = faces.dlib_cnn(rgb).box
    if box is not None:
        shape = _dlib_shape()(rgb, dlib.rectangle(box[0], box[1], box[2] - 1, box[3] - 1))
        out["dlib_cnn"] = {k: (float(np.mean([shape.part(i).y for i in ix])),
                               float(np.mean([shape.part(i).x for i in ix]))) for k, ix in DLIB_POINTS.items()}
    return out


def margin(detector: str, rgb: npt.NDArray[np.uint8]) -> tuple[float, Any]:
    """The detector's margin over its verify threshold (> 0: a counted face) and its box."""
    from defacer.verify import faces

    result = {"dlib_cnn": faces.dlib_cnn, "blazeface_short": faces.blazeface_short,
              "facemesh": faces.facemesh}[detector](rgb)
    if not result.detected:
        return -1.0, result.box
    return (1.0 if detector == "facemesh" else float(result.score) - result.threshold), result.box


def occlusion(detector: str, rgb: npt.NDArray[np.uint8], box: Any, patch: int, stride: int
              ) -> list[tuple[float, float, float]]:
    """(row, column, margin) of every patch over the detector's box (widened by one patch), flattened to its mean."""
    height, width = rgb.shape[:2]
    left, top, right, bottom = box if box is not None else (0, 0, width, height)
    out = []
    for y0 in range(max(0, top - patch), min(height - patch, bottom) + 1, stride):
        for x0 in range(max(0, left - patch), min(width - patch, right) + 1, stride):
            piece = rgb[y0:y0 + patch, x0:x0 + patch]
            if piece.max() == 0:
                continue
            covered = rgb.copy()
            covered[y0:y0 + patch, x0:x0 + patch] = piece.reshape(-1, 3).mean(axis=0).astype(np.uint8)
            out.append((y0 + patch / 2, x0 + patch / 2, margin(detector, covered)[0]))
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    import facemesh_jitter as fj

    from defacer.io import load_volume
    from defacer.pipeline import DefaceOptions, deface, load_detector
    from defacer.verify.evaluate import find_scans
    from defacer.verify.render import render_volume

    scans = [s for s in find_scans(args.heads) if not args.only or s.name in set(args.only)]
    shipped = load_detector(threads=args.threads)
    grid = fj.views()
    near = {v.name for v in grid if abs(v.yaw) <= max(fj.GRID_YAW) and abs(v.pitch) <= max(fj.GRID_PITCH)}
    report: dict[str, Any] = {}
    for scan in scans:
        volume = load_volume(scan.path)
        result = deface(volume, shipped, DefaceOptions(seed=0))
        labels = np.asarray(result.labels)
        if not (labels == 2).any():
            print(f"{scan.name}: no nose detected, skipped", flush=True)
            continue
        nose_mm = (volume.affine @ np.append(np.argwhere(labels == 2).mean(axis=0), 1.0))[:3]
        chosen = tuple(v for v in grid if not args.views or v.name in set(args.views))
        scene, before = render_volume(volume, chosen, size=128)
        _, after = render_volume(result.volume, chosen, like=scene, reference=before)
        for view in chosen:
            rgb = after[view.name].rgb()
            counted = ["facemesh"] + (["dlib_cnn", "blazeface_short"] if view.name in near else [])
            firing = {d: margin(d, rgb) for d in counted}
            firing = {d: m for d, m in firing.items() if m[0] > 0}
            if not firing and not args.views:
                continue
            at = partial(where, after[view.name], before[view.name], scene, view, volume.affine, result.edit_mask,
                         nose_mm)

            entry: dict[str, Any] = {"margins": {d: round(m[0], 3) for d, m in firing.items()},
                                     "landmarks": {d: {k: at(p) for k, p in pts.items()}
                                                   for d, pts in landmarks(rgb).items()}}
            print(f"== {scan.name} {view.name}: counted {entry['margins'] or 'none'}", flush=True)
            for det, pts in entry["landmarks"].items():
                print(f"   {det:16s} " + "; ".join(f"{k} {v['edit']} {v.get('ras_from_nose')} {v.get('moved_mm')}"
                                                   for k, v in pts.items()), flush=True)
            lost_all: dict[str, list[Point]] = {}
            if args.occlusion:
                for det, (_, box) in firing.items():
                    patches = occlusion(det, rgb, box, args.patch, args.stride)
                    lost = [(y, x) for y, x, m in patches if m <= 0]
                    lost_all[det] = lost
                    cells = {(int(y), int(x)): (at((y, x))["edit"] or " ", m <= 0) for y, x, m in patches}
                    rows = sorted({k[0] for k in cells})
                    cols = sorted({k[1] for k in cells})
                    print(f"   {det}: lost on {len(lost)} of {len(patches)} patches", flush=True)
                    for r in rows:
                        line = "".join((cells[(r, c)][0][0].upper() if cells[(r, c)][1] else cells[(r, c)][0][0])
                                       if (r, c) in cells else " " for c in cols)
                        print(f"   {r:4d} {line}", flush=True)
                    entry.setdefault("decisive", {})[det] = [dict(at(p), row=int(p[0]), col=int(p[1])) for p in lost]
            report[f"{scan.name}|{view.name}"] = entry
            if args.png:
                save_png(args.png / f"{scan.name}.{view.name}.png", before[view.name].rgb(), rgb, lost_all,
                         landmarks(rgb), args.patch)
    return report


def save_png(path: Path, original: npt.NDArray[np.uint8], defaced: npt.NDArray[np.uint8],
             lost: dict[str, list[Point]], points: dict[str, dict[str, Point]], patch: int) -> None:
    """Original | defaced with the decisive patches (red) and landmarks (blue Face Mesh, yellow BlazeFace, green
    dlib)."""
    from PIL import Image, ImageDraw

    picture = Image.fromarray(np.concatenate([original, defaced], axis=1))
    draw = ImageDraw.Draw(picture)
    shift = original.shape[1]
    for pts in lost.values():
        for y, x in pts:
            draw.rectangle([shift + x - patch / 2, y - patch / 2, shift + x + patch / 2, y + patch / 2],
                           outline=(255, 0, 0))
    colours = {"facemesh": (0, 128, 255), "blazeface_short": (255, 200, 0), "dlib_cnn": (0, 220, 0)}
    for det, pts in points.items():
        for y, x in pts.values():
            draw.ellipse([shift + x - 2, y - 2, shift + x + 2, y + 2], fill=colours[det])
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--heads", type=Path, default=DATA / "heads", help="folder of heads (default ../shared/data/heads)")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="only these scans (names without extension)")
    parser.add_argument("--views", nargs="+", metavar="VIEW", help="only these grid views (e.g. yaw+5_pitch-10), "
                        "reported whether a detector fires there or not")
    parser.add_argument("--occlusion", action="store_true", help="also the occlusion map of every firing detector")
    parser.add_argument("--patch", type=int, default=24, help="occlusion patch, render pixels (default 24 of 256)")
    parser.add_argument("--stride", type=int, default=12, help="occlusion stride, render pixels (default 12)")
    parser.add_argument("--threads", type=int, default=2, help="detector threads (default 2)")
    parser.add_argument("--png", type=Path, help="write the firing renders here (must lie under build/)")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "face_cues.json", help="JSON results")
    args = parser.parse_args(argv)
    if args.png is not None and (ROOT / "build").resolve() not in args.png.resolve().parents:
        parser.error("--png must lie under build/: renders of real faces are never committed")
    report = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
