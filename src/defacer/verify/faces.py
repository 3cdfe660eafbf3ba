"""Offline face detectors run on renders, each with a stated threshold.

Every model here ships inside a registry package, so nothing is downloaded at run time:

=====================  ==============================================  ==========  ==================
name                   model (package)                                 threshold   counted in verdict
=====================  ==============================================  ==========  ==================
``facemesh``           MediaPipe Face Mesh, 468 landmarks (mediapipe)  0.7         every view
``dlib_cnn``           dlib MMOD CNN (dlib-bin + face-recognition-     0.0         front view (only
                       models)                                                     view it runs on)
``blazeface_short``    MediaPipe BlazeFace short-range (mediapipe)     0.75        front view only
``blazeface_full``     MediaPipe BlazeFace full-range (mediapipe)      0.50        never (reported)
=====================  ==============================================  ==========  ==================

Thresholds and why (calibration on renders of 10 real heads, intact and with the face cut
off 45 mm and 70 mm deep; numbers in ``docs/verification.md``):

* ``facemesh`` 0.7: the landmark model's own face-presence score (``min_tracking_confidence``,
  which also applies to still images), after its inner BlazeFace detector at MediaPipe's default
  0.5.  Every intact real head it found scored >= 0.7 (most >= 0.9; 5 of 10 heads found); none
  of the 20 face-removed renders produced landmarks; the phantom after a box cut did, at a
  presence between 0.5 and 0.7, which MediaPipe's default 0.5 would have counted.
* ``dlib_cnn`` 0.0: the MMOD detector's own decision boundary (the confidence is the margin of
  the detection score; dlib reports nothing below 0).  Intact: 0.27-1.03 on 4 of 10 heads;
  face removed: never.
* ``blazeface_short`` 0.75 on the front view, instead of MediaPipe's 0.5: face-removed heads
  still score up to 0.70 from the front (two dark orbit remnants on an oval suffice) and up to
  0.81 from 45 degrees, while intact fronts score 0.81-0.89 when the face is clear.  Oblique
  scores are therefore reported but not counted.
* ``blazeface_full`` 0.5 (MediaPipe's default) is reported but never counted: on renders it
  scores 0.67-0.77 on intact and 0.60-0.74 on face-removed heads, so it cannot tell them apart.

Haar cascades and HOG are not offered: they fire on any head-shaped blob and prove nothing.

All detectors take an (H, W, 3) uint8 RGB image and return a :class:`DetectorResult`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from defacer.errors import MissingExtraError, VerificationError

logger = logging.getLogger(__name__)

#: The cached models are not safe to call from several threads at once (the web UI may try).
_MODEL_LOCK = threading.RLock()

Box = tuple[int, int, int, int]
"""A face box in pixels: (left, top, right, bottom), right/bottom exclusive."""


@dataclass(frozen=True)
class DetectorResult:
    """What one detector said about one image.

    Attributes
    ----------
    detector : str
        Detector name (see the module table).
    threshold : float
        Score at or above which a face counts as detected.
    score : float or None
        Best score among the faces the model returned (None: it returned none).  For
        ``facemesh`` it is 1.0 when landmarks were found.
    box : tuple of 4 int or None
        Box of the best face, (left, top, right, bottom) in pixels.
    detected : bool
        ``score >= threshold``.
    counted : bool
        Whether this detector takes part in the pass/fail verdict.
    seconds : float
        Time spent in the model.
    extra : dict
        Detector-specific details (e.g. the number of landmarks).
    """

    detector: str
    threshold: float
    score: float | None
    box: Box | None
    detected: bool
    counted: bool = True
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        return {
            "detector": self.detector,
            "threshold": self.threshold,
            "score": None if self.score is None else round(float(self.score), 4),
            "box": None if self.box is None else [int(v) for v in self.box],
            "detected": bool(self.detected),
            "counted": bool(self.counted),
            "seconds": round(float(self.seconds), 4),
            **self.extra,
        }


#: Face Mesh's inner face detector threshold (MediaPipe's default).
FACEMESH_DETECTION_THRESHOLD = 0.5

#: Stated thresholds (see the module docstring for the reasons).
THRESHOLDS: dict[str, float] = {
    "blazeface_short": 0.75,
    "blazeface_full": 0.50,
    "facemesh": 0.7,
    "dlib_cnn": 0.0,
}


def _check_image(image: npt.NDArray[Any]) -> npt.NDArray[np.uint8]:
    """Return a contiguous (H, W, 3) uint8 RGB array or raise."""
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        message = f"Face detectors expect an (H, W, 3) uint8 RGB image, found shape {arr.shape} and dtype {arr.dtype}."
        raise VerificationError(message)
    return np.ascontiguousarray(arr)


def _protobuf_compat() -> None:
    """Give protobuf >= 5 back the ``MessageFactory.GetPrototype`` that mediapipe 0.10.21's bindings call.

    Without it every Face Mesh call prints "AttributeError: 'MessageFactory' object has no
    attribute 'GetPrototype'" (the bindings catch it, so results are unaffected, but users see an
    error).  protobuf's own replacement, ``message_factory.GetMessageClass``, does the same job.
    """
    try:
        from google.protobuf import message_factory
    except ImportError:
        return
    factory = message_factory.MessageFactory
    if not hasattr(factory, "GetPrototype") and hasattr(message_factory, "GetMessageClass"):
        factory.GetPrototype = lambda self, descriptor: message_factory.GetMessageClass(descriptor)  # type: ignore[attr-defined]


#: Set to 1 to see what MediaPipe / TensorFlow Lite print natively (hidden by default).
NATIVE_LOGS_ENV = "DEFACER_NATIVE_LOGS"


@contextlib.contextmanager
def native_quiet() -> Iterator[None]:
    """Hide what MediaPipe's and TensorFlow Lite's C++ code print on file descriptor 2.

    They print "INFO: Created TensorFlow Lite XNNPACK delegate", absl's "All log messages before
    absl::InitializeLog()" and feedback-manager warnings on every run, which environment
    variables do not reach (absl logging ignores ``GLOG_minloglevel``).  Python's own
    ``sys.stderr`` is flushed first; ``DEFACER_NATIVE_LOGS=1`` shows everything.  Hold
    :data:`_MODEL_LOCK` around it (the descriptor is process-wide).
    """
    if os.environ.get(NATIVE_LOGS_ENV) == "1":
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _import_mediapipe() -> Any:
    """Import mediapipe quietly, or raise MissingExtraError."""
    os.environ.setdefault("GLOG_minloglevel", "2")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    _protobuf_compat()
    try:
        import mediapipe as mp
    except ImportError as err:
        if getattr(err, "name", None) in (None, "mediapipe"):
            raise MissingExtraError("verify", "mediapipe") from err
        message = (
            f"mediapipe is installed but cannot be imported: {err}. It needs opencv (opencv-python-headless<5 "
            "works without a display), matplotlib and attrs."
        )
        raise VerificationError(message) from err
    if not hasattr(mp, "solutions"):
        message = (
            f"mediapipe {getattr(mp, '__version__', '?')} has no bundled face models (mediapipe.solutions). "
            "Install mediapipe==0.10.21, whose wheel carries them."
        )
        raise VerificationError(message)
    return mp


def _import_dlib() -> Any:
    """Import dlib, or raise MissingExtraError."""
    try:
        import dlib
    except ImportError as err:
        raise MissingExtraError("verify", "dlib-bin") from err
    return dlib


def dlib_model_path(name: str) -> Path:
    """Path of a model file shipped by the ``face-recognition-models`` package.

    The package is located without importing it (its ``__init__`` needs ``pkg_resources``,
    which recent setuptools no longer provide).
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise MissingExtraError("verify", "face-recognition-models")
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / name
    if not path.is_file():
        raise VerificationError(f"Model file {name} is missing from face-recognition-models at {path}; reinstall it.")
    return path


