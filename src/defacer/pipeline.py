"""The defacing pipeline: reorient to RAS, detect, analyse the head, distort, map back.

Guarantee that the brain is never touched
-----------------------------------------
Every edit is applied only outside the *protected region*: the voxels lying deeper than
``protect_depth_mm`` (default 10 mm) below the head surface, where the surface is that of the
sealed head after a morphological opening with a 25 mm ball (which rolls off the nose and the
auricles but not the cranium).  The region is computed from the image alone, never from the
detector, so a wrong detection cannot reach the brain; scalp plus skull are thicker than
10 mm over the brain of an adult.  Depth is computed on a ~4 mm grid; a voxel is protected
when its coarse-grid depth is above ``protect_depth_mm - h`` (``h`` = half the coarse voxel
diagonal), and as the distance map is 1-Lipschitz this protects every voxel whose true depth
exceeds ``protect_depth_mm``.  For the ears (:data:`EXACT_GATE_FEATURES`) the voxels in that slack
band are decided at their exact depth instead (the distance from the voxel's own position to the
nearest coarse sample outside the opened head, the measure of :mod:`defacer.protection_check`):
the auricle's root and concha lie in the band, and the ear rule itself keeps its voxels within
a few mm of the rolled-off surface.  The eye cover and the nose keep the conservative band (a
child's scalp and skull over the frontal lobe can be thinner than 10 mm).

A second gate, the *deep cap*, stands for a head read too small: where the threshold lands inside the
scalp's edge (a low-SNR noise floor), the dark layers under a lost patch of scalp open onto the outside,
the surface dives into the head and the 10 mm follow it in.  No edit may lie deeper than
``protect_depth_mm + DEEP_CAP_MARGIN_MM`` (ears: ``+ DEEP_CAP_EAR_EXTRA_MM`` more) below the protection's
head closed across 30 mm gaps (:func:`defacer.head.deep_sealed_head`), which bridges such tunnels, nor
deeper than ``protect_depth_mm + DEEP_CAP_MARGIN_MM`` (ears too) below the
*envelope* (:func:`defacer.head.envelope_head`: all that stands out of the far air), which a head read
smaller all round, without tunnels (a contrast that darkens the scalp below the threshold everywhere,
e.g. gamma 2), cannot shrink (not where a bright halo was found: there the protection's head is built to
hold the real head).  On the unperturbed labelled heads the envelope keeps 15,071 edit voxels of 9 heads
unchanged (14,605 of them seg3d's, whose envelope takes in its EEG electrodes; of the reference auricles only
seg3d's lose any: 0.975 -> 0.969 of their voxels changed); through gamma 2 and an 8 % noise floor the two
gates keep every change within 26.4 mm of the real surface (39.2 mm with the first alone; BRAINCHK's brain
proxy on 4 of 21 heads each, 10 and 8 before).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from defacer._typing import LabelMap, PathLike
from defacer.detect import Detector, HeadModelDetector
from defacer.detect.pose import measured_pose
from defacer.distort import Edit, distort_eyes, distort_nose, nose_region
from defacer.distort_ears import distort_ears
from defacer.distort_frame import distort_face_in_head_frame, head_rotation
from defacer.errors import DetectorError, FeaturesNotFoundError, ProtectionError
from defacer.head import (
    CLEAR_OUTLINE,
    DEEP_SEAL_RADIUS_MM,
    DOUBTFUL_OUTLINE,
    HeadModel,
    analyse_head,
    deep_sealed_head,
    depth_below_surface,
    envelope_head,
    outline_search,
    protection_head,
)
from defacer.labels import FEATURES, Label
from defacer.options import DEFAULT_OPTIONS, DefaceOptions
from defacer.protection_check import (
    OutsideSamples,
    changed_indices,
    changed_mask,
    check_protection_at,
    within_depth,
)
from defacer.provenance import environment
from defacer.side_work import Beside, side_by_side
from defacer.volume import Volume, canonical_reorientation

if TYPE_CHECKING:
    from scipy.spatial import cKDTree

log = logging.getLogger(__name__)

#: Features whose edits are gated at each voxel's exact depth in the slack band (see the module docstring).
EXACT_GATE_FEATURES = frozenset({"ears"})


@dataclass
class DefaceResult:
    """Outcome of :func:`deface`.

    Attributes
    ----------
    volume : Volume
        The defaced scan: same grid, dtype, scaling and header as the input.
    labels : ndarray, uint8, shape of the input grid
        Detected feature labels (:mod:`defacer.labels`).
    edit_mask : ndarray, uint8, shape of the input grid
        Feature label of every voxel whose stored value changed, 0 elsewhere.
    protected : ndarray, bool, shape of the input grid
        The conservative protected region (coarse depth above the depth minus the slack); a property
        computed on demand.
    provenance : dict
        Parameters, estimates, counts and timings (JSON-serialisable).
    """

    volume: Volume
    labels: LabelMap
    edit_mask: LabelMap
    provenance: dict[str, Any] = field(default_factory=dict)
    _protection: tuple[Any, ...] | None = field(default=None, repr=False)

    @property
    def protected(self) -> npt.NDArray[np.bool_]:
        """The conservative protected region on the input grid (computed on demand: a full-size mask).

        The eye cover and the nose never write here; the ears may write in its slack band where a
        voxel's exact depth is within the protection depth (:func:`protected_in_box`).
        """
        if self._protection is None:
            return np.zeros(self.volume.shape, dtype=bool)
        depth, head, reorientation, limit = self._protection
        shape_ras = reorientation.to_ras(np.zeros(reorientation.shape, dtype=bool)).shape
        full_box = tuple(slice(0, int(n)) for n in shape_ras)
        return reorientation.from_ras(head.upsample(depth, full_box) > limit)


def load_detector(labels_path: PathLike | None = None, weights_path: PathLike | None = None, threads: int = 0) -> Detector:
    """The detector to use: a label file when given, else the shipped (or given) ONNX weights.

    ``threads`` caps the cores the network uses (0: every core the process may run on; an ensemble's members
    then run side by side, :class:`defacer.detect.model.OnnxDetector`); batch workers pass their share of the machine.

    Raises
    ------
    DetectorError
        When no label file is given and no model weights are available.
    """
    if labels_path is not None:
        from defacer.detect.label_file import LabelFileDetector

        return LabelFileDetector(labels_path)
    try:
        from defacer.detect import model
    except ImportError as err:
        raise DetectorError(
            "No facial-feature model is available in this installation, and no label map was given. "
            "Pass --labels FILE (0 background, 1 eyes, 2 nose, 3 ears, on the scan's grid)."
        ) from err
    return model.OnnxDetector(weights_path, threads=threads)


def quantize(values: npt.NDArray[np.floating], like: Volume) -> npt.NDArray[Any]:
    """Convert physical values to the stored representation of ``like`` (inverse scaling, rounding, clipping)."""
    stored = (np.asarray(values, dtype=np.float64) - like.inter) / like.slope
    dtype = like.raw.dtype
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(stored), info.min, info.max).astype(dtype)
    return stored.astype(dtype)


def protected_in_box(edit: Edit, head: HeadModel, depth: npt.NDArray[np.float32],
                     outside: cKDTree | OutsideSamples | None, spacing: tuple[float, float, float],
                     protect_depth_mm: float) -> npt.NDArray[np.bool_]:
    """The protected voxels inside ``edit.box`` (the write gate of the module docstring).

    Parameters
    ----------
    edit : Edit
        Its box (RAS grid) and, for :data:`EXACT_GATE_FEATURES`, its mask (only the masked voxels of
        the slack band are measured exactly).
    head : HeadModel
    depth : ndarray, float32, coarse grid
        :func:`defacer.head.depth_below_surface`.
    outside : cKDTree, OutsideSamples or None
        :func:`defacer.protection_check.outside_tree` of ``depth``, or its samples
        (:class:`defacer.protection_check.OutsideSamples`, searched near the band; the same answers).
    spacing : tuple of 3 float
        Full-grid voxel size along R, A, S in mm.
    protect_depth_mm : float

    Returns
    -------
    ndarray, bool, box shape
    """
    slack = head.coarse_slack(spacing)
    coarse_depth = head.upsample(depth, edit.box)
    protected = np.asarray(coarse_depth > protect_depth_mm - slack)
    if edit.feature in EXACT_GATE_FEATURES:
        # The slack band, decided at each voxel's exact depth (the check's own measure).
        band = edit.mask & protected & (coarse_depth <= protect_depth_mm + slack)
        local = np.argwhere(band)
        start = np.array([b.start for b in edit.box])
        shallow = within_depth(local + start, outside, spacing, protect_depth_mm)
        protected[tuple(local[shallow].T)] = False
    return protected


#: How much deeper than ``protect_depth_mm`` an edit may lie below the head closed across 30 mm gaps
#: (:func:`defacer.head.deep_sealed_head`), in mm: the deep cap, for heads read too small.  The smallest margin that
#: changes no output voxel of the 21 labelled heads with the shipped detector (8 mm changed 3 of them by 16-472
#: voxels; 2026-12-05).
DEEP_CAP_MARGIN_MM = 10.0
#: Further depth allowed to the ear edits under that cap, in mm: closing across 30 mm fills the gap between an
#: auricle and the scalp, so an unperturbed auricle's root lies deeper below the closed head than the face does
#: (6 mm changed two labelled heads' ear edits by 304-1,313 voxels; 10 mm takes 132 of the GE CT's 103,851
#: ear-edit voxels and changes no other head's output).
DEEP_CAP_EAR_EXTRA_MM = 10.0
#: Where the envelope (:func:`defacer.head.envelope_head`) holds more than this many times the protection's head
#: (coarse samples: a head read clearly small), the ear edits are also kept out of the voxels deeper than
#: ``protect_depth_mm`` below the envelope, decided as below the protection's head (the exact depth in the slack
#: band, :func:`protected_in_box`).  A contrast that darkens the scalp can make the protection's head the brain itself
#: (the phantom through gamma 2 and 3: the envelope 2.4-2.6x it); the 10 mm measured from there lie inside the
#: brain, and the deep caps (20 mm below the envelope) lie deeper than the phantom's 13 mm of scalp and skull at the
#: side.  The ear rules delimit from that head too (:mod:`defacer.distort_ears`): FACES23's flat-ear rule (de9c2db)
#: took the phantom's scalp and skull at the side for an auricle of 55 cm^3 there and 67 of its voxels per side were
#: brain.  Not on every head: the envelope is 1.00-1.10x the head on the unperturbed real heads, and 10 mm below it
#: cut the roots of real auricles (decubitus-HFS_T1w_dicom's 0.97 / 0.99 -> 0.88 / 0.98 changed with the shipped
#: detector, fernando_T2w_thick's 0.94 / 0.97 -> 0.92 / 0.96; EARS24, 2026-12-06): the envelope's closing fills
#: the air behind an auricle and its surface lies out on it there.
ENVELOPE_PROTECTS_EARS_ABOVE = 1.25

#: Voxels of a label map compared at a time by :func:`_voxels_per_feature` (512 kB of bool, reused).
COUNT_SLAB_VOXELS = 512 * 1024


def _pose_record(pose: Any) -> dict[str, Any]:
    """A pose as the ONNX detector records it (``last_pose``): its dict, ``{}`` for none."""
    return pose.as_dict() if pose is not None else {}


def _voxels_per_feature(label_map: LabelMap) -> dict[str, int]:
    """Voxels of each feature's label in a label map, in :data:`defacer.labels.FEATURES` order.

    One comparison per feature, a slab of :data:`COUNT_SLAB_VOXELS` at a time in memory order into
    one small reused buffer: a whole-map comparison makes a new mask of the map's size per feature
    (13.6 MB on a 1 mm head), and the first touch of that memory made each count take 5-20 ms in
    the pipeline instead of 1 ms.  ``np.bincount`` would first copy the map into a 64-bit array
    eight times its size (0.1 s in the pipeline).

    Parameters
    ----------
    label_map : ndarray, uint8, any shape
        The :class:`defacer.labels.Label` values.
    """
    values = {name: int(Label[name.upper()]) for name in FEATURES}
    if not (label_map.flags.c_contiguous or label_map.flags.f_contiguous):
        return {name: int(np.count_nonzero(label_map == value)) for name, value in values.items()}
    flat = label_map.reshape(-1, order="A")  # a view, in memory order
    counts = dict.fromkeys(values, 0)
    buffer = np.empty(min(COUNT_SLAB_VOXELS, flat.size), dtype=bool)
    for start in range(0, flat.size, COUNT_SLAB_VOXELS):
        part = flat[start:start + COUNT_SLAB_VOXELS]
        hit = buffer[:part.size]
        for name, value in values.items():
            np.equal(part, value, out=hit)
            counts[name] += int(np.count_nonzero(hit))
    return counts


@contextlib.contextmanager
def _waited_for(work: Beside[Any]) -> Iterator[None]:
    """Where the block raises, wait for ``work`` (its own error dropped) before the error goes on: no thread of a
    run outlives it."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(BaseException):
            work.result()
        raise


