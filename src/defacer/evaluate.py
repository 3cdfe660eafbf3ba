"""Evaluate defacing over a folder of scans: deface each in memory, verify it, score the whole.

This module sits above both the pipeline (it defaces, :func:`defacer.pipeline.deface`) and the
verification (:func:`defacer.verify.verify_pair`); the scoring it reports lives in
:mod:`defacer.verify.evaluate` (which knows nothing of defacing).  ``defacer evaluate`` calls
:func:`evaluate_folder`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from defacer.detect import Detector
from defacer.errors import DefacerError, LabelMapError, VerificationError, shown
from defacer.files import LABEL_ENDINGS, label_map_in, link_outside, text_name
from defacer.labels import FEATURE_LABELS
from defacer.options import DEFAULT_OPTIONS, DefaceOptions
from defacer.pipeline import deface, load_detector
from defacer.verify import faces
from defacer.verify.check import VERDICT_RULE, feature_label_array, verify_pair
from defacer.verify.evaluate import (
    RESULT_HTML,
    RESULT_JSON,
    Scan,
    baseline_embedding,
    find_scans,
    format_row,
    overall_scores,
    peak_rss_mb,
)

__all__ = ["evaluate_folder", "evaluate_scan", "own_label_map"]

logger = logging.getLogger(__name__)


def own_label_map(folder: Path, name: str, option: str) -> Path | None:
    """The label map of scan ``name`` in ``folder`` (:func:`defacer.files.label_map_in`), never one linked out of it.

    Parameters
    ----------
    folder : Path
        ``--labels-dir`` or ``--reference-dir``, as the user gave it.
    name : str
        The scan's name (its file name without the image ending, or its DICOM folder's name).
    option : str
        The option that named ``folder`` (``"--labels-dir"``), for the message.

    Returns
    -------
    Path or None
        The label map, or ``None`` when ``folder`` has none for the scan.

    Raises
    ------
    DefacerError
        The map is a symbolic link leading out of ``folder`` (other than into a git-annex store holding it,
        :func:`defacer.files.link_outside`): it is not read, as :func:`defacer.verify.evaluate.find_scans` leaves
        out a scan linked out of FOLDER.
    """
    path = label_map_in(folder, name, within=folder)
    if path is not None and link_outside(path, folder) is not None:
        raise DefacerError(f"The label map '{shown(path.name)}' in {option} '{shown(folder)}' is a symbolic link to "
                           f"a file outside that folder: not read (expected the label maps inside {option}; defacer "
                           "reads only the files of the folders it is given). Copy it into the folder (cp -L) to "
                           "use it.")
    return path


def evaluate_scan(scan: Scan, out_dir: Path, detector_for: Callable[[Scan], Detector], options: DefaceOptions,
                  reference_dir: Path | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Deface and verify one scan.

    Returns
    -------
    record : dict
        The JSON-ready per-scan record.
    extras : dict
        Embeddings (``original``, ``defaced``, ``baseline``) and front thumbnails.
    """
    from defacer.detect.metrics import dice_per_feature
    from defacer.io import load_volume

    start = time.perf_counter()
    volume = load_volume(scan.path)
    t_load = time.perf_counter() - start
    result = deface(volume, detector_for(scan), options)
    t_deface = time.perf_counter() - start - t_load
    found = [name for name, value in FEATURE_LABELS.items() if np.any(result.labels == int(value))]
    dice = None
    try:
        reference = own_label_map(reference_dir, scan.name, "--reference-dir") if reference_dir else None
    except DefacerError as err:
        logger.warning("no Dice for '%s': %s", shown(scan.name), err)
        reference = None
    if reference is not None:
        # Checked as a label map (integers 0-3, on the scan's grid: shape, affine and voxel order), not cast: a 7 or
        # a map shifted or stored in the other voxel order gave a Dice of the wrong voxels without a word.
        try:
            ref = feature_label_array(load_volume(reference, strict=False), volume)
        except LabelMapError as err:
            logger.warning("reference labels %s skipped (no Dice for this scan): %s", reference, err)
        else:
            assert ref is not None
            dice = dice_per_feature(result.labels, ref)
    t0 = time.perf_counter()
    verified = verify_pair(volume, result.volume, out_dir / scan.name, labels=result.labels,
                           provenance=result.provenance, title=f"defacer evaluate: {scan.name}")
    t_verify = time.perf_counter() - t0
    baseline = baseline_embedding(volume)
    s = verified.summary
    front = s["detectors"].get("front", {})
    record = {
        "name": scan.name,
        "path": str(scan.path),
        "features_found": found,
        "dice": dice,
        "reference": str(reference) if dice is not None else None,
        "verdict": s["verdict"],
        "passed": s["passed"],
        "conclusive": s["conclusive"],
        "face_found_before": s["face_found_before"],
        "face_found_after": s["face_found_after"],
        "front_scores": {n: {"before": front.get("before", {}).get(n, {}).get("score"),
                             "after": front.get("after", {}).get(n, {}).get("score")} for n in faces.DETECTORS},
        "identity_distance": s["identity"]["distance"],
        "brain_changed": s["voxels"]["brain"]["changed"],
        "voxels_changed": s["voxels"]["total"],
        "report": str(verified.report_path),
        "seconds": round(time.perf_counter() - start, 2),
        "seconds_load": round(t_load, 2),
        "seconds_deface": round(t_deface, 2),
        "seconds_verify": round(t_verify, 2),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }
    extras = {
        "original": verified.embeddings["original"],
        "defaced": verified.embeddings["defaced"],
        "baseline": baseline,
        "thumbs": (verified.renders["original"]["front"].image, verified.renders["defaced"]["front"].image),
    }
    return record, extras




