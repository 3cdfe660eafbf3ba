#!/usr/bin/env python
"""Measure where each reference eye capsule's centre lies relative to the globe seen in the image.

For every scan of ``scripts/make_reference_labels.py``: the reference centre is the one recorded in
``reference_labels/provenance.json`` (``eye_centres_mm``) or, for maps made before it was recorded
(or with ``--old-rule``), recomputed exactly as the labels were made (the stored landmark and the
script's "most homogeneous point within 6 mm" search on the 1 mm work grid); the globe is found in
the image independently (:func:`globe_in_image`: the vitreous body as a blob, and the centre of the
largest ball inside it).  Prints, per eye, the offset reference centre - globe centre in mm along
R, A, S and its length; writes slice montages (axial and sagittal through the globe; the reference
label's outline in blue, the globe's fitted circle in yellow, centres marked) to
``build/eye_check/`` (ignored by git: real faces, never commit them).

Run: ``python scripts/check_reference_eyes.py [--only NAME ...] [--labels-dir DIR] [--out build/eye_check]``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_reference_labels as mrl

#: Radius of the ball round the vitreous centre whose labelled share is reported, in mm (a globe is
#: about 12 mm in radius and its vitreous centre lies 2-3 mm behind its middle: 10 mm stays inside it).
COVER_MM = 10.0
#: Resolution of the montages (dots per inch of a 16-inch-wide figure).
DPI = 60


def _montage(path: Path, name: str, img: np.ndarray, labels: np.ndarray, waff: np.ndarray,
             eyes: list[dict], before: np.ndarray | None = None, is_ct: bool = False) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lo, hi = np.percentile(img[labels > 0] if (labels > 0).any() else img, [1, 99.5])
    if is_ct:  # a soft-tissue window, in which the globe (~10 HU) stands out from the orbital fat (~-100 HU)
        lo, hi = -160.0, 120.0
    half = 32
    fig, axes = plt.subplots(len(eyes), 4, figsize=(16, 4.2 * max(len(eyes), 1)), squeeze=False)
    for row, e in enumerate(eyes):
        g = e["globe"] if e["globe"] is not None else e["ref"]
        gi = mrl._to_index(np.asarray(g), waff)
        views = [("axial", 2, 0), ("axial +5", 2, 5), ("sagittal", 0, 0), ("coronal", 1, 0)]
        for col, (title, axis, dk) in enumerate(views):
            ax = axes[row, col]
            ax.axis("off")
            k = int(np.clip(gi[axis] + dk, 0, img.shape[axis] - 1))
            s = [slice(max(gi[a] - half, 0), gi[a] + half) for a in range(3)]
            s[axis] = k
            ax.imshow(img[tuple(s)].T, origin="lower", cmap="gray", vmin=lo, vmax=hi)
            lb = labels[tuple(s)].T
            if (lb == 1).any():
                ax.contour(lb == 1, levels=[0.5], colors=["deepskyblue"], linewidths=1.0)
            if before is not None and (before[tuple(s)] == 1).any():
                ax.contour(before[tuple(s)].T == 1, levels=[0.5], colors=["red"], linewidths=0.8,
                           linestyles="dashed")
            other = [a for a in range(3) if a != axis]
            off = np.array([s[a].start for a in other])

            for p, style, size in ((e["landmark"], "mo", 9), (e["ref"], "bx", 11), (e.get("before_ref"), "rx", 9),
                                   (e["globe"], "y+", 13)):
                if p is not None:
                    q = mrl._to_index(np.asarray(p), waff)
                    ax.plot(q[other[0]] - off[0], q[other[1]] - off[1], style, ms=size, mew=1.5)
            if e["globe"] is not None:
                q = mrl._to_index(np.asarray(e["globe"]), waff)
                dz = abs(k - q[axis])
                for rad, style in ((mrl.GLOBE_BALL_MM, "y-"), (12.0, "y:")):
                    if dz < rad:
                        r = np.sqrt(rad**2 - dz**2)
                        t = np.linspace(0, 2 * np.pi, 80)
                        ax.plot(q[other[0]] - off[0] + r * np.cos(t), q[other[1]] - off[1] + r * np.sin(t),
                                style, lw=0.8)
            ax.set_title(f"{e['key']} {title} {k}: off {e['offset_mm']:.1f} mm", fontsize=9)
    fig.suptitle(f"{name}: blue = reference eye label, x = its centre, + = globe in the image, circles 8 mm "
                 "(the vitreous ball) and 12 mm (a globe), o = registered landmark; red dashed / red x = the --compare-dir label and the rule before's centre; axial/coronal: x right, sagittal: anterior right")
    plt.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    plt.savefig(path, dpi=DPI)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=mrl.REPO.parent / "shared" / "data")
    parser.add_argument("--labels-dir", type=Path, default=mrl.OUT_DIR)
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--out", type=Path, default=mrl.REPO / "build" / "eye_check")
    parser.add_argument("--old-rule", action="store_true",
                        help="take each label's centre as the rule before issue 15 gives it, not the recorded one")
    parser.add_argument("--compare-dir", type=Path, default=None,
                        help="label maps made by the rule before (e.g. a copy of the maps of an earlier commit): "
                             "measured and outlined too")
    parser.add_argument("--json", type=Path, default=None, help="write the per-eye figures here")
    args = parser.parse_args()
    prov = json.loads((mrl.OUT_DIR / "provenance.json").read_text())
    rows = []
    for name, rel in mrl.SCANS.items():
        if args.only and name not in args.only:
            continue
        scan = mrl.prepare(args.data / rel, mrl.MODALITY.get(name))
        img, mask, valid, waff = scan["img"], scan["mask"], scan["valid"], scan["waff"]
        scale = float(np.percentile(img[mask], 99))
        ref_img = nib.load(str(args.labels_dir / f"{name}.labels.nii.gz"))
        labels = mrl.resample(np.asarray(ref_img.dataobj).astype(np.float32), ref_img.affine, scan["wshape"],
                              waff, order=0).astype(np.uint8)
        before = None
        if args.compare_dir is not None:
            old_img = nib.load(str(args.compare_dir / f"{name}.labels.nii.gz"))
            before = mrl.resample(np.asarray(old_img.dataobj).astype(np.float32), old_img.affine, scan["wshape"],
                                  waff, order=0).astype(np.uint8)
        eyes = []
        for key in ("eye_left", "eye_right"):
            lm = prov[name]["landmarks_mm"].get(key)
            if lm is None:
                continue
            lm = np.asarray(lm, float)
            stored = prov[name].get("eye_centres_mm", {}).get(key) if not args.old_rule else None
            ref = (np.asarray(stored, float) if stored is not None
                   else mrl.homogeneous_centre(img, mask, valid, waff, lm, scale))
            globe = mrl.globe_in_image(img, mask, valid, waff, lm)
            g = None if globe is None else globe[0]
            off = (ref - g) if (ref is not None and g is not None) else np.full(3, np.nan)
            covered = float("nan")
            if g is not None:
                ball = mrl._dist2(scan["coords"], g) <= COVER_MM**2
                covered = float((labels[ball] == 1).mean())
            extra = {}
            if before is not None and g is not None:
                old_ref = mrl.homogeneous_centre(img, mask, valid, waff, lm, scale)
                old_off = (old_ref - g) if old_ref is not None else np.full(3, np.nan)
                extra = {"before_ref": None if old_ref is None else old_ref.tolist(),
                         "before_offset_ras": old_off.round(1).tolist(), "before_offset_mm": float(np.linalg.norm(old_off)),
                         "before_covered": float((before[mrl._dist2(scan["coords"], g) <= COVER_MM**2] == 1).mean())}
            eyes.append({"key": key, "covered": covered, **extra, "landmark": lm.tolist(), "ref": None if ref is None else ref.tolist(),
                         "globe": None if g is None else g.tolist(), "score": float("nan") if globe is None else globe[1],
                         "offset_ras": off.round(1).tolist(), "offset_mm": float(np.linalg.norm(off)),
                         "landmark_off_mm": float(np.linalg.norm(lm - g)) if g is not None else float("nan")})
            print(f"{name:26s} {key:9s} ref-globe R/A/S {off[0]:+5.1f} {off[1]:+5.1f} {off[2]:+5.1f} "
                  f"|{np.linalg.norm(off):4.1f}| mm; landmark-globe {eyes[-1]['landmark_off_mm']:4.1f} mm; "
                  f"score {eyes[-1]['score']:.4f}; {COVER_MM:g} mm ball round the globe "
                  f"centre labelled eye {100 * covered:.1f} %"
                  + ("" if not extra else f"; before: |{extra['before_offset_mm']:4.1f}| mm "
                     f"R/A/S {extra['before_offset_ras']}, {100 * extra['before_covered']:.1f} %"), flush=True)
        _montage(args.out / f"{name}.eyes.png", name, img, labels, waff, eyes, before, scan["is_ct"])
        rows.append({"name": name, "eyes": eyes})
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
