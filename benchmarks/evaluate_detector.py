#!/usr/bin/env python
"""Held-out evaluation of the facial-feature detector against the reference labels.

Every scan is scored only by a model that never trained on it: pass the ONNX weights of each
fold; each model's card (``<weights>.json``) lists ``trained_on``, and a scan is scored with the
first model that did not train on it (a scan no model left out is reported as not scored).

Reports, per scan and feature: Dice at the scan's own resolution, centroid error in mm
(``inf`` when a component is missing or extra), and found / missed / extra components (found: a
voxel of the right label within 6 mm of the reference component's centroid; extra: a predicted
component near no reference centroid); a per-head Markdown table for the model card; summaries
over all heads and MR and CT apart.  ``--consistency`` also runs one model on the same scan reoriented (LPS
and a transposed axis order), resampled to 2 mm and cropped (15 % off the back and the top),
and compares those predictions with the prediction on the original scan.

``--in-sample`` scores every scan with the first model given, whether it trained on it or not (the
shipped weights: optimistic figures).  ``--no-face-refinement`` turns off the image-based re-shaping
of the eyes and nose (:mod:`defacer.detect.refine_face`) to measure the network's own components.

Example::

    python benchmarks/evaluate_detector.py --weights build/train/foldA/detector.onnx build/train/foldB/detector.onnx \\
        --consistency src/defacer/models/detector.onnx --out reports/detector-eval.json
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from defacer.detect import refine_face
from defacer.detect.metrics import centroid_errors_mm, dice_per_feature, feature_matches
from defacer.detect.model import OnnxDetector
from defacer.io import load_volume
from defacer.labels import FEATURES
from defacer.volume import canonical_reorientation

REPO = Path(__file__).resolve().parents[1]


def _predict(detector: OnnxDetector, values: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Prediction on the file grid of an array with its affine (reorients to RAS and back)."""
    reo = canonical_reorientation(affine, values.shape)
    return reo.from_ras(detector.predict(reo.to_ras(values.astype(np.float32)), reo.ras_affine))


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    if math.isinf(v):
        return "miss"
    return f"{v:.3f}" if v <= 1.0 else f"{v:.1f}"


def held_out(weights: list[Path], data: Path, labels_dir: Path, in_sample: bool = False) -> list[dict]:
    """Score every labelled scan with a model that did not train on it (``in_sample``: with the first model)."""
    models = load_models(weights, in_sample)
    records = json.loads((labels_dir / "provenance.json").read_text())
    rows = []
    for name, rec in records.items():
        detector = choose_model(models, name)
        if detector is None:
            rows.append({"scan": name, "scored": False})
            continue
        volume = load_volume(data / rec["source"])
        start = time.perf_counter()
        predicted = _predict(detector, volume.values(), volume.affine)
        seconds = time.perf_counter() - start
        mirrored = dict(getattr(detector, "last_sources", {})).get("mirrored_pass")  # the conditional mirrored pass
        rows.append(score_scan(name, predicted, reference_map(labels_dir, name), volume.affine, _model_name(detector),
                               seconds, mirrored))
    return rows


def load_models(weights: list[Path], in_sample: bool = False) -> list[tuple[OnnxDetector, set[str]]]:
    """Each fold model with the heads it trained on (its card's ``trained_on``; none with ``in_sample``)."""
    models = []
    for w in weights:
        card = json.loads(w.with_suffix(".json").read_text()) if w.with_suffix(".json").is_file() else {}
        models.append((OnnxDetector(w), set() if in_sample else set(card.get("trained_on", []))))
    return models


def choose_model(models: list[tuple[OnnxDetector, set[str]]], name: str) -> OnnxDetector | None:
    """The first model that did not train on scan ``name`` (``None``: no model left it out)."""
    return next((d for d, trained in models if name not in trained), None)


def reference_map(labels_dir: Path, name: str) -> np.ndarray:
    """The reference label map of scan ``name`` (uint8, the scan's file grid)."""
    return np.asarray(nib.load(str(labels_dir / f"{name}.labels.nii.gz")).dataobj, np.uint8)


