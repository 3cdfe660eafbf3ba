"""The three distortions, as pure functions of a RAS image, a feature mask and the head model.

Each function returns :class:`Edit` objects (a box, the voxels to write inside it and their new
values) plus what it estimated or sampled, so a run can be recorded and replayed.  None of them
writes into the image: :func:`defacer.pipeline.deface` applies the edits, never inside the
protected region.

The detector *locates* each feature; the image *delimits* what is changed:

* eyes: a skin cover over the periorbital region (an ellipse sized from the detected eye, with a
  soft edge), whose surface spans the socket from the brow to the upper cheek;
* nose: the detected nose's bounding box x2 set to air, within :data:`NOSE_REACH_MM` of the
  detected nose's centroid (never the lip or the cheeks), except the eye cover and what lies
  behind it (the globes never show through) beside and over the eyes; between the two eyes the
  removal takes the cover too, up to the eyes' centre line;
* ears (:mod:`defacer.distort_ears`): each auricle, as far as it stands out from the head (what a
  morphological opening of the head removes near the detected ear), replaced by noise drawn from
  the scan's own air.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from defacer._typing import Mask
from defacer.detect.preprocess import mask_box
from defacer.head import HeadModel
from defacer.morphology import open_cross
from defacer.options import NOSE_REACH_MM  # with the options: the command line reads it without SciPy

Box = tuple[slice, slice, slice]


@dataclass(frozen=True)
class Edit:
    """New values for some voxels inside a box of the RAS image.

    Attributes
    ----------
    feature : str
        ``"eyes"``, ``"nose"`` or ``"ears"``.
    box : tuple of 3 slice
        Region of the RAS image.
    mask : ndarray, bool, box shape
        Voxels to write.
    values : ndarray, float32, box shape
        New physical values (only read where ``mask``).
    params : dict
        What was estimated or sampled (JSON-serialisable).
    shield : ndarray, bool, box shape, optional
        Voxels that no other edit may write (the eye cover and everything behind it).
    """

    feature: str
    box: Box
    mask: Mask
    values: npt.NDArray[np.float32]
    params: dict[str, Any] = field(default_factory=dict)
    shield: Mask | None = field(default=None, repr=False)


def overlap(box: Box, other: Box) -> tuple[Box, Box] | None:
    """Where two boxes of the same grid overlap, as slices local to ``box`` and local to ``other``; ``None`` if
    they do not."""
    shared = tuple(slice(max(a.start, b.start), min(a.stop, b.stop)) for a, b in zip(box, other, strict=True))
    if any(s.stop <= s.start for s in shared):
        return None
    mine = tuple(slice(o.start - b.start, o.stop - b.start) for o, b in zip(shared, box, strict=True))
    theirs = tuple(slice(o.start - b.start, o.stop - b.start) for o, b in zip(shared, other, strict=True))
    return mine, theirs  # type: ignore[return-value]


def components(mask: Mask, max_count: int, min_fraction: float = 0.05) -> list[Box]:
    """Bounding boxes of the largest connected components of ``mask``, largest first.

    Components smaller than ``min_fraction`` of the largest are ignored (detector crumbs).
    """
    # Label only inside the mask's bounding box: much faster than labelling the whole volume.
    crop = mask_box(mask)
    if crop is None:
        return []
    labels, _count = ndimage.label(mask[crop])
    sizes = np.bincount(labels.ravel())[1:]
    order = np.argsort(sizes)[::-1]
    keep = [int(i) for i in order[:max_count] if sizes[i] >= min_fraction * sizes[order[0]]]
    boxes = ndimage.find_objects(labels)
    return [
        tuple(slice(b.start + c.start, b.stop + c.start) for b, c in zip(boxes[i], crop, strict=True))  # type: ignore[misc]
        for i in keep
    ]


def grow_box(box: Box, shape: tuple[int, ...], scale: float = 1.0, pad: tuple[int, int, int] = (0, 0, 0)) -> Box:
    """Scale a box about its centre and pad it by ``pad`` voxels per axis, clipped to ``shape``."""
    out = []
    for s, n, p in zip(box, shape, pad, strict=True):
        centre = (s.start + s.stop) / 2.0
        half = (s.stop - s.start) * scale / 2.0 + p
        out.append(slice(max(0, int(np.floor(centre - half))), min(n, int(np.ceil(centre + half)))))
    return tuple(out)  # type: ignore[return-value]


def _mm_to_voxels(mm: float, spacing: tuple[float, float, float]) -> tuple[int, int, int]:
    return tuple(int(np.ceil(mm / s)) for s in spacing)  # type: ignore[return-value]


def _smoothstep(t: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
    """0 for t <= 0, 1 for t >= 1, a raised cosine in between (continuous slope at both ends)."""
    return (0.5 - 0.5 * np.cos(np.pi * np.clip(t, 0.0, 1.0))).astype(np.float32)


# ------------------------------------------------------------------------------------------ eyes


#: Largest semi-axes (R, S) of the full-weight cover ellipse of one eye, in mm: the periorbital region
#: reaches about 25 mm from the eye's centre to the brow and to the upper cheek, and 20 to 30 mm to
#: the nasal bridge and past the outer corner.  The detected eyes of the real heads (globe and lids,
#: 25 to 35 mm) give 25 to 35 mm at the default scale 2; a detection run into the brow or the
#: temple would otherwise spread the cover over the forehead.
EYE_SEMI_MAX_MM = (35.0, 35.0)


def eye_region(eyes: Mask, component: Box, spacing: tuple[float, float, float], scale: float,
               semi_max_mm: tuple[float, float] = EYE_SEMI_MAX_MM) -> tuple[tuple[float, float], tuple[float, float]]:
    """Centre (R, S voxel index) and semi-axes (R, S, mm) of the cover ellipse of one detected eye.

    The ellipse is inscribed in the eye's bounding box scaled ``scale`` times in R and S about
    the eye's centroid: with the default 2 and an eye label of the globe and lids (about 26 mm),
    it spans about 52 mm, from the nasal bridge to the outer corner of the eye and from the brow
    to the upper cheek.  Neither semi-axis exceeds ``semi_max_mm`` (R, S), whatever the detection.
    """
    idx = np.nonzero(eyes[component])
    centre = (component[0].start + float(idx[0].mean()), component[2].start + float(idx[2].mean()))
    semi = tuple(min(scale * (component[axis].stop - component[axis].start) * spacing[axis] / 2.0, bound)
                 for axis, bound in zip((0, 2), semi_max_mm, strict=True))
    return centre, semi  # type: ignore[return-value]


#: Tissue standing up to this far in front of the eye cover is cut to it; beyond twice this the cover fades out (mm).
CUT_MM = 12.0
#: An edge of the eye cover this far in front of the opposite edge, and of its own broad level, is on the nose (mm).
EDGE_STEP_MM = 10.0
#: Width along R of the grey opening that gives an edge of the eye cover its broad level (mm): wider than a nose
#: (about 35 mm at the alae), narrower than a cheek.  On a head pitched chin-up the cheeks stand 10 mm or more in
#: front of the brow all along R; they are not a nose and the cover must not cut them.
NOSE_WIDTH_MM = 40.0
#: Width of the eye cover's soft edge outside its ellipse (mm): :func:`distort_eyes`' default.
EYE_FEATHER_MM = 10.0
#: Smoothing of the eye cover along R (mm).
SMOOTH_R_MM = 10.0
#: Distance over which the face's slope is read at the edge of the eye cover (mm).
SLOPE_MM = 4.0


def distort_eyes(
    image: npt.NDArray[np.floating],
    eyes: Mask,
    head: HeadModel,
    spacing: tuple[float, float, float],
    *,
    band_mm: float = 6.0,
    box_scale: float = 2.0,
    feather_mm: float = EYE_FEATHER_MM,
    join: bool = True,
    open_between: bool = True,
) -> list[Edit]:
    """Cover each eye with skin, confined to the periorbital region and blended into the face.

    For each detected eye (at most two), the cover region is an ellipse in the coronal (R, S)
    plane centred on the eye, its semi-axes ``box_scale`` times the eye's half-extent, at most
    :data:`EYE_SEMI_MAX_MM` (:func:`eye_region`); with two eyes and ``join`` (the default) one cover spans both, the
    stadium the mean ellipse sweeps from one eye to the other, across the nasal bridge (two
    separate round covers, outlined by the nose removal between them, read as a pair of eyes to
    dlib's face detector).  The face surface is read as a height map along the anterior (A)
    axis.  Inside the region a cover surface spans the socket: in every R column it is the cubic
    curve from the surface just below the region (the upper cheek) to the surface just above it
    (the brow), leaving and meeting each with the face's own slope (:func:`_span_socket`), then
    smoothed along R; the lids, their folds and the hollow of the socket are under or in front
    of it.  The new surface is the cover blended with the original by a weight that falls
    smoothly (raised cosine) from 1 at the region's edge to 0 at ``feather_mm`` outside it, so
    the cover meets the face with neither edge nor step.
    Where the face stands more than :data:`CUT_MM` in front of the cover (the side of the
    nose), the weight fades out too, reaching 0 at twice that.  (The cover may stand far in
    front of the face: on T1 the thin lids over the dark globe often fall below the threshold,
    so the socket reads deep, and it must be filled.)

    Voxels between the new surface and ``band_mm`` x weight behind it become skin (the median of
    this scan's superficial tissue in the region), tissue in front of it becomes air
    (``head.background``), and the voxel the surface crosses gets the partial value of its
    filled fraction, so the surface is smooth below the voxel size.  The eye itself, behind the
    skin layer, is untouched; the cover and everything behind it form the edit's ``shield``, which
    the nose removal leaves alone.

    Parameters
    ----------
    image : ndarray, shape (X, Y, Z)
        RAS image, physical values.
    eyes : ndarray, bool, shape (X, Y, Z)
        Eye label mask (both eyes).
    head : HeadModel
    spacing : tuple of 3 float
        Voxel size along R, A, S in mm.
    band_mm : float
        Thickness of the skin layer laid under the new surface (at full weight), in mm.
    box_scale : float
        Size of the cover ellipse: its semi-axes are this many times the eye's half-extent.
    feather_mm : float
        Width of the soft edge over which the cover blends into the face, in mm.
    join : bool
        One cover over both eyes (across the nasal bridge) when two are found.
    open_between : bool
        With ``join`` and two eyes: the columns between the two eye labels along R (no globe behind them) are
        left out of the cover's ``shield``, so a nose removal (:func:`distort_nose` with this edit in ``keep``)
        takes the cover there, up to the eyes' centre line.  Without a nose removal it changes nothing.

    Returns
    -------
    list of Edit
        One cover over both eyes, or one per eye found (at most two) without ``join``.
    """
    found = components(eyes, 2)  # once: the covers' regions and the opening between the eyes read the same two
    groups = _cover_groups(eyes, found, spacing, box_scale, join)
    between = _between_the_eyes(eyes, found) if open_between and len(groups) == 1 and len(groups[0]) == 2 else None
    level = (min(c[2].start for c in found), max(c[2].stop for c in found)) if found else None
    edits = []
    for index, group in enumerate(groups):
        edit = _eye_cover(image, head, spacing, group, index, band_mm=band_mm, feather_mm=feather_mm,
                          open_between=between, eye_level=level)
        if edit is not None:
            edits.append(edit)
    return edits


#: One eye's cover region: centre (R, S voxel index), semi-axes (R, S, mm), the eye label's posterior start (A index).
EyeRegion = tuple[tuple[float, float], tuple[float, float], int]


def _cover_groups(eyes: Mask, found: list[Box], spacing: tuple[float, float, float], box_scale: float,
                  join: bool) -> list[list[EyeRegion]]:
    """The eye regions (:func:`eye_region` of ``found``, the eyes' :func:`components`, at most two) each cover of
    :func:`distort_eyes` spans."""
    regions = []
    for component in found:
        centre, semi = eye_region(eyes, component, spacing, box_scale)
        if min(semi) > 0:
            regions.append((centre, semi, component[1].start))
    return [regions] if join and len(regions) == 2 else [[region] for region in regions]


def eye_cover_boxes(eyes: Mask, spacing: tuple[float, float, float], *, band_mm: float = 6.0, box_scale: float = 2.0,
                    feather_mm: float = EYE_FEATHER_MM, join: bool = True) -> list[Box]:
    """The boxes :func:`distort_eyes` reads and writes, with the same arguments: the only voxels of the image it reads.

    Parameters
    ----------
    eyes : ndarray, bool, shape (X, Y, Z)
        Eye label mask (both eyes), RAS; its shape is the image's.
    spacing, band_mm, box_scale, feather_mm, join
        As :func:`distort_eyes`.

    Returns
    -------
    list of tuple of 3 slice
        One per cover (each may still find no face in it and give no edit).
    """
    return [_cover_box(eyes.shape, spacing, group, band_mm=band_mm, feather_mm=feather_mm)
            for group in _cover_groups(eyes, components(eyes, 2), spacing, box_scale, join)]


def _cover_box(shape: tuple[int, ...], spacing: tuple[float, float, float], regions: list[EyeRegion], *,
               band_mm: float, feather_mm: float) -> Box:
    """The box of one cover over ``regions``: the ellipses' outer edge and a margin along R and S, from the eye
    label's posterior start less ``band_mm`` + 20 mm to the image's anterior end."""
    centres = np.array([c for c, _, _ in regions], dtype=np.float64)  # (n, 2) voxel R, S
    a_r = float(np.mean([sm[0] for _, sm, _ in regions])) + feather_mm
    a_s = float(np.mean([sm[1] for _, sm, _ in regions])) + feather_mm
    back = _mm_to_voxels(band_mm + 20.0, spacing)[1]
    # Beyond the region: room to read the surface's slope at its edge and to smooth along R.
    margin = _mm_to_voxels(SLOPE_MM + 2.0, spacing)
    lo_r, hi_r = centres[:, 0].min() - a_r / spacing[0], centres[:, 0].max() + a_r / spacing[0]
    lo_s, hi_s = centres[:, 1].min() - a_s / spacing[2], centres[:, 1].max() + a_s / spacing[2]
    return (
        slice(max(0, int(np.floor(lo_r)) - margin[0]), min(shape[0], int(np.ceil(hi_r)) + 1 + margin[0])),
        slice(max(0, min(start for _, _, start in regions) - back), shape[1]),
        slice(max(0, int(np.floor(lo_s)) - margin[2]), min(shape[2], int(np.ceil(hi_s)) + 1 + margin[2])),
    )


def _between_the_eyes(eyes: Mask, found: list[Box]) -> tuple[float, float] | None:
    """The R range (voxel index, exclusive) between the two largest eye components (``found``, the eyes'
    :func:`components`): from one eye's centroid plus its half-extent along R to the other's centroid less its own;
    ``None`` without two eyes or where they overlap along R."""
    halves = []
    for component in found:
        r = np.nonzero(eyes[component])[0]
        halves.append((component[0].start + float(r.mean()), (component[0].stop - component[0].start) / 2.0))
    if len(halves) != 2:
        return None
    (c0, h0), (c1, h1) = sorted(halves)
    lo, hi = c0 + h0, c1 - h1
    return (lo, hi) if hi > lo else None


def _eye_cover(image: npt.NDArray[np.floating], head: HeadModel, spacing: tuple[float, float, float],
               regions: list[EyeRegion], index: int, *, band_mm: float, feather_mm: float,
               open_between: tuple[float, float] | None = None,
               eye_level: tuple[int, int] | None = None) -> Edit | None:
    """One skin cover over the eye regions given (centre, semi-axes, anterior start of the eye label).

    With two eyes the region is the stadium swept by the (mean) ellipse from one eye's centre to
    the other's, so the cover runs across the nasal bridge in one piece.  The columns strictly inside
    ``open_between`` (an R range of voxel indices, between the two eyes: no globe lies behind them) are left
    out of the edit's shield, so the nose removal takes the cover there too, up to the eyes' centre line.
    """
    centres = np.array([c for c, _, _ in regions], dtype=np.float64)  # (n, 2) voxel R, S
    # Full weight inside the nominal ellipse, the soft edge outside it.
    a_r = float(np.mean([sm[0] for _, sm, _ in regions])) + feather_mm
    a_s = float(np.mean([sm[1] for _, sm, _ in regions])) + feather_mm
    box = _cover_box(image.shape, spacing, regions, band_mm=band_mm, feather_mm=feather_mm)
    local = np.asarray(image[box], dtype=np.float32)
    tissue = open_cross(local > head.threshold)  # drop isolated noise voxels in the air (ndimage.binary_opening)
    rho = _stadium_distance(local.shape[0], local.shape[2], box, centres, (a_r, a_s), spacing)
    soft = min(0.9, feather_mm / min(a_r, a_s))
    if eye_level is not None:
        # lateral of the eyes' centres, in the soft edge, at the eyes' own level (S)
        r_index = np.arange(box[0].start, box[0].stop, dtype=np.float64)
        s_index = np.arange(box[2].start, box[2].stop)
        beside = ((r_index < centres[:, 0].min()) | (r_index > centres[:, 0].max()))[:, None] & (
            (s_index >= eye_level[0]) & (s_index < eye_level[1]))[None, :]
        tissue = _drop_floating(tissue, (rho >= 1.0 - soft) & beside, spacing)
    height, present = _surface_height(tissue)
    if not present.any():
        return None
    surface = height + 0.5  # the front face of the most anterior tissue voxel, in A voxel units
    weight = np.where(present, _smoothstep((1.0 - rho) / soft), 0.0).astype(np.float32)
    cover = _span_socket(surface, present, rho < 1.0, spacing)
    # Where the face stands far in front of the cover (the side of the nose), the cover fades out:
    # lids and brow up to CUT_MM in front of it go, a nose never.
    cut_mm = (surface - cover) * spacing[1]
    weight *= _smoothstep((2.0 * CUT_MM - cut_mm) / CUT_MM)
    target = weight * cover + (1.0 - weight) * surface
    active = weight > 0.02
    y = np.arange(local.shape[1], dtype=np.float32)[None, :, None]
    new_surface = target[:, None, :]
    filled = np.clip(new_surface + 0.5 - y, 0.0, 1.0)  # fraction of each voxel behind the new surface
    band = (band_mm / spacing[1]) * weight[:, None, :]
    on = active[:, None, :]
    # Air-side cut: anything brighter than half-way from air to the tissue threshold goes.
    bright = local > head.background + 0.5 * (head.threshold - head.background)
    # The skin layer: from band x weight behind the new surface (or from the old surface when the
    # cover stands in front of it) up to the voxel the new surface crosses.
    lower = np.minimum(new_surface - band, surface[:, None, :]) - 0.5
    layer = on & (filled > 0) & (y > lower)
    removed = on & (filled < 1) & bright
    superficial = on & tissue & (y >= surface[:, None, :] - 0.5 - 3.0 / spacing[1]) & (y < surface[:, None, :])
    skin_voxels = local[superficial]
    skin = float(np.median(skin_voxels)) if skin_voxels.size else float(np.median(local[tissue]))
    mask = layer | removed
    values = (head.background + filled * (skin - head.background)).astype(np.float32)
    shield = on & (filled > 0)
    if open_between is not None:
        # Between the eyes the nose removal goes up to the eyes' centre line through the cover: a cover left
        # over the nose's root stood as a ledge over the removal, whose shadow and the bump above it read as a
        # nose with nostrils to the face detectors (docs/distortion.md, "The nose's root").
        r = np.arange(box[0].start, box[0].stop)
        shield &= ~((r > open_between[0]) & (r < open_between[1]))[:, None, None]
    shift = np.abs(target - surface)[active]
    return Edit("eyes", box, mask, values,
                {"component": index, "eyes_covered": len(regions), "skin_value": skin, "box": _box_list(box),
                 "band_mm": band_mm, "centres_rs_voxel": [[round(float(c), 2) for c in cc] for cc in centres],
                 "outer_semi_axes_rs_mm": [round(a_r, 2), round(a_s, 2)], "feather_mm": feather_mm,
                 "max_surface_shift_mm": float(shift.max() * spacing[1]) if shift.size else 0.0,
                 "open_to_nose_r_voxel": None if open_between is None else
                 [round(float(v), 2) for v in open_between]},
                shield=shield)


#: A piece of tissue at most this thick along A (mm), standing in the air outside the head in front of the face, is
#: not the face where the eye cover's soft edge lies lateral of the eyes (:func:`_drop_floating`): the cover cuts up to
#: :data:`CUT_MM` of the face in front of it, and nothing thicker stands free there.
FLOATING_MM = CUT_MM


def _drop_floating(tissue: Mask, columns: Mask, spacing: tuple[float, float, float]) -> Mask:
    """``tissue`` without the thin pieces that stand in the outside air in front of the face in ``columns``.

    Lateral of the eyes, in the eye cover's soft edge, nothing of the face stands free in front of it; what does is
    an image of the moving eye repeated along the phase-encoding direction (a motion ghost: a faint bar at the eyes'
    level, in the air beside the face) or noise.  Read as the face, the soft edge blended the cover into it and cut it
    half-way, leaving a notch in a bar beside the eye that face detectors took for an eye in oblique renders
    (docs/distortion.md, Eyes).  In every column of ``columns`` (R, S) whose most anterior run of tissue along A is at
    most :data:`FLOATING_MM` thick and has air behind it that reaches the box's anterior end around it (the outside
    air, not a dark part of the head such as bone or a globe) and tissue again further back, that run is dropped;
    repeated while such runs remain (at most three times).

    Parameters
    ----------
    tissue : ndarray, bool, shape (R, A, S)
        Tissue of the eye cover's box, A increasing anteriorly.
    columns : ndarray, bool, shape (R, S)
        Columns where pieces may be dropped.
    spacing : tuple of 3 float
        Voxel size along R, A, S in mm.

    Returns
    -------
    ndarray, bool, shape (R, A, S)
        A copy with the floating runs removed, even where none is found (``tissue`` itself only where ``columns``
        holds no column).
    """
    levels = np.flatnonzero(columns.any(axis=0))
    if not levels.size:
        return tissue
    # only the axial planes (S) holding such columns: the rule reads nothing across planes
    planes = slice(int(levels[0]), int(levels[-1]) + 1)
    columns = columns[:, planes]
    plane = np.zeros((3, 3, 3), dtype=bool)
    plane[:, :, 1] = ndimage.generate_binary_structure(2, 1)  # connected within each axial (R, A) plane only
    air, _ = ndimage.label(~tissue[:, :, planes], structure=plane)
    outside = np.unique(air[:, -1, :])
    outside_air = np.isin(air, outside[outside > 0])
    n_a = tissue.shape[1]
    a = np.arange(n_a)[None, :, None]
    thick = max(1, int(np.floor(FLOATING_MM / spacing[1])))
    out = tissue[:, :, planes]
    for _ in range(3):
        present = out.any(axis=1)
        front = np.where(present, n_a - 1 - np.argmax(out[:, ::-1, :], axis=1), -1)  # most anterior tissue voxel
        gap = ~out & (a < front[:, None, :])
        gap_top = np.where(gap.any(axis=1), n_a - 1 - np.argmax(gap[:, ::-1, :], axis=1), -1)  # air right behind the run
        behind = (out & (a < gap_top[:, None, :])).any(axis=1)
        gap_outside = np.take_along_axis(outside_air, np.maximum(gap_top, 0)[:, None, :], axis=1)[:, 0, :]
        drop = columns & present & (gap_top >= 0) & behind & gap_outside & (front - gap_top <= thick)
        if not drop.any():
            break
        out = out & ~(drop[:, None, :] & (a > gap_top[:, None, :]))
    whole = tissue.copy()
    whole[:, :, planes] = out
    return whole


def _stadium_distance(n_r: int, n_s: int, box: Box, centres: npt.NDArray[np.float64], semi: tuple[float, float],
                      spacing: tuple[float, float, float]) -> npt.NDArray[np.float64]:
    """Distance of every (R, S) column of ``box``, in units of the semi-axes, to the segment joining ``centres``.

    Below 1 inside the ellipse around one centre, or the stadium it sweeps between two.
    """
    r = ((np.arange(n_r) + box[0].start) * spacing[0] / semi[0])[:, None]
    s = ((np.arange(n_s) + box[2].start) * spacing[2] / semi[1])[None, :]
    q = centres * np.array([spacing[0] / semi[0], spacing[2] / semi[1]])
    start, direction = q[0], q[-1] - q[0]
    length2 = float(direction @ direction)
    t = 0.0 if length2 == 0 else np.clip(((r - start[0]) * direction[0] + (s - start[1]) * direction[1]) / length2, 0, 1)
    return np.sqrt((r - start[0] - t * direction[0]) ** 2 + (s - start[1] - t * direction[1]) ** 2)


def _surface_height(tissue: Mask) -> tuple[npt.NDArray[np.float32], Mask]:
    """Index along axis 1 (A) of the most anterior tissue voxel of each (R, S) column, and where one exists."""
    present = np.asarray(tissue.any(axis=1))
    n = tissue.shape[1]
    last = n - 1 - np.argmax(tissue[:, ::-1, :], axis=1)
    return np.where(present, last, 0).astype(np.float32), present


def _smooth_height(height: npt.NDArray[np.float32], present: Mask, sigma: tuple[float, float]) -> npt.NDArray[np.float32]:
    """Gaussian smoothing of a height map over the columns where it is defined (normalised convolution)."""
    weight = ndimage.gaussian_filter(present.astype(np.float32), sigma, mode="nearest")
    total = ndimage.gaussian_filter(np.where(present, height, 0).astype(np.float32), sigma, mode="nearest")
    return np.where(weight > 1e-3, total / np.maximum(weight, 1e-3), height).astype(np.float32)


def _broad_level(edge: npt.NDArray[np.float32], has: Mask, spacing_r: float) -> npt.NDArray[np.float32]:
    """The height an edge of the eye region keeps once anything narrower than :data:`NOSE_WIDTH_MM` along R is removed.

    Parameters
    ----------
    edge : ndarray, shape (R,)
        Height (A voxels) of the region's lower or upper edge in each R column.
    has : ndarray, bool, shape (R,)
        Columns that cross the region; the others never lower the level.
    spacing_r : float
        Voxel size along R (mm).

    Returns
    -------
    ndarray, shape (R,), float32
        A grey opening of ``edge`` along R: never above ``edge``.
    """
    width = max(3, int(round(NOSE_WIDTH_MM / spacing_r)) | 1)  # noqa: RUF046 - numpy < 2 rounds to float
    ceiling = float(edge.max()) + 1e3 if edge.size else 0.0
    opened = ndimage.grey_opening(np.where(has, edge, ceiling), size=width, mode="nearest")
    return np.minimum(opened, edge).astype(np.float32)


def _span_socket(surface: npt.NDArray[np.float32], present: Mask, inside: Mask,
                 spacing: tuple[float, float, float], slope_mm: float = SLOPE_MM) -> npt.NDArray[np.float32]:
    """A surface spanning the region ``inside`` along S from its lower to its upper edge, smoothed along R.

    In every R column (axis 0) the height is the cubic (Hermite) curve that leaves the (lightly
    smoothed) surface just below the region and meets it just above with the surface's own
    slopes there (measured over ``slope_mm``), so a convex face stays convex and any hollow
    between the brow and the cheek is bridged.  The curve never bulges more than a quarter of
    its span beyond the straight line.  An edge more than :data:`EDGE_STEP_MM` in front of the
    other and of its own broad level along R (:func:`_broad_level`; the nose, below the nasal bridge,
    not a cheek) is moved back to that, or to the broad level where that lies in front, with a flat slope.  The curves are then smoothed along R (Gaussian,
    :data:`SMOOTH_R_MM`), so that neighbouring columns agree and the rise towards the nose
    between two eyes is a broad swell, not a ridge that reads as a nose.  Outside
    the region the surface is returned as it is.
    """
    smooth = _smooth_height(surface, present, (1.5 / spacing[0], 1.5 / spacing[2]))
    n_s = surface.shape[1]
    rows = np.arange(n_s)
    has = np.asarray(inside.any(axis=1))
    first = np.where(has, np.argmax(inside, axis=1), 0)
    last = np.where(has, n_s - 1 - np.argmax(inside[:, ::-1], axis=1), 0)
    lo = np.clip(first - 1, 0, n_s - 1)
    hi = np.clip(last + 1, 0, n_s - 1)
    k = max(1, int(round(slope_mm / spacing[2])))  # noqa: RUF046 - numpy < 2 rounds to float
    columns = np.arange(surface.shape[0])
    v0, v1 = smooth[columns, lo], smooth[columns, hi]
    below = np.clip(lo - k, 0, n_s - 1)
    above = np.clip(hi + k, 0, n_s - 1)
    m0 = (v0 - smooth[columns, below]) / np.maximum(lo - below, 1)  # A voxels per S voxel, leaving the lower edge
    m1 = (smooth[columns, above] - v1) / np.maximum(above - hi, 1)  # arriving at the upper edge
    # An edge far in front of the other and of its own broad level along R is on the nose (below the
    # eyes, between them), not on the cheek or the brow: start the curve level with the other edge
    # instead (never behind that broad level), flat.  A cheek in front of the brow (a head pitched
    # chin-up) is broad, so it stays.
    limit = EDGE_STEP_MM / spacing[1]
    broad0, broad1 = _broad_level(v0, has, spacing[0]), _broad_level(v1, has, spacing[0])
    nose_low = has & (v0 > v1 + limit) & (v0 > broad0 + limit)
    nose_high = has & (v1 > v0 + limit) & (v1 > broad1 + limit)
    v0, m0 = np.where(nose_low, np.maximum(v1 + limit, broad0), v0), np.where(nose_low, 0.0, m0)
    v1, m1 = np.where(nose_high, np.maximum(v0 + limit, broad1), v1), np.where(nose_high, 0.0, m1)
    span = np.maximum(hi - lo, 1).astype(np.float32)
    t = np.clip((rows[None, :] - lo[:, None]) / span[:, None], 0.0, 1.0)
    h00, h10, h01, h11 = 2 * t**3 - 3 * t**2 + 1, t**3 - 2 * t**2 + t, -2 * t**3 + 3 * t**2, t**3 - t**2
    line = v0[:, None] + t * (v1 - v0)[:, None]
    curve = h00 * v0[:, None] + h10 * (span * m0)[:, None] + h01 * v1[:, None] + h11 * (span * m1)[:, None]
    bulge = 0.25 * span[:, None] * spacing[2] / spacing[1]
    spanned = np.clip(curve, line - bulge, line + bulge)
    spanned = np.where(inside, spanned, smooth)
    spanned = ndimage.gaussian_filter1d(spanned, SMOOTH_R_MM / spacing[0], axis=0, mode="nearest")
    return np.where(inside, spanned, surface).astype(np.float32)


# ------------------------------------------------------------------------------------------ nose




#: The nose removal's lower end: it reaches this far (mm) below the bottom of the box x2 under the nose, across
#: :data:`NOSE_DROP_FLAT_MM` either side of the detected nose's centroid along R, rising 1 mm per mm beyond that (a
#: trapezoid; the box's lower corners beyond twice that width are trimmed by the same slope).  The box's flat bottom
#: left the upper lip's ledge and the nostrils' shadow under the opening, where face detectors on the 18-view grid
#: found a face (docs/distortion.md, Nose, FACES27 and FACES28).
NOSE_DROP_MM = 15.0
#: Half-width (mm, along R from the detected nose's centroid) of the lower end's flat part (:data:`NOSE_DROP_MM`).  At
#: 15 mm BlazeFace short-range reached its verify threshold on two oblique views of real heads; at 12 mm none did.
NOSE_DROP_FLAT_MM = 12.0
#: Below the box x2's bottom the removal stays within this distance (mm) of the detected nose's centroid: the lower lip
#: and the chin are not the nose (a lower end of the full width took 2,300 to 3,000 mm^3 of them per head).
NOSE_DROP_REACH_MM = 48.0


@dataclass(frozen=True)
class NoseRegion:
    """What the nose removal may set to air: the box x2, within a ball about the detected nose, and its lower end.

    Attributes
    ----------
    box : tuple of 3 slice
        The nose's bounding box enlarged (:func:`nose_box`), clipped to the ball's bounding box, then extended
        ``drop_mm`` down along S (the lower end; clipped to the image and to the ball of ``drop_reach_mm``).
    centre : tuple of 3 float
        The detected nose's centroid, RAS voxel index.
    reach_mm : float
        Radius of the ball about ``centre``, in mm.
    spacing : tuple of 3 float
        Voxel size along R, A, S in mm.
    bottom : int or None
        S index of the bottom of the box x2 before the lower end was added; None: no lower end (``box`` is the box
        x2 and the removal is the box within its ball).
    drop_mm, flat_mm, drop_reach_mm : float
        The lower end (:data:`NOSE_DROP_MM`, :data:`NOSE_DROP_FLAT_MM`, :data:`NOSE_DROP_REACH_MM`): read only
        when ``bottom`` is set.
    """

    box: Box
    centre: tuple[float, float, float]
    reach_mm: float
    spacing: tuple[float, float, float]
    bottom: int | None = None
    drop_mm: float = NOSE_DROP_MM
    flat_mm: float = NOSE_DROP_FLAT_MM
    drop_reach_mm: float = NOSE_DROP_REACH_MM

    def within(self) -> Mask:
        """The voxels of ``box`` the removal may take (bool, box shape).

        Those within ``reach_mm`` of ``centre``; with a lower end (``bottom``), only those at or above it: at
        S >= bottom - ``drop_mm`` + max(0, |dR| - ``flat_mm``) (mm, dR the R offset from ``centre``, 1 mm per mm
        beyond the flat part, so the box's lower corners are trimmed by the same slope), and below ``bottom``
        only within ``drop_reach_mm`` of ``centre``.
        """
        axes = [((np.arange(s.start, s.stop) - c) * sp) ** 2
                for s, c, sp in zip(self.box, self.centre, self.spacing, strict=True)]
        distance2 = axes[0][:, None, None] + axes[1][None, :, None] + axes[2][None, None, :]
        inside = distance2 <= self.reach_mm**2
        if self.bottom is None:
            return np.asarray(inside)
        r_mm = np.abs(np.arange(self.box[0].start, self.box[0].stop) - self.centre[0]) * self.spacing[0]
        s_index = np.arange(self.box[2].start, self.box[2].stop)
        s_mm = (s_index - self.bottom) * self.spacing[2]  # above the box x2's bottom (mm)
        low = -self.drop_mm + np.maximum(0.0, r_mm - self.flat_mm)  # the lower end per R column (mm)
        inside &= (s_mm[None, :] >= low[:, None])[:, None, :]
        below = (s_index < self.bottom)[None, None, :]
        inside &= ~below | (distance2 <= self.drop_reach_mm**2)
        return np.asarray(inside)


def nose_box(nose: Mask, shape: tuple[int, int, int], scale: float = 2.0, posterior_limit: int = 0) -> Box | None:
    """The nose's bounding box enlarged ``scale`` times per axis about its centre.

    The box is clipped to the image and to the head's anterior side: its posterior end (low
    end of the A axis) never goes behind ``posterior_limit`` (the head's centre along A).  The
    protected region (see :mod:`defacer.pipeline`) still bounds what may change inside it.
    """
    found = components(nose, 1)
    if not found:
        return None
    grown = grow_box(found[0], shape, scale)
    return (grown[0], slice(max(grown[1].start, posterior_limit), grown[1].stop), grown[2])


def nose_region(nose: Mask, shape: tuple[int, int, int], spacing: tuple[float, float, float], scale: float = 2.0,
                posterior_limit: int = 0, reach_mm: float = NOSE_REACH_MM, *, drop_mm: float = NOSE_DROP_MM,
                flat_mm: float = NOSE_DROP_FLAT_MM, drop_reach_mm: float = NOSE_DROP_REACH_MM) -> NoseRegion | None:
    """The nose box x ``scale`` (:func:`nose_box`) within ``reach_mm`` of the detected nose's centroid, with its
    lower end (:class:`NoseRegion`).

    Parameters
    ----------
    nose : ndarray, bool, shape (X, Y, Z)
        Nose label mask, RAS.
    shape : tuple of 3 int
        Image shape.
    spacing : tuple of 3 float
        Voxel size along R, A, S in mm.
    scale : float
        Enlargement of the nose's bounding box per axis.
    posterior_limit : int
        The box never reaches behind this A index (the head's centre).
    reach_mm : float
        Nothing further than this from the centroid of the largest nose component is removed, in
        mm: however long the detection (a nose run into the lip, a spurious blob), the removal
        stays on the nose.
    drop_mm, flat_mm, drop_reach_mm : float
        The lower end under the box x ``scale`` (:data:`NOSE_DROP_MM`, :data:`NOSE_DROP_FLAT_MM`,
        :data:`NOSE_DROP_REACH_MM`); ``drop_mm`` 0: none, the box's flat bottom.

    Returns
    -------
    NoseRegion or None
        None when no nose is detected.
    """
    box = nose_box(nose, shape, scale, posterior_limit)
    if box is None:
        return None
    component = components(nose, 1)[0]
    idx = np.nonzero(nose[component])
    centre = tuple(s.start + float(i.mean()) for s, i in zip(component, idx, strict=True))
    ball = tuple(slice(max(0, int(np.floor(c - reach_mm / sp))), int(np.ceil(c + reach_mm / sp)) + 1)
                 for c, sp in zip(centre, spacing, strict=True))
    clipped = tuple(slice(max(b.start, r.start), max(max(b.start, r.start), min(b.stop, r.stop)))
                    for b, r in zip(box, ball, strict=True))
    if drop_mm <= 0:
        return NoseRegion(clipped, centre, reach_mm, spacing)  # type: ignore[arg-type]
    # the lower end: drop_mm further down, never beyond the ball of drop_reach_mm (which alone may reach there)
    bottom = clipped[2].start
    low = max(0, bottom - int(np.ceil(drop_mm / spacing[2])), int(np.floor(centre[2] - drop_reach_mm / spacing[2])))
    extended = (clipped[0], clipped[1], slice(min(low, bottom), clipped[2].stop))
    return NoseRegion(extended, centre, reach_mm, spacing, bottom, drop_mm, flat_mm, drop_reach_mm)  # type: ignore[arg-type]


def distort_nose(image: npt.NDArray[np.floating], region: NoseRegion, head: HeadModel, *,
                 keep: Sequence[Edit] = ()) -> Edit:
    """Set the nose region to this scan's air value (``head.background``), except what ``keep`` shields.

    Parameters
    ----------
    image : ndarray
        RAS image (only its shape matters).
    region : NoseRegion
        The nose box x2 within its ball (:func:`nose_region`).
    head : HeadModel
    keep : sequence of Edit
        Edits whose ``shield`` the nose removal must leave alone (the eye covers: the cover and
        the eye behind it, so the removal never opens a window onto the globes; between the two
        eyes the cover's shield is open, :func:`distort_eyes`); nor does it reach above the eyes'
        centre line (the cover over the nose's root, and the forehead).
    """
    box = region.box
    shape = tuple(s.stop - s.start for s in box)
    within = region.within()
    mask = within.copy()
    for edit in keep:
        if edit.shield is None:
            continue
        # Nothing above the eyes' centre line either (there the cover lies over the nose's root at
        # full weight): the box x2 would cut a slot into the cover's edge and the forehead.
        centres = edit.params.get("centres_rs_voxel")
        if centres:
            top = int(np.ceil(np.mean([c[1] for c in centres]))) - box[2].start
            mask[:, :, max(0, top):] = False
        shared = overlap(box, edit.box)
        if shared is None:
            continue
        mine, theirs = shared
        mask[mine] &= ~edit.shield[theirs]
    values = np.full(shape, head.background, dtype=np.float32)
    return Edit("nose", box, mask, values, {"background_value": head.background, "box": _box_list(box),
                                            "centre_voxel": [round(c, 2) for c in region.centre],
                                            "reach_mm": region.reach_mm,
                                            "lower_end": None if region.bottom is None else
                                            {"bottom_voxel": int(region.bottom), "drop_mm": region.drop_mm,
                                             "flat_mm": region.flat_mm, "reach_mm": region.drop_reach_mm},
                                            "voxels_left_to_eye_cover": int(within.sum() - mask.sum())})


def _box_list(box: Box) -> list[list[int]]:
    return [[int(s.start), int(s.stop)] for s in box]
