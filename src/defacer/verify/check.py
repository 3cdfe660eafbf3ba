"""Verify one defaced scan against its original: renders, face checks, identity, voxel changes.

Verdict rule (:data:`VERDICT_RULE`, also printed in every report):

Three verdicts (:mod:`defacer.verify.verdict`): **FAIL** when a face is found after defacing or
the brain region changed; otherwise **INCONCLUSIVE** when no face was found in the original
either (nothing could be tested); otherwise **PASS**.

* **PASS** when no counted face detector (:mod:`defacer.verify.faces`, at its stated threshold
  and in the views where it counts) finds a face in the defaced head's renders, **and** the brain
  region is untouched: 0 voxels changed inside the brain mask when one is given, or at most 0.1%
  of the brain proxy (head interior deeper than 20 mm below the skin and farther than 15 mm from
  every labelled feature) when it is estimated.
* The face part is **conclusive** only when at least one counted detector found a face in the
  original's renders (``conclusive`` in the summary); without it the verdict is INCONCLUSIVE.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from defacer.errors import LabelMapError, VerificationError
from defacer.labels import FEATURE_LABELS, feature_label_values
from defacer.verify import faces, identity, verdict
from defacer.verify.render import DEFAULT_VIEWS, Rendering, Scene, View, render_volume
from defacer.volume import Volume

logger = logging.getLogger(__name__)

VERDICT_RULE = (
    "PASS when no counted face detector finds a face in the renders of the defaced head: Face Mesh landmarks "
    "(presence >= 0.7) in any view, dlib CNN >= 0.0 on the front view, BlazeFace short-range >= 0.75 on the "
    "front view (BlazeFace full-range and oblique BlazeFace scores are reported, not counted: they fire on "
    "face-removed heads too), and the brain region is untouched (0 changed voxels inside a given brain mask, or "
    "at most 0.1% of the estimated brain proxy: head interior > 20 mm below the skin and > 15 mm from every "
    "labelled feature). FAIL when a face is found after defacing or the brain region changed. INCONCLUSIVE "
    "when neither fails but no counted detector found a face in the original's renders either: nothing could "
    "be tested."
)

#: Depth below the skin (mm) and distance from any feature (mm) of the brain proxy.
PROXY_DEPTH_MM = 20.0
PROXY_FEATURE_MARGIN_MM = 15.0
#: Largest changed fraction of the brain proxy that still passes.
PROXY_TOLERANCE = 0.001


@dataclass
class VerifyResult:
    """Outcome of :func:`verify_pair`.

    Attributes
    ----------
    passed : bool
        Whether the verdict is PASS (see :data:`VERDICT_RULE`).
    summary : dict
        JSON-ready summary (also written to ``summary_path``).
    report_path, summary_path : Path
        The HTML report and the JSON summary.
    renders : dict
        ``{"original": {view: Rendering}, "defaced": {...}}``, for callers that want the pictures.
    embeddings : dict
        ``{"original": (128,), "defaced": (128,)}`` front-view dlib embeddings (when dlib is present).
    """

    passed: bool
    summary: dict[str, Any]
    report_path: Path
    summary_path: Path
    renders: dict[str, dict[str, Rendering]] = field(default_factory=dict, repr=False)
    embeddings: dict[str, npt.NDArray[np.float64]] = field(default_factory=dict, repr=False)

    @property
    def verdict(self) -> str:
        """``"PASS"``, ``"FAIL"`` or ``"INCONCLUSIVE"`` (:mod:`defacer.verify.verdict`)."""
        return str(self.summary["verdict"])


def _check_same_grid(original: Volume, defaced: Volume) -> None:
    if original.shape != defaced.shape:
        raise VerificationError(
            f"The defaced scan's grid {defaced.shape} differs from the original's {original.shape}; "
            "verify compares voxel by voxel, so pass the original that the defaced file was made from."
        )
    if not np.allclose(original.affine, defaced.affine, atol=1e-3):
        raise VerificationError(
            "The defaced scan's affine differs from the original's (they are not on the same grid); "
            "pass the original that the defaced file was made from."
        )


def _as_array(labels: Volume | npt.NDArray[Any] | None, shape: tuple[int, int, int], what: str
              ) -> npt.NDArray[Any] | None:
    if labels is None:
        return None
    arr = labels.raw if isinstance(labels, Volume) else np.asarray(labels)
    if arr.shape != shape:
        raise VerificationError(f"The {what} has shape {arr.shape}, expected the scan's grid {shape}.")
    return arr


def feature_label_array(labels: Volume | npt.NDArray[Any] | None, original: Volume) -> npt.NDArray[np.uint8] | None:
    """The feature label map as uint8 on the original's grid, checked like a label map given to ``deface``.

    Used by :func:`verify_pair` for its ``labels`` and by ``defacer evaluate`` for the reference labels.

    Raises
    ------
    LabelMapError
        For a map of another shape, a label volume with another affine (on another grid: its counts
        and the brain proxy's feature margins would land elsewhere), or values that are not the
        integers 0-3 of :mod:`defacer.labels`.
    """
    if labels is None:
        return None
    if isinstance(labels, Volume):
        if labels.raw.shape == original.shape and not np.allclose(labels.affine, original.affine, atol=1e-3):
            raise LabelMapError(
                f"The label map is on another grid than the scan (affines differ by up to "
                f"{np.abs(np.asarray(labels.affine) - original.affine).max():.3g} mm); give the label map of this scan "
                "(e.g. the one 'deface --save-mask' wrote for it)."
            )
        values = labels.values(np.float64)
    else:
        values = np.asarray(labels)
    if values.shape != original.shape:
        raise LabelMapError(f"The label map has shape {values.shape}, expected the scan's grid {original.shape}.")
    return feature_label_values(values)


def detect_renders(renders: dict[str, Rendering]) -> dict[str, dict[str, faces.DetectorResult]]:
    """Run the fast detectors on every view and all detectors on the front view.

    Returns
    -------
    dict
        ``{view name: {detector name: DetectorResult}}``.
    """
    out: dict[str, dict[str, faces.DetectorResult]] = {}
    for name, rendering in renders.items():
        chosen = tuple(faces.DETECTORS) if name == "front" else faces.FAST_DETECTORS
        results = faces.detect_all(rendering.rgb(), chosen)
        out[name] = {d: replace(r, counted=faces.is_counted(d, name)) for d, r in results.items()}
    return out


def face_box(results: dict[str, faces.DetectorResult], image: npt.NDArray[Any]) -> tuple[faces.Box, str]:
    """The box to embed in: dlib CNN's, else Face Mesh's, else BlazeFace's, else a silhouette guess."""
    for name in ("dlib_cnn", "facemesh", "blazeface_full", "blazeface_short"):
        r = results.get(name)
        if r is not None and r.box is not None and r.score is not None:
            return r.box, name
    return identity.default_box(image), "silhouette"


def brain_proxy_changes(scene: Scene, volume: Volume, changed_idx: npt.NDArray[np.intp],
                        labels: npt.NDArray[Any] | None) -> dict[str, Any]:
    """Count changed voxels inside the estimated brain proxy.

    The proxy is built on the scene's RAS cube: the head body filled slice by slice, kept where
    it is deeper than :data:`PROXY_DEPTH_MM` below the skin, minus a :data:`PROXY_FEATURE_MARGIN_MM`
    margin around every labelled feature.  Changed voxels are mapped to the cube by their world
    position.
    """
    # Half the scene's resolution (about 4 mm) is plenty for a 20 mm margin and 8x cheaper.
    stride = 2
    step = scene.step_mm * stride
    body = scene.grid[::stride, ::stride, ::stride] > scene.iso
    filled = ndimage.binary_fill_holes(body, structure=np.ones((3, 3, 1), dtype=bool))
    # Also fill coronal slices, closing heads that the field of view cuts open at the bottom.
    filled |= ndimage.binary_fill_holes(body, structure=np.ones((3, 1, 3), dtype=bool))
    depth = ndimage.distance_transform_edt(filled, sampling=step)
    proxy = depth > PROXY_DEPTH_MM
    n = body.shape[0]
    half = (scene.grid.shape[0] - 1) / 2.0
    # World -> scene cube index ((world - centre) / step_mm + half), then / stride.
    to_cube = np.eye(4)
    to_cube[:3, :3] /= step
    to_cube[:3, 3] = (half - scene.centre / scene.step_mm) / stride

    def cube_index(idx: npt.NDArray[np.intp]) -> npt.NDArray[np.intp]:
        homog = np.c_[idx.astype(np.float64), np.ones(len(idx))]
        return np.rint((to_cube @ volume.affine @ homog.T).T[:, :3]).astype(np.intp)

    if labels is not None and np.any(labels > 0):
        feature_idx = np.argwhere(labels > 0)
        if len(feature_idx) > 200_000:
            feature_idx = feature_idx[:: len(feature_idx) // 200_000 + 1]
        ci = cube_index(feature_idx)
        ok = np.all((ci >= 0) & (ci < n), axis=1)
        near = np.zeros_like(proxy)
        near[tuple(ci[ok].T)] = True
        far = ndimage.distance_transform_edt(~near, sampling=step) > PROXY_FEATURE_MARGIN_MM
        proxy &= far
    proxy_voxels_cube = int(proxy.sum())
    voxel_mm3 = float(abs(np.linalg.det(volume.affine[:3, :3])))
    proxy_voxels = round(proxy_voxels_cube * step**3 / max(voxel_mm3, 1e-9))
    inside = 0
    if len(changed_idx):
        ci = cube_index(changed_idx)
        ok = np.all((ci >= 0) & (ci < n), axis=1)
        inside = int(proxy[tuple(ci[ok].T)].sum())
    return {"kind": "proxy", "voxels": proxy_voxels, "changed": inside,
            "changed_fraction": inside / proxy_voxels if proxy_voxels else 0.0}


#: The one definition of "changed voxels" used in the page, the CLI, the sidecar and the report.
CHANGED_VOXELS_DEFINITION = (
    "Changed voxels: voxels whose stored value differs from the original's. Per feature: those changed by that "
    "feature's distortion (the skin band over each eye, the nose box, each whole auricle), which reaches beyond "
    "the detected feature itself; the per-feature numbers add up to the total."
)


def voxel_changes(original: Volume, defaced: Volume, labels: npt.NDArray[Any] | None,
                  brain: npt.NDArray[Any] | None, scene: Scene,
                  by_distortion: dict[str, int] | None = None) -> tuple[dict[str, Any], npt.NDArray[np.bool_]]:
    """Changed-voxel counts (:data:`CHANGED_VOXELS_DEFINITION`): total, per feature, in the brain region.

    ``by_distortion`` is the provenance's ``voxels_changed`` (per feature, the voxels its
    distortion changed): the per-feature figures shown everywhere.  With a label map, the
    changed voxels inside each detected feature region are kept as a technical detail
    (``inside_detected_region``).
    """
    changed = original.raw != defaced.raw
    changed_idx = np.argwhere(changed)
    voxel_mm3 = float(abs(np.linalg.det(original.affine[:3, :3])))
    stats: dict[str, Any] = {"total": len(changed_idx), "voxel_mm3": round(voxel_mm3, 4),
                             "fraction_of_scan": len(changed_idx) / changed.size,
                             "definition": CHANGED_VOXELS_DEFINITION}
    if by_distortion:
        stats["by_feature"] = {name: int(by_distortion.get(name, 0)) for name in FEATURE_LABELS}
    if labels is not None:
        per: dict[str, Any] = {}
        for name, value in FEATURE_LABELS.items():
            region = labels == int(value)
            size = int(region.sum())
            hit = int((changed & region).sum())
            per[name] = {"labelled": size, "changed": hit, "changed_fraction": hit / size if size else 0.0}
        per["outside_detected_regions"] = {"changed": int((changed & (labels == 0)).sum())}
        stats["inside_detected_region"] = per
    if brain is not None:
        mask = brain.astype(bool)
        hit = int((changed & mask).sum())
        stats["brain"] = {"kind": "mask", "voxels": int(mask.sum()), "changed": hit,
                          "changed_fraction": hit / max(int(mask.sum()), 1)}
    else:
        stats["brain"] = brain_proxy_changes(scene, original, changed_idx, labels)
    return stats, changed


def _any_detected(det: dict[str, dict[str, faces.DetectorResult]]) -> list[str]:
    return sorted({f"{view}:{name}" for view, rs in det.items() for name, r in rs.items() if r.counted and r.detected})


#: Cube edges (voxels) the original is rendered at, in turn: where no detector finds its face at the first (a
#: small face, thick slices, a CT), it is looked for again at the next, finer one; the first size at which a
#: face is found is used for both scans, else the first.  On the 19 real heads the second size found the
#: faces of fernando_T2w_thick and invesalius-ct0051_CT (Face Mesh), which the first did not.
RENDER_SIZES = (128, 192)


def render_original(original: Volume, views: tuple[View, ...], timings: dict[str, float]
                    ) -> tuple[Scene, dict[str, Rendering], dict[str, dict[str, faces.DetectorResult]]]:
    """Render the original at the first of :data:`RENDER_SIZES` whose renders show a face, and detect.

    ``timings["render_s"]`` and ``timings["detect_s"]`` are increased by the seconds spent.

    Returns
    -------
    scene : Scene
        Its cube is the one to render the defaced copy in (``like=scene``).
    renders : dict of str to Rendering
    detections : dict
        As :func:`detect_renders`.
    """
    first: tuple[Scene, dict[str, Rendering], dict[str, dict[str, faces.DetectorResult]]] | None = None
    for size in RENDER_SIZES:
        t0 = time.perf_counter()
        scene, renders = render_volume(original, views, size=size)
        t1 = time.perf_counter()
        detections = detect_renders(renders)
        timings["render_s"] = timings.get("render_s", 0.0) + t1 - t0
        timings["detect_s"] = timings.get("detect_s", 0.0) + time.perf_counter() - t1
        if _any_detected(detections):
            return scene, renders, detections
        first = first or (scene, renders, detections)
    assert first is not None
    return first


def _deface_options(provenance: dict[str, Any] | None) -> dict[str, Any]:
    """``{"deface_options": ...}``: the features and sizes the defacing used, from its provenance (empty if unknown).

    :func:`defacer.verify.verdict.remedy` reads the sizes: after a FAIL with the larger nose removal and eye
    cover already used, the next step is to remove the whole face.
    """
    options = (provenance or {}).get("options")
    if not isinstance(options, dict):
        return {}
    return {"deface_options": {k: options[k] for k in ("features", "nose_scale", "eye_box_scale", "whole_face")
                               if k in options}}


def verify_pair(
    original: Volume,
    defaced: Volume,
    out_dir: Path,
    *,
    labels: Volume | npt.NDArray[Any] | None = None,
    provenance: dict[str, Any] | None = None,
    brain_mask: npt.NDArray[Any] | None = None,
    views: tuple[View, ...] = DEFAULT_VIEWS,
    title: str | None = None,
    force: bool = True,
    after_only: bool = False,
) -> VerifyResult:
    """Render both heads, look for faces, compare identities and changed voxels; write a report.

    Parameters
    ----------
    original, defaced : Volume
        The scan before and after defacing, on the same grid (any axis order).
    out_dir : Path
        Folder for ``verify_report.html`` and ``verify_summary.json`` (created if needed).
    labels : Volume or ndarray of uint8, optional
        Feature labels on the scan's grid (:mod:`defacer.labels`); enables per-feature counts
        and outlined slices (without them the changed voxels are outlined).
    provenance : dict, optional
        The defacing provenance sidecar's contents, shown in the report.
    brain_mask : ndarray of bool, optional
        Brain mask on the scan's grid; without it a brain proxy is estimated.
    views : tuple of View
        Views to render (the first named ``"front"`` also gets the dlib checks).
    title : str, optional
        Heading of the report (default: a generic title).
    force : bool
        Overwrite an existing report in ``out_dir`` (default True: verification is re-runnable).
    after_only : bool
        Put no picture of the original in the report (renders and slices after defacing only).

    Returns
    -------
    VerifyResult

    Raises
    ------
    VerificationError
        When the scans are not on the same grid or cannot be rendered.
    LabelMapError
        When ``labels`` is not a feature label map (integers 0-3) on the scan's grid.
    MissingExtraError
        When the ``verify`` extra (mediapipe, dlib-bin, face-recognition-models, pillow) is missing.
    """
    from defacer.verify import report

    out_dir = Path(out_dir)
    _check_same_grid(original, defaced)
    label_arr = feature_label_array(labels, original)
    brain_arr = _as_array(brain_mask, original.shape, "brain mask")
    timings: dict[str, float] = {}
    start = time.perf_counter()
    try:
        scene, renders_before, det_before = render_original(original, views, timings)
    except VerificationError as err:
        raise VerificationError(f"The original scan cannot be rendered: {err}") from err
    t0 = time.perf_counter()
    try:
        _, renders_after = render_volume(defaced, views, like=scene, reference=renders_before)
    except VerificationError as err:
        raise VerificationError(
            f"The defaced scan shows no head where the original has one: nothing in it is above the original's skin "
            f"level ({scene.iso:g}), so there is nothing to compare. It is empty, or it was not made from this "
            "original (its intensities are on another scale). Pass the defaced file that was made from this original."
        ) from err
    t1 = time.perf_counter()
    det_after = detect_renders(renders_after)
    timings["render_s"] += t1 - t0
    timings["detect_s"] += time.perf_counter() - t1

    t0 = time.perf_counter()
    front = views[0].name
    box, box_source = face_box(det_before[front], renders_before[front].image)
    emb_before = identity.embed(renders_before[front].rgb(), box)
    emb_after = identity.embed(renders_after[front].rgb(), box)
    ident = {"distance": round(identity.distance(emb_before, emb_after), 4), "box": list(box),
             "box_source": box_source, "view": front,
             "note": "dlib 128-d, 5-point alignment, on the original's face box; renders of any two heads "
                     "are typically 0.3-0.6 apart, so read it with the re-identification rank of `defacer evaluate`."}
    timings["identity_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    by_distortion = (provenance or {}).get("voxels_changed")
    changes, changed = voxel_changes(original, defaced, label_arr, brain_arr, scene,
                                     by_distortion if isinstance(by_distortion, dict) else None)
    timings["voxels_s"] = time.perf_counter() - t0

    found_before = _any_detected(det_before)
    found_after = _any_detected(det_after)
    brain = changes["brain"]
    brain_ok = brain["changed"] == 0 if brain["kind"] == "mask" else brain["changed_fraction"] <= PROXY_TOLERANCE
    outcome = verdict.decide(bool(found_before), bool(found_after), brain_ok)
    passed = outcome == verdict.PASS
    summary: dict[str, Any] = {
        "passed": passed,
        "verdict": outcome,
        "verdict_meaning": verdict.MEANING[outcome],
        "conclusive": bool(found_before),
        "rule": VERDICT_RULE,
        "face_found_before": found_before,
        "face_found_after": found_after,
        "brain_untouched": brain_ok,
        "thresholds": dict(faces.THRESHOLDS),
        "detectors": {
            view.name: {
                "before": {n: r.as_dict() for n, r in det_before[view.name].items()},
                "after": {n: r.as_dict() for n, r in det_after[view.name].items()},
            }
            for view in views
        },
        "identity": ident,
        "voxels": changes,
        **_deface_options(provenance),
        "render": {"iso_level": round(scene.iso, 4), "step_mm": round(scene.step_mm, 4), "size": scene.grid.shape[0],
                   "views": [{"name": v.name, "yaw": v.yaw, "pitch": v.pitch} for v in views]},
        "scan": {"shape": list(original.shape), "axcodes": original.axcodes,
                 "spacing_mm": [round(s, 4) for s in original.spacing], "format": original.format},
    }
    t0 = time.perf_counter()
    report_path, summary_path = report.write_report(
        out_dir, summary, renders_before, renders_after, original, defaced, label_arr, changed,
        provenance=provenance, title=title, force=force, timings=timings, after_only=after_only,
    )
    timings["report_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - start
    summary["timings"] = {k: round(v, 3) for k, v in timings.items()}
    report.write_summary(summary_path, summary)
    logger.info("verify: %s in %.1f s", summary["verdict"], timings["total_s"])
    return VerifyResult(passed, summary, report_path, summary_path,
                        renders={"original": renders_before, "defaced": renders_after},
                        embeddings={"original": emb_before, "defaced": emb_after})
