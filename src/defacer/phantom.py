"""A synthetic head phantom with known eyes, nose, ears and brain.

Made entirely by this code (no real person): an ellipsoidal head with scalp, skull and brain,
two eyeballs behind the face, a nose on the front and two auricles on the sides.  Used by the
demo, the tests and as extra training data for the detector.  Geometry is defined in RAS mm
about the head centre, then sampled on any grid (voxel size, field of view, axis order).
"""

from __future__ import annotations

from dataclasses import dataclass

import nibabel as nib
import nibabel.orientations as nio
import numpy as np
import numpy.typing as npt

from defacer._typing import LabelMap, Mask, PathLike
from defacer.labels import Label
from defacer.volume import Volume

#: Physical intensity of each tissue per contrast: air, scalp, skull, brain, eye, nose, ear.
CONTRASTS: dict[str, dict[str, float]] = {
    "T1": {"air": 0, "scalp": 780, "skull": 120, "brain": 520, "csf": 180, "eye": 150, "nose": 700, "ear": 650},
    "T2": {"air": 0, "scalp": 450, "skull": 80, "brain": 600, "csf": 950, "eye": 1000, "nose": 420, "ear": 400},
    "PD": {"air": 0, "scalp": 700, "skull": 150, "brain": 780, "csf": 850, "eye": 860, "nose": 680, "ear": 650},
    "FLAIR": {"air": 0, "scalp": 600, "skull": 100, "brain": 650, "csf": 90, "eye": 110, "nose": 580, "ear": 560},
    "CT": {"air": -1000, "scalp": 40, "skull": 1400, "brain": 35, "csf": 8, "eye": 12, "nose": 45, "ear": 40},
}

#: Semi-axes (R, A, S) of the head ellipsoid in mm.
HEAD_AXES = (74.0, 92.0, 100.0)
SCALP_MM = 5.0
SKULL_MM = 6.0


@dataclass(frozen=True)
class Phantom:
    """A phantom scan and its ground truth, all on the same grid.

    Attributes
    ----------
    volume : Volume
        The scan (NIfTI format, int16 for MR and CT).
    labels : ndarray, uint8
        Feature labels (:mod:`defacer.labels`).
    brain : ndarray, bool
        The brain (never to be touched by defacing).
    """

    volume: Volume
    labels: LabelMap
    brain: Mask


def _shrunk(axes: tuple[float, float, float], by: float) -> tuple[float, float, float]:
    """Semi-axes each shortened by ``by`` mm."""
    return axes[0] - by, axes[1] - by, axes[2] - by


def _ellipsoid(x: npt.NDArray, y: npt.NDArray, z: npt.NDArray, centre: tuple[float, float, float],
               axes: tuple[float, float, float]) -> npt.NDArray[np.floating]:
    """Normalised radius: < 1 inside the ellipsoid."""
    return ((x - centre[0]) / axes[0]) ** 2 + ((y - centre[1]) / axes[1]) ** 2 + ((z - centre[2]) / axes[2]) ** 2