def _box_from_relative(rel: Any, width: int, height: int) -> Box:
    left = round(rel.xmin * width)
    top = round(rel.ymin * height)
    right = round((rel.xmin + rel.width) * width)
    bottom = round((rel.ymin + rel.height) * height)
    return (max(left, 0), max(top, 0), min(right, width), min(bottom, height))


@lru_cache(maxsize=2)
def _blazeface(model_selection: int) -> Any:
    mp = _import_mediapipe()
    # A low model threshold so that the score of weak faces is still reported.
    try:
        return mp.solutions.face_detection.FaceDetection(model_selection=model_selection,
                                                         min_detection_confidence=0.05)
    except (AttributeError, TypeError) as err:
        raise _protobuf_hint(err) from err


def _run_blazeface(image: npt.NDArray[Any], name: str, model_selection: int) -> DetectorResult:
    rgb = _check_image(image)
    with _MODEL_LOCK, native_quiet():
        model = _blazeface(model_selection)
        start = time.perf_counter()
        result = model.process(rgb)
    seconds = time.perf_counter() - start
    best_score, best_box = None, None
    for det in result.detections or []:
        score = float(det.score[0]) if det.score else 0.0
        if best_score is None or score > best_score:
            best_score = score
            best_box = _box_from_relative(det.location_data.relative_bounding_box, rgb.shape[1], rgb.shape[0])
    threshold = THRESHOLDS[name]
    detected = best_score is not None and best_score >= threshold
    return DetectorResult(name, threshold, best_score, best_box, detected, seconds=seconds)


