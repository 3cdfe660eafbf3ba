#!/usr/bin/env python
"""Held-out eye refinement variants scored from one cached network run per head.

``cache`` runs each held-out head once through :func:`evaluate_detector._predict` (the network and
post-processing as ``defacer deface`` runs them) with :func:`defacer.detect.refine_face.refine_face`
recorded on the way: the RAS image and label map it was handed, its extent, threshold and pitch,
and what the ear fallback changed after it; the final map is scored by
:func:`evaluate_detector.score_scan` and stored, so the shipped settings' figures can be checked
against ``evaluate_detector.py``'s.  ``score`` then re-runs only the face refinement (eyes and nose)
on the cached map for each variant (refinement settings patched on the module), re-applies the ear
fallback's changes, maps the result back to the file grid and scores it with the same
:func:`evaluate_detector.score_scan` / :func:`evaluate_detector.summarise` as the full evaluation.
The ear fallback sees the network's eye centroids and its ear components, not the refined eyes,
so replaying its changes is exact unless it wrote over an eye or nose voxel (counted and
reported as ``ear_over_face``; 0 on the held-out heads).

A variant is ``NAME=VALUE[,NAME=VALUE...]`` over :mod:`defacer.detect.refine_face`'s upper-case
settings (``shipped``: none changed).  ``--heads`` picks the held-out heads of one fold model
(choose settings on one fold's heads, score the other's once, after the choice).  ``--repeat N``
times the refinement N times per head and variant, alternating the variants, and reports the
median seconds per head.  Run::

    python benchmarks/eye_refinement.py cache --weights build/folds/foldA.onnx build/folds/foldB.onnx
    python benchmarks/eye_refinement.py score --heads foldA --variants shipped GLOBE_WEIGHT=0.75 \\
        "GLOBE_WEIGHT=1,EYE_SEED_BACK_MM=2"

The cache (``build/eye_refinement/<tag>``, git-ignored) holds the scans' images: keep it out of git.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

import defacer.detect.model as model_module
from defacer.detect import refine_face
from defacer.io import load_volume
from defacer.labels import Label
from defacer.volume import canonical_reorientation

sys.path.insert(0, str(Path(__file__).resolve().parent))
import evaluate_detector as ev  # a sibling script, not a package

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / "build" / "eye_refinement"


def cache(weights: list[Path], data: Path, labels_dir: Path, out: Path, in_sample: bool = False,
          only: list[str] | None = None) -> list[dict]:
    """Run each held-out head once, record the face refinement's inputs, score the final map.

    Writes ``out/<scan>/`` with ``image.npy`` (float32, RAS, the image the refinement saw),
    ``before.npy`` (uint8, RAS, the labels it was handed), ``ears.npz`` (flat indices and values the
    ear fallback changed after it) and ``meta.json``; returns the rows of :func:`ev.score_scan`.
    """
    models = ev.load_models(weights, in_sample)
    records = json.loads((labels_dir / "provenance.json").read_text())
    real = model_module.refine_face
    seen: dict[str, Any] = {}

    def recorder(image: np.ndarray, affine: np.ndarray, labels: np.ndarray, extent: Any,
                 features: tuple[str, ...] | None = None, threshold: float | None = None,
                 pitch_deg: float = 0.0) -> dict[str, list[str]]:
        seen.update(image=image, affine=np.asarray(affine, float), before=labels.copy(), extent=extent,
                    threshold=threshold, pitch_deg=pitch_deg)
        start = time.perf_counter()
        sources = real(image, affine, labels, extent, features, threshold, pitch_deg)
        seen.update(seconds=time.perf_counter() - start, after=labels.copy())
        return sources

    rows = []
    model_module.refine_face = recorder  # type: ignore[assignment]
    try:
        for name, rec in records.items():
            detector = ev.choose_model(models, name)
            if detector is None or (only and name not in only):
                continue
            seen.clear()
            volume = load_volume(data / rec["source"])
            values = volume.values()
            start = time.perf_counter()
            predicted = ev._predict(detector, values, volume.affine)
            seconds = time.perf_counter() - start
            mirrored = dict(getattr(detector, "last_sources", {})).get("mirrored_pass")
            row = ev.score_scan(name, predicted, ev.reference_map(labels_dir, name), volume.affine,
                                ev._model_name(detector), seconds, mirrored)
            rows.append(row)
            folder = out / name
            folder.mkdir(parents=True, exist_ok=True)
            reo = canonical_reorientation(volume.affine, values.shape)
            meta = {"scan": name, "model": row["model"], "file_affine": np.asarray(volume.affine).tolist(),
                    "file_shape": list(values.shape), "seconds": seconds, "mirrored": mirrored,
                    "refined": bool(seen)}
            if seen:
                final = reo.to_ras(predicted)
                changed = np.flatnonzero(final != seen["after"])
                ear_over_face = int(np.isin(seen["after"].ravel()[changed], (Label.EYES, Label.NOSE)).sum())
                np.save(folder / "image.npy", np.asarray(seen["image"], np.float32))
                np.save(folder / "before.npy", seen["before"])
                np.savez(folder / "ears.npz", index=changed, value=final.ravel()[changed])
                extent = seen["extent"]
                meta.update(ras_affine=seen["affine"].tolist(),
                            extent=None if extent is None else [[s.start, s.stop] for s in extent],
                            threshold=seen["threshold"], pitch_deg=seen["pitch_deg"],
                            refine_seconds=seen["seconds"], ear_over_face=ear_over_face)
            (folder / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    finally:
        model_module.refine_face = real  # type: ignore[assignment]
    return rows


class Head:
    """One cached head: the refinement's inputs, the ear fallback's changes and the reference map."""

    def __init__(self, folder: Path, labels_dir: Path) -> None:
        self.meta = json.loads((folder / "meta.json").read_text())
        self.name: str = self.meta["scan"]
        self.model: str = self.meta["model"]
        self.file_affine = np.asarray(self.meta["file_affine"], float)
        self.reo = canonical_reorientation(self.file_affine, tuple(self.meta["file_shape"]))
        self.reference = ev.reference_map(labels_dir, self.name)
        self.image = np.load(folder / "image.npy", mmap_mode="r")
        self.before = np.load(folder / "before.npy")
        ears = np.load(folder / "ears.npz")
        self.ear_index, self.ear_value = ears["index"], ears["value"]
        self.ras_affine = np.asarray(self.meta["ras_affine"], float)
        extent = self.meta["extent"]
        self.extent = None if extent is None else tuple(slice(a, b) for a, b in extent)

    def refine(self) -> tuple[np.ndarray, float]:
        """The final label map on the file grid with the refinement as now set, and the refinement's seconds."""
        labels = self.before.copy()
        start = time.perf_counter()
        refine_face.refine_face(self.image, self.ras_affine, labels, self.extent, threshold=self.meta["threshold"],
                                pitch_deg=self.meta["pitch_deg"])
        seconds = time.perf_counter() - start
        flat = labels.reshape(-1)
        flat[self.ear_index] = self.ear_value
        return self.reo.from_ras(labels), seconds


