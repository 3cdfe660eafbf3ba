#!/usr/bin/env python
"""How often Face Mesh still finds a face after defacing, over a grid of views around the front.

Verification (:func:`defacer.verify.verify_pair`) looks at four fixed views, so whether a defaced
head "passes" can hang on a few degrees: a defaced face that sits near Face Mesh's decision edge
passes in one view and fails 5 degrees away.  This script gives a steadier figure to compare
distortion settings by: every head is defaced in memory (shipped detector or reference labels),
rendered as verification renders it (the original's cube, iso-level and depth cue) from 15 views
around the front (yaw -10, -5, 0, 5, 10 degrees x pitch -10, 0, 10) and the three other verify
views (left 45, right 45, below 25), and each render is given to MediaPipe Face Mesh at the verify
thresholds (:func:`defacer.verify.faces.facemesh`).  Printed per head: the views where Face Mesh
found a face; in all: the views and heads with one, and the same for the original heads (setting
``original``), for scale.  With ``--all-detectors`` the verdict's other counted detectors too (dlib
CNN and BlazeFace short-range at the verify thresholds) on the 15 views around the front, and the
views where any of the three fires: a setting that quiets Face Mesh can wake dlib CNN (a fine grain
on the eye cover did, session 14).  The detector's label maps are computed once
per head and reused for every setting given (``--settings``).

Renders of real heads are never written.  Needs the ``verify`` extra (mediapipe).

Usage::

    python benchmarks/facemesh_jitter.py                              # defaults, every head, detector
    python benchmarks/facemesh_jitter.py --settings default eye=2.5 nose=3 whole
    python benchmarks/facemesh_jitter.py --mode labels --only ixi013_T1w_2mm ixi015_T1w_2mm
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"

#: Yaw and pitch (degrees) of the grid of views around the front.
GRID_YAW = (-10.0, -5.0, 0.0, 5.0, 10.0)
GRID_PITCH = (-10.0, 0.0, 10.0)


def views() -> tuple[Any, ...]:
    """The 15 grid views and the three other verify views (:data:`defacer.verify.render.DEFAULT_VIEWS`)."""
    from defacer.verify.render import DEFAULT_VIEWS, View

    grid = tuple(View(f"yaw{y:+.0f}_pitch{p:+.0f}", y, p) for y in GRID_YAW for p in GRID_PITCH)
    return grid + tuple(v for v in DEFAULT_VIEWS if v.name != "front")


def parse_setting(text: str) -> tuple[str, dict[str, Any]]:
    """``default``, ``whole``, ``eye=X``, ``nose=X`` or ``band=MM`` (joined by ``,``) -> (name, option changes)."""
    changes: dict[str, Any] = {}
    for part in text.split(","):
        if part == "default":
            continue
        if part == "whole":
            changes["whole_face"] = True
            continue
        key, _, value = part.partition("=")
        field = {"eye": "eye_box_scale", "nose": "nose_scale", "band": "eye_band_mm"}.get(key)
        if field is None or not value:
            raise SystemExit(f"unknown setting {part!r}: expected default, whole, eye=X, nose=X or band=MM")
        changes[field] = float(value)
    return text, changes


class CachedLabels:
    """A detector that runs the shipped one once per head and hands back the same label map afterwards."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.labels: np.ndarray | None = None

    def __getattr__(self, name: str) -> Any:  # name, weights_sha256, last_sources...: the shipped detector's
        return getattr(self.inner, name)

    def predict_with_head(self, image: np.ndarray, affine: np.ndarray, head: Any) -> np.ndarray:
        if self.labels is None:
            self.labels = self.inner.predict_with_head(image, affine, head)
        return self.labels

    def predict(self, image: np.ndarray, affine: np.ndarray) -> np.ndarray:
        return self.predict_with_head(image, affine, None)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from defacer.io import load_volume
    from defacer.pipeline import DefaceOptions, deface, load_detector
    from defacer.verify import faces
    from defacer.verify.evaluate import find_scans
    from defacer.verify.render import render_volume

    settings = [parse_setting(s) for s in args.settings]
    scans = find_scans(args.heads)
    if args.only:
        scans = [s for s in scans if s.name in set(args.only)]
    shipped = load_detector(threads=args.threads) if args.mode == "detector" else None
    grid = views()
    hits: dict[str, dict[str, list[str]]] = {"original": {}, **{name: {} for name, _ in settings}}
    others: dict[str, dict[str, dict[str, list[str]]]] = {}
    for scan in scans:
        volume = load_volume(scan.path)
        if args.mode == "labels":
            ref = args.labels_dir / f"{scan.name}.labels.nii.gz"
            if not ref.is_file():
                print(f"{scan.name:28s} skipped: no reference labels", flush=True)
                continue
            detector: Any = load_detector(labels_path=ref)
        else:
            detector = CachedLabels(shipped)
        scene, before = render_volume(volume, grid, size=128)
        original = [v.name for v in grid if faces.facemesh(before[v.name].rgb()).detected]
        hits.setdefault("original", {})[scan.name] = original
        print(f"{'original':16s} {scan.name:28s} Face Mesh {len(original):2d}/{len(grid)}", flush=True)
        for name, changes in settings:
            t0 = time.perf_counter()
            options = dataclasses.replace(DefaceOptions(seed=0), **changes)
            result = deface(volume, detector, options)
            _, after = render_volume(result.volume, grid, like=scene, reference=before)
            found = [v.name for v in grid if faces.facemesh(after[v.name].rgb()).detected]
            hits[name][scan.name] = found
            extra = ""
            if args.all_detectors:  # the verdict's other counted detectors, on the views around the front
                near_front = [v for v in grid if abs(v.yaw) <= max(GRID_YAW) and abs(v.pitch) <= max(GRID_PITCH)]
                dlib = [v.name for v in near_front if faces.dlib_cnn(after[v.name].rgb()).detected]
                blaze = [v.name for v in near_front if faces.blazeface_short(after[v.name].rgb()).detected]
                counted = sorted(set(found) | set(dlib) | set(blaze))
                others.setdefault(name, {})[scan.name] = {"dlib_cnn": dlib, "blazeface_short": blaze, "any": counted}
                extra = f"  dlib CNN {len(dlib):2d}  BlazeFace short {len(blaze):2d}  any {len(counted):2d}"
            print(f"{name:16s} {scan.name:28s} Face Mesh {len(found):2d}/{len(grid)}{extra}  {' '.join(found)}"
                  f"  ({time.perf_counter() - t0:.1f} s)", flush=True)
    summary = {name: {"views_with_face": sum(len(v) for v in per.values()), "views": len(grid) * len(per),
                      "heads_with_face": sum(bool(v) for v in per.values()), "heads": len(per)}
               for name, per in hits.items()}
    for name, per_head in others.items():
        for detector in ("dlib_cnn", "blazeface_short", "any"):
            summary[name][f"{detector}_views"] = sum(len(h[detector]) for h in per_head.values())
            summary[name][f"{detector}_heads"] = sum(bool(h[detector]) for h in per_head.values())
    for name, s in summary.items():
        line = (f"{name}: Face Mesh finds a face in {s['views_with_face']} of {s['views']} views, "
                f"on {s['heads_with_face']} of {s['heads']} heads")
        if "any_views" in s:
            line += (f"; around the front dlib CNN {s['dlib_cnn_views']} views ({s['dlib_cnn_heads']} heads), BlazeFace "
                     f"short-range {s['blazeface_short_views']} ({s['blazeface_short_heads']}), any counted detector "
                     f"{s['any_views']} ({s['any_heads']} heads)")
        print(line, flush=True)
    return {"mode": args.mode, "views": [dataclasses.asdict(v) for v in grid], "hits": hits, "others": others,
            "summary": summary}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--heads", type=Path, default=DATA / "heads", help="folder of heads (default ../shared/data/heads)")
    parser.add_argument("--labels-dir", type=Path, default=ROOT / "reference_labels", help="reference label maps")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="only these scans (names without extension)")
    parser.add_argument("--mode", choices=["detector", "labels"], default="detector")
    parser.add_argument("--settings", nargs="+", default=["default"], metavar="SETTING",
                        help="distortion settings to compare: default, whole, eye=X, nose=X, band=MM, or several "
                             "joined by ',' (e.g. eye=2.5,nose=3)")
    parser.add_argument("--all-detectors", action="store_true",
                        help="also dlib CNN and BlazeFace short-range (verify thresholds) on the 15 views around the "
                             "front, and any counted detector: a change that quiets Face Mesh can wake dlib CNN "
                             "(about 1 s per view more)")
    parser.add_argument("--threads", type=int, default=2, help="detector threads (default 2)")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "facemesh_jitter.json", help="JSON results")
    args = parser.parse_args(argv)
    result = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