def score_scan(name: str, predicted: np.ndarray, reference: np.ndarray, affine: np.ndarray, model: str,
               seconds: float, mirrored: dict | None = None, quiet: bool = False) -> dict:
    """One held-out row: Dice, centroid errors, found / in view / extra per feature (printed unless ``quiet``).

    ``predicted`` and ``reference`` are label maps on the scan's file grid (uint8), ``affine`` its voxel -> mm.
    """
    dice = dice_per_feature(predicted, reference)
    centroid = centroid_errors_mm(predicted, reference, affine)
    found = {f: (None if not (reference == v).any() else bool((predicted == v).any()))
             for f, v in zip(FEATURES, (1, 2, 3))}
    matches = feature_matches(predicted, reference, affine)
    row = {"scan": name, "scored": True, "modality": modality(name), "model": model,
           "dice": dice, "centroid_mm": centroid, "found": found, "matches": matches,
           "seconds": round(seconds, 2), **({"mirrored_pass": mirrored} if mirrored else {})}
    if not quiet:
        ran = f" mirrored pass ({mirrored['why']}; {mirrored['found']}; kept {mirrored['kept']})" if mirrored else ""
        print(f"{name:28s} " + " ".join(
            f"{f}: dice {_fmt(dice[f])} {matches[f]['found']}/{matches[f]['in_view']}+{matches[f]['extra']}"
            for f in FEATURES) + ran, flush=True)
    return row


def modality(name: str) -> str:
    """``"CT"`` for the CT scans (a ``CT`` or ``headct`` part in their names), else ``"MR"``."""
    return "CT" if any(part in ("ct", "headct") for part in re.split(r"[-_]", name.lower())) else "MR"


def _model_name(detector: OnnxDetector) -> str:
    path = detector.weights_path
    return path.parent.name if path.name == "detector.onnx" else path.stem


def markdown_table(rows: list[dict]) -> str:
    """Per-head table (Dice; found/in view, +extra; median centroid error) for the model card."""
    header = ("| scan | modality | model | eyes Dice | nose Dice | ears Dice | eyes found | nose found | ears found "
              "| centroid mm (eyes/nose/ears) |")
    lines = [header, "|---" * 10 + "|"]
    for r in sorted((r for r in rows if r.get("scored")), key=lambda r: (r["modality"], r["scan"])):
        m = r["matches"]
        cells = [f"{m[f]['found']}/{m[f]['in_view']}" + (f" +{m[f]['extra']}" if m[f]["extra"] else "") for f in FEATURES]
        cent = "/".join(f"{np.mean(m[f]['centroid_mm']):.1f}" if m[f]["centroid_mm"] else "-" for f in FEATURES)
        lines.append(f"| {r['scan']} | {r['modality']} | {r['model']} | "
                     + " | ".join(_fmt(r["dice"][f]) for f in FEATURES) + " | " + " | ".join(cells) + f" | {cent} |")
    return "\n".join(lines)


def summarise(rows: list[dict]) -> dict:
    """Per feature over scored scans: all together, MR and CT apart, and per model (see :func:`_summary`)."""
    scored = [r for r in rows if r.get("scored")]
    out = _summary(scored)
    for kind in ("MR", "CT"):
        out[kind] = _summary([r for r in scored if r.get("modality") == kind])
    for model in sorted({r["model"] for r in scored}):  # each fold's held-out heads apart
        out[f"model {model}"] = _summary([r for r in scored if r["model"] == model])
    return out


def _summary(rows: list[dict]) -> dict:
    """Mean Dice, median centroid error and found / missed / extra counts per feature."""
    summary: dict = {}
    for f in FEATURES:
        dices = [r["dice"][f] for r in rows if r.get("scored") and r["found"][f] is not None]
        cents = [r["centroid_mm"][f] for r in rows if r.get("scored") and r["found"][f] is not None]
        found = [r["found"][f] for r in rows if r.get("scored") and r["found"][f] is not None]
        finite = [c for c in cents if c is not None and not math.isinf(c)]
        in_view = sum(int(r["matches"][f]["in_view"]) for r in rows if "matches" in r)
        found_6mm = sum(int(r["matches"][f]["found"]) for r in rows if "matches" in r)
        extra = sum(int(r["matches"][f]["extra"]) for r in rows if "matches" in r)
        errors = [e for r in rows if "matches" in r for e in r["matches"][f]["centroid_mm"]]
        summary[f] = {"n": len(dices), "mean_dice": float(np.mean(dices)) if dices else None,
                      "median_centroid_mm": float(np.median(finite)) if finite else None,
                      "count_matched": len(finite), "found": int(sum(found)),
                      "components_in_view": in_view, "components_found_6mm": found_6mm,
                      "components_missed": in_view - found_6mm, "components_extra": extra,
                      "median_centroid_error_found_mm": float(np.median(errors)) if errors else None}
    means = [summary[f]["mean_dice"] for f in FEATURES if summary[f]["mean_dice"] is not None]
    summary["mean_dice_over_features"] = float(np.mean(means)) if means else None
    return summary