@contextlib.contextmanager
def settings(variant: str) -> Iterator[dict[str, Any]]:
    """Patch :mod:`refine_face`'s upper-case settings named in ``variant`` (``shipped``: none) for the block."""
    changes: dict[str, Any] = {}
    if variant != "shipped":
        for item in variant.split(","):
            key, value = item.split("=")
            if not key.isupper() or not hasattr(refine_face, key):
                raise SystemExit(f"unknown refine_face setting {key!r} in variant {variant!r}")
            changes[key] = int(value) if isinstance(getattr(refine_face, key), int) else float(value)
    old = {k: getattr(refine_face, k) for k in changes}
    try:
        for k, v in changes.items():
            setattr(refine_face, k, v)
        yield changes
    finally:
        for k, v in old.items():
            setattr(refine_face, k, v)


def score(heads: list[Head], variants: list[str], repeat: int = 1) -> dict[str, dict]:
    """Each variant's rows, summary (:func:`ev.summarise`), eye centroid errors and refinement seconds per head."""
    results: dict[str, dict] = {v: {"rows": [], "seconds": {h.name: [] for h in heads}} for v in variants}
    for head in heads:
        for turn in range(max(repeat, 1)):
            for variant in variants:
                with settings(variant):
                    predicted, seconds = head.refine()
                results[variant]["seconds"][head.name].append(seconds)
                if turn == 0:
                    results[variant]["rows"].append(ev.score_scan(head.name, predicted, head.reference, head.file_affine,
                                                                  head.model, 0.0, quiet=True))
    for result in results.values():
        rows = result["rows"]
        result["summary"] = ev.summarise(rows)
        errors = [e for r in rows for e in r["matches"]["eyes"]["centroid_mm"]]
        result["eye_errors_mm"] = errors
        result["median_seconds"] = {name: statistics.median(s) for name, s in result["seconds"].items()}
    return results