def blazeface_short(image: npt.NDArray[Any]) -> DetectorResult:
    """MediaPipe BlazeFace short-range (faces within ~2 m, i.e. filling much of the picture)."""
    return _run_blazeface(image, "blazeface_short", 0)


def blazeface_full(image: npt.NDArray[Any]) -> DetectorResult:
    """MediaPipe BlazeFace full-range (sparse) model."""
    return _run_blazeface(image, "blazeface_full", 1)


def _protobuf_hint(err: Exception) -> VerificationError:
    try:
        from google.protobuf import __version__ as found
    except ImportError:  # pragma: no cover
        found = "unknown"
    return VerificationError(
        f"mediapipe could not build its face graph ({type(err).__name__}: {err}). mediapipe 0.10.21 works with "
        f"protobuf 4.25-6.x; found protobuf {found}. Install 'protobuf>=6.31.1,<7' (or <5)."
    )


@lru_cache(maxsize=1)
def _facemesh() -> Any:
    mp = _import_mediapipe()
    try:
        return mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1,
                                               min_detection_confidence=FACEMESH_DETECTION_THRESHOLD,
                                               min_tracking_confidence=THRESHOLDS["facemesh"])
    except (AttributeError, TypeError) as err:
        raise _protobuf_hint(err) from err


def facemesh(image: npt.NDArray[Any]) -> DetectorResult:
    """MediaPipe Face Mesh: does it find the 468 face landmarks with presence >= 0.7?

    The score is reported as 1.0 when found (the legacy API does not expose the presence value;
    it only applies the threshold).
    """
    rgb = _check_image(image)
    with _MODEL_LOCK, native_quiet():
        model = _facemesh()
        start = time.perf_counter()
        result = model.process(rgb)
    seconds = time.perf_counter() - start
    faces = result.multi_face_landmarks or []
    box: Box | None = None
    count = 0
    if faces:
        pts = faces[0].landmark
        count = len(pts)
        xs = [p.x * rgb.shape[1] for p in pts]
        ys = [p.y * rgb.shape[0] for p in pts]
        box = (int(min(xs)), int(min(ys)), int(max(xs)) + 1, int(max(ys)) + 1)
    found = count > 0
    return DetectorResult("facemesh", THRESHOLDS["facemesh"], 1.0 if found else None, box, found, seconds=seconds,
                          extra={"landmarks": count})


@lru_cache(maxsize=1)
def _dlib_cnn() -> Any:
    dlib = _import_dlib()
    return dlib.cnn_face_detection_model_v1(str(dlib_model_path("mmod_human_face_detector.dat")))


