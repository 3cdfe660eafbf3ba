"""The library API for notebooks and scripts: deface an image held in memory.

:func:`deface` takes a nibabel image (``Nifti1Image``, ``Nifti2Image`` or ``MGHImage``) or a
:class:`~defacer.volume.Volume` and returns the defaced image of the same kind: same class,
shape, affine, header and on-disk data type, every voxel not deliberately distorted keeping
its stored value.  :func:`deface_image` does the same and returns a :class:`DefacedImage`,
which also holds the label map, the voxels changed per feature and the provenance record.

Both run the one defacing core (:func:`defacer.pipeline.deface`) with the shipped detector,
or with a label map given as ``labels=`` (an array on the image's grid, a nibabel image, a
``Volume`` or a file path).  Nothing is read from or written to disk except the detector's
weights (and a label file when ``labels`` is a path).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from defacer._typing import LabelMap
from defacer.checks import DEFAULT_MAX_VOXELS, validate_volume
from defacer.detect import Detector
from defacer.errors import FeaturesNotFoundError, LabelMapError
from defacer.io.in_memory import is_nibabel_image, volume_from_nibabel, volume_to_nibabel
from defacer.pipeline import DefaceOptions, DefaceResult, load_detector, missing_features
from defacer.pipeline import deface as deface_volume
from defacer.volume import Volume

#: The keyword arguments that set a field of :class:`~defacer.pipeline.DefaceOptions`.
OPTION_NAMES = tuple(f.name for f in dataclasses.fields(DefaceOptions))


@dataclass(frozen=True)
class DefacedImage:
    """What :func:`deface_image` returns.

    Attributes
    ----------
    image : nibabel image or Volume
        The defaced image, of the input's own kind (same class, shape, affine, header and
        on-disk data type).
    labels : ndarray, uint8, shape of the input grid
        The feature labels used (0 background, 1 eyes, 2 nose, 3 ears; :mod:`defacer.labels`),
        in the input's axis order.
    edit_mask : ndarray, uint8, shape of the input grid
        The feature label of every voxel whose stored value changed, 0 elsewhere.
    voxels_changed : dict of str to int
        Voxels changed per feature (``"eyes"``, ``"nose"``, ``"ears"``).
    features : dict of str to dict
        Per feature: requested, voxels found, voxels changed and a status (``"distorted"``,
        ``"not found"``, ``"found but not changed"``, ``"not requested"``).
    provenance : dict
        The provenance record (versions, detector, options, estimates, counts, timings), as in
        the ``.defacer.json`` sidecar the command line writes, JSON-serialisable.
    volume : Volume
        The defaced volume (stored values, scaling, header), e.g. for :func:`defacer.save_volume`.
    """

    image: Any
    labels: LabelMap
    edit_mask: LabelMap
    voxels_changed: dict[str, int]
    features: dict[str, dict[str, Any]]
    provenance: dict[str, Any]
    volume: Volume


@functools.lru_cache(maxsize=1)
def shipped_detector() -> Detector:
    """The shipped ONNX detector, loaded once per process (its weights' sha256 checked on loading)."""
    return load_detector()


def deface(image: Any, *, labels: Any = None, detector: Detector | None = None,
           options: DefaceOptions | None = None, allow_missing: bool = False,
           max_voxels: int | None = DEFAULT_MAX_VOXELS, **option_values: Any) -> Any:
    """Deface an image in memory and return the defaced image, of the same kind.

    Parameters are those of :func:`deface_image`; this returns its ``.image``.

    Returns
    -------
    nibabel image or Volume
        Same class, shape, affine, header and on-disk data type as ``image``.
    """
    return deface_image(image, labels=labels, detector=detector, options=options, allow_missing=allow_missing,
                        max_voxels=max_voxels, **option_values).image


def deface_image(image: Any, *, labels: Any = None, detector: Detector | None = None,
                 options: DefaceOptions | None = None, allow_missing: bool = False,
                 max_voxels: int | None = DEFAULT_MAX_VOXELS, **option_values: Any) -> DefacedImage:
    """Distort the eyes, nose and ears of an image in memory, and nothing else.

    Parameters
    ----------
    image : nibabel.Nifti1Image, nibabel.Nifti2Image, nibabel.MGHImage or Volume
        The head scan (3D; a trailing axis of length 1 is allowed).  It is not modified.
    labels : array, nibabel image, Volume or path-like, optional
        The feature label map to use instead of the shipped detector (0 background, 1 eyes,
        2 nose, 3 ears), on the image's own grid: an integer array of the image's shape (in
        its axis order), an image or volume with the same affine, or a label file.
    detector : Detector, optional
        Another detector (see :func:`defacer.load_detector`); not together with ``labels``.
    options : DefaceOptions, optional
        What to distort and how; the defaults of the command line when not given.
    allow_missing : bool
        Return the image even when a requested feature was not found or not distorted
        (``result.features`` says which); by default that raises, since a partly defaced image
        could pass for a defaced one.
    max_voxels : int or None
        Refuse an image with more voxels than this (default 512^3); ``None``: no limit.
    **option_values
        Any field of :class:`~defacer.pipeline.DefaceOptions` (``features``, ``seed``,
        ``protect_depth_mm``, ``eye_band_mm``, ``eye_box_scale``, ``nose_scale``), overriding
        ``options``; ``features`` may be a comma-separated string such as ``"eyes,nose"``.

    Returns
    -------
    DefacedImage

    Raises
    ------
    TypeError
        For an image or labels of an unsupported kind, an unknown option name, or an argument of
        the wrong type (``allow_missing`` not a bool, ``max_voxels`` not a whole number >= 1 or
        ``None``, ``options`` not a ``DefaceOptions``, ``detector`` not a detector).
    InputImageError
        For an image that is not a usable 3D head volume.
    LabelMapError
        For labels not on the image's grid or not in 0-3.
    FeaturesNotFoundError
        When a requested feature was not distorted and ``allow_missing`` is off.
    DetectorError
        When no label map is given and the shipped detector is not available.
    """
    _check_arguments(detector, options, allow_missing, max_voxels)
    options = _options(options, option_values)
    volume, kind = _as_volume(image, max_voxels)
    if labels is not None and detector is not None:
        raise TypeError("Pass either labels= or detector=, not both.")
    if labels is not None:
        detector = _label_detector(labels, volume)
    elif detector is None:
        detector = shipped_detector()
    result: DefaceResult = deface_volume(volume, detector, options)
    provenance = result.provenance
    provenance["input"] = {"object": kind}
    label_sha = getattr(detector, "sha256", None)
    if labels is not None and label_sha is not None:
        provenance["detector"]["labels_sha256"] = label_sha
    missing = missing_features(provenance)
    if missing and not allow_missing:
        features = provenance["features"]
        what = "; ".join(f"{name}: {features[name]['status']}" for name in features if features[name]["requested"])
        raise FeaturesNotFoundError(
            f"Not every requested facial feature was distorted ({what}), so no defaced image is returned: a partly "
            "defaced image could pass for a defaced one. Check that the image is a head scan showing the face, pass "
            "labels= with a corrected label map, or pass allow_missing=True to get it anyway "
            "(result.features says what was found).",
            missing=missing, found=[n for n, e in features.items() if e["status"] == "distorted"],
            provenance=provenance,
        )
    out_volume = result.volume
    out_image = volume_to_nibabel(out_volume) if kind != "defacer.Volume" else out_volume
    return DefacedImage(image=out_image, labels=result.labels, edit_mask=result.edit_mask,
                        voxels_changed=dict(provenance["voxels_changed"]), features=dict(provenance["features"]),
                        provenance=provenance, volume=out_volume)


def _check_arguments(detector: Any, options: Any, allow_missing: Any, max_voxels: Any) -> None:
    """Refuse call arguments of the wrong kind in words, before any work.

    ``allow_missing="false"`` (a string, hence true) would otherwise return a partly defaced
    image, the very thing the default refuses.
    """
    if not isinstance(allow_missing, bool | np.bool_):
        raise TypeError(f"allow_missing must be True or False (a bool, not a string or number); found "
                        f"{allow_missing!r:.40}.")
    if max_voxels is not None and (isinstance(max_voxels, bool | np.bool_)
                                   or not isinstance(max_voxels, int | np.integer) or max_voxels < 1):
        raise TypeError(f"max_voxels must be a whole number >= 1, or None for no limit; found {max_voxels!r:.40}.")
    if options is not None and not isinstance(options, DefaceOptions):
        raise TypeError(f"options must be a defacer.DefaceOptions (or pass its fields as keywords, e.g. seed=1); "
                        f"found {type(options).__module__}.{type(options).__name__}.")
    if detector is not None and not callable(getattr(detector, "predict", None)):
        raise TypeError(f"detector must be a Detector such as defacer.load_detector(weights_path) returns; found "
                        f"{type(detector).__module__}.{type(detector).__name__}"
                        + (" (load the weights first: detector=defacer.load_detector(path))"
                           if isinstance(detector, str | os.PathLike) else "") + ".")


def _options(options: DefaceOptions | None, values: dict[str, Any]) -> DefaceOptions:
    """``options`` (or the defaults) with the fields named in ``values`` replaced."""
    unknown = sorted(set(values) - set(OPTION_NAMES))
    if unknown:
        raise TypeError(f"Unknown option(s) {unknown}; expected some of {list(OPTION_NAMES)}.")
    if isinstance(values.get("features"), dict | bytes):  # a dict's keys, or bytes' numbers, are no choice made
        raise TypeError(f"features must be feature names (a list such as ['eyes', 'nose'] or 'eyes,nose'); found "
                        f"{type(values['features']).__name__} {values['features']!r:.60}.")
    if isinstance(values.get("features"), str):
        values = {**values, "features": tuple(f.strip() for f in values["features"].split(",") if f.strip())}
    elif "features" in values:
        values = {**values, "features": tuple(values["features"])}
    return dataclasses.replace(options or DefaceOptions(), **values)


def _as_volume(image: Any, max_voxels: int | None) -> tuple[Volume, str]:
    """The volume of the input image and a word for its kind (for the provenance)."""
    if isinstance(image, Volume):
        if max_voxels is not None:
            from defacer.checks import check_voxel_count

            check_voxel_count(image.raw.shape, "the volume", max_voxels)
        return validate_volume(image, source="the volume", strict=True), "defacer.Volume"
    if is_nibabel_image(image):
        return volume_from_nibabel(image, max_voxels=max_voxels), f"nibabel {type(image).__name__}"
    if isinstance(image, str | os.PathLike):
        raise TypeError(
            f"deface takes an image in memory, not a path ('{os.fspath(image)}'). Load it first "
            "(nibabel.load(path), or defacer.load_volume(path) for NIfTI, NRRD, MGH and DICOM), or use the command "
            "line: defacer deface IN OUT."
        )
    raise TypeError(
        f"Expected a nibabel Nifti1Image, Nifti2Image or MGHImage, or a defacer.Volume; found "
        f"{type(image).__module__}.{type(image).__name__}."
    )


def _label_detector(labels: Any, volume: Volume) -> Detector:
    """A detector serving ``labels`` on ``volume``'s grid."""
    from defacer.detect.label_file import LabelFileDetector, LabelMapDetector

    if isinstance(labels, str | os.PathLike):
        if not str(os.fspath(labels)).strip():  # Path("") is ".": the current folder read as a DICOM series
            raise LabelMapError("labels= is an empty path; give the label map's file name (or an array or image).")
        return LabelFileDetector(labels)
    if isinstance(labels, Volume):
        label_volume = labels
    elif is_nibabel_image(labels):
        label_volume = volume_from_nibabel(labels, max_voxels=None, source="the label image")
    elif isinstance(labels, np.ndarray):
        array: npt.NDArray[Any] = labels
        if array.shape != volume.shape:
            raise LabelMapError(
                f"The label array has shape {array.shape}, the image {volume.shape}; the labels must be on the "
                "image's own grid, in its axis order (e.g. labels = result.labels of an earlier run, or an array "
                "made from img.shape)."
            )
        if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)
                or array.dtype == np.bool_):
            raise LabelMapError(f"The label array holds {array.dtype} values; expected integers 0-3.")
        label_volume = Volume(np.asarray(array), volume.affine)
    else:
        raise TypeError(
            f"labels= takes an integer array on the image's grid, a nibabel image, a defacer.Volume or a file path; "
            f"found {type(labels).__module__}.{type(labels).__name__}."
        )
    detector = LabelMapDetector(label_volume, name="label map (in memory)", source="given as labels=")
    detector.sha256 = hashlib.sha256(np.ascontiguousarray(detector.labels).tobytes()).hexdigest()
    return detector