def report(results: dict[str, dict]) -> str:
    """One line per variant: eyes / nose / ears Dice, eye centroid error (median, mean, max), found, seconds."""
    lines = []
    for variant, result in results.items():
        s = result["summary"]
        errors = result["eye_errors_mm"]
        found = " ".join(f"{f} {s[f]['components_found_6mm']}/{s[f]['components_in_view']}+{s[f]['components_extra']}"
                         for f in ("eyes", "nose", "ears"))
        secs = sum(result["median_seconds"].values())
        folds = " ".join(f"{k[6:]} {v['eyes']['mean_dice']:.3f}" for k, v in s.items() if k.startswith("model "))
        lines.append(f"{variant:44s} eyes {s['eyes']['mean_dice']:.3f} ({folds}; MR {_mean(s, 'MR')} CT {_mean(s, 'CT')}) "
                     f"nose {s['nose']['mean_dice']:.3f} ears {s['ears']['mean_dice']:.3f} | eye err med "
                     f"{np.median(errors):.2f} mean {np.mean(errors):.2f} max {np.max(errors):.2f} mm | {found} | "
                     f"refine {secs:.3f} s")
    return "\n".join(lines)


def _mean(summary: dict, kind: str) -> str:
    value = summary.get(kind, {}).get("eyes", {}).get("mean_dice")
    return "-" if value is None else f"{value:.3f}"


def per_head(results: dict[str, dict]) -> str:
    """Eyes Dice and mean eye centroid error per head, one column per variant."""
    variants = list(results)
    names = [r["scan"] for r in results[variants[0]]["rows"]]
    lines = ["scan model " + " | ".join(variants)]
    for i, name in enumerate(names):
        cells = []
        for v in variants:
            r = results[v]["rows"][i]
            cells.append(f"{r['dice']['eyes']:.3f} {np.mean(r['matches']['eyes']['centroid_mm']):.1f}mm "
                         f"{results[v]['median_seconds'][name] * 1000:.0f}ms")
        lines.append(f"{name} {results[variants[0]]['rows'][i]['model']} " + " | ".join(cells))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("cache", help="run the network once per held-out head and cache the refinement's inputs")
    c.add_argument("--weights", type=Path, nargs="+", required=True, help="fold models (ONNX with .json cards)")
    c.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    c.add_argument("--in-sample", action="store_true", help="every scan with the first model (timing only)")
    c.add_argument("--only", nargs="*", default=None, help="these scans only")
    s = sub.add_parser("score", help="re-run the face refinement per variant on the cache and score it")
    s.add_argument("--variants", nargs="+", default=["shipped"])
    s.add_argument("--heads", default="all", help="all, or a model name (foldA, foldB) whose held-out heads to score")
    s.add_argument("--only", nargs="*", default=None, help="these scans only")
    s.add_argument("--repeat", type=int, default=1, help="time the refinement this many times per head, alternated")
    s.add_argument("--per-head", action="store_true")
    s.add_argument("--json", type=Path, default=None)
    for p in (c, s):
        p.add_argument("--labels-dir", type=Path, default=REPO / "reference_labels")
        p.add_argument("--cache", type=Path, default=CACHE / "folds", help="cache folder (git-ignored build/)")
    args = parser.parse_args()
    if args.command == "cache":
        rows = cache(args.weights, args.data, args.labels_dir, args.cache, args.in_sample, args.only)
        print(ev.markdown_table(rows))
        summary = ev.summarise(rows)
        print(json.dumps({k: summary[k] for k in ("eyes", "nose", "ears")}, indent=1))
        print("eyes: " + " ".join(f"{k} {v['eyes']['mean_dice']:.3f}" for k, v in summary.items()
                                  if isinstance(v, dict) and "eyes" in v and v["eyes"]["mean_dice"] is not None))
        return
    heads = [Head(f, args.labels_dir) for f in sorted(args.cache.iterdir()) if (f / "before.npy").is_file()]
    heads = [h for h in heads if (args.heads == "all" or h.model == args.heads) and (not args.only or h.name in args.only)]
    results = score(heads, args.variants, args.repeat)
    print(f"{len(heads)} heads ({args.heads})")
    print(report(results))
    if args.per_head:
        print(per_head(results))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