def dlib_cnn(image: npt.NDArray[Any]) -> DetectorResult:
    """dlib's MMOD CNN face detector (no upsampling: render faces are > 80 pixels wide)."""
    rgb = _check_image(image)
    with _MODEL_LOCK:
        model = _dlib_cnn()
        start = time.perf_counter()
        dets = model(rgb, 0)
    seconds = time.perf_counter() - start
    best_score, best_box = None, None
    for det in dets:
        if best_score is None or det.confidence > best_score:
            best_score = float(det.confidence)
            r = det.rect
            best_box = (max(r.left(), 0), max(r.top(), 0), min(r.right() + 1, rgb.shape[1]),
                        min(r.bottom() + 1, rgb.shape[0]))
    threshold = THRESHOLDS["dlib_cnn"]
    detected = best_score is not None and best_score >= threshold
    return DetectorResult("dlib_cnn", threshold, best_score, best_box, detected, seconds=seconds)


#: Views in which each detector's detections count toward the verdict (None: every view).
COUNTED_VIEWS: dict[str, tuple[str, ...] | None] = {
    "blazeface_short": ("front",),
    "blazeface_full": (),
    "facemesh": None,
    "dlib_cnn": None,
}


def is_counted(detector: str, view: str) -> bool:
    """Whether ``detector``'s detections in ``view`` count toward the verdict."""
    views = COUNTED_VIEWS.get(detector, ())
    return views is None or view in views


#: All detectors, by name.
DETECTORS: dict[str, Callable[[npt.NDArray[Any]], DetectorResult]] = {
    "blazeface_short": blazeface_short,
    "blazeface_full": blazeface_full,
    "facemesh": facemesh,
    "dlib_cnn": dlib_cnn,
}

#: Detectors cheap enough to run on every view; the others run on the front view only.
FAST_DETECTORS: tuple[str, ...] = ("blazeface_short", "blazeface_full", "facemesh")


def detect_all(image: npt.NDArray[Any], names: tuple[str, ...] | None = None) -> dict[str, DetectorResult]:
    """Run several detectors on one image.

    Parameters
    ----------
    image : ndarray, uint8, shape (H, W, 3) or (H, W)
        RGB or grey picture.
    names : tuple of str, optional
        Detector names (default: all of :data:`DETECTORS`).

    Returns
    -------
    dict of str to DetectorResult
    """
    chosen = names if names is not None else tuple(DETECTORS)
    unknown = [n for n in chosen if n not in DETECTORS]
    if unknown:
        raise VerificationError(f"Unknown face detector(s) {unknown}; expected names from {sorted(DETECTORS)}.")
    return {name: DETECTORS[name](image) for name in chosen}


def _probe_mediapipe() -> None:
    """Build both MediaPipe face graphs (cached for the detectors) and run each once on a blank picture.

    MediaPipe opens a graph's calculators on its own threads after the constructor returns, and
    TensorFlow Lite logs while they open; running the graph waits for that, so the log falls inside
    the caller's :func:`native_quiet` (a bare constructor let a "feedback manager" line through now
    and then).
    """
    blank = np.zeros((64, 64, 3), np.uint8)
    _blazeface(0).process(blank)
    _facemesh().process(blank)


def available() -> dict[str, bool]:
    """Which detector back-ends work here: mediapipe (its face graphs can be built), dlib, the dlib models."""
    status = {}
    for name, probe in (("mediapipe", _probe_mediapipe), ("dlib", _import_dlib)):
        try:
            with _MODEL_LOCK, native_quiet():
                probe()
            status[name] = True
        except (MissingExtraError, VerificationError, ImportError, OSError) as err:
            logger.info("face detector back-end %s unavailable: %s", name, err)
            status[name] = False
    try:
        dlib_model_path("mmod_human_face_detector.dat")
        status["face_recognition_models"] = True
    except (MissingExtraError, VerificationError):
        status["face_recognition_models"] = False
    return status
