"""The trained attention U-Net, run by onnxruntime or OpenVINO (no PyTorch needed to deface).

Weights ship inside the package (``defacer/models/detector.onnx``) with a JSON card
(``detector.json``: box geometry, training config, sha256).  :class:`OnnxDetector` checks the
sha256 before loading, so a corrupt or swapped file fails loudly instead of detecting badly.

Inference: RAS image -> :func:`defacer.detect.preprocess.to_box` -> network (softmax
probabilities on the box) -> :func:`defacer.detect.postprocess.find_components` ->
:func:`defacer.detect.preprocess.box_to_grid` (probabilities interpolated back onto the input
grid inside each kept component's region).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import stat
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt

from defacer._typing import Affine, LabelMap, PathLike
from defacer.detect import backend, prefault
from defacer.detect.ear_fallback import add_missing_ears
from defacer.detect.ensemble import SideBySide, split_members
from defacer.detect.frame import PITCH_AGREE_DEG, PITCH_MIN_DEG, grid_pitch, head_pitch
from defacer.detect.openvino_run import OpenVinoSession, take_compiled
from defacer.detect.openvino_run import cores as _cores
from defacer.detect.postprocess import (
    Component,
    air_threshold,
    find_components,
    keep_largest_pieces,
    restrict_to_tissue,
    threshold_sample,
)
from defacer.detect.prefault import Prefault, arena_bytes, shared_arena
from defacer.detect.preprocess import box_to_grid, grid_extent, to_box
from defacer.detect.refine_face import refine_face, tissue_threshold
from defacer.detect.structure import no_structure
from defacer.detect.weights import CARD_NAME, WEIGHTS_NAME, default_weights_path  # noqa: F401 - named here too
from defacer.errors import DefacerError, DetectorError, InputImageError, WeightsError
from defacer.files import file_sha256, read_small_text
from defacer.head import HeadModel, air_ceiling, analyse_head, sharpest_outline_level
from defacer.labels import FEATURE_LABELS, NUM_CLASSES, Label
from defacer.side_work import Beside, side_by_side
from defacer.volume import voxel_sizes


def sha256_of(path: PathLike) -> str:
    """Hex sha256 of a file (:func:`defacer.files.file_sha256`)."""
    return file_sha256(path)


def _read_card(weights: Path) -> dict[str, Any]:
    card_path = weights.with_suffix(".json")
    if not card_path.is_file():
        return {}
    # read bounded (defacer.files.read_small_text, 16 MiB): a card is a few hundred bytes, and the one beside a
    # downloaded model is as much someone else's file as the model (a 1 GiB card was read whole, twice over)
    try:
        text = read_small_text(card_path, what="model card", redo="Reinstall defacer or pass --weights with its card.")
    except DefacerError as err:
        raise WeightsError(str(err)) from err
    try:
        card = json.loads(text)
    except (ValueError, RecursionError) as err:  # RecursionError: JSON nested thousands deep
        message = f"The model card {card_path} is not valid JSON ({err}). Reinstall defacer or pass --weights with its card."
        raise WeightsError(message) from err
    if not isinstance(card, dict):
        raise WeightsError(f"The model card {card_path} holds a JSON {type(card).__name__}, not an object. "
                           "Reinstall defacer or pass --weights with the card 'defacer train' wrote for them.")
    return card


#: The largest box a model card may declare, voxels per axis, and its voxel sizes (mm): those 'defacer train' makes
#: (:data:`defacer.cli.train.MAX_BOX_SIZE`, its --box-spacing range).  A card is the user's file, and a graph with named
#: (dynamic) axes fits any box: a card declaring 448^3 beside such a graph took 6.5 GB to deface a 2 mm phantom, the
#: memory growing with the box's cube.
MAX_BOX_SIZE = 256
BOX_SPACING_RANGE_MM = (0.5, 8.0)


def _card_settings(card: dict[str, Any], card_path: Path) -> tuple[tuple[int, int, int], float, list[float], bool]:
    """The box shape, voxel size (mm), class weights and mirror flag a model card gives, each checked.

    A card is the user's file beside ``--weights``; a field of another kind (``"class_weights": "abc"``, a box of
    two sizes, ``"mirror": "false"``) stopped ``deface`` with "unexpected error ... a bug", or was taken the wrong way
    (``bool("false")`` is true).

    Raises
    ------
    WeightsError
        Naming the field, what it holds and what was expected.
    """
    def refuse(name: str, found: object, expected: str) -> WeightsError:
        return WeightsError(f"The model card {card_path} has {name} {json.dumps(found, default=str)[:80]}: expected "
                            f"{expected}. Re-export the weights with 'defacer train' (it writes their card), or pass "
                            "--weights with their own card.")

    def number(value: object) -> bool:
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)

    box = card.get("box", {})
    shape = box.get("shape", [64, 64, 64]) if isinstance(box, dict) else None
    if not (isinstance(shape, list | tuple) and len(shape) == 3
            and all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= MAX_BOX_SIZE for v in shape)):
        raise refuse("box.shape", shape if isinstance(box, dict) else box,
                     f"three whole numbers of voxels from 1 to {MAX_BOX_SIZE} (the largest box 'defacer train' makes)")
    spacing = box.get("spacing_mm", 4.0)
    if not (number(spacing) and BOX_SPACING_RANGE_MM[0] <= spacing <= BOX_SPACING_RANGE_MM[1]):
        raise refuse("box.spacing_mm", spacing,
                     f"a voxel size from {BOX_SPACING_RANGE_MM[0]:g} to {BOX_SPACING_RANGE_MM[1]:g} mm (as 'defacer train' "
                     "makes)")
    weights = card.get("class_weights", [1.0, 1.0, 1.0, 1.0])
    if not (isinstance(weights, list) and len(weights) == NUM_CLASSES and all(number(w) and w >= 0 for w in weights)):
        raise refuse("class_weights", weights, "four finite numbers from 0 up (background, eyes, nose, ears)")
    mirror = card.get("mirror", True)
    if not isinstance(mirror, bool):
        raise refuse("mirror", mirror, "true or false")
    return (shape[0], shape[1], shape[2]), float(spacing), [float(w) for w in weights], mirror


class OnnxDetector:
    """Facial-feature detector backed by an ONNX attention U-Net.

    Parameters
    ----------
    weights_path : path-like, optional
        An ``.onnx`` file exported by ``defacer train``; default: the shipped weights.  When a
        ``.json`` card with the same stem sits beside it and records a ``sha256``, the file must match.
    threads : int, optional
        Cores the network may use (0, the default: every core this process may run on).  The network runs in
        OpenVINO where it is installed (the ``openvino`` extra) unless ``DEFACER_DETECTOR_BACKEND=onnxruntime``
        (:mod:`defacer.detect.backend`): the whole graph on ``threads`` threads (0: every core this process may run
        on), never fewer than 2 (:mod:`defacer.detect.openvino_run`: one thread gives other floats).  In onnxruntime, with 2 or more and
        an ensemble graph (the shipped one: two members), the members run side by side, each in a thread of its
        own with ``threads // members`` onnxruntime threads (:mod:`defacer.detect.ensemble`: the same
        probabilities, 6-9 % less CPU time on 2 cores); with 1, or a single network, the graph runs as it is,
        onnxruntime splitting each operator over ``threads`` threads (0: onnxruntime decides).
    ear_fallback : bool, optional
        Where the network finds both eyes but no ear on a side, look for that auricle in the image
        (:func:`defacer.detect.ear_fallback.add_missing_ears`); default on.

    Attributes
    ----------
    name : str
        ``"attention-unet-onnx:<file name>"``.
    weights_sha256 : str
        sha256 of the weights file.
    backend, backend_version : str
        The library that runs the network (``"openvino"`` or ``"onnxruntime"``) and its version, for the sidecar.
    cores : int
        Cores the detector may use (``threads``, or every core this process may run on); with 2 or more, the
        stages after the network find the regions' voxels and the two sides' auricles in two threads
        (:mod:`defacer.side_work`: the same label map).
    class_weights : ndarray, shape (4,)
        Factors on the class probabilities (background, eyes, nose, ears) before every decision,
        from the card's ``class_weights`` (default all 1).
    last_sources : dict
        Where the last :meth:`predict` found each ear: ``{"ears": {"right": s, "left": s}}`` (RAS+
        sides; ``"network"``, ``"image"`` from the fallback, or ``"none"``); ``{}`` when the network
        found fewer than two eyes (no frame to place an ear in) or the fallback is off.  Where the plain
        pass found fewer than two eyes or no nose (the card's ``mirror`` off), the mirrored pass ran too
        (:meth:`_mirrored_pass`): ``{"mirrored_pass": {"why": ..., "found": ..., "kept": "mirrored" or
        "plain"}}`` beside the ears.  Kept per thread, so concurrent calls on one detector each read their own.
    last_pose : dict
        The head's yaw and roll measured by the last :meth:`predict` in this thread
        (:meth:`defacer.detect.pose.Pose.as_dict`; ``box_turned``: the network saw the head upright in a box
        turned with it); ``{}`` where no head was found in the box.
    last_timings : dict
        Seconds spent by the last :meth:`predict` in this thread, per stage: ``box`` (input box),
        ``network``, ``components`` (coarse components), ``to_grid`` (probabilities back onto the
        input grid), ``tissue`` (air removed, crumbs dropped), ``face_refinement`` (eyes and nose
        re-shaped by the reference rules, :mod:`defacer.detect.refine_face`), ``ear_fallback`` (ear
        refinement and fallback).
    last_noise : str or None
        Why the last :meth:`predict` in this thread marked nothing without looking (the scan read as noise:
        :func:`defacer.detect.structure.no_structure`), else ``None``.
    """

    def __init__(self, weights_path: PathLike | None = None, threads: int = 0, ear_fallback: bool = True) -> None:
        path = Path(weights_path) if weights_path is not None else default_weights_path()
        if not path.is_file():
            found = ("nothing" if not path.exists() else "a folder" if path.is_dir() else "a named pipe"
                     if path.is_fifo() else "a device" if path.is_char_device() or path.is_block_device()
                     else "no regular file")  # a pipe or a device is never opened: it could wait for ever
            message = (
                f"Model weights not found: expected an ONNX file at {path}, found {found}. "
                "Reinstall defacer (the weights ship in defacer/models/), pass --weights FILE, or pass --labels FILE."
            )
            raise WeightsError(message)
        self.weights_path = path
        # read once: the bytes whose sha256 is checked are the bytes the network's library is given (a file
        # replaced between a check by path and a load by path would run unchecked weights)
        graph = _read_weights(path)
        self.weights_sha256 = hashlib.sha256(graph).hexdigest()
        self.card = _read_card(path)
        expected = self.card.get("sha256")
        if expected and expected != self.weights_sha256:
            message = (
                f"Model weights {path} are corrupt or were replaced: sha256 expected {expected}, "
                f"found {self.weights_sha256}. Reinstall defacer or re-export the weights with 'defacer train'."
            )
            raise WeightsError(message)
        self.box_shape: tuple[int, int, int]
        self.box_shape, self.box_spacing, weights, mirror = _card_settings(self.card, path.with_suffix(".json"))
        self.class_weights = np.asarray(weights, np.float32)
        #: run the left-right mirrored box too and average (card ``mirror``, default on)
        self.mirror = mirror
        self.name = f"attention-unet-onnx:{path.name}"
        self.ear_fallback = bool(ear_fallback)
        self._last = threading.local()  # one detector may serve several threads (the web page's jobs)
        # the network's library (defacer.detect.backend): OpenVINO where installed (or forced), else onnxruntime
        self.backend, self.backend_version = backend.ONNXRUNTIME, ""
        runtime = _openvino_or_none()
        if runtime is not None:
            self.cores = _cores(threads)
            try:
                # compiled ahead by the command line (openvino_run.start_compiling) from bytes of this digest
                compiled = take_compiled(self.weights_sha256, self.cores)
                self._session: Any = (compiled if compiled is not None
                                      else OpenVinoSession(runtime, graph, self.cores))
            except Exception as err:  # OpenVINO raises its own exception types for bad graphs
                message = (f"Model weights {path} could not be loaded by OpenVINO ({err}). Reinstall defacer, pass "
                           f"--weights FILE, or set {backend.ENV}=onnxruntime.")
                raise WeightsError(message) from err
            self.backend, self.backend_version = backend.OPENVINO, backend.version(runtime)
            self._input = self._session.get_inputs()[0].name if self._session.get_inputs() else ""
            self._check_graph(path)
            return
        try:
            backend.quiet_onnxruntime()  # its telemetry off, where this is its first import (defacer.detect.backend)
            import onnxruntime as ort

            self.backend_version = backend.version(ort)

            def session(graph: str | bytes, intra_threads: int, shared: bool = False) -> Any:
                options = ort.SessionOptions()
                options.intra_op_num_threads = intra_threads
                options.log_severity_level = 3
                # No memory arena of the session's own: the network's activations (about 200 MB) go back to the
                # process when a run ends, so the later stages reuse those pages instead of touching new ones
                # (first touch of memory is what costs on small VMs); measured no slower
                # (benchmarks/detector_speed.py).  ``shared``: onnxruntime's shared arena instead, touched ahead
                # and handed back after every pass (defacer.detect.prefault).
                options.enable_cpu_mem_arena = False
                if shared:
                    options.add_session_config_entry("session.use_env_allocators", "1")
                return ort.InferenceSession(graph, sess_options=options, providers=["CPUExecutionProvider"])

            # an ensemble's members run side by side, a thread each, where there are cores for them
            # (defacer.detect.ensemble: the same probabilities); else the graph runs as it is
            cores = self.cores = _cores(threads)
            members = split_members(graph) if cores >= 2 else None
            if members is not None:
                # their working memory touched ahead in a thread, where a second thread may run
                # (defacer.detect.prefault: the first pass takes no page faults)
                ahead = (_prefault(ort, lambda graph: session(graph, 1, True), len(members), self.box_shape)
                         if side_by_side() else None)
                sessions = [session(m, max(1, cores // len(members)), ahead is not None) for m in members]
                self._session = SideBySide(sessions, ahead)
            else:
                self._session = session(graph, max(0, int(threads)))
        except Exception as err:  # onnxruntime raises its own exception types for bad graphs
            message = f"Model weights {path} could not be loaded by onnxruntime ({err}). Reinstall defacer or pass --weights FILE."
            raise WeightsError(message) from err
        self._input = self._session.get_inputs()[0].name
        self._check_graph(path)

    def _check_graph(self, path: Path) -> None:
        """Refuse a graph that is no detector of this card's box: one input (1, 1, *box), one output (1, 4, *box).

        Raises
        ------
        WeightsError
            Naming what the graph takes and gives, and what to pass instead.
        """
        def fits(shape: list[Any], expected: tuple[int, ...]) -> bool:  # a named (dynamic) axis fits any size
            return len(shape) == len(expected) and all(not isinstance(n, int) or n == e for n, e in zip(shape, expected))

        wanted_in, wanted_out = (1, 1, *self.box_shape), (1, NUM_CLASSES, *self.box_shape)
        for session in getattr(self._session, "sessions", [self._session]):  # the graph, or each of its members
            inputs, outputs = session.get_inputs(), session.get_outputs()
            if len(inputs) != 1 or len(outputs) != 1 or not fits(list(inputs[0].shape), wanted_in) or not fits(
                    list(outputs[0].shape), wanted_out):
                found = ", ".join(f"{i.name} {list(i.shape)}" for i in inputs) + " -> " + ", ".join(
                    f"{o.name} {list(o.shape)}" for o in outputs)
                message = (f"Model weights {path} are not a defacer detector: expected one input of shape "
                           f"{list(wanted_in)} and one output of shape {list(wanted_out)} (the box in its card), found "
                           f"{found}. Pass weights exported by 'defacer train' (with their .json card), or none for "
                           "the shipped model.")
                raise WeightsError(message)

    def settle(self) -> None:
        """Wait for the threads the detector began beside its passes (:meth:`SideBySide.settle`: the memory
        touched ahead, the last pass's hand-back), so that none outlives a run that ends here."""
        settle = getattr(self._session, "settle", None)
        if settle is not None:
            settle()

    @property
    def member_sessions(self) -> int:
        """onnxruntime sessions one network pass runs: 1 (the graph as it is), or the ensemble's member count,
        run side by side (:class:`defacer.detect.ensemble.SideBySide`)."""
        return len(getattr(self._session, "sessions", [self._session]))

    @property
    def last_sources(self) -> dict[str, dict[str, str]]:
        """Where the last :meth:`predict` in this thread found each ear (see the class attributes)."""
        return dict(getattr(self._last, "sources", {}))

    @property
    def last_pose(self) -> dict[str, float | bool | None]:
        """See the class attributes."""
        return dict(getattr(self._last, "pose", {}))

    @property
    def last_timings(self) -> dict[str, float]:
        """Seconds per stage of the last :meth:`predict` in this thread (see the class attributes)."""
        return dict(getattr(self._last, "timings", {}))

    @property
    def last_noise(self) -> str | None:
        """Why the last :meth:`predict` in this thread did not look for a face (the scan read as noise by
        :func:`defacer.detect.structure.no_structure`: it returned an empty label map), else ``None``."""
        return getattr(self._last, "noise", None)

    def probabilities(self, box_image: npt.NDArray[np.float32], mirror: bool = False) -> npt.NDArray[np.float32]:
        """Run the network on a box image, shape ``box_shape``; returns (C, *box_shape) probabilities.

        With ``mirror``, also runs the left-right mirrored box and averages (test-time
        augmentation: a face is nearly symmetric, and both eyes/ears share one label).
        """
        batch = np.ascontiguousarray(box_image[None, None], dtype=np.float32)
        (probs,) = self._session.run(None, {self._input: batch})
        out = np.asarray(probs[0], np.float32)
        if mirror:
            (flipped,) = self._session.run(None, {self._input: np.ascontiguousarray(batch[:, :, ::-1])})
            out = 0.5 * (out + np.asarray(flipped[0, :, ::-1], np.float32))
        return out

    def _nothing_found(self, clock: _StageClock, shape: tuple[int, ...], *waited: Beside[Any]) -> LabelMap:
        """The answer to a scan read as noise (:func:`defacer.detect.structure.no_structure`): no label, no pose, no
        source; the stage seconds so far recorded (the rest after ``"structure"`` as ``"box"``), and the work begun
        beside the box (``waited``) waited for, its errors dropped (nothing of it is used)."""
        for work in waited:
            with contextlib.suppress(Exception):
                work.result()
        self._last.pose, self._last.sources = {}, {}
        clock.stamp("box" if "structure" in clock.seconds else "structure")
        self._last.timings = clock.seconds
        return np.zeros(shape, dtype=np.uint8)

    def _mirrored_pass(self, box_image: npt.NDArray[np.float32], probs: npt.NDArray[np.float32],
                       components: list[Component], box_affine: Affine, doubt: str
                       ) -> tuple[npt.NDArray[np.float32], list[Component], dict[str, str]]:
        """The plain pass's weighted ``probs`` averaged with the mirrored box's, unless that loses the whole face.

        The network runs once more, on the left-right mirrored box; its weighted probabilities, flipped
        back, are averaged with the plain pass's (what ``mirror`` on the card computes, the plain pass not
        run twice) and the components are found again.  The averaged answer, two views of the same box, is
        kept, even where it finds fewer components than the doubtful plain pass: counting cannot tell a
        plausible-looking pair in the wrong place from a right one (mricrogl_CT turned 30 degrees: the plain
        pass's two "eyes" lie 55-70 mm low; the average finds one eye in its place and drops both wrong
        ones).  Only where the average finds no eye and no nose at all (:func:`defacer.detect.postprocess.
        find_components`) does the plain pass's answer stay.

        Returns
        -------
        probs, components
            Of the answer kept.
        record : dict
            ``why`` (``doubt``), ``found`` (eyes, nose, ears: plain -> mirrored) and ``kept``
            (``"mirrored"`` or ``"plain"``), for the sidecar (:attr:`last_sources`).
        """
        batch = np.ascontiguousarray(box_image[None, None, ::-1], dtype=np.float32)
        (flipped,) = self._session.run(None, {self._input: batch})
        other = _weighted(np.ascontiguousarray(np.asarray(flipped[0], np.float32)[:, ::-1]), self.class_weights)
        other += probs
        other *= np.float32(0.5)
        found = find_components(class_argmax(other), box_affine)

        def counts(kept: list[Component]) -> str:
            return "/".join(str(sum(c.feature == f for c in kept)) for f in ("eyes", "nose", "ears"))

        keep = any(c.feature in ("eyes", "nose") for c in found)
        record = {"why": doubt, "found": f"eyes/nose/ears {counts(components)} -> {counts(found)}",
                  "kept": "mirrored" if keep else "plain"}
        return (other, found, record) if keep else (probs, components, record)

    def predict(self, image_ras: npt.NDArray[np.floating], ras_affine: Affine) -> LabelMap:
        """Label eyes (1), nose (2) and ears (3).

        Parameters
        ----------
        image_ras : ndarray, shape (X, Y, Z), float32
            Physical intensities in RAS axis order, any voxel size and field of view.
        ras_affine : ndarray, shape (4, 4)
            Voxel -> RAS+ mm affine of ``image_ras``.

        Returns
        -------
        ndarray, shape (X, Y, Z), uint8
        """
        return self.predict_with_head(image_ras, ras_affine, None)

    def predict_with_head(self, image_ras: npt.NDArray[np.floating], ras_affine: Affine,
                          head: HeadModel | None) -> LabelMap:
        """:meth:`predict`, handing ``head`` to the ear fallback (no second analysis of the head).

        Parameters
        ----------
        image_ras, ras_affine
            As :meth:`predict`.
        head : HeadModel or None
            :func:`defacer.head.analyse_head` of ``image_ras`` at its RAS spacing (the pipeline's);
            ``None``: analysed here first (its air's noise ceiling lifts the tissue levels of the clean-up
            and the refinements on a low-SNR scan; the ear fallback uses it).  Where its outline is doubtful
            (a bright halo), the detector works on the image with the air lowered and on the head model at
            that level (``_lower_bright_air``); the ears it refines are still recorded on ``head``.  The pipeline
            itself hands over the head at that level and the image with its air raised (one analysis), which this
            rule then finds clear.

        Returns
        -------
        ndarray, shape (X, Y, Z), uint8
        """
        image = np.asarray(image_ras, np.float32)  # one conversion here (no copy for float32 input)
        if image.ndim != 3 or min(image.shape) < 2:
            message = f"The detector needs a 3D image with at least 2 voxels per axis, found shape {image.shape}."
            raise InputImageError(message)
        clock = _StageClock()
        # independent pieces of the later stages in two threads where there are cores for them (defacer.side_work)
        beside = self.cores >= 2 and side_by_side()
        # noise holds no face, whatever the network would mark in it: nothing is looked for.  Where there is a
        # second core the check runs beside the box (which it may make unneeded; the core waits there otherwise)
        # and is waited for before the network; its "structure" seconds are then those of starting it
        self._last.noise = None
        structure = Beside(functools.partial(no_structure, image), beside, name="defacer-structure")
        if not beside:
            self._last.noise = structure.result()
            if self._last.noise is not None:
                return self._nothing_found(clock, image.shape)
        clock.stamp("structure")
        levels: Beside[tuple[float | None, float | None]] | None = None
        try:
            # a bright halo or noise floor round the head (the outline doubtful): the network and the image rules
            # see the air lowered to the level at which the outline is sharpest (nothing changes on a clear outline)
            shared = head  # the caller's head (the pipeline's): the ear refinement records its auricles on it
            image, head, lifted = _lower_bright_air(image, np.asarray(ras_affine, float), head)
            # the air and tissue levels of the clean-up and the face refinement, from the image alone: beside the box
            # (in one thread: where they are needed, as before)
            levels = Beside(functools.partial(_levels, image), True, name="defacer-levels") if beside else None
            box_image, box = to_box(image, np.asarray(ras_affine, float), self.box_shape, self.box_spacing,
                                    beside=beside)
        except Exception:  # a scan read as noise is answered as before, whatever the box made of it
            if beside and structure.result() is not None:
                self._last.noise = structure.result()
                return self._nothing_found(clock, image.shape, *([levels] if levels is not None else []))
            raise
        if beside:
            self._last.noise = structure.result()
            if self._last.noise is not None:
                return self._nothing_found(clock, image.shape, *([levels] if levels is not None else []))
        self._last.pose = box.pose.as_dict() if box.pose is not None else {}
        clock.stamp("box")
        # class weights (from the card) rescale the probabilities before every decision: a weight
        # above 1 lets a thin, under-segmented class (the ears) win more of its border voxels
        probs = self.probabilities(box_image, mirror=self.mirror)
        probs = _weighted(probs, self.class_weights)
        clock.stamp("network")
        coarse = class_argmax(probs)
        components = find_components(coarse, box.affine)
        clock.stamp("components")
        mirrored: dict[str, str] = {}
        doubt = _doubt(components)
        if doubt and not self.mirror:
            # the plain pass lacks an eye or the nose: add the left-right mirrored pass to its probabilities
            # (the card's mirror, run on this scan only); that answer is kept unless it loses every eye and the nose
            probs, components, mirrored = self._mirrored_pass(box_image, probs, components, box.affine, doubt)
            clock.stamp("mirrored_pass")
        regions = [(int(FEATURE_LABELS[c.feature]), c.mask) for c in components]
        labels = box_to_grid(probs, box, image.shape, np.asarray(ras_affine, float), regions, beside=beside)
        clock.stamp("to_grid")
        # every label lies in the regions' extent: clean that crop only (the whole scan's air level,
        # lifted above the air's own noise on a low-SNR scan)
        extent = grid_extent(regions, box, image.shape, np.asarray(ras_affine, float))
        noise = air_ceiling(head) if head is not None else None
        if extent is None and levels is not None:  # not needed: only waited for (no thread outlives the call)
            with contextlib.suppress(Exception):
                levels.result()
        air, tissue = (None, None) if extent is None else levels.result() if levels is not None else _levels(image)
        if extent is not None:
            labels[extent] = keep_largest_pieces(restrict_to_tissue(labels[extent], image[extent],
                                                                    threshold=_above(air, noise)))
        clock.stamp("tissue")
        eyes = [c.centre_mm for c in components if c.feature == "eyes"]
        pitch = _pitch(eyes, [c.centre_mm for c in components if c.feature == "ears"], np.asarray(ras_affine, float))
        self._last.pose = {**self._last.pose, **pitch}
        if extent is not None:  # eyes and nose re-shaped by the image, looked for in their own regions' extent
            face = grid_extent([r for r in regions if r[0] != Label.EARS], box, image.shape, np.asarray(ras_affine, float))
            refine_face(image, np.asarray(ras_affine, float), labels, face, threshold=_above(tissue, noise),
                        pitch_deg=float(pitch["grid_pitch_deg"]) if pitch.get("pitch_applied") else 0.0)
        clock.stamp("face_refinement")
        self._last.sources = {"mirrored_pass": mirrored} if mirrored else {}
        if self.ear_fallback and len(eyes) == 2:
            # the map is this call's own; its ears lie in the extent (box_to_grid and the clean-up write
            # them there only, the face refinement never writes one)
            labels, sides = add_missing_ears(image, np.asarray(ras_affine, float), labels, eyes, head=head,
                                             in_place=True, ears_within=extent,
                                             record_on=shared if lifted and shared is not None else None,
                                             beside=beside)
            self._last.sources["ears"] = sides
        clock.stamp("ear_fallback")
        self._last.timings = clock.seconds
        return labels


def _levels(image: npt.NDArray[np.float32]) -> tuple[float | None, float | None]:
    """The air level of the clean-up (:func:`defacer.detect.postprocess.air_threshold`) and the tissue level of the
    face refinement (:func:`defacer.detect.refine_face.tissue_threshold`) of ``image``, both from one
    :func:`defacer.detect.postprocess.threshold_sample` (the image alone: computed beside the box)."""
    sample = threshold_sample(image)
    air = air_threshold(image, sample=sample)
    return air, tissue_threshold(image, sample=sample, air=air)


def _prefault(ort: Any, make_session: Any, members: int, box_shape: tuple[int, int, int]) -> Prefault | None:
    """The members' memory touched ahead in onnxruntime's shared arena (:mod:`defacer.detect.prefault`), or
    ``None`` where it would exceed :data:`defacer.detect.prefault.MAX_TOUCH_BYTES`, no arena could be registered or
    the touch graph not made (the members then keep no arena)."""
    need = arena_bytes(members, box_shape)
    if need > prefault.MAX_TOUCH_BYTES or not shared_arena(ort):  # a box too large to touch ahead: as before
        return None
    try:
        return Prefault(ort, make_session, need, (1, NUM_CLASSES, *box_shape))
    except Exception:  # noqa: BLE001 - only speed is at stake
        return None


def _openvino_or_none() -> ModuleType | None:
    """``openvino``, imported, where it is the network's backend (:func:`defacer.detect.backend.chosen`); ``None``
    for onnxruntime.  Where OpenVINO is installed but fails to import, an automatic choice falls back to onnxruntime
    and a forced one (``DEFACER_DETECTOR_BACKEND=openvino``) is an error.

    Raises
    ------
    DetectorError
        The forced backend is not installed or does not import, or the variable names no backend.
    """
    if backend.chosen() != backend.OPENVINO:
        return None
    try:
        return backend.import_runtime(backend.OPENVINO)
    except DetectorError:
        if backend.forced():
            raise
        return None


#: The largest weights file read (bytes).  The shipped detector is about 2.8 MB; the weights are read whole into
#: memory (their digest is checked on the bytes the network's library is given), so a file far larger than any
#: detector of this kind (a sparse or hostile ``--weights``) is refused before it is read, not read until memory
#: runs out.
MAX_WEIGHTS_BYTES = 256 << 20


def _too_large(path: Path, size: int) -> WeightsError:
    """The error for a weights file of ``size`` bytes, over :data:`MAX_WEIGHTS_BYTES`."""
    return WeightsError(f"Model weights {path} are too large: expected an ONNX file of at most "
                        f"{MAX_WEIGHTS_BYTES >> 20} MiB (the shipped detector is about 3 MB), found {size:,} bytes. "
                        "Pass --weights with a detector's .onnx file, or none for the shipped model.")


def _read_weights(path: Path) -> bytes:
    """The bytes of the weights file ``path``, read once, whole (the serialized ONNX model; the shipped one is
    about 2.8 MB; at most :data:`MAX_WEIGHTS_BYTES`).  Opened without blocking and checked to be a regular file
    once open (a named pipe put in its place since it was looked at is never waited on); read up to the size it had
    when opened, and refused if it holds more (written meanwhile).

    Raises
    ------
    WeightsError
        The file cannot be opened or read, is no longer a regular file, is larger than
        :data:`MAX_WEIGHTS_BYTES`, or grew while it was read.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
        with open(fd, "rb") as handle:
            status = os.fstat(handle.fileno())
            if not stat.S_ISREG(status.st_mode):
                raise WeightsError(f"Model weights {path} are no longer a regular file (replaced while defacer "
                                   "was starting). Pass --weights FILE, or none for the shipped model.")
            if status.st_size > MAX_WEIGHTS_BYTES:
                raise _too_large(path, status.st_size)
            # the size fstat gave, no more (a read of the limit would set aside the limit's bytes at once);
            # a file that grew meanwhile is refused rather than read on
            graph = handle.read(status.st_size)
            if handle.read(1):
                raise WeightsError(f"Model weights {path} grew while they were read (more than the "
                                   f"{status.st_size:,} bytes they held when opened). Pass --weights with a file "
                                   "that is not being written, or none for the shipped model.")
            return graph
    except OSError as err:
        raise WeightsError(f"Model weights {path} could not be read ({err.strerror or err}). Reinstall defacer, "
                           "or pass --weights FILE.") from err


def _pitch(eyes: list[npt.NDArray[np.float64]], ears: list[npt.NDArray[np.float64]], ras_affine: Affine
           ) -> dict[str, float | bool]:
    """The head's pitch read from the network's two eyes and its ears (:func:`defacer.detect.frame.head_pitch`) and
    from the grid (:func:`defacer.detect.frame.grid_pitch`), for the sidecar: ``pitch_deg`` (the ears'),
    ``grid_pitch_deg`` and ``pitch_applied`` (the grid's pitch taken as the head's: at least
    :data:`defacer.detect.frame.PITCH_MIN_DEG`, and the ears' within :data:`defacer.detect.frame.PITCH_AGREE_DEG`
    of it); ``{}`` without two eyes."""
    if len(eyes) != 2:
        return {}
    read = head_pitch(eyes[0], eyes[1], ears)
    grid = grid_pitch(eyes[0], eyes[1], ras_affine)
    applied = read is not None and abs(grid) >= PITCH_MIN_DEG and abs(read - grid) <= PITCH_AGREE_DEG
    return {**({"pitch_deg": round(read, 1)} if read is not None else {}), "grid_pitch_deg": round(grid, 1),
            "pitch_applied": applied}


def _doubt(components: list[Component]) -> str:
    """Why a pass's kept components are doubtful (``""``: not doubtful): fewer than two eyes or no nose.

    Every face has two eyes and a nose in the box; :func:`defacer.detect.postprocess.find_components`
    keeps two eyes only as a plausible pair and a nose only near them, so a missing one means the
    network's output was wrong or implausible there (e.g. a head turned 30 degrees, beyond training).
    """
    eyes = sum(c.feature == "eyes" for c in components)
    noses = sum(c.feature == "nose" for c in components)
    reasons = ([f"{eyes} eye{'s' if eyes != 1 else ''} found"] if eyes < 2 else []) + (["no nose found"] if noses == 0 else [])
    return ", ".join(reasons)


def _weighted(probs: npt.NDArray[np.float32], weights: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """``probs * weights`` per class (C, *box), in place when ``probs`` is a writeable float32 array.

    The network's output is this call's own: scaling it in place saves a new 14 MB array (and the
    first touch of its memory); the products are the same float32 products.
    """
    weights = np.asarray(weights, np.float32)[:, None, None, None]
    if probs.dtype == np.float32 and probs.flags.writeable and probs.shape[0] == weights.shape[0]:
        probs *= weights
        return probs
    return np.asarray(probs * weights, np.float32)


def class_argmax(probs: npt.NDArray[np.floating]) -> npt.NDArray[np.intp]:
    """``probs.argmax(axis=0)``: the most probable class of each voxel (the first on a tie).

    ``argmax`` over the first axis gathers each voxel's C values from C planes (8 ms for 4 x 96^3);
    comparing whole planes in turn, a later class taking a voxel only where it is strictly more
    probable, gives the same indices in a fifth of the time.  An array holding NaN (where
    ``argmax`` takes the first NaN) goes to ``argmax`` itself.

    Parameters
    ----------
    probs : ndarray, shape (C, ...)

    Returns
    -------
    ndarray, int, shape ``probs.shape[1:]``
    """
    if probs.shape[0] == 0 or np.isnan(probs).any():
        return np.asarray(probs.argmax(axis=0))
    best = np.array(probs[0])  # a copy (an array also for a 1-D probs)
    index = np.zeros(probs.shape[1:], dtype=np.intp)
    for c in range(1, probs.shape[0]):
        index[probs[c] > best] = c
        np.maximum(best, probs[c], out=best)
    return index


def _lower_bright_air(image: npt.NDArray[np.float32], ras_affine: Affine, head: HeadModel | None
                     ) -> tuple[npt.NDArray[np.float32], HeadModel | None, bool]:
    """The image the detector works on, its head model, and whether the air was lowered.

    Where the head's outline is doubtful (a bright halo, ghosting or a noise floor round the head, e.g. a
    scan through gamma 0.5: :attr:`defacer.head.HeadModel.outline_contrast`), everything below the level at
    which the outline is sharpest (:func:`defacer.head.sharpest_outline_level`) is raised to that level, so
    the network's input scaling puts the air at 0, as on the scans it learnt from, and the clean-up, face and
    ear rules measure tissue above it; the head model is then the one at that level.  Otherwise ``image``
    and ``head`` (analysed here when ``None`` and a head is found) come back as they are.
    """
    if head is None:
        head = _head_or_none(image, ras_affine)
    if head is None:
        return image, None, False
    found = sharpest_outline_level(image, voxel_sizes(ras_affine), head)
    if found is None:
        return image, head, False
    level, lowered = found
    return np.maximum(image, np.float32(level)), lowered, True


def _head_or_none(image: npt.NDArray[np.float32], ras_affine: Affine) -> HeadModel | None:
    """:func:`defacer.head.analyse_head` of a RAS image, or ``None`` where it finds no head."""
    try:
        return analyse_head(image, voxel_sizes(ras_affine))
    except InputImageError:
        return None


def _above(level: float | None, noise: float | None) -> float | None:
    """``level``, raised to ``noise`` (the air's noise ceiling) where that is higher."""
    if level is None or noise is None:
        return level
    return max(level, noise)


class _StageClock:
    """Wall-clock seconds between successive :meth:`stamp` calls, by stage name."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def stamp(self, stage: str) -> None:
        """Record the time since the previous stamp (or the clock's start) as ``stage``."""
        now = time.perf_counter()
        self.seconds[stage] = round(now - self._last, 4)
        self._last = now


def load_default_detector() -> OnnxDetector:
    """The detector with the weights shipped in the package.

    Raises
    ------
    WeightsError
        When the shipped weights are missing or corrupt.
    """
    return OnnxDetector(None)
