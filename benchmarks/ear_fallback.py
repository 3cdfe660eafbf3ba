#!/usr/bin/env python
"""Ears found with and without the image-based ear fallback (:mod:`defacer.detect.ear_fallback`).

For every labelled real head (``reference_labels/provenance.json``), runs the detector once and
scores the network's label map (fallback off), the same map after the fallback alone (missing
ears added, ``refine=False``) and after the fallback as the detector runs it (each network ear
also replaced by the image-delimited auricle near it, ``refine=True``), against the
reference labels: ears in view / found / extra (:func:`defacer.detect.metrics.feature_matches`:
a label-3 voxel within 6 mm of each reference ear centroid) and ear Dice.  The fallback is also
run leave-one-head-out (its mean offset computed from the other heads' reference ears), the
honest figure for heads it has not seen, and alone (every network ear removed, both sides
searched from the image: what it does on CT head holders, cut fields and flat ears).  Negative cases: the already-defaced DICOM series
(``--negative``, a .tgz read from a temporary folder) and a phantom whose ears are cut away by the
field of view must get no ear from the fallback.

Heads the shipped network trained on are not held out for the network; the table says so only
through the weights' card (``trained_on``).  Run::

    python benchmarks/ear_fallback.py [--weights FILE] [--only NAME ...] [--out build/ear_fallback.json]
"""

from __future__ import annotations

import argparse
import json
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

import defacer.detect.model as model_module
from defacer.detect.ear_fallback import add_missing_ears, reference_ear_offsets
from defacer.detect.metrics import dice_per_feature, feature_matches
from defacer.detect.model import OnnxDetector
from defacer.io import load_volume
from defacer.phantom import make_phantom
from defacer.volume import canonical_reorientation

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