def _ear_inputs(image: npt.NDArray[np.float32], head: HeadModel, spacing: tuple[float, float, float],
                same_image: bool) -> npt.NDArray[np.float32]:
    """The head's depth below its rolled-off surface (the distortions' and the ear refinement's), and what the
    ear rule derives from the head alone (:func:`defacer.auricle.close_to_head`; :func:`defacer.auricle.head_level`
    where the detector sees ``image`` itself, ``same_image``), each kept in ``head``'s cache as when computed
    where first needed.  Run beside the detector (:func:`deface`).

    Returns
    -------
    ndarray, float32, the head's coarse grid
        :func:`defacer.head.depth_below_surface`.
    """
    from defacer.auricle import close_to_head, head_level

    depth = depth_below_surface(head, spacing)
    close_to_head(head, depth, spacing)
    if same_image:
        head_level(image, head)
    return depth


def _cap_depths(image: npt.NDArray[np.float32], spacing: tuple[float, float, float], head: HeadModel,
                guard: HeadModel, depth: npt.NDArray[np.float32], no_halo: bool
                ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], HeadModel, npt.NDArray[np.float32]]:
    """The protection's depth map and the deep cap's two (see the module docstring): ``guard_depth``,
    ``deep_depth``, the ``envelope`` head and its ``envelope_depth``, from the image and the heads alone.

    ``depth`` is ``head``'s (:func:`defacer.head.depth_below_surface`); ``no_halo``: no bright halo was found
    (the envelope is measured; else the protection's head stands for it).
    """
    guard_depth = depth if guard is head else depth_below_surface(guard, spacing)  # the protection's
    # the deep cap: never deeper than DEEP_CAP_MM below the protection's head closed across 30 mm gaps, so
    # a head read too small, whose surface dives through a dark scalp into the head, cannot lead an edit in
    deep_depth = depth_below_surface(deep_sealed_head(guard, spacing), spacing)
    # and never deeper than that below the envelope, all that stands out of the far air: a head read smaller all
    # round (a darker scalp, a noise floor) leaves no tunnel for the closing to bridge, but cannot shrink it.  Not
    # where a bright halo was found: the far air is the halo there, the envelope would take it in, and the
    # protection's head is already one built to hold the real head (head.protection_head)
    envelope = envelope_head(image, spacing, guard) if no_halo else guard
    envelope_depth = depth_below_surface(envelope, spacing) if envelope is not guard else guard_depth
    return guard_depth, deep_depth, envelope, envelope_depth