def _variants(values: np.ndarray, affine: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray, object]]:
    """Reoriented, resampled and cropped copies; each with a function mapping its labels back."""
    out: dict[str, tuple[np.ndarray, np.ndarray, object]] = {}
    # reoriented: flip the first two axes (RAS -> LPS-like) and transpose axes (RAS -> ASR-like)
    flip = np.eye(4)
    flip[0, 0], flip[1, 1] = -1, -1
    flip[0, 3], flip[1, 3] = values.shape[0] - 1, values.shape[1] - 1
    out["flipped"] = (values[::-1, ::-1].copy(), affine @ flip, lambda lab: lab[::-1, ::-1])
    perm = np.eye(4)[[1, 2, 0, 3]].T
    out["transposed"] = (np.transpose(values, (1, 2, 0)).copy(), affine @ perm, lambda lab: np.transpose(lab, (2, 0, 1)))
    # resampled to 2 mm
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    zoom = spacing / 2.0
    small = ndi.zoom(values, zoom, order=1)
    scale = np.diag([*(np.asarray(values.shape) / np.asarray(small.shape)), 1.0])
    aff2 = affine @ scale
    aff2[:3, 3] = affine[:3, 3] + affine[:3, :3] @ ((np.asarray(values.shape) / np.asarray(small.shape) - 1) / 2)

    def back_2mm(lab: np.ndarray) -> np.ndarray:
        m = np.linalg.inv(aff2) @ affine
        return ndi.affine_transform(lab, m[:3, :3], offset=m[:3, 3], output_shape=values.shape, order=0)

    out["2mm"] = (small, aff2, back_2mm)
    # cropped: remove 15 % along the two axes closest to posterior and superior
    reo = canonical_reorientation(affine, values.shape)
    axes = np.abs(reo.ornt[:, 0]).astype(int)
    sl = [slice(None)] * 3
    for world_axis, keep_low in ((1, False), (2, True)):  # drop the back (low A) and the top (high S)
        file_axis = int(np.nonzero(axes == world_axis)[0][0])
        n = values.shape[file_axis]
        cut = int(0.15 * n)
        positive = reo.ornt[file_axis, 1] > 0
        low_side_is_world_low = positive
        drop_low = (not keep_low) == low_side_is_world_low
        sl[file_axis] = slice(cut, n) if drop_low else slice(0, n - cut)
    start = np.array([s.start or 0 for s in sl], float)
    aff_c = affine.copy()
    aff_c[:3, 3] = affine[:3, 3] + affine[:3, :3] @ start
    cropped = values[tuple(sl)].copy()

    def back_crop(lab: np.ndarray) -> np.ndarray:
        full = np.zeros(values.shape, np.uint8)
        full[tuple(sl)] = lab
        return full

    out["cropped"] = (cropped, aff_c, back_crop)
    return out


def consistency(weights: Path, data: Path, labels_dir: Path, names: list[str] | None) -> list[dict]:
    """Prediction agreement between each scan and its reoriented / 2 mm / cropped copies."""
    detector = OnnxDetector(weights)
    records = json.loads((labels_dir / "provenance.json").read_text())
    rows = []
    for name, rec in records.items():
        if names and name not in names:
            continue
        volume = load_volume(data / rec["source"])
        values = volume.values()
        base = _predict(detector, values, volume.affine)
        for variant, (arr, aff, back) in _variants(values, volume.affine).items():
            pred = back(_predict(detector, arr, aff)).astype(np.uint8)  # type: ignore[operator]
            reference = base
            if variant == "cropped":  # compare only inside the kept field
                keep = back(np.ones(arr.shape, np.uint8)).astype(bool)  # type: ignore[operator]
                reference = np.where(keep, base, 0).astype(np.uint8)
            dice = dice_per_feature(pred, reference)
            cent = centroid_errors_mm(pred, reference, volume.affine)
            rows.append({"scan": name, "variant": variant, "dice": dice, "centroid_mm": cent})
            print(f"{name:28s} {variant:10s} " + " ".join(f"{f}: {_fmt(dice[f])}/{_fmt(cent[f])}" for f in FEATURES),
                  flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, nargs="+", required=True, help="fold models (ONNX with .json cards)")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--labels-dir", type=Path, default=REPO / "reference_labels")
    parser.add_argument("--consistency", type=Path, default=None, help="model for the consistency checks")
    parser.add_argument("--consistency-scans", nargs="*", default=None)
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "detector-eval.json")
    parser.add_argument("--in-sample", action="store_true", help="score every scan with the first model")
    parser.add_argument("--no-face-refinement", action="store_true", help="keep the network's eyes and nose")
    args = parser.parse_args()
    if args.no_face_refinement:
        refine_face.REFINED_FEATURES = ()
    rows = held_out(args.weights, args.data, args.labels_dir, in_sample=args.in_sample)
    summary = summarise(rows)
    print(markdown_table(rows))
    print(json.dumps(summary, indent=1))
    result = {"held_out": rows, "summary": summary}
    if args.consistency is not None:
        result["consistency"] = consistency(args.consistency, args.data, args.labels_dir, args.consistency_scans)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
