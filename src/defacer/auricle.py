"""The whole auricle near a point, delimited from the image alone.

One rule, shared by the ear distortion (:mod:`defacer.distort_ears`) and the detector's ear
search (:mod:`defacer.detect.ear_fallback`), and close to the rule the reference ear labels
were made by (``scripts/make_reference_labels.py``, ``refine_ear``):

1. **protrusion**: the head (tissue above the head's threshold, or, with ``reference_mask``, the
   reference rule's head mask, :func:`head_mask`: the image smoothed by :data:`SMOOTH_MM` above
   :func:`head_level`, holes filled in the side-view slices; without a thin layer standing off the
   head over more side-view area than any auricle, a head holder's plate, :func:`standing_sheets`;
   plus the inside of the head with its protrusions rolled off) is opened with a ball of
   :data:`OPENING_MM` on a grid of about :data:`GRID_MM`, with the head continued past the crop's
   and the field's edges (a cut face is not an edge to open); the tissue the opening removes within
   ``search_mm`` of the centre (each part reaching into that radius followed up to ``follow_mm``
   beyond it), at most ``medial_mm`` medial of it and at most :data:`OUTSIDE_MM` out of the
   rolled-off head, in parts that touch the head (a holder or a streak floating in the air is no
   ear), is the protruding auricle;
2. **recentring**: the search is repeated from the centre of what step 1 found, within
   ``search_mm + RECENTRE_MM`` (never more than ``RECENTRE_MM`` beyond that from the given
   centre), and may only extend the
   parts step 1 found (a centre near the top of the auricle misses the lobule);
3. **side footprint and shell**: seen from the lateral side, the convex hull of the
   protrusion's outline is the auricle's footprint (it fills the concha, the tragus and a helix
   pressed flat between protruding parts); within it, the tissue at most :data:`SHELL_MM`
   beyond the first tissue met from the lateral side (in parts connected to the protrusion) is
   auricle (never the scalp standing farther behind a standing auricle, nor a holder in the air);
4. **root**: tissue within :data:`ROOT_MM` of the protrusion joins it.

All geometry is in the RAS array's own axes (voxel index times spacing, in mm); the image is
read only in a crop around the centre, so one auricle costs a few hundredths of a second.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage as ndi

from defacer._typing import Mask
from defacer.ball import within_distance
from defacer.convex_hull import convex_hull_image
from defacer.detect.preprocess import mask_box
from defacer.head import HeadModel, border_padding_value, field_padding_value, outside_field_value

Box = tuple[slice, slice, slice]

#: Grid step on which the protrusion is delimited, in mm (any tissue in a cell fills the cell).
GRID_MM = 2.0
#: Radius of the ball whose opening of the head separates the auricle from it, in mm (as the
#: reference labels' rule).  On the 19 real heads, ear distortion from the shipped detector's ears,
#: auricles >= 90 % changed before the protection gate: 20 of 38 with 12 mm, 23 with 14, 24 with 16.
OPENING_MM = 16.0
#: The opening ball (mm) of the flat-ear delimitation (the ear distortion's second try, the ear search's second
#: rule): an auricle pressed flat against the head lies along it in a bump too wide for :data:`OPENING_MM` to
#: leave out.
WIDE_OPENING_MM = 24.0
#: Radius around the centre searched for the protrusion, in mm (the second pass adds RECENTRE_MM).
SEARCH_MM = 32.0
#: How much farther the second, recentred pass searches, in mm.
RECENTRE_MM = 8.0
#: How far beyond a pass's search radius a protruding part reaching into it is followed, in mm.
FOLLOW_MM = 0.0
#: Auricle tissue lies at most this far medial of the centre, along the outward direction, in mm.
MEDIAL_MM = 20.0
#: Depth of tissue, beyond the first tissue met from the lateral side, labelled within the footprint, in mm.
SHELL_MM = 6.0
#: Tissue within this distance of the protrusion joins it (its root), in mm.
ROOT_MM = 2.0
#: Depth below the rolled-off head surface (:func:`defacer.head.depth_below_surface`) counted as solid head, in mm.
INTERIOR_MM = 4.0
#: Farthest an auricle stands out of the head with its protrusions rolled off
#: (:func:`defacer.head.depth_below_surface` > 0), in mm: the reference auricles of the 19 real heads
#: reach at most 29 mm; a CT head holder pressed against an ear reaches farther.
OUTSIDE_MM = 32.0
#: Smallest protruding part kept, in mm^3 (also at least 15 % of the largest part).
MIN_PART_MM3 = 60.0
#: Gaussian smoothing (sigma, mm) of the image before the head mask's level, as the reference rule's
#: (its kernel cut at 3 sigma).
SMOOTH_MM = 1.0
#: Level of the head mask of an MR (or any image not in HU), as a fraction of the way from the air (the
#: image's coarse sample's 2nd percentile) to the Otsu level of the sample above it.  The reference rule takes
#: 0.35 of the Otsu level of the smoothed image; the unsmoothed coarse sample's Otsu level lies about 10 %
#: higher (IXI heads), so 0.35 x 0.9 (0.9 chosen among 0.8-1.1 on fold A's held-out heads: ears Dice
#: 0.739-0.754).  Measured from the air, not from 0, the level moves with an intensity offset (the same head
#: stored 5000 higher gets the same mask).  The air's 2nd percentile is 0 on 16 of the 17 real heads not in HU
#: (both rules agree there); uih_T1w's is 11 (level 41.1 -> 48.7, its ear edit unchanged).
MR_LEVEL_FRACTION = 0.315
#: Level of the head mask of a CT in HU (the reference rule's), and the range of the air (the coarse sample's
#: 1st percentile, a scanner's outside-the-field constant left out) that makes a scan a CT in HU: air near
#: -1000 HU.  Below CT_AIR_HU it is an image with an offset (an MR stored 5000 lower), not HU.
CT_LEVEL_HU = -400.0
CT_BELOW_HU = -500.0
CT_AIR_HU = -1200.0
#: Smallest protrusion that is an auricle, in mm^3 at the grid (the reference auricles hold 4-16 cm^3).
MIN_AURICLE_MM3 = 400.0
#: A layer seen first from the lateral side, at most this thick along the side view (mm) with air behind it
#: (outside the head with its protrusions rolled off), stands off the head: an auricle's helix, or a plate
#: (ge-headct's holder: 4-5 mm along the side view).  An ear pressed against the plate makes the run
#: thicker (plate and ear): it stays with the ear (:func:`standing_sheets`).  On the reference rule's head
#: mask (smoothed by SMOOTH_MM) a layer is up to 2 x SMOOTH_MM thicker ...
SHEET_MM = 6.0
#: ... and one of those layers covering more side-view area than this (mm^2) is no auricle (a large adult
#: auricle, 70 x 40 mm, covers about 2,200 mm^2 in all): a CT head holder, a pad or a coil part beside the
#: head.  Measured within 60 mm of the reference ears of the 19 real heads (build/ears2/proto2.py, layers up
#: to 10 mm, which hold those up to 6): at most 823 mm^2 on the 16 MR heads and mricrogl_CT (fnndsc-3yo);
#: with 6 mm, the head holders of ge-headct 4,501 / 4,754 (pressed against the ears) and invesalius-ct0051
#: 4,720 / 4,429 (25 mm off the ears).
SHEET_AREA_MM2 = 2500.0


@dataclass(frozen=True)
class Auricle:
    """One auricle delimited from the image.

    Attributes
    ----------
    box : tuple of 3 slice
        The crop of the RAS image the auricle lies in.
    mask : ndarray, bool, box shape
        The auricle's voxels (tissue only) at the image's resolution.
    protrusion : ndarray, bool, box shape
        The part of it the opening separated from the head (steps 1-2 of the module's rule).
    centre_voxel : ndarray, shape (3,)
        Centroid of the protrusion in (fractional) voxel indices of the whole image.
    """

    box: Box
    mask: Mask
    protrusion: Mask
    centre_voxel: npt.NDArray[np.float64]


#: ``head.cache`` key of the auricles delimited for given ears (:func:`remember_auricle`).
_SHARED_KEY = "auricle of ear"


def _shared_key(ear_box: Box, search_mm: float, opening_mm: float) -> tuple[object, ...]:
    return (_SHARED_KEY, tuple((int(s.start), int(s.stop)) for s in ear_box), float(search_mm), float(opening_mm))


#: Where the detector looked for an ear's auricle: (centre in voxel indices, outward direction in the
#: array's mm axes), as :func:`delimit_auricle` takes them.
Seed = tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]


def remember_auricle(head: HeadModel, ear_box: Box, ear: Mask, found: Auricle | None, seed: Seed | None = None,
                     *, search_mm: float = SEARCH_MM, opening_mm: float = OPENING_MM) -> None:
    """Record on ``head`` what the detector's ear refinement found for one labelled ear.

    The detector's ear refinement delimits each ear's auricle (:func:`delimit_auricle` from the
    network ear's centroid, by the reference labels' rule) and replaces the network's ear by it;
    the ear distortion, handed that very ear, adds what was recorded (:func:`recall_auricle`) and
    delimits its own rule's auricle from the same seed.

    Parameters
    ----------
    head : HeadModel
        The head both stages share (the record lives in ``head.cache``).
    ear_box : tuple of 3 slice
        Bounding box, on the RAS grid, of the ear's connected component in the label map the
        detector returns.
    ear : ndarray, bool, ``ear_box`` shape
        Every ear voxel of that label map inside ``ear_box`` (copied).
    found : Auricle or None
        What the distortion is to change with the ear (``None``: nothing more).
    seed : (ndarray, ndarray) or None
        Where the refinement looked: the network ear's centroid (voxel indices) and the outward
        direction (the array's mm axes).
    search_mm, opening_mm : float
        The rule's search radius and opening ball it was delimited with, in mm.
    """
    kept = np.array(ear, dtype=bool)
    kept.flags.writeable = False
    head.cache[_shared_key(ear_box, search_mm, opening_mm)] = (kept, found, seed)


def recall_auricle(head: HeadModel, ear_box: Box, ear: Mask, *, search_mm: float = SEARCH_MM,
                   opening_mm: float = OPENING_MM) -> tuple[bool, Auricle | None, Seed | None]:
    """What :func:`remember_auricle` recorded for this very ear, if anything.

    Parameters
    ----------
    head, ear_box, ear, search_mm, opening_mm
        As :func:`remember_auricle`; the ear must match voxel for voxel (a different detection,
        e.g. a label file or an edited ear, finds no record).

    Returns
    -------
    recorded : bool
        Whether this ear was recorded with these distances.
    found : Auricle or None
        The recorded auricle (``None`` also when it was recorded as none).
    seed : (ndarray, ndarray) or None
        The recorded seed (centre voxel, outward direction in mm axes).
    """
    entry = head.cache.get(_shared_key(ear_box, search_mm, opening_mm))
    if entry is None or not np.array_equal(entry[0], ear):
        return False, None, None
    return True, entry[1], entry[2]


def block_any(mask: Mask, step: tuple[int, ...]) -> Mask:
    """Max-pooling of a 3D boolean array over blocks of ``step`` voxels (the last block may be partial).

    Parameters
    ----------
    mask : ndarray, bool, shape (X, Y, Z)
    step : tuple of 3 int
        Block size in voxels per axis.

    Returns
    -------
    ndarray, bool, shape (ceil(X / step[0]), ceil(Y / step[1]), ceil(Z / step[2]))
    """
    out = np.zeros(tuple(-(-n // st) for n, st in zip(mask.shape, step, strict=True)), dtype=bool)
    for i in range(step[0]):  # one strided OR per offset in the block (no padded copy of the mask)
        for j in range(step[1]):
            for k in range(step[2]):
                part = mask[i :: step[0], j :: step[1], k :: step[2]]
                out[: part.shape[0], : part.shape[1], : part.shape[2]] |= part
    return out


def block_repeat(coarse: Mask, step: tuple[int, ...], shape: tuple[int, ...]) -> Mask:
    """Nearest-neighbour upsampling of a block grid back to ``shape`` (inverse of :func:`block_any`).

    Parameters
    ----------
    coarse : ndarray, bool, block grid
    step : tuple of 3 int
        Block size in voxels per axis.
    shape : tuple of 3 int
        Shape of the full grid (at most the block grid times ``step``).

    Returns
    -------
    ndarray, bool, ``shape``
    """
    out = coarse
    for axis, st in enumerate(step):
        if st > 1:
            out = np.repeat(out, st, axis=axis)
    return np.asarray(out[: shape[0], : shape[1], : shape[2]])


def coarse_blocks(coarse: Mask, head: HeadModel, box: Box, step: tuple[int, ...]) -> Mask:
    """``block_any(head.upsample(coarse, box), step)`` without the full-grid array.

    Upsampling (each voxel takes its nearest coarse sample) and the blocks' OR are both separable
    per axis: each axis in turn, every block takes the OR of the coarse samples nearest to its
    voxels (a partial last block only its own voxels).

    Parameters
    ----------
    coarse : ndarray, bool, the head's coarse grid
    head : HeadModel
    box : tuple of 3 slice
        A box of the full grid.
    step : tuple of 3 int
        Block size in voxels per axis.

    Returns
    -------
    ndarray, bool, the block grid of ``box`` (as :func:`block_any`)
    """
    nearest = head.nearest_coarse(tuple(np.arange(s.start, s.stop) for s in box))
    out = np.asarray(coarse)
    for axis, (index, st) in enumerate(zip(nearest, step, strict=True)):
        n_blocks = -(-len(index) // st)
        blocks = np.concatenate([index, np.repeat(index[-1:], n_blocks * st - len(index))]).reshape(n_blocks, st)
        columns = np.unique(blocks, axis=1)  # distinct per-block choices (the OR is idempotent)
        out = np.logical_or.reduce([np.take(out, columns[:, o], axis=axis) for o in range(columns.shape[1])])
    return out


def open_ball(solid: Mask, radius_mm: float, spacing: npt.ArrayLike,
              air_ends: tuple[tuple[int, bool], ...] = ()) -> Mask:
    """Morphological opening with a ball, the mask continued past its edges (a cut face stays).

    ``air_ends``: (axis, high end) pairs of edges past which air lies instead (a field of view that cuts an auricle
    standing off the head: its stump in view is then thin there and opened away like the rest of the auricle).

    Parameters
    ----------
    solid : ndarray, bool, shape (X, Y, Z)
    radius_mm : float
        Ball radius in mm.
    spacing : array-like, shape (3,)
        Voxel size in mm.

    Returns
    -------
    ndarray, bool, shape (X, Y, Z)
        The opened mask (within ``solid``).

    Notes
    -----
    The erosion keeps the voxels farther than ``radius_mm`` from every voxel outside the padded
    mask, the dilation adds those within ``radius_mm`` plus half the largest voxel size of it, each
    as scipy's Euclidean distance transform decides it (:func:`defacer.ball.within_distance`, exact
    and ~6x faster than the transform on the auricle's grid).
    """
    sp = np.asarray(spacing, float)
    pad = int(np.ceil(radius_mm / sp.min())) + 1
    padded = np.pad(solid, pad, mode="edge")
    for axis, high in air_ends:
        end = [slice(None)] * padded.ndim
        end[axis] = slice(padded.shape[axis] - pad, None) if high else slice(0, pad)
        padded[tuple(end)] = False
    eroded = ~within_distance(~padded, radius_mm, sp)
    opened = within_distance(eroded, radius_mm + 0.5 * sp.max(), sp)
    return np.asarray(opened[pad:-pad, pad:-pad, pad:-pad] & solid)


def head_level(image: npt.NDArray[np.floating], head: HeadModel) -> float:
    """The intensity level of the reference rule's head mask (:func:`head_mask`), once per head.

    A scan whose coarse sample (every ``head.strides`` voxel), a CT scanner's outside-the-field
    constant left out (:func:`defacer.head.outside_field_value`), has its 1st percentile between
    :data:`CT_AIR_HU` and :data:`CT_BELOW_HU` is a CT in HU: :data:`CT_LEVEL_HU`.  Otherwise
    :data:`MR_LEVEL_FRACTION` of the way from the sample's 2nd percentile (the air) to the Otsu
    level of the sample above it, so that an intensity offset moves the level with the image; an
    export's constant frame round a smaller field (:func:`defacer.head.border_padding_value`) is
    left out of that sample.

    Parameters
    ----------
    image : ndarray, shape (X, Y, Z), float
        Physical intensities in RAS axis order (the image ``head`` was analysed from).
    head : HeadModel

    Returns
    -------
    float
        In the image's physical units (kept in ``head.cache``).
    """

    def compute() -> npt.NDArray[np.float64]:
        from skimage.filters import threshold_otsu  # already imported by defacer.head

        st = head.strides
        # float64: Otsu's class means and variances of a float32 sample overflow (RuntimeWarnings, a wrong
        # level) for intensities beyond ~1e18 (a slope of 1e30, float exports near 1e38)
        coarse = np.asarray(image[:: st[0], :: st[1], :: st[2]], np.float64)
        sample = coarse.ravel()
        padding = outside_field_value(sample)
        in_field = sample[sample != padding] if padding is not None else sample
        if in_field.size and CT_AIR_HU <= float(np.percentile(in_field, 1)) < CT_BELOW_HU:
            return np.asarray(CT_LEVEL_HU)
        frame = border_padding_value(coarse)  # an export's constant round a smaller field is no air
        if frame is None:
            frame = field_padding_value(coarse)  # nor a CT's round field's, rescaled out of HU
        if frame is not None:
            sample = sample[sample != frame]
        floor = float(np.percentile(sample, 2))
        above = sample[sample > floor]
        if above.size < 2 or float(above.min()) == float(above.max()):
            return np.asarray(head.threshold)
        return np.asarray(floor + MR_LEVEL_FRACTION * (float(threshold_otsu(above)) - floor))

    return float(head.derived(("auricle level",), compute))


def _fill_slices(mask: Mask, axis: int) -> Mask:
    """Holes of ``mask`` filled in each 2D slice across ``axis`` (background not connected, within
    its slice, to the slice's edge)."""
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[(slice(None),) * axis + (1,)] = ndi.generate_binary_structure(2, 1)
    parts, count = ndi.label(~mask, structure=structure)
    if count == 0:
        return mask
    edge = np.zeros(count + 1, dtype=bool)
    for other in (a for a in range(3) if a != axis):
        for end in (0, -1):
            edge[np.take(parts, end, axis=other)] = True
    edge[0] = True
    return np.asarray(mask | ~edge[parts])


def head_mask(image_box: npt.NDArray[np.floating], level: float, spacing: npt.ArrayLike,
              axes: tuple[int, ...] = (0, 1, 2)) -> Mask:
    """The reference rule's head mask in a crop: the smoothed image above ``level``, holes filled.

    As ``scripts/make_reference_labels.py`` (``head_mask``): a Gaussian of :data:`SMOOTH_MM`,
    the level, then the holes of every slice across each of ``axes`` filled, in turn (the concha,
    the air enclosed between the helix and the head in a side-view slice).  Holes open to the
    crop's edge stay.  The reference rule fills across all three axes; the auricle rule fills the
    side-view slices only (one third of the cost; on fold A's held-out heads ears Dice 0.752 against
    0.754 with all three).

    Parameters
    ----------
    image_box : ndarray, shape (X, Y, Z), float
        A crop of the RAS image.
    level : float
        :func:`head_level`.
    spacing : array-like, shape (3,)
        Voxel size in mm.
    axes : tuple of int
        The axes across whose slices holes are filled.

    Returns
    -------
    ndarray, bool, ``image_box`` shape
    """
    sigma = SMOOTH_MM / np.asarray(spacing, float)
    mask = ndi.gaussian_filter(np.asarray(image_box, np.float32), sigma, truncate=3.0) > level
    for axis in axes:
        mask = _fill_slices(mask, axis)
    return mask


def outside_distance(head: HeadModel, depth: npt.NDArray[np.float32],
                     spacing: tuple[float, float, float]) -> npt.NDArray[np.float32]:
    """Distance (mm) of each coarse voxel from the head with its protrusions rolled off (0 inside it).

    Parameters
    ----------
    head : HeadModel
    depth : ndarray, float32, the head's coarse grid
        :func:`defacer.head.depth_below_surface` of ``head`` (the rolled-off head is ``depth > 0``).
    spacing : tuple of 3 float
        Full-grid voxel size along R, A, S in mm.

    Returns
    -------
    ndarray, float32, the head's coarse grid
        Read-only; computed once per head and spacing (kept in ``head.cache``).
    """
    return head.derived(("outside", tuple(float(s) for s in spacing)),
                        lambda: ndi.distance_transform_edt(~(depth > 0), sampling=head.coarse_spacing(spacing))
                        .astype(np.float32))


def close_to_head(head: HeadModel, depth: npt.NDArray[np.float32], spacing: tuple[float, float, float]) -> Mask:
    """Coarse voxels at most :data:`OUTSIDE_MM` from the head with its protrusions rolled off.

    ``outside_distance(head, depth, spacing) <= OUTSIDE_MM`` voxel for voxel, without the distances
    (:func:`defacer.ball.within_distance`; the detector's ear refinement needs only this, the ear
    distortion's skin fill the distances).

    Parameters
    ----------
    head, depth, spacing
        As :func:`outside_distance`.

    Returns
    -------
    ndarray, bool, the head's coarse grid
        Read-only; computed once per head and spacing (kept in ``head.cache``).
    """
    return head.derived(("close to head", OUTSIDE_MM, tuple(float(s) for s in spacing)),
                        lambda: within_distance(depth > 0, OUTSIDE_MM, head.coarse_spacing(spacing)))


def union_box(boxes: list[Box]) -> Box:
    """The smallest box (one slice per axis) holding every one of ``boxes``, of one grid."""
    return tuple(slice(min(b[axis].start for b in boxes), max(b[axis].stop for b in boxes))  # type: ignore[return-value]
                 for axis in range(3))


def in_one_box(parts: list[tuple[Box, Mask]]) -> tuple[Box, list[Mask]]:
    """Masks given in their own boxes of one grid, each placed in the :func:`union_box` of them all."""
    box = union_box([b for b, _ in parts])
    placed = []
    for part_box, mask in parts:
        full = np.zeros([s.stop - s.start for s in box], dtype=bool)
        full[tuple(slice(p.start - s.start, p.stop - s.start) for p, s in zip(part_box, box, strict=True))] = mask
        placed.append(full)
    return box, placed


def _crop_blocks(head: HeadModel, depth: npt.NDArray[np.float32], spacing: tuple[float, float, float],
                 box: Box, step: tuple[int, ...]) -> tuple[Mask, Mask]:
    """The head's inside (deeper than :data:`INTERIOR_MM`) and :func:`close_to_head`, on the block grid of ``box``.

    Kept in ``head.cache`` per box: the detector's ear refinement and the ear distortion delimit
    their auricles from the same seed, hence in the same crop (read-only arrays, shared).
    """
    key = ("auricle crop blocks", tuple((s.start, s.stop) for s in box), tuple(step), tuple(float(s) for s in spacing))
    if key not in head.cache:
        pair = (coarse_blocks(depth > INTERIOR_MM, head, box, step),
                coarse_blocks(close_to_head(head, depth, spacing), head, box, step))
        for array in pair:
            array.flags.writeable = False
        head.cache[key] = pair
    return head.cache[key]  # type: ignore[no-any-return]


def _crop(centre: npt.NDArray[np.float64], reach_mm: float, spacing: npt.NDArray[np.float64],
          shape: tuple[int, ...]) -> Box:
    """The box of voxels within ``reach_mm`` of ``centre`` along each axis, clipped to ``shape``."""
    reach = np.ceil(reach_mm / spacing).astype(int) + 1
    return tuple(slice(max(0, int(c) - r), min(n, int(c) + r + 1))  # type: ignore[return-value]
                 for c, r, n in zip(centre, reach, shape, strict=True))


def _offsets_mm(shape: tuple[int, ...], box: Box, step: tuple[int, ...], centre: npt.NDArray[np.float64],
                spacing: npt.NDArray[np.float64]) -> list[npt.NDArray[np.float64]]:
    """Per axis, the open-grid offset (mm) of each block's centre from ``centre`` (voxel indices)."""
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    return [(g * st + b.start + (st - 1) / 2.0 - c) * sp
            for g, st, b, c, sp in zip(grids, step, box, centre, spacing, strict=True)]


def _search(removed: Mask, anchors: Mask, offsets: list[npt.NDArray[np.float64]], outward: npt.NDArray[np.float64],
            radius_mm: float, follow_mm: float, medial_mm: float, cell_mm3: float) -> Mask | None:
    """Protruding parts that reach within ``radius_mm`` of the centre and touch ``anchors``.

    Each part is followed up to ``follow_mm`` beyond the radius, never more than ``medial_mm``
    medial of the centre.
    """
    distance2 = offsets[0] ** 2 + offsets[1] ** 2 + offsets[2] ** 2
    lateral = offsets[0] * outward[0] + offsets[1] * outward[1] + offsets[2] * outward[2] >= -medial_mm
    candidates = removed & lateral & (distance2 <= (radius_mm + follow_mm) ** 2)
    parts, count = ndi.label(candidates, structure=np.ones((3, 3, 3), dtype=bool))
    if count == 0:
        return None
    touching = np.intersect1d(parts[anchors & candidates], parts[candidates & (distance2 <= radius_mm**2)])
    touching = touching[touching > 0]
    if touching.size == 0:
        return None
    sizes = np.bincount(parts.ravel(), minlength=count + 1)
    floor = max(MIN_PART_MM3 / cell_mm3, 0.15 * float(sizes[touching].max()))
    keep = touching[sizes[touching] >= floor]
    if float(sizes[keep].sum()) * cell_mm3 < MIN_AURICLE_MM3:
        return None
    return np.asarray(np.isin(parts, keep))


def _shell(tissue: Mask, footprint: Mask, axis: int, outward_positive: bool, depth_voxels: int) -> Mask:
    """Tissue at most ``depth_voxels`` beyond the first tissue met along ``axis`` from the lateral side.

    ``footprint`` is 2D (``tissue`` without ``axis``): only columns inside it are labelled.
    """
    m = np.moveaxis(tissue, axis, 0)
    if outward_positive:
        m = m[::-1]
    first = np.argmax(m, axis=0)  # the first tissue met (0 in a column without tissue, where m is all False)
    index = np.arange(m.shape[0]).reshape((-1,) + (1,) * (m.ndim - 1))
    shell = m & (index < first + depth_voxels) & footprint
    if outward_positive:
        shell = shell[::-1]
    return np.asarray(np.moveaxis(shell, 0, axis))


def first_layer(solid: Mask, axis: int, outward_positive: bool, thickest: int) -> Mask:
    """The first run of ``solid`` met from the lateral side along ``axis``, where air ends it within ``thickest`` voxels.

    Parameters
    ----------
    solid : ndarray, bool, shape (X, Y, Z)
        Tissue and the head's inside (a crop of the RAS image).
    axis : int
        The side view's axis.
    outward_positive : bool
        Whether the lateral side lies towards the end of ``axis``.
    thickest : int
        Largest run, in voxels along ``axis``.

    Returns
    -------
    ndarray, bool, ``solid`` shape
        The run's voxels in each column where ``solid`` holds air behind it (a run reaching the
        crop's medial face is not known to end: never thin).
    """
    m = np.moveaxis(solid, axis, 0)
    if outward_positive:
        m = m[::-1]
    first = np.argmax(m, axis=0)
    behind = np.logical_or.accumulate(m, axis=0)
    np.greater(behind, m, out=behind)  # the air behind the first tissue met
    ends = np.argmax(behind, axis=0)
    thin = behind.any(axis=0) & (ends - first <= thickest)
    index = np.arange(m.shape[0]).reshape((-1,) + (1,) * (m.ndim - 1))
    layer = thin & (index >= first) & (index < ends)
    if outward_positive:
        layer = layer[::-1]
    return np.asarray(np.moveaxis(layer, 0, axis))


def standing_sheets(solid: Mask, axis: int, outward_positive: bool, spacing: npt.ArrayLike,
                    *, thickest_mm: float = SHEET_MM, area_mm2: float = SHEET_AREA_MM2) -> Mask:
    """Thin layers standing off the head over more side-view area than any auricle: a head holder, a pad.

    An auricle standing off the head is, seen from the lateral side, a thin layer with air behind
    it; so is a CT head holder's plate or bar beside the head, whose outer face the opening of
    :func:`delimit_auricle` also separates, and which, pressed against the ear, joins the ear's
    protrusion.  The two differ in size: the layers (:func:`first_layer`, at most ``thickest_mm``
    thick) are split into 26-connected parts, and the parts whose side-view area exceeds ``area_mm2``
    (more than a whole large auricle) are returned.  Where an ear lies pressed against the holder
    without air between them, the run holds both and is thicker: it stays with the ear.

    Parameters
    ----------
    solid : ndarray, bool, shape (X, Y, Z)
        Tissue and the head's inside (deeper than :data:`INTERIOR_MM` below the rolled-off
        surface), in a crop of the RAS image.
    axis : int
        The side view's axis.
    outward_positive : bool
        Whether the lateral side lies towards the end of ``axis``.
    spacing : array-like, shape (3,)
        Voxel size in mm.
    thickest_mm, area_mm2 : float
        Largest thickness along ``axis`` (mm) and side-view area (mm^2) of an auricle's layer.

    Returns
    -------
    ndarray, bool, ``solid`` shape
    """
    sp = np.asarray(spacing, float)
    layer = first_layer(solid, axis, outward_positive, int(np.floor(thickest_mm / sp[axis])))
    column_mm2 = float(np.prod(np.delete(sp, axis)))
    # the side view's 8-connected parts hold the 3D parts: none large enough there, none at all
    flat, count = ndi.label(layer.any(axis=axis), structure=np.ones((3, 3), dtype=bool))
    if count == 0 or np.bincount(flat.ravel())[1:].max() * column_mm2 <= area_mm2:
        return np.zeros(solid.shape, dtype=bool)
    parts, _ = ndi.label(layer, structure=np.ones((3, 3, 3), dtype=bool))
    area = np.bincount(parts.max(axis=axis).ravel()) * column_mm2  # one run per column: one part
    area[0] = 0.0
    return np.asarray(np.isin(parts, np.flatnonzero(area > area_mm2)))


def _attached(solid_c: Mask, kept: Mask) -> Mask:
    """The parts of the block grid ``solid_c`` connected to ``kept`` (on the block grid)."""
    parts, _ = ndi.label(solid_c, structure=np.ones((3, 3, 3), dtype=bool))
    ids = np.unique(parts[kept])
    return np.asarray(np.isin(parts, ids[ids > 0]))


def _columns(hull: Mask, axis: int, step: tuple[int, ...], margin: int, shape: tuple[int, ...]
             ) -> tuple[Box, Box]:
    """The columns (along ``axis``) of the footprint ``hull``, grown by ``margin`` voxels sideways.

    Parameters
    ----------
    hull : ndarray, bool, 2D
        The footprint on the block grid, without ``axis`` (not empty).
    axis : int
    step : tuple of 3 int
        Block size in voxels per axis.
    margin : int
        Voxels added on each side across ``axis`` (rounded up to whole blocks).
    shape : tuple of 3 int
        Shape of the full grid.

    Returns
    -------
    blocks : tuple of 3 slice
        The region on the block grid (whole along ``axis``).
    voxels : tuple of 3 slice
        The same region on the full grid (block-aligned; clipped to ``shape``).
    """
    blocks: list[slice] = []
    lateral = iter(range(2))
    for a, (st, n) in enumerate(zip(step, shape, strict=True)):
        n_blocks = -(-n // st)
        if a == axis:
            blocks.append(slice(0, n_blocks))
            continue
        along = np.flatnonzero(hull.any(axis=1 - next(lateral)))
        grow = -(-margin // st)
        blocks.append(slice(max(0, int(along[0]) - grow), min(n_blocks, int(along[-1]) + 1 + grow)))
    voxels = tuple(slice(b.start * st, min(n, b.stop * st)) for b, st, n in zip(blocks, step, shape, strict=True))
    return tuple(blocks), voxels  # type: ignore[return-value]


def root_voxels(root_mm: float, spacing: npt.ArrayLike) -> tuple[int, int, int]:
    """Voxels along each axis that ``root_mm`` spans (rounded; 0 along an axis whose voxels are over twice as long).

    Parameters
    ----------
    root_mm : float
        Reach in mm.
    spacing : array-like of 3 float
        Voxel size along each axis in mm.
    """
    sizes = np.asarray(spacing, float)
    counts = [max(0, int(round(root_mm / float(s)))) for s in sizes]  # noqa: RUF046
    if not any(counts):  # every axis coarser than twice the reach: one voxel along the finest axes
        counts = [int(s <= sizes.min() * (1 + 1e-6)) for s in sizes]
    return counts[0], counts[1], counts[2]


def grow_by_axis(mask: Mask, reach: tuple[int, ...]) -> Mask:
    """Face-connected dilation of ``mask`` reaching at most ``reach[a]`` voxels along each axis ``a``.

    With the same reach on every axis this is ``ndi.binary_dilation(mask, iterations=reach)``; on
    thick slices (a 2 mm root on 5.5 mm slices: reach 0 across the slices) it no longer grows a
    whole slice or more for every voxel of in-plane growth.

    Parameters
    ----------
    mask : ndarray, bool, shape (X, Y, Z)
    reach : tuple of 3 int
        Voxels along each axis (>= 0).

    Returns
    -------
    ndarray, bool, same shape
    """
    out = np.asarray(mask, bool)
    for step in range(max(reach, default=0)):
        structure = np.zeros((3, 3, 3), dtype=bool)
        structure[1, 1, 1] = True
        for axis, n in enumerate(reach):
            if n > step:
                index = [1, 1, 1]
                for end in (0, 2):
                    index[axis] = end
                    structure[tuple(index)] = True
        out = ndi.binary_dilation(out, structure=structure)
    return out


def grown_extent(mask: Mask, margin: tuple[int, ...] | npt.NDArray[np.int_]) -> Box | None:
    """The bounding box of ``mask`` (:func:`defacer.detect.preprocess.mask_box`) grown by ``margin`` voxels
    per axis (clipped to it); ``None`` when empty."""
    box = mask_box(mask)
    if box is None:
        return None
    return tuple(slice(max(0, b.start - int(g)), min(n, b.stop + int(g)))  # type: ignore[return-value]
                 for b, g, n in zip(box, margin, mask.shape, strict=True))


def filled_hull(outline: Mask) -> Mask:
    """The filled convex hull of a 2D mask (with the mask itself; the mask alone when under 3 pixels)."""
    if outline.sum() < 3:
        return outline
    return convex_hull_image(outline) | outline


def _largest_parts(mask: Mask, spacing: npt.NDArray[np.float64]) -> Mask:
    """Drop crumbs: face-connected parts under 200 mm^3 and under 15 % of the largest."""
    parts, count = ndi.label(mask)
    if count <= 1:
        return mask
    sizes = np.bincount(parts.ravel())[1:] * float(np.prod(spacing))
    keep = 1 + np.flatnonzero(sizes >= min(max(200.0, 0.15 * sizes.max()), sizes.max()))
    return np.asarray(np.isin(parts, keep))


def delimit_auricle(image: npt.NDArray[np.floating], head: HeadModel, depth: npt.NDArray[np.float32],
                    spacing: tuple[float, float, float], centre: npt.ArrayLike, outward: npt.ArrayLike,
                    *, search_mm: float = SEARCH_MM, follow_mm: float = FOLLOW_MM,
                    medial_mm: float = MEDIAL_MM, opening_mm: float = OPENING_MM, shell_mm: float = SHELL_MM,
                    root_mm: float = ROOT_MM, reference_mask: bool = False, cut_open: bool = False) -> Auricle | None:
    """The whole auricle near ``centre``, by the module's rule, or ``None`` when nothing stands out there.

    Parameters
    ----------
    image : ndarray, shape (X, Y, Z), float
        Physical intensities in RAS axis order.
    head : HeadModel
        :func:`defacer.head.analyse_head` of ``image`` (threshold, coarse grid).
    depth : ndarray, float32, the head's coarse grid
        :func:`defacer.head.depth_below_surface` of ``head``, in mm.
    spacing : tuple of 3 float
        Voxel size along R, A, S in mm.
    centre : array-like, shape (3,)
        Where to look (e.g. a detected ear's centroid), in voxel indices of ``image``.
    outward : array-like, shape (3,)
        Direction away from the head's midline, in the array's mm axes (normalised here).
    search_mm, follow_mm, medial_mm, opening_mm, shell_mm, root_mm : float
        The rule's distances in mm (defaults: the module's constants): search radius, how far
        beyond it a part reaching into it is followed, medial limit, opening ball radius, shell
        depth and root.
    reference_mask : bool
        Delimit on the reference labels' head mask (:func:`head_mask`: smoothed, its own level, the
        side-view slices' holes filled) instead of the tissue above the head's threshold: the
        auricle the reference labels' rule gives (the detector's ear refinement; held out, ears Dice
        0.59 -> 0.75 on fold A's heads).  Off for the ear distortion, whose larger auricle (lower
        level, no smoothing) covers more of the reference auricles.
    cut_open : bool
        Where the crop reaches the field of view's end on the outward side, take air past it instead of the
        tissue continued (:func:`open_ball`'s ``air_ends``): the stump of an auricle the field cuts then stands out
        (the detector's :func:`defacer.detect.ear_fallback._cut_auricle`, which also bounds its size: a field
        ending inside the head has the rim of its cut face stand out too).  Default off.

    Returns
    -------
    Auricle or None
        ``None`` when no protrusion of at least :data:`MIN_AURICLE_MM3` touching the head
        stands out within ``search_mm`` (a flat or cut-off ear, or no ear at all).
    """
    sp = np.asarray(spacing, float)
    c0 = np.asarray(centre, float)
    out_dir = np.asarray(outward, float)
    out_dir = out_dir / max(float(np.linalg.norm(out_dir)), 1e-9)
    reach = search_mm + RECENTRE_MM + follow_mm
    box = _crop(c0, reach + RECENTRE_MM + GRID_MM, sp, image.shape)
    if any(s.stop - s.start < 2 for s in box):
        return None
    step = tuple(max(1, int(round(GRID_MM / s))) for s in sp)  # noqa: RUF046 - numpy < 2 rounds to float
    cell = sp * np.asarray(step)
    cell_mm3 = float(np.prod(cell))
    axis = int(np.argmax(np.abs(out_dir)))  # the side view's axis
    if reference_mask:
        tissue = head_mask(image[box], head_level(image, head), sp, axes=(axis,))
    else:
        tissue = np.asarray(image[box]) > head.threshold
    # a holder's plate standing beside the head is no part of it (nor of the ear pressed against it); the
    # reference rule's smoothing thickens it by up to SMOOTH_MM on each side
    inside = head.upsample(depth > INTERIOR_MM, box)  # type: ignore[arg-type]
    thickest = SHEET_MM + (2.0 * SMOOTH_MM if reference_mask else 0.0)
    tissue = tissue & ~standing_sheets(tissue | inside, axis, bool(out_dir[axis] > 0), sp, thickest_mm=thickest)
    tissue_c = block_any(tissue, step)
    interior_c, close_c = _crop_blocks(head, depth, spacing, box, step)
    solid_c = tissue_c | interior_c  # the head's inside counts as solid
    outward_high = bool(out_dir[axis] > 0)
    at_field_end = box[axis].stop == image.shape[axis] if outward_high else box[axis].start == 0
    opened = open_ball(solid_c, opening_mm, cell, ((axis, outward_high),) if cut_open and at_field_end else ())
    removed = solid_c & ~opened & tissue_c
    # an auricle stands at most OUTSIDE_MM out of the head with its protrusions rolled off (a head holder farther)
    removed &= close_c
    anchors = ndi.binary_dilation(opened, structure=np.ones((3, 3, 3), dtype=bool))
    offsets = _offsets_mm(removed.shape, box, step, c0, sp)
    first = _search(removed, anchors, offsets, out_dir, search_mm, follow_mm, medial_mm, cell_mm3)
    if first is None:
        return None
    c1 = np.array([float((o * first).sum() / first.sum()) for o in np.broadcast_arrays(*offsets)]) / sp + c0
    # the recentred pass, never farther than ``bound`` from the given centre either
    bound = reach + RECENTRE_MM
    within = offsets[0] ** 2 + offsets[1] ** 2 + offsets[2] ** 2 <= bound**2
    second = _search(removed & within, anchors, _offsets_mm(removed.shape, box, step, c1, sp), out_dir,
                     search_mm + RECENTRE_MM, follow_mm, medial_mm, cell_mm3)
    kept = first
    if second is not None:  # the wider search only extends the parts the first found
        parts, _ = ndi.label(second, structure=np.ones((3, 3, 3), dtype=bool))
        ids = np.unique(parts[first & second])
        kept = np.asarray(np.isin(parts, ids[ids > 0])) | first
    # the side view: footprint of the protrusion (the convex hull of its outline)
    hull = filled_hull(np.asarray(kept.any(axis=axis)))
    reach_root = root_voxels(root_mm, sp)
    grow = max(1, int(max(reach_root)))
    # everything below lies in the footprint's columns (grown by the root): work there only
    region_c, region = _columns(hull, axis, step, grow, tissue.shape)
    tissue_r = tissue[region]
    shape_r = tissue_r.shape
    protrusion_r = tissue_r & block_repeat(kept[region_c], step, shape_r)
    lateral_shape = tuple(1 if a == axis else n for a, n in enumerate(shape_r))
    footprint = block_repeat(np.expand_dims(hull, axis)[region_c], step, lateral_shape)
    full = np.ogrid[tuple(slice(0, n) for n in shape_r)]
    rel = [(g + (r.start + b.start) - c) * s for g, r, b, c, s in zip(full, region, box, c1, sp, strict=True)]
    rel0 = [(g + (r.start + b.start) - c) * s for g, r, b, c, s in zip(full, region, box, c0, sp, strict=True)]
    near = ((rel[0] ** 2 + rel[1] ** 2 + rel[2] ** 2 <= reach**2) & (rel0[0] ** 2 + rel0[1] ** 2 + rel0[2] ** 2 <= bound**2)
            & (rel[0] * out_dir[0] + rel[1] * out_dir[1] + rel[2] * out_dir[2] >= -medial_mm))
    attached = block_repeat(_attached(tissue_c | solid_c, kept)[region_c], step, shape_r)  # a floating holder is never met first
    attached &= block_repeat(close_c[region_c], step, shape_r)
    shell = _shell(tissue_r & near & attached, np.take(footprint, 0, axis=axis), axis, bool(out_dir[axis] > 0),
                   max(1, int(round(shell_mm / sp[axis]))))  # noqa: RUF046
    root = np.zeros(shape_r, dtype=bool)  # the dilation reaches at most ``reach_root`` voxels along each axis
    around = grown_extent(protrusion_r, reach_root)
    if around is not None:
        root[around] = grow_by_axis(protrusion_r[around], reach_root) & tissue_r[around] & near[around]
    found = protrusion_r | shell | root
    mask = np.zeros(tissue.shape, dtype=bool)
    parts = grown_extent(found, (0, 0, 0))
    if parts is not None:
        mask[region][parts] = _largest_parts(found[parts], sp)
    protrusion = np.zeros(tissue.shape, dtype=bool)
    protrusion[region] = protrusion_r
    idx = np.argwhere(protrusion_r) + np.array([r.start for r in region])  # indices in the crop
    centre_voxel = idx.mean(axis=0) + np.array([b.start for b in box]) if idx.size else c1
    return Auricle(box=box, mask=mask, protrusion=protrusion, centre_voxel=centre_voxel)