def evaluate_folder(
    folder: Path,
    out_dir: Path,
    *,
    labels_dir: Path | None = None,
    reference_dir: Path | None = None,
    options: DefaceOptions | None = None,
    detector: Detector | None = None,
    echo: Callable[[str], None] | None = None,
    scans: Sequence[Scan] | None = None,
) -> dict[str, Any]:
    """Deface, verify and score every scan in ``folder``.

    Parameters
    ----------
    folder : Path
        Folder of scans (files and DICOM folders directly inside it).
    out_dir : Path
        Where the per-scan reports, ``evaluation.json`` and ``evaluation.html`` go.
    scans : sequence of Scan, optional
        The scans of ``folder`` as :func:`defacer.verify.evaluate.find_scans` listed them (default: listed here);
        a caller that has listed them already (to claim the outputs first) passes its list, so both agree.
    labels_dir : Path, optional
        Use ``<labels_dir>/<name>.labels.nii.gz`` (or ``.labels.nii``, ``.labels.nrrd``, ``.labels.nhdr``, ``.labels.mgz``, ``.labels.mgh``, as
        ``batch --labels-dir``: :func:`defacer.files.label_map_in`) as each scan's detector (a label file) instead
        of the default detector.
    reference_dir : Path, optional
        Folder of reference label maps ``<name>.labels.nii.gz`` (or the other endings) for Dice.
    options : DefaceOptions, optional
        Defacing options (default: :data:`defacer.options.DEFAULT_OPTIONS`).
    detector : Detector, optional
        Detector for every scan (default: the shipped model, unless ``labels_dir``).
    echo : callable, optional
        Called with one line of progress per scan.

    Returns
    -------
    dict
        ``{"rule", "scans": [per-scan records], "overall": {...}}``; also written as JSON.
    """
    from defacer.verify.report import evaluation_html

    scans = list(scans) if scans is not None else find_scans(folder)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    opts = options or DEFAULT_OPTIONS
    shared_detector = detector
    if shared_detector is None and labels_dir is None:
        shared_detector = load_detector()

    def detector_for(scan: Scan) -> Detector:
        if labels_dir is not None:
            path = own_label_map(labels_dir, scan.name, "--labels-dir")
            if path is None:
                raise DefacerError(f"No label map for '{scan.name}' in '{labels_dir}' (expected {scan.name}.labels.nii.gz, "
                                   f"or {', '.join(LABEL_ENDINGS[1:])}).")
            return load_detector(labels_path=path)
        assert shared_detector is not None  # loaded above when there is no labels_dir
        return shared_detector

    records: list[dict[str, Any]] = []
    embeddings: dict[str, dict[str, Any]] = {}
    thumbs: dict[str, tuple[Any, Any]] = {}
    for scan in scans:
        try:
            record, extras = evaluate_scan(scan, out_dir, detector_for, opts, reference_dir)
        except (DefacerError, VerificationError) as err:
            record = {"name": scan.name, "path": str(scan.path), "error": str(err)}
            extras = None
        records.append(record)
        if extras is not None:
            embeddings[scan.name] = extras
            thumbs[scan.name] = extras["thumbs"]
        if echo is not None:
            echo(format_row(record))
    result = {"rule": VERDICT_RULE, "scans": records, "overall": overall_scores(records, embeddings)}
    from defacer.verify.report import write_summary

    write_summary(out_dir / RESULT_JSON, result)
    from defacer.io.atomic import atomic_outputs

    with atomic_outputs([out_dir / RESULT_HTML]) as (tmp,):
        tmp.write_text(text_name(evaluation_html(result, thumbs)), encoding="utf-8")  # any name: U+FFFD for non-UTF-8
    return result