def make_phantom(
    voxel_size: float | tuple[float, float, float] = 1.0,
    *,
    fov_mm: tuple[float, float, float] = (200.0, 240.0, 240.0),
    axcodes: str = "RAS",
    contrast: str = "T1",
    noise: float = 0.02,
    seed: int = 0,
    shift_mm: tuple[float, float, float] = (0.0, 0.0, 0.0),
) -> Phantom:
    """Make a synthetic head.

    Parameters
    ----------
    voxel_size : float or tuple of 3 float
        Voxel size in mm (isotropic, or along R, A, S before reorientation).
    fov_mm : tuple of 3 float
        Field of view along R, A, S in mm (the head is about 170 x 225 x 200 mm with ears and nose).
    axcodes : str
        Axis order of the stored array, e.g. ``"RAS"``, ``"LPS"``, ``"ASL"``, ``"PIR"``.
    contrast : {"T1", "T2", "PD", "FLAIR", "CT"}
        Tissue intensities (CT in Hounsfield units).
    noise : float
        Noise standard deviation as a fraction of the brightest tissue (Rician for MR, Gaussian for CT).
    seed : int
        Seed of the noise.
    shift_mm : tuple of 3 float
        Offset of the head centre from the grid centre.

    Returns
    -------
    Phantom
    """
    if contrast not in CONTRASTS:
        raise ValueError(f"Unknown contrast {contrast!r}; expected one of {sorted(CONTRASTS)}.")
    spacing = np.broadcast_to(np.asarray(voxel_size, dtype=float), (3,))
    shape = tuple(int(round(f / s)) for f, s in zip(fov_mm, spacing, strict=True))  # noqa: RUF046 - numpy < 2 rounds to float
    coords = [(np.arange(n) - (n - 1) / 2.0) * s - o for n, s, o in zip(shape, spacing, shift_mm, strict=True)]
    x, y, z = np.meshgrid(*coords, indexing="ij", sparse=True)
    tone = CONTRASTS[contrast]

    head = _ellipsoid(x, y, z, (0, 0, 0), HEAD_AXES)
    inner_axes = _shrunk(HEAD_AXES, SCALP_MM)
    brain_axes = _shrunk(HEAD_AXES, SCALP_MM + SKULL_MM)
    # The brain sits in the upper-back part of the skull; the face and orbits lie in front of and below it.
    brain = _ellipsoid(x, y, z, (0, -8, 18), (brain_axes[0], brain_axes[1] - 10, brain_axes[2] - 22)) < 1
    # Scalp and skull together are at least ~12 mm thick everywhere over the brain, as in adults.
    brain &= _ellipsoid(x, y, z, (0, 0, 0), _shrunk(HEAD_AXES, SCALP_MM + SKULL_MM + 2.0)) < 1
    ventricles = _ellipsoid(x, y, z, (0, -5, 25), (12, 30, 14)) < 1
    skull = (_ellipsoid(x, y, z, (0, 0, 0), inner_axes) < 1) & ~brain
    eye_r = 12.0
    eye_centres = [(-31.0, 68.0, -8.0), (31.0, 68.0, -8.0)]
    eyes = np.zeros(shape, dtype=bool)
    eye_labels = np.zeros(shape, dtype=bool)
    for c in eye_centres:
        eyes |= _ellipsoid(x, y, z, c, (eye_r, eye_r, eye_r)) < 1
        eye_labels |= _ellipsoid(x, y, z, (c[0], c[1] + 6, c[2]), (16.0, 16.0, 16.0)) < 1
    nose = (_ellipsoid(x, y, z, (0, 84, -38), (13, 24, 26)) < 1) & (y > 60)
    ears = np.zeros(shape, dtype=bool)
    for side in (-1, 1):
        # A thin auricle standing off the head, joined to it around the ear canal.
        ears |= _ellipsoid(x, y, z, (side * 82.0, -6, -4), (3.5, 14.0, 27.0)) < 1
        ears |= _ellipsoid(x, y, z, (side * 77.0, -2, -6), (6.0, 6.0, 7.0)) < 1
    inside_head = head < 1
    ears &= ~inside_head
    tissue = inside_head | nose | ears

    image = np.full(shape, tone["air"], dtype=np.float32)
    image[tissue] = tone["scalp"]
    image[skull & inside_head] = tone["skull"]
    image[brain] = tone["brain"]
    image[brain & ventricles] = tone["csf"]
    image[eyes] = tone["eye"]
    image[nose & ~inside_head] = tone["nose"]
    image[ears] = tone["ear"]

    rng = np.random.default_rng(seed)
    scale = noise * max(abs(v) for v in tone.values() if v != tone["air"])
    if noise > 0:
        if contrast == "CT":
            image += rng.normal(0, scale, shape).astype(np.float32)
        else:
            image = np.hypot(image + rng.normal(0, scale, shape), rng.normal(0, scale, shape)).astype(np.float32)

    labels = np.zeros(shape, dtype=np.uint8)
    labels[eye_labels] = Label.EYES
    nose_label = (_ellipsoid(x, y, z, (0, 84, -38), (16, 27, 29)) < 1) & (y > 66)
    labels[nose_label] = Label.NOSE
    labels[ears] = Label.EARS

    affine_ras = np.diag([*spacing, 1.0])
    affine_ras[:3, 3] = [-(n - 1) / 2.0 * s for n, s in zip(shape, spacing, strict=True)]
    data, brain_out, labels_out, affine = _reorient(image, brain, labels, affine_ras, axcodes)
    if contrast == "CT":
        raw = np.round(data).astype(np.int16)
    else:
        raw = np.clip(np.round(data), 0, 32767).astype(np.int16)
    header = nib.Nifti1Header()
    header.set_data_dtype(np.int16)
    header.set_data_shape(raw.shape)
    header.set_qform(affine, code=1)
    header.set_sform(affine, code=1)
    header.set_xyzt_units("mm")
    header["descrip"] = f"defacer phantom {contrast}".encode()
    header.set_slope_inter(1.0, 0.0)
    volume = Volume(raw=raw, affine=affine, format="nifti", header=header, extra={"raw_shape": raw.shape})
    return Phantom(volume=volume, labels=labels_out, brain=brain_out)


def _reorient(image: npt.NDArray, brain: Mask, labels: LabelMap, affine_ras: npt.NDArray[np.float64],
              axcodes: str) -> tuple[npt.NDArray, Mask, LabelMap, npt.NDArray[np.float64]]:
    """Store RAS arrays in another axis order, with the matching affine."""
    target = nio.axcodes2ornt(tuple(axcodes))
    transform = nio.ornt_transform(nio.axcodes2ornt(("R", "A", "S")), target)
    arrays = [np.ascontiguousarray(nio.apply_orientation(a, transform)) for a in (image, brain, labels)]
    affine = affine_ras @ nio.inv_ornt_aff(transform, image.shape)
    return arrays[0], arrays[1].astype(bool), arrays[2].astype(np.uint8), affine


def save_phantom(phantom: Phantom, path: PathLike, labels_path: PathLike | None = None) -> None:
    """Write the phantom scan (NIfTI) and optionally its label map."""
    nib.save(nib.Nifti1Image(phantom.volume.raw, phantom.volume.affine, phantom.volume.header), str(path))
    if labels_path is not None:
        nib.save(nib.Nifti1Image(phantom.labels, phantom.volume.affine), str(labels_path))
