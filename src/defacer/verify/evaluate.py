"""Scoring of an evaluation over a folder of scans: the scans, the re-identification baseline, the overall scores.

:func:`defacer.evaluate.evaluate_folder` (above the pipeline: it defaces) finds the scans with
:func:`find_scans`, defaces each in memory, verifies it with :func:`defacer.verify.verify_pair`
(report in ``OUT/<name>/``), and records:

* the features found, and their Dice against ``reference_labels/<name>.labels.nii.gz`` when present;
* every detector's scores before and after, the verdict, and the identity distance;
* seconds and the process's peak resident memory.

Overall (:func:`overall_scores`) it reports the **re-identification rank-1 rate** of the defaced front renders against a
gallery made of the original front renders of all scans (chance = 1 / number of scans), and as
the baseline that gives it meaning, the same rate for the originals rendered from another angle
(:data:`~defacer.verify.render.BASELINE_VIEW`) against the same gallery.
"""

from __future__ import annotations

import json
import logging
import resource
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from defacer.errors import DefacerError, shown
from defacer.files import image_stem, is_image_name, label_ending, link_outside
from defacer.labels import FEATURE_LABELS
from defacer.verify import faces, identity
from defacer.verify.check import face_box
from defacer.verify.render import BASELINE_VIEW, render_volume

logger = logging.getLogger(__name__)

RESULT_JSON = "evaluation.json"
RESULT_HTML = "evaluation.html"


@dataclass(frozen=True)
class Scan:
    """One scan found in the folder: its name (file name without extension) and path."""

    name: str
    path: Path


def scan_name(path: Path) -> str:
    """A scan's name: the file name without its image extension (a DICOM folder keeps its name)."""
    return image_stem(path.name)


