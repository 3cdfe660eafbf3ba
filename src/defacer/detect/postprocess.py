"""Clean the network's coarse label map: at most two eyes, one nose, two ears, each plausible.

Runs on the box grid (``BOX_SPACING`` mm, RAS axis order), where a component is cheap to
measure.  Rules, in mm so they hold at any box spacing:

* a component smaller than ``MIN_VOLUME_MM3`` for its feature (or, for eyes and nose, than a
  fifth of the largest component of the same feature) is noise;
* eyes: the largest pair 35-90 mm apart, side by side; nose: the largest near the eyes' midline;
  ears: the largest behind the eyes on each side of the head (see :func:`find_components`), all
  judged in the frame the two eyes give (:func:`defacer.detect.frame.eye_frame`), so a head turned
  or tilted in the scanner is judged as a straight one;
* no rule for one feature can remove every candidate of another.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage as ndi

from defacer._typing import Affine
from defacer.detect.frame import ear_offset_score, eye_frame
from defacer.detect.preprocess import mask_box
from defacer.labels import FEATURE_LABELS, MAX_COMPONENTS
from defacer.morphology import dilate

#: Smallest plausible volume per feature, in mm^3 (eye sphere ~ 9000, nose ~ 15000, auricle ~ 3000).
MIN_VOLUME_MM3: dict[str, float] = {"eyes": 1000.0, "nose": 1500.0, "ears": 250.0}

#: Largest distance between a nose centre and an eye centre, in mm (adults: about 40-60 mm).
NOSE_EYE_MAX_MM = 75.0
#: Distance between the two eyes' centres, in mm (a 3-year-old's about 45, adults' 55-70).
EYE_PAIR_MM = (35.0, 90.0)
#: Largest angle between the line through two eyes and the scanner's left-right axis, in degrees: a
#: head turned or tilted this far still has its eyes paired (the training saw up to 15 degrees).
EYE_AXIS_MAX_DEG = 50.0
#: Largest distance of the nose's centre from the eyes' mid-plane, in mm.
NOSE_MIDLINE_MM = 30.0
#: An ear candidate further than this from where ears lie in the eyes' frame (in standard deviations of
#: the reference ears' offsets, :func:`defacer.detect.frame.ear_offset_score`) yields to a closer one on its
#: side: 4.5 takes in a head pitched 25 degrees; the cheek or jaw the network may call ear lies further.
EAR_PLAUSIBLE_SD = 4.5
#: Largest distance between the two ears' (anterior, up) offsets in the eyes' frame, in mm, for a pair that mirrors
#: itself: the head's pitch turns both ears alike about the eyes' axis, so this holds in any pose.  The reference
#: labels' ears (21 heads) differ by at most 23.6 mm (uih_T1w_dicom), the held-out fold models' ears on 11 heads
#: through 9 pose and contrast variants by at most 31.8 mm where both are right; a side's ear further than this from
#: the other side's (the more plausibly placed) yields to a candidate of its side both within it and more plausibly
#: placed (:func:`find_components`).
EAR_ASYMMETRY_MM = 30.0


@dataclass(frozen=True)
class Component:
    """One kept detection on the box grid.

    Attributes
    ----------
    feature : str
        ``"eyes"``, ``"nose"`` or ``"ears"``.
    mask : ndarray of bool, box shape
    centre_mm : ndarray, shape (3,)
        Centroid in RAS+ mm.
    volume_mm3 : float
    """

    feature: str
    mask: npt.NDArray[np.bool_]
    centre_mm: npt.NDArray[np.float64]
    volume_mm3: float


def find_components(labels: npt.NDArray[np.integer], affine: Affine) -> list[Component]:
    """Keep the plausible components of a coarse label map.

    Each feature is decided on its own candidates (every component above its minimum volume), so a
    wrong component of one feature never removes a right one of another:

    * eyes: the largest pair whose centres are ``EYE_PAIR_MM`` apart, on a line within
      ``EYE_AXIS_MAX_DEG`` of the left-right axis (a head turned or tilted in the scanner), wins;
      without such a pair, the largest single eye stays;
    * nose: the largest candidate within ``NOSE_EYE_MAX_MM`` of every kept eye and, with a valid
      pair of eyes, within ``NOSE_MIDLINE_MM`` of their mid-plane (a "nose" beside or far below
      the face is a false detection, e.g. on a defaced head);
    * ears: candidates in front of the eyes' centres are dropped (only when two eyes make a valid
      pair, so a misplaced single "eye" cannot veto an ear); the rest are split into the left
      and right half of the head (by the eyes' mid-plane, else the label map's centre) and the
      largest on each side stays, so both ears are kept whenever both were detected.  With a pair
      of eyes, the largest among the side's candidates lying where ears lie in the eyes' frame
      (within ``EAR_PLAUSIBLE_SD``) is preferred: on a T2-like contrast the network may call a
      piece of cheek or jaw "ear" and make it the largest.  A side whose every candidate lies
      elsewhere keeps its largest.  Where the two ears so chosen lie more than ``EAR_ASYMMETRY_MM`` apart in
      (anterior, up), the less plausibly placed one yields to a candidate of its side that mirrors the other
      and is more plausibly placed, if there is one (:func:`_mirrored_pair`).

    With a pair of eyes, "in front", "mid-plane" and "side" are those of the eyes' frame
    (:func:`defacer.detect.frame.eye_frame`), so they turn with the head.

    Parameters
    ----------
    labels : ndarray, shape (X, Y, Z), integer
        Argmax of the network output on the box grid (RAS axis order).
    affine : ndarray, shape (4, 4)
        Box voxel -> RAS+ mm.

    Returns
    -------
    list of Component
        Eyes first, then nose, then ears; each feature at most ``MAX_COMPONENTS`` times.
    """
    voxel_mm3 = float(abs(np.linalg.det(affine[:3, :3])))
    # every candidate lies in the features' bounding box: label that crop only (the same components,
    # numbered in the same raster order, as labelling the whole box)
    extent = mask_box(labels != 0)
    candidates: dict[str, list[Component]] = {}
    for feature, value in FEATURE_LABELS.items():
        candidates[feature] = [] if extent is None else _candidates(
            feature, labels[extent] == int(value), extent, labels.shape, affine, voxel_mm3)
    eyes = _choose_eyes(candidates["eyes"])
    # the eyes' frame (rows right, anterior, up); without a pair, the world's through the eye or the map's centre
    if len(eyes) == 2:
        origin, axes, _ = eye_frame(eyes[0].centre_mm, eyes[1].centre_mm)
    else:
        origin = eyes[0].centre_mm if eyes else affine[:3, :3] @ ((np.asarray(labels.shape, float) - 1) / 2) + affine[:3, 3]
        axes = np.eye(3)
    # the nose sits within NOSE_EYE_MAX_MM of every eye, and near the eyes' mid-plane when both are known
    noses = [c for c in candidates["nose"]
             if all(np.linalg.norm(c.centre_mm - e.centre_mm) <= NOSE_EYE_MAX_MM for e in eyes)]
    if len(eyes) == 2:
        noses = [c for c in noses if abs((c.centre_mm - origin) @ axes[0]) <= NOSE_MIDLINE_MM]
    nose = noses[:1]
    ears = candidates["ears"]
    if len(eyes) == 2:
        ears = [e for e in ears if (e.centre_mm - origin) @ axes[1] < 0]
        # stable sort: plausibly placed first, each group largest first
        ears = sorted(ears, key=lambda e: ear_offset_score(e.centre_mm, origin, axes) > EAR_PLAUSIBLE_SD)
    left = [e for e in ears if (e.centre_mm - origin) @ axes[0] < 0][:1]  # RAS+: the subject's left is -x
    right = [e for e in ears if (e.centre_mm - origin) @ axes[0] >= 0][:1]
    if len(eyes) == 2 and left and right:
        left, right = _mirrored_pair(ears, left[0], right[0], origin, axes)
    return eyes + nose + left + right


def ear_up_front(centre_mm: npt.ArrayLike, origin: npt.NDArray[np.float64],
                 axes: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """An ear centre's (anterior, up) offset from the eyes' midpoint in their frame.

    Parameters
    ----------
    centre_mm : array-like, shape (3,)
        RAS+ mm.
    origin, axes
        :func:`defacer.detect.frame.eye_frame` of the two eyes.

    Returns
    -------
    ndarray, float64, shape (2,)
        mm along the frame's y (anterior) and z (up); the left-right offset is left out (it mirrors).
    """
    return np.asarray(axes[1:] @ (np.asarray(centre_mm, float) - origin), np.float64)


def unmirrored_ear(first_mm: npt.ArrayLike, second_mm: npt.ArrayLike, origin: npt.NDArray[np.float64],
                   axes: npt.NDArray[np.float64], *, doubt_at_tie: bool) -> int | None:
    """Which of two ears, one on each side, does not mirror the other: 0 (``first_mm``), 1 or ``None``.

    The ear further from where ears lie in the eyes' frame (:func:`defacer.detect.frame.ear_offset_score`) is
    doubtful where the other lies within ``EAR_PLAUSIBLE_SD`` and the two (anterior, up) offsets
    (:func:`ear_up_front`) differ by more than ``EAR_ASYMMETRY_MM``: the head's pitch turns both ears alike
    about the eyes' axis, so a real pair stays a pair in any pose.  Shared by :func:`find_components` (on the
    box grid) and :mod:`defacer.detect.ear_fallback` (at the scan's resolution).

    Parameters
    ----------
    first_mm, second_mm : array-like, shape (3,)
        The two ears' centres, RAS+ mm.
    origin, axes
        :func:`defacer.detect.frame.eye_frame` of the two eyes.
    doubt_at_tie : bool
        At an exact tie of the two scores, whether the second ear (``1``) may still be doubtful, the first taken
        as the anchor: :func:`find_components` replaces a doubtful ear only by a candidate placed more plausibly
        than it, so a tie there may still swap; the fallback drops an ear outright, so a tie there drops nothing.

    Returns
    -------
    int or None
        The index of the doubtful ear, or ``None`` where the two mirror each other (or neither is plausibly
        placed, or at a tie when not ``doubt_at_tie``).
    """
    first, second = ear_offset_score(first_mm, origin, axes), ear_offset_score(second_mm, origin, axes)
    anchor, other = (0, 1) if first <= second else (1, 0)
    centres, scores = (first_mm, second_mm), (first, second)
    if scores[anchor] > EAR_PLAUSIBLE_SD or (scores[other] == scores[anchor] and not doubt_at_tie):
        return None
    apart = np.linalg.norm(ear_up_front(centres[other], origin, axes) - ear_up_front(centres[anchor], origin, axes))
    return other if apart > EAR_ASYMMETRY_MM else None


def _mirrored_pair(candidates: list[Component], left: Component, right: Component, origin: npt.NDArray[np.float64],
                   axes: npt.NDArray[np.float64]) -> tuple[list[Component], list[Component]]:
    """The two ears chosen, the less plausibly placed one replaced where it does not mirror the other.

    The side whose ear lies further from where ears lie in the eyes' frame (:func:`defacer.detect.frame.
    ear_offset_score`) gives way, if the other side's ear is plausibly placed (``EAR_PLAUSIBLE_SD``) and the two
    ears' (anterior, up) offsets differ by more than ``EAR_ASYMMETRY_MM`` (:func:`unmirrored_ear`; at an exact tie
    the right ear is the one that may give way), to the first of its side's
    ``candidates`` (in their order: plausibly placed first, largest first) that lies within ``EAR_ASYMMETRY_MM``
    of the other ear and more plausibly placed than it.  On a T2-like contrast the network may call the jaw "ear"
    and make it larger than the ear it also found on that side (ixi014_T1w_2mm, held out: the jaw 45 mm from the
    mirrored right ear, 4.3 SD; the ear 2 mm, 1.0 SD).  A pitched head's ears turn together and stay a pair.
    """
    doubtful = unmirrored_ear(left.centre_mm, right.centre_mm, origin, axes, doubt_at_tie=True)
    if doubtful is None:
        return [left], [right]
    anchor, other = (left, right) if doubtful == 1 else (right, left)
    score = {id(c): ear_offset_score(c.centre_mm, origin, axes) for c in candidates}
    side = bool((other.centre_mm - origin) @ axes[0] >= 0)
    for c in candidates:
        if (((c.centre_mm - origin) @ axes[0] >= 0) == side and score[id(c)] < score[id(other)]
                and np.linalg.norm(ear_up_front(c.centre_mm, origin, axes)
                                   - ear_up_front(anchor.centre_mm, origin, axes)) <= EAR_ASYMMETRY_MM):
            return ([left], [c]) if other is right else ([c], [right])
    return [left], [right]


def _candidates(feature: str, where: npt.NDArray[np.bool_], extent: tuple[slice, ...], shape: tuple[int, ...],
                affine: Affine, voxel_mm3: float) -> list[Component]:
    """Components of one feature above its minimum volume, largest first.

    Parameters
    ----------
    feature : str
    where : ndarray of bool, the shape of ``extent``
        The feature's voxels within ``extent`` of the box (none outside it).
    extent : tuple of slice
        Where ``where`` lies on the box grid.
    shape : tuple of int
        The box grid's shape (each component's mask is given on the whole box).
    affine : ndarray, shape (4, 4)
        Box voxel -> RAS+ mm.
    voxel_mm3 : float
        Volume of one box voxel.
    """
    lab, n = ndi.label(where)
    if n == 0:
        return []
    sizes = np.bincount(lab.ravel(), minlength=n + 1)[1:].astype(float) * voxel_mm3
    boxes = ndi.find_objects(lab)
    out = []
    for i in np.argsort(sizes)[::-1]:
        if sizes[i] < MIN_VOLUME_MM3[feature]:
            break
        if feature != "ears" and sizes[i] < 0.2 * sizes.max():
            break  # crumbs of an eye or nose; ears are judged per side instead
        mask = np.zeros(shape, dtype=bool)
        mask[extent] = lab == (i + 1)
        where_on_box = tuple(slice(b.start + e.start, b.stop + e.start) for b, e in zip(boxes[i], extent, strict=True))
        centre = affine[:3, :3] @ _centre_of(mask, where_on_box) + affine[:3, 3]
        out.append(Component(feature, mask, centre, float(sizes[i])))
    return out


def _centre_of(mask: npt.NDArray[np.bool_], box: tuple[slice, ...] | None) -> npt.NDArray[np.float64]:
    """Mean voxel index of a non-empty mask, from its bounding ``box`` only (:func:`scipy.ndimage.find_objects`).

    The same value as :func:`scipy.ndimage.center_of_mass` of the whole mask: the index sums are
    exact integers either way, divided once by the count.

    Returns
    -------
    ndarray, float64, shape (mask.ndim,)
    """
    if box is None:
        box = tuple(slice(0, n) for n in mask.shape)
    where = np.nonzero(mask[box])
    count = where[0].size
    totals = [int(w.sum(dtype=np.int64)) + s.start * count for w, s in zip(where, box, strict=True)]
    return np.asarray([total / count for total in totals], np.float64)


def _choose_eyes(candidates: list[Component]) -> list[Component]:
    """The largest plausible pair of eyes among the candidates, else the largest single one."""
    best: tuple[float, list[Component]] | None = None
    side_by_side = np.cos(np.radians(EYE_AXIS_MAX_DEG))
    for a in range(len(candidates)):
        for b in range(a + 1, len(candidates)):
            ca, cb = candidates[a].centre_mm, candidates[b].centre_mm
            apart = float(np.linalg.norm(ca - cb))
            if not EYE_PAIR_MM[0] <= apart <= EYE_PAIR_MM[1] or abs(ca[0] - cb[0]) < side_by_side * apart:
                continue
            total = candidates[a].volume_mm3 + candidates[b].volume_mm3
            if best is None or total > best[0]:
                best = (total, [candidates[a], candidates[b]])
    if best is not None:
        return best[1]
    return candidates[:1]


#: Normalised intensity (0.5th..99.5th percentile -> 0..1) below which a voxel counts as air.
AIR_LEVEL = 0.1


def threshold_sample(image: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
    """Every third voxel of ``image`` along each axis, as float32: what :func:`air_threshold` and
    :func:`defacer.detect.refine_face.tissue_threshold` read (take it once to compute both)."""
    return np.asarray(image[::3, ::3, ::3], np.float32)


def air_threshold(image: npt.NDArray[np.floating], air_level: float = AIR_LEVEL,
                  sample: npt.NDArray[np.float32] | None = None) -> float | None:
    """Physical intensity below which :func:`restrict_to_tissue` calls a voxel air.

    ``air_level`` on the 0.5th..99.5th percentile range of every third voxel along each axis
    (``sample``: :func:`threshold_sample` of ``image``, when already taken); ``None`` when that
    range is empty (a flat image).
    """
    return level_in_range(threshold_sample(image) if sample is None else sample, air_level)


def level_in_range(sample: npt.NDArray[np.floating], level: float) -> float | None:
    """``level`` of the way from the 0.5th to the 99.5th percentile of ``sample`` (any shape); ``None`` when flat."""
    lo, hi = np.percentile(sample, (0.5, 99.5))
    if not hi > lo:
        return None
    return float(lo + level * (hi - lo))


def restrict_to_tissue(labels: npt.NDArray[np.uint8], image: npt.NDArray[np.floating],
                       values: tuple[int, ...] = (2, 3), air_level: float = AIR_LEVEL,
                       threshold: float | None = None) -> npt.NDArray[np.uint8]:
    """Remove air voxels from the nose and ear labels at the scan's own resolution.

    The network sees 4 mm voxels, so an upsampled auricle or nose also covers the air around it;
    the reference labels (and the distortion) concern tissue only.  Voxels of ``values`` whose
    intensity, scaled like the network input, is below ``air_level`` (and not within one voxel of
    tissue) are set to background.  Eyes are left alone (a dark vitreous body is not air).

    Parameters
    ----------
    labels : ndarray, shape (X, Y, Z), uint8
        Label map on the image grid; a new array is returned.
    image : ndarray, shape (X, Y, Z)
        Physical intensities on the same grid.
    threshold : float, optional
        The air level in physical intensity; default :func:`air_threshold` of ``image``.  Pass the
        whole scan's when ``labels`` and ``image`` are a crop of it (the result is then the crop of
        the whole scan's result).
    """
    out = labels.copy()
    if threshold is None:
        threshold = air_threshold(image, air_level)
    if threshold is None:
        return out
    for value in values:
        box = mask_box(out == value)  # from the axis projections: no list of every voxel's index
        if box is None:
            continue
        tissue = dilate(ndi.uniform_filter(np.asarray(image[box], np.float32), 3) > threshold)
        sub = out[box]
        sub[(sub == value) & ~tissue] = 0
    return out


def largest_part(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    """The largest face-connected part of a mask (the mask itself when it has at most one part).

    Face-connected, as the metrics and the distortion count components.
    """
    parts, count = ndi.label(mask)
    if count <= 1:
        return mask
    return np.asarray(parts == 1 + int(np.argmax(np.bincount(parts.ravel())[1:])), bool)


def keep_largest_pieces(labels: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """At the scan's resolution, keep at most ``MAX_COMPONENTS`` pieces per feature (the largest).

    Interpolation and :func:`restrict_to_tissue` can split a coarse component into a main part and
    crumbs; the crumbs are dropped so the distortion sees one nose, at most two eyes and ears.
    Returns a new array.
    """
    out = labels.copy()
    for feature, value in FEATURE_LABELS.items():
        where = out == int(value)
        box = mask_box(where)  # from the axis projections: no list of every voxel's index
        if box is None:
            continue
        pieces, count = ndi.label(where[box])
        if count <= MAX_COMPONENTS[feature]:
            continue
        sizes = np.bincount(pieces.ravel())[1:]
        keep = 1 + np.argsort(sizes)[::-1][: MAX_COMPONENTS[feature]]
        sub = out[box]
        sub[(pieces > 0) & ~np.isin(pieces, keep)] = 0
    return out