def deface(volume: Volume, detector: Detector, options: DefaceOptions = DEFAULT_OPTIONS) -> DefaceResult:
    """Distort the eyes, nose and ears of ``volume`` and nothing else.

    Parameters
    ----------
    volume : Volume
        The scan, in any axis order.
    detector : Detector
        Gives the feature label map in RAS.
    options : DefaceOptions

    Returns
    -------
    DefaceResult
    """
    timings: dict[str, float] = {}
    start = time.perf_counter()
    reorientation = canonical_reorientation(volume.affine, volume.shape)
    image = reorientation.values_to_ras(volume, np.float32)
    spacing = reorientation.ras_spacing
    timings["reorient_s"] = time.perf_counter() - start

    t = time.perf_counter()
    head = analyse_head(image, spacing)  # once: the distortions and the detector's ear fallback share it
    # A bright halo or noise floor round the head (its outline doubtful): the head is the one at the level where
    # its outline is sharpest, for the detector and the distortions (a head that swallowed the halo would put the
    # surface out in the air and read the face's tissue as deep); the protection measures depth from the head at
    # a lower level between the first and that one (head.protection_head: the sharpest level can lie within the
    # skin's own edge and seal a head smaller than the real one).  Nothing is done on a clear outline (every
    # real unperturbed scan measured): there the protection's head is the distortions' head.
    first_head = head
    guard = head
    search = outline_search(image, spacing, head)  # None without any work on a clear outline
    bright_air = (search.level, search.head) if search is not None and search.taken else None
    if bright_air is not None:
        head = bright_air[1]
        guard = protection_head(image, spacing, first_head, *bright_air)
    timings["head_s"] = time.perf_counter() - t

    t = time.perf_counter()
    # what depends on the head alone is computed in a thread beside the detector's stages on one core (the box,
    # the refinements): the same values, only sooner (defacer.side_work; the ear refinement takes them)
    run_beside = side_by_side() and int(getattr(detector, "cores", 2)) >= 2
    head_ahead = Beside(functools.partial(_ear_inputs, image, head, spacing, bright_air is None), run_beside,
                        name="defacer-head-depth")
    with _waited_for(head_ahead):
        if isinstance(detector, HeadModelDetector):
            # the detector sees the air raised to that level (its own rule finds the head given here clear)
            seen = image if bright_air is None else np.maximum(image, np.float32(bright_air[0]))
            labels_ras = detector.predict_with_head(seen, reorientation.ras_affine, head)
            del seen
        else:
            labels_ras = detector.predict(image, reorientation.ras_affine)
    labels_ras = np.asarray(labels_ras, dtype=np.uint8)
    if labels_ras.shape != image.shape:
        raise DetectorError(f"The detector returned labels of shape {labels_ras.shape} for an image of shape {image.shape}.")
    timings["detect_s"] = time.perf_counter() - t
    depth = head_ahead.result()  # done long since (the ear refinement waited for it, if it ran)
    # which ears the network found and which the image-based fallback added (the ONNX detector's)
    detected_by = dict(getattr(detector, "last_sources", None) or {})
    detect_stages = dict(getattr(detector, "last_timings", None) or {})  # the ONNX detector's seconds per stage
    head_pose = dict(getattr(detector, "last_pose", None) or {})  # the ONNX detector's: yaw, roll, box turned
    noise = getattr(detector, "last_noise", None)  # the ONNX detector's: the scan read as noise, nothing looked for

    t = time.perf_counter()
    # the deep cap's two depth maps (the image and the protection's head alone) beside the distortions
    caps = Beside(functools.partial(_cap_depths, image, spacing, head, guard, depth, bright_air is None), run_beside,
                  name="defacer-cap-depth")
    with _waited_for(caps):  # the distortions, the cap depths beside them
        found = _voxels_per_feature(labels_ras)
        nose = None
        if "nose" in options.features:
            head_centre_a = int(np.argwhere(head.sealed_coarse.any(axis=(0, 2))).mean() * head.strides[1])
            nose = nose_region(labels_ras == Label.NOSE, image.shape, spacing, options.nose_scale,
                               posterior_limit=head_centre_a)
        deep_limit = options.protect_depth_mm + DEEP_CAP_MARGIN_MM
        slack = head.coarse_slack(spacing)
        rng = np.random.default_rng(options.seed)
        edits: list[Edit] = []
        # a head turned in the scanner (or an oblique grid): the eye cover and the nose removal are built along the
        # head's own axes (defacer.distort_frame); a head whose axes are the array's takes the path below unchanged
        turn = None
        if {"eyes", "nose"} & set(options.features):
            # the detector's pose where it measured one (the ONNX detector's), else measured here, as it does: once
            pose = head_pose if hasattr(detector, "last_pose") else _pose_record(measured_pose(image, reorientation.ras_affine))
            turn = head_rotation(pose, reorientation.ras_affine)
            if turn is not None and pose and not head_pose:
                head_pose = dict(pose)  # recorded in the sidecar where it turned the distortions
        if turn is not None:
            centre = np.argwhere(head.sealed_coarse).mean(axis=0) * np.asarray(head.strides)
            edits += distort_face_in_head_frame(image, labels_ras, head, spacing, turn, centre,
                                                eyes="eyes" in options.features, nose="nose" in options.features,
                                                band_mm=options.eye_band_mm, box_scale=options.eye_box_scale,
                                                nose_scale=options.nose_scale)
        elif "eyes" in options.features:
            edits += distort_eyes(image, labels_ras == Label.EYES, head, spacing,
                                  band_mm=options.eye_band_mm, box_scale=options.eye_box_scale)
        if nose is not None and turn is None:
            edits.append(distort_nose(image, nose, head, keep=edits))  # never under the eye cover
        if "ears" in options.features:
            edits += distort_ears(image, labels_ras == Label.EARS, head, spacing, rng, depth=depth)
        whole_face: dict[str, Any] | None = None
        if options.whole_face:  # last, over the eye cover and the nose removal
            from defacer.distort_face import SKIN_MM, face_removal

            # the new surface and its skin stay shallower than what the write gate may protect (depth - slack)
            cut_mm = max(0.0, options.protect_depth_mm - slack - SKIN_MM)
            face_edit, whole_face = face_removal(image, labels_ras == Label.EYES, head, reorientation.ras_affine, depth,
                                                 cut_mm=cut_mm, over=edits)
            if face_edit is not None:
                edits.append(face_edit)

        # Each edit goes straight onto a copy of the stored values, box by box on the file's grid (no
        # full-size RAS copy of the image); a later edit overwrites an earlier one where they overlap.
        # The copy keeps the file's memory layout (Fortran order for NIfTI): comparing it with the input and
        # writing it then run through memory in order (a C-order copy made both about 0.1 s slower each).
        raw = volume.raw.copy(order="K")
        edit_mask = np.zeros(volume.shape, dtype=np.uint8)  # feature label of the last edit writing each voxel
    guard_depth, deep_depth, envelope, envelope_depth = caps.result()
    outside = OutsideSamples.of(guard_depth, guard, spacing)  # searched near each ear edit's band only
    # the ears' protection below the envelope too where the protection's head was read clearly smaller than it
    # (ENVELOPE_PROTECTS_EARS_ABOVE): no ear rule can then reach the brain under the real head's surface
    # (one ratio serves that decision and the sidecar's "vs_protection_head")
    envelope_vs_guard = float(envelope.sealed_coarse.sum()) / max(1.0, float(guard.sealed_coarse.sum()))
    envelope_outside = (OutsideSamples.of(envelope_depth, envelope, spacing)
                        if envelope is not guard and envelope_vs_guard > ENVELOPE_PROTECTS_EARS_ABOVE else None)
    native_boxes = []
    for edit in edits:
        protected_local = protected_in_box(edit, guard, guard_depth, outside, spacing, options.protect_depth_mm)
        cap = deep_limit + (DEEP_CAP_EAR_EXTRA_MM if edit.feature == "ears" else 0.0)
        protected_local |= guard.upsample(deep_depth, edit.box) > cap - slack
        # the ears too: not closed across wide gaps, the envelope keeps the notch behind an auricle (ears 5 mm deeper
        # kept 0-6 brain-proxy voxels fewer through gamma 2 / the noise floor on 17 heads but 2-1,458 more on 4,
        # slicer's and uih's ears 26 mm deep; reference auricles unchanged but seg3d's, 0.975 -> 0.969 of voxels)
        protected_local |= guard.upsample(envelope_depth, edit.box) > deep_limit - slack
        if envelope_outside is not None and edit.feature in EXACT_GATE_FEATURES:
            protected_local |= protected_in_box(edit, envelope, envelope_depth, envelope_outside, spacing,
                                                options.protect_depth_mm)
        write = edit.mask & ~protected_local
        native_box = reorientation.box_from_ras(edit.box)
        write_native = reorientation.local_from_ras(write)
        raw[native_box][write_native] = quantize(reorientation.local_from_ras(edit.values)[write_native], volume)
        edit_mask[native_box][write_native] = int(Label[edit.feature.upper()])
        native_boxes.append(native_box)
        edit.params["voxels_written"] = int(write.sum())
        edit.params["voxels_protected"] = int((edit.mask & protected_local).sum())
    timings["distort_s"] = time.perf_counter() - t

    t = time.perf_counter()
    for native_box in native_boxes:  # a written voxel whose stored value did not change is no change
        edit_mask[native_box][~changed_mask(volume.raw[native_box], raw[native_box])] = 0
    labels_native = reorientation.from_ras(labels_ras)
    # Check of the guarantee, independent of the gate above: every voxel whose stored value changed, anywhere
    # in the scan, at its exact position (defacer.protection_check).
    changed_at = reorientation.indices_to_ras(changed_indices(volume.raw, raw))
    check = check_protection_at(changed_at, guard, guard_depth, spacing, options.protect_depth_mm)
    if check.changed_inside_protected:  # the second line of defence: such a result is never returned
        message = (
            f"{check.changed_inside_protected} voxels deeper than {options.protect_depth_mm:g} mm below the head's "
            "surface (the protected region) would have changed, which the distortions' own gate must prevent; "
            "nothing was written. This is a bug in defacer: rerun with --debug, report it, and do not share this "
            "scan defaced by this version."
        )
        raise ProtectionError(message)
    timings["map_back_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - start

    class_weights = getattr(detector, "class_weights", None)  # the ONNX detector's, from its card
    network = getattr(detector, "backend", None)  # the library that ran the ONNX detector's network, and its version
    provenance: dict[str, Any] = {
        "defacer": environment(),
        "detector": {"name": detector.name, "weights_sha256": detector.weights_sha256,
                     **({"class_weights": [float(w) for w in class_weights]} if class_weights is not None else {}),
                     **({"backend": {"name": network, "version": getattr(detector, "backend_version", "")}}
                        if isinstance(network, str) else {}),
                     **({"sources": detected_by} if detected_by else {}),
                     **({"stage_timings": detect_stages} if detect_stages else {}),
                     **({"head_pose": head_pose} if head_pose else {})},
        "options": asdict(options),
        "input_geometry": {"shape": list(volume.shape), "axcodes": volume.axcodes,
                           "spacing_mm": [round(s, 5) for s in volume.spacing], "format": volume.format},
        "head": {"threshold": head.threshold, "background": head.background,
                 "air_sample_size": int(head.air_sample.size),
                 "outline_contrast": round(head.outline_contrast, 3) if np.isfinite(head.outline_contrast) else None,
                 **({"bright_air": {"level": bright_air[0], "first_threshold": first_head.threshold,
                                    "first_outline_contrast": round(first_head.outline_contrast, 3),
                                    "protection_threshold": guard.threshold,
                                    "protection_head_vs_first": round(float(guard.sealed_coarse.sum())
                                                                      / float(first_head.sealed_coarse.sum()), 3),
                                    "head_vs_first": round(float(head.sealed_coarse.sum())
                                                           / float(first_head.sealed_coarse.sum()), 3)}}
                    if bright_air is not None else {}),
                 **({"tissue_peak": {"set_aside_threshold": first_head.tissue_peak_threshold,
                                     "threshold": first_head.threshold}}
                    if first_head.tissue_peak_threshold is not None else {})},
        "features_found_voxels": found,
        "edits": [{"feature": e.feature, **e.params} for e in edits],
        "voxels_changed": _voxels_per_feature(edit_mask),
        "protection": {"depth_mm": options.protect_depth_mm, "coarse_slack_mm": round(slack, 3),
                       "exact_depth_features": sorted(EXACT_GATE_FEATURES),
                       "protected_voxels_approx": int(np.count_nonzero(guard_depth > options.protect_depth_mm - slack))
                       * int(np.prod(guard.strides)),
                       "deep_cap_mm": {"eyes_nose": deep_limit, "ears": deep_limit + DEEP_CAP_EAR_EXTRA_MM,
                                       "closing_radius_mm": DEEP_SEAL_RADIUS_MM,
                                       "envelope": {"all": deep_limit, "threshold": envelope.threshold,
                                                    "vs_protection_head": round(envelope_vs_guard, 3),
                                                    "ears_protected_below_it_mm": (options.protect_depth_mm
                                                                                   if envelope_outside is not None
                                                                                   else None)}},
                       "changed_inside_protected": check.changed_inside_protected,
                       "changed_outside_edits": check.changed_voxels - int(np.count_nonzero(edit_mask))},
        "timings": {k: round(v, 4) for k, v in timings.items()},
    }
    if whole_face is not None:
        written = [e.params["voxels_written"] for e in edits if e.params.get("whole_face")]
        provenance["whole_face"] = {**whole_face, **({"voxels_written": written[0]} if written else {})}
    provenance["features"] = feature_report(options.features, found, provenance["voxels_changed"])
    missing = missing_features(provenance)
    if missing:
        provenance["warnings"] = [f"{name} {provenance['features'][name]['status']}: nothing distorted for it"
                                  for name in missing]
        for name in missing:
            log.warning("%s %s in this scan; nothing distorted for it.", name.capitalize(),
                        provenance["features"][name]["status"])
    if isinstance(noise, str):
        provenance["head"]["noise"] = noise
        provenance["warnings"] = [*provenance.get("warnings", []), noise]
        log.warning("%s", noise)
    if whole_face is not None and not whole_face["done"]:
        warning = f"whole face not removed: {whole_face['reason']}"
        provenance["warnings"] = [*provenance.get("warnings", []), warning]
        log.warning("%s", warning)
    if bright_air is not None or first_head.outline_contrast < CLEAR_OUTLINE or (
            search is not None and search.sharper_than(first_head)):
        # also where a level above the first gave a sharper outline that was not taken (head.outline_search):
        # a halo may be there, left in
        warning = doubtful_outline_warning(first_head, None if bright_air is None else bright_air[0],
                                           None if bright_air is None else guard.threshold,
                                           None if search is None or bright_air is not None else search.level)
        provenance["warnings"] = [*provenance.get("warnings", []), warning]
        log.warning("%s", warning)  # batch keeps a scan's logged warnings in its record
    if first_head.tissue_peak_threshold is not None:
        warning = (f"the intensity histogram's tallest peak is the tissue's, not the air's (an unusual contrast: "
                   f"e.g. a CT through a gamma below 1), so its foot ({first_head.tissue_peak_threshold:.6g}) lies "
                   f"inside the tissue; the air/tissue threshold was taken at the foot of the air's peak instead "
                   f"({first_head.threshold:.6g}): check this output with 'defacer verify' before sharing it")
        provenance["warnings"] = [*provenance.get("warnings", []), warning]
        log.warning("%s", warning)
    read_warnings = [str(w) for w in volume.extra.get("warnings", [])]
    if read_warnings:  # what the reader had to assume, e.g. an invalid voxel size (geometry invented)
        provenance["warnings"] = read_warnings + provenance.get("warnings", [])
    return DefaceResult(volume.with_raw(raw), labels_native, edit_mask, provenance,
                        _protection=(guard_depth, guard, reorientation, options.protect_depth_mm - slack))


def doubtful_outline_warning(head: HeadModel, level: float | None = None, protection_level: float | None = None,
                             sharper_level: float | None = None) -> str:
    """The warning for a head whose outline the air/tissue threshold does not find clearly.

    Parameters
    ----------
    head : HeadModel
        The first analysis, with :attr:`HeadModel.outline_contrast` below :data:`defacer.head.DOUBTFUL_OUTLINE`.
    level : float, optional
        The level at which the outline was found sharp and the head taken instead
        (:func:`defacer.head.sharpest_outline_level`); ``None`` where none was.
    protection_level : float, optional
        The threshold of the head the protection measured depth from (:func:`defacer.head.protection_head`).
    sharper_level : float, optional
        Where no level was taken: a level at which the outline was sharper than at the first, not taken
        (:func:`defacer.head.outline_search`).
    """
    seen = (f"the head's outermost 4 mm lie at {head.outline_contrast:.2f} x the air/tissue threshold; "
            f"{DOUBTFUL_OUTLINE:g} or more is expected, every real head tested gives 2 or more")
    if level is not None:
        return (
            f"the air next to the head is nearly as bright as its skin ({seen}): a bright halo, ghosting or a "
            f"heavy noise floor round the head. The head was taken at the level {level:.6g}, where its outline is "
            "sharpest"
            + ("" if protection_level is None else
               f", and the protected depth measured from the head at the lower level {protection_level:.6g}, which "
               "keeps more of the face")
            + "; parts of the face may be left: check this output with 'defacer verify' before sharing it"
        )
    return (
        f"the air next to the head is nearly as bright as its skin ({seen}): a bright halo, ghosting or a heavy "
        "noise floor round the head"
        + ("" if sharper_level is None else
           f" (the outline is sharper at the level {sharper_level:.6g}, not taken: the head there is not clearly "
           "the halo's inside)")
        + ". The skin may then be placed in the halo and parts of the face left: check this output with "
        "'defacer verify' before sharing it"
    )


def feature_report(requested: tuple[str, ...], found: dict[str, int], changed: dict[str, int]) -> dict[str, Any]:
    """Per feature: requested or not, voxels found by the detector, voxels changed, and a status.

    The status is ``"distorted"``, ``"not found"`` (the detector found no voxel),
    ``"found but not changed"`` (every voxel of it was protected or already at its new value)
    or ``"not requested"``.
    """
    report: dict[str, Any] = {}
    for name in FEATURES:
        if name not in requested:
            status = "not requested"
        elif found.get(name, 0) == 0:
            status = "not found"
        elif changed.get(name, 0) == 0:
            status = "found but not changed"
        else:
            status = "distorted"
        report[name] = {"requested": name in requested, "found_voxels": int(found.get(name, 0)),
                        "changed_voxels": int(changed.get(name, 0)), "status": status}
    return report


def missing_features(provenance: dict[str, Any]) -> list[str]:
    """The requested features a run did not distort (from its provenance's ``features``)."""
    return [name for name, entry in provenance.get("features", {}).items()
            if entry["requested"] and entry["status"] != "distorted"]


def check_features_found(provenance: dict[str, Any], source_name: str, *, allow_missing: bool) -> None:
    """Refuse to write a scan in which a requested feature was not distorted, unless ``allow_missing``.

    Raises
    ------
    FeaturesNotFoundError
        Naming what was found and what was not.
    """
    missing = missing_features(provenance)
    if not missing or allow_missing:
        return
    features = provenance["features"]
    done = [name for name, entry in features.items() if entry["status"] == "distorted"]
    what = "; ".join(f"{name}: {features[name]['status']}" for name in features if features[name]["requested"])
    lead = "No requested facial feature was distorted" if not done else "Not every requested facial feature was distorted"
    noise = provenance.get("head", {}).get("noise")
    why = f": {noise}" if isinstance(noise, str) else ""
    raise FeaturesNotFoundError(
        f"{lead} in '{source_name}' ({what}){why}. Nothing was written: an unchanged or partly defaced copy "
        "could pass for a defaced scan. Check that it is a head scan that shows the face, pass --labels with a "
        "corrected label map, or pass --allow-missing to write it anyway (the sidecar lists what was found).",
        missing=missing, found=done, provenance=provenance,
    )