def find_scans(folder: Path) -> list[Scan]:
    """Scans directly inside ``folder``: image files and folders holding DICOM files, sorted by name.

    A symbolic link out of ``folder`` (other than into a git-annex store holding it,
    :func:`defacer.files.link_outside`) is left out with a warning, as ``batch`` leaves out a scan linked out of IN:
    a folder from elsewhere linking to ``~/study/patient.nii.gz`` had that face rendered into the evaluation.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DefacerError(f"'{folder}' is not a folder. Pass a folder holding head scans (files or DICOM folders).")
    scans = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if (entry.is_file() or entry.is_dir()) and link_outside(entry, folder) is not None:
            logger.warning("'%s' is a symbolic link to %s outside '%s': not evaluated (defacer reads only the scans "
                           "of the folder it is given; a link could pull any scan of this machine into the report's "
                           "pictures). Copy it into the folder (cp -L) to evaluate it.", shown(entry.name),
                           "a folder" if entry.is_dir() else "a file", shown(folder))
            continue
        if entry.is_file() and is_image_name(entry.name):
            if label_ending(entry.name) is not None:  # a label map (as batch reads them), never a scan
                continue
            scans.append(Scan(scan_name(entry), entry))
        elif entry.is_dir() and any(p.is_file() and not p.name.startswith(".") for p in entry.iterdir()):
            scans.append(Scan(entry.name, entry))
    if not scans:
        raise DefacerError(f"No scan found in '{folder}': expected .nii/.nii.gz/.nrrd/.nhdr/.mgz files or DICOM folders.")
    check_distinct_names(folder, scans)
    return scans


def check_distinct_names(folder: Path, scans: list[Scan]) -> None:
    """Refuse scans whose names are one (``a.nii.gz`` and ``a.mgz``, a DICOM folder ``a``; any case): they would share
    one report folder ``OUT/<name>/`` (the second replacing the first's report), one entry of the re-identification
    gallery (fewer subjects, another chance level) and one ``<name>.labels.nii.gz``.

    Raises
    ------
    DefacerError
        Naming each group of scans and what to do.
    """
    named: dict[str, list[Scan]] = {}
    for scan in scans:
        named.setdefault(scan.name.casefold(), []).append(scan)
    shared = [group for group in named.values() if len(group) > 1]
    if shared:
        listing = "\n  ".join(" and ".join(f"'{scan.path.name}'" for scan in group) + f" share the name '{group[0].name}'"
                              for group in shared[:10])
        raise DefacerError(
            f"{len(shared)} name(s) in '{folder}' belong to more than one scan:\n  {listing}\nEach scan's report "
            "(OUT/<name>/), its place in the re-identification gallery and its <name>.labels.nii.gz go by the name "
            "without the ending: rename or move one of each (nothing was written)."
        )


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def baseline_embedding(volume: Any) -> npt.NDArray[np.float64]:
    """Embedding of the original rendered from the baseline angle, on that render's own face box."""
    _, renders = render_volume(volume, (BASELINE_VIEW,))
    r = renders[BASELINE_VIEW.name]
    results = faces.detect_all(r.rgb(), ("dlib_cnn", "facemesh", "blazeface_full", "blazeface_short"))
    box, _ = face_box(results, r.image)
    return identity.embed(r.rgb(), box)


def overall_scores(records: list[dict[str, Any]], embeddings: dict[str, dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in records if "error" not in r]
    gallery = {n: e["original"] for n, e in embeddings.items()}
    reid = identity.rank1_rate({n: e["defaced"] for n, e in embeddings.items()}, gallery)
    base = identity.rank1_rate({n: e["baseline"] for n, e in embeddings.items()}, gallery)
    dice: dict[str, list[float]] = {f: [] for f in FEATURE_LABELS}
    for r in ok:
        for f, v in (r.get("dice") or {}).items():
            if v is not None:
                dice[f].append(float(v))
    conclusive = [r for r in ok if r["conclusive"]]
    reid_stats = identity.reid_statistics(reid)
    base_stats = identity.reid_statistics(base)
    return {
        "scans": len(records),
        "errors": len(records) - len(ok),
        "passed": sum(1 for r in ok if r["verdict"] == "PASS"),
        "failed": sum(1 for r in ok if r["verdict"] == "FAIL"),
        "inconclusive": sum(1 for r in ok if r["verdict"] == "INCONCLUSIVE"),
        "face_detected_before": len(conclusive),
        "face_detected_after": sum(1 for r in ok if r["face_found_after"]),
        "face_detected_after_among_detected_before": sum(1 for r in conclusive if r["face_found_after"]),
        "reid_rank1_defaced": reid["rate"],
        "reid_rank1_baseline_other_angle": base["rate"],
        "reid_chance": reid["chance"],
        "reid_hits_defaced": reid_stats["hits"],
        "reid_hits_baseline_other_angle": base_stats["hits"],
        "reid_n": reid_stats["n"],
        "reid_p_value_defaced": reid_stats["p_value"],
        "reid_p_value_baseline_other_angle": base_stats["p_value"],
        "reid_test": "one-sided binomial test of 'rank-1 better than chance' (H0: each probe's nearest gallery "
                     f"entry is its own with probability 1/gallery size), alpha {reid_stats['alpha']}",
        "reid_defaced_above_chance": reid_stats["significant"],
        "reid_baseline_above_chance": base_stats["significant"],
        "reid_hubs_defaced": reid_stats["hubs"],
        "reid_hubs_baseline": base_stats["hubs"],
        "reid_verdict": reid_verdict(reid_stats),
        "reid_matches_defaced": reid["matches"],
        "reid_matches_baseline": base["matches"],
        "mean_dice": {f: (float(np.mean(v)) if v else None) for f, v in dice.items()},
        "dice_scans": {f: len(v) for f, v in dice.items()},
        "mean_identity_distance": float(np.mean([r["identity_distance"] for r in ok])) if ok else None,
        "seconds_mean": float(np.mean([r["seconds"] for r in ok])) if ok else None,
        "seconds_verify_mean": float(np.mean([r["seconds_verify"] for r in ok])) if ok else None,
        "peak_rss_mb": max((r["peak_rss_mb"] for r in ok), default=None),
    }


def reid_verdict(stats: dict[str, Any]) -> str:
    """One sentence: is re-identification of the defaced renders significantly above chance, and any hub."""
    if not stats["n"] or stats["p_value"] is None:
        return "re-identification not measured (no embeddings)"
    rate = stats["hits"] / stats["n"]
    head = (f"defaced re-identification rank-1 {stats['hits']}/{stats['n']} ({100 * rate:.0f}%, chance "
            f"{100 * stats['chance']:.0f}%, one-sided binomial p = {stats['p_value']:.3f}): ")
    head += ("significantly above chance" if stats["significant"]
             else f"not significantly above chance at alpha {stats['alpha']}")
    if stats["n"] < 20:
        head += f" (only {stats['n']} subjects: the test has little power, so this is weak evidence either way)"
    if stats["hubs"]:
        hubs = ", ".join(f"{name} ({count}/{stats['n']} probes)" for name, count in stats["hubs"].items())
        head += f"; hub: {hubs} is the nearest match of many defaced renders, so hits on it are not evidence"
    return head


TABLE_HEADER = (f"{'scan':28s} {'features':16s} {'dice e/n/a':16s} {'face before':>11s} {'face after':>10s} "
                f"{'id dist':>7s} {'verdict':>12s} {'sec':>6s} {'RSS MB':>7s}")


def format_row(r: dict[str, Any]) -> str:
    """One line of the evaluation table."""
    name = shown(r["name"])  # a scan's file name, from the folder evaluated: control characters escaped
    if "error" in r:
        return f"{name[:28]:28s} error: {shown(r['error'])}"
    dice = r.get("dice") or {}
    dtxt = "/".join("-" if dice.get(f) is None else f"{dice[f]:.2f}" for f in FEATURE_LABELS) if dice else "-"
    feats = ",".join(f[:4] for f in r["features_found"]) or "-"
    return (f"{name[:28]:28s} {feats:16s} {dtxt:16s} {len(r['face_found_before']):>11d} "
            f"{len(r['face_found_after']):>10d} {r['identity_distance']:>7.3f} {r['verdict']:>12s} "
            f"{r['seconds']:>6.1f} {r['peak_rss_mb']:>7.0f}")


def format_overall(overall: dict[str, Any]) -> str:
    """The closing lines of the evaluation table."""
    def pct(v: Any) -> str:
        return "-" if v is None else f"{100 * v:.0f}%"

    dice = ", ".join(f"{f} {v:.2f}" for f, v in overall["mean_dice"].items() if v is not None) or "-"
    return (
        f"scans {overall['scans']} (errors {overall['errors']}), passed {overall['passed']}, "
        f"failed {overall.get('failed', 0)}, inconclusive {overall.get('inconclusive', 0)}; "
        f"face detected before {overall['face_detected_before']}, after {overall['face_detected_after']} "
        f"(among those detected before: {overall['face_detected_after_among_detected_before']})\n"
        f"re-identification rank-1: defaced {pct(overall['reid_rank1_defaced'])}, "
        f"original from another angle {pct(overall['reid_rank1_baseline_other_angle'])}, "
        f"chance {pct(overall['reid_chance'])}\n"
        f"{overall.get('reid_verdict', '')}\n"
        f"mean Dice: {dice}; mean seconds per scan {overall['seconds_mean'] or 0:.1f} "
        f"(verify {overall['seconds_verify_mean'] or 0:.1f}); peak RSS {overall['peak_rss_mb'] or 0:.0f} MB"
    )


def dumps(result: dict[str, Any]) -> str:
    """The evaluation as JSON text."""
    return json.dumps(result, indent=2, default=str)