class _Recorder:
    """Stands in for ``add_missing_ears`` inside the detector: records its input, runs the real one."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def __call__(self, image, affine, labels, eyes, **kwargs):
        start = time.perf_counter()
        out, sources = add_missing_ears(image, affine, labels, eyes, **kwargs)
        self.calls.append({"image": image, "affine": affine, "labels": labels, "eyes": eyes,
                           "seconds": time.perf_counter() - start, "sources": sources, "out": out})
        return out, sources


def _run(detector: OnnxDetector, recorder: _Recorder, values: np.ndarray, affine: np.ndarray):
    reo = canonical_reorientation(affine, values.shape)
    recorder.calls.clear()
    start = time.perf_counter()
    detector.predict(reo.to_ras(values.astype(np.float32)), reo.ras_affine)
    seconds = time.perf_counter() - start
    call = recorder.calls[0] if recorder.calls else None
    return reo, call, seconds


def _score(predicted: np.ndarray, reference: np.ndarray, affine: np.ndarray) -> dict[str, Any]:
    match = feature_matches(predicted, reference, affine)["ears"]
    dice = dice_per_feature(predicted, reference)["ears"]
    return {"in_view": match["in_view"], "found": match["found"], "extra": match["extra"],
            "dice": None if dice is None else round(float(dice), 3)}


def main() -> None:
    """Score every head without and with the fallback; print a table and the totals."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=None)
    parser.add_argument("--labels", type=Path, default=REPO / "reference_labels")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--negative", type=Path, default=DATA / "negative" / "studyforrest-defaced_T1w_dicom.tgz")
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    recorder = _Recorder()
    model_module.add_missing_ears = recorder  # type: ignore[assignment]
    detector = OnnxDetector(args.weights, threads=1)
    records = json.loads((args.labels / "provenance.json").read_text())
    names = [n for n in records if args.only is None or n in args.only]
    refs = {}
    offsets = {}
    for name in records:
        image = nib.load(str(args.labels / f"{name}.labels.nii.gz"))
        refs[name] = (np.asarray(image.dataobj, np.uint8), image.affine)
        offsets[name] = [(y, z) for _, _, y, z, _ in reference_ear_offsets(*refs[name])]
    rows = []
    print(f"{'scan':28s} {'view':>4s} | net found extra dice | +fallback found extra dice sides | "
          f"refined found extra dice | loo found extra | alone found extra dice | detector's fallback s, refined s")
    for name in names:
        volume = load_volume(args.data / records[name]["source"])
        reference = refs[name][0]
        reo, call, seconds = _run(detector, recorder, volume.values(), volume.affine)
        if call is None:
            rows.append({"scan": name, "eyes": "fewer than two"})
            print(f"{name:28s} fewer than two eyes: no fallback")
            continue
        net = _score(reo.from_ras(call["labels"]), reference, volume.affine)
        plain_labels, _ = add_missing_ears(call["image"], call["affine"], call["labels"], call["eyes"], refine=False)
        fb = _score(reo.from_ras(plain_labels), reference, volume.affine)
        start = time.perf_counter()
        refined_labels, _ = add_missing_ears(call["image"], call["affine"], call["labels"], call["eyes"], refine=True)
        refine_s = time.perf_counter() - start
        refined = _score(reo.from_ras(refined_labels), reference, volume.affine)
        others = [o for n, offs in offsets.items() if n != name for o in offs]
        loo_offset = tuple(float(v) for v in np.mean(others, axis=0))
        loo_labels, _ = add_missing_ears(call["image"], call["affine"], call["labels"], call["eyes"],
                                         offset_mm=loo_offset)  # type: ignore[arg-type]
        loo = _score(reo.from_ras(loo_labels), reference, volume.affine)
        # the image alone: every network ear removed, both sides searched (CT head holders, cut fields...)
        no_ears = np.where(call["labels"] == 3, 0, call["labels"]).astype(np.uint8)
        alone_labels, _ = add_missing_ears(call["image"], call["affine"], no_ears, call["eyes"])
        alone = _score(reo.from_ras(alone_labels), reference, volume.affine)
        row = {"scan": name, "network": net, "fallback": fb, "refined": refined, "leave_one_out": loo,
               "image_alone": alone, "sources": call["sources"], "fallback_s": round(call["seconds"], 3),
               "refined_s": round(refine_s, 3), "predict_s": round(seconds, 3), "voxel_mm": list(volume.spacing)}
        rows.append(row)
        sides = ",".join(f"{k[0]}:{v}" for k, v in call["sources"].items())
        print(f"{name:28s} {net['in_view']:4d} | {net['found']:5d} {net['extra']:5d} {net['dice'] or 0:.2f} | "
              f"{fb['found']:15d} {fb['extra']:5d} {fb['dice'] or 0:.2f} {sides:12s} | "
              f"{refined['found']:13d} {refined['extra']:5d} {refined['dice'] or 0:.2f} | "
              f"{loo['found']:9d} {loo['extra']:5d} | {alone['found']:11d} {alone['extra']:5d} "
              f"{alone['dice'] or 0:.2f} | {call['seconds']:.2f}, {refine_s:.2f}", flush=True)
    scored = [r for r in rows if "network" in r]
    for key in ("network", "fallback", "refined", "leave_one_out", "image_alone"):
        view = sum(r[key]["in_view"] for r in scored)
        found = sum(r[key]["found"] for r in scored)
        extra = sum(r[key]["extra"] for r in scored)
        dice = [r[key]["dice"] or 0.0 for r in scored]
        print(f"{key:14s}: ears found {found}/{view}, extra {extra}, mean ear Dice {np.mean(dice):.3f}")
    negatives = {}
    if args.negative.is_file() and args.only is None:
        with tempfile.TemporaryDirectory() as tmp:
            with tarfile.open(args.negative) as tar:
                tar.extractall(tmp, filter="data")
            folder = next(p.parent for p in Path(tmp).rglob("*.dcm"))
            volume = load_volume(folder)
            _, call, _ = _run(detector, recorder, volume.values(), volume.affine)
            negatives["defaced"] = None if call is None else {
                "sources": call["sources"], "ear_voxels_added": int((call["out"] == 3).sum() - (call["labels"] == 3).sum())}
    if args.only is None:
        # a phantom whose field of view stops 3 mm outside the head's sides: no auricle in view
        phantom = make_phantom(1.0, fov_mm=(154.0, 240.0, 240.0))
        _, call, _ = _run(detector, recorder, phantom.volume.values(), phantom.volume.affine)
        negatives["phantom_ears_cut"] = None if call is None else {
            "sources": call["sources"], "ear_voxels_added": int((call["out"] == 3).sum() - (call["labels"] == 3).sum())}
        print("negative cases:", json.dumps(negatives))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"rows": rows, "negatives": negatives}, indent=1))


if __name__ == "__main__":
    main()
