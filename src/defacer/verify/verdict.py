"""The three verification verdicts, their colours, wording and exit statuses, in one place.

Every place that shows a verdict (the report, ``defacer verify``, ``deface --verify``, the
batch summary and QC gallery, the web page, the JSON summary) takes it from here:

==================  ===========  ======  ==============================================================
verdict             colour       exit    meaning
==================  ===========  ======  ==============================================================
``PASS``            green        0       a face was found in the original, none after defacing, and
                                         the brain region is untouched
``FAIL``            red          3       a face was found after defacing, or the brain region changed
``INCONCLUSIVE``    amber        5       no face was found in the original either (and nothing failed):
                                         there was nothing to test, look at the pictures
==================  ===========  ======  ==============================================================
"""

from __future__ import annotations

from defacer.options import STRONGER_FLAGS, is_stronger

PASS = "PASS"
FAIL = "FAIL"
INCONCLUSIVE = "INCONCLUSIVE"
#: Every verdict, best first.
VERDICTS: tuple[str, ...] = (PASS, FAIL, INCONCLUSIVE)

#: Exit status of ``defacer verify`` and ``defacer deface --verify`` per verdict (also in
#: :mod:`defacer.cli.main`: ``EXIT_VERIFY_FAILED``, ``EXIT_VERIFY_INCONCLUSIVE``).
EXIT_STATUS: dict[str, int] = {PASS: 0, FAIL: 3, INCONCLUSIVE: 5}

#: Background colour of each verdict's badge (white text on it), the same in every page.
COLOURS: dict[str, str] = {PASS: "#1a7f37", FAIL: "#cf222e", INCONCLUSIVE: "#9a6700"}

#: One plain sentence per verdict.
MEANING: dict[str, str] = {
    PASS: "A face was found in the original's renders and none after defacing; the brain region is untouched.",
    FAIL: "A face was still found after defacing, or the brain region changed. Do not share this scan.",
    INCONCLUSIVE: ("No face was found in the original's renders either, so the check had nothing to test. "
                   "Look at the pictures before sharing this scan."),
}


#: What to do after a FAIL whose cause is a face still found.  Measured on the real heads of
#: ``../shared/data`` (``benchmarks/distortion_quality.py``, ``docs/measurements.md``): of the 3 heads a
#: counted detector still fired on after defacing with the shipped detector and the defaults, all were
#: clear with ``--nose-scale 3 --eye-box-scale 2.5`` (each already at a nose box 2.5 or 3 times the nose);
#: decubitus-HFS, which fails only with its reference labels as detection, kept a face even then.
REMEDY_FACE = ("What to do: deface the original again with a larger nose removal and eye cover (for example "
               f"{STRONGER_FLAGS}, or 'defacer deface --verify --retry-stronger', which does it when a face is "
               "found) and verify again; if a face is still found, remove the whole face (--whole-face) before "
               "sharing.")
#: What to do after a FAIL with a face still found although the nose removal and eye cover were already that large.
REMEDY_WHOLE_FACE = (f"What to do: a face is found even with the larger nose removal and eye cover ({STRONGER_FLAGS} "
                     "or more): deface the original again with --whole-face as well (the whole face in front of the "
                     "eyes removed; --retry-stronger does it when a face is found) and verify again before sharing.")
#: What to do after a FAIL with a face still found although the whole face in front of the eyes was removed.
REMEDY_NOT_SHAREABLE = ("What to do: a face is found even after the whole face in front of the eyes was removed: do "
                        "not share this scan as it is. Look at the report's pictures (a detector can fire on the cut "
                        "surface); if a face is recognisable, remove more with another tool (for example pydeface) "
                        "and verify that.")
#: What to do after a FAIL whose cause is a changed brain region.
REMEDY_BRAIN = ("What to do: check that the defaced scan was made from this original and that nothing edited it "
                "inside the head afterwards; deface the original again and verify that output.")


def remedy(summary: dict[str, object]) -> str | None:
    """The next step for the user after a verdict, or ``None`` (nothing to do, or no clear step).

    Parameters
    ----------
    summary : dict
        A verification summary (``verify_summary.json``): its ``verdict``, ``face_found_after``,
        ``brain_untouched`` and, when the defacing's options were known, ``deface_options``
        (``nose_scale``, ``eye_box_scale``, ``whole_face``).

    Returns
    -------
    str or None
        :data:`REMEDY_BRAIN` for a FAIL where the brain region changed; for a FAIL where a face was
        found after defacing, the next step of :func:`defacer.options.stronger_options` that was not
        taken yet: :data:`REMEDY_FACE` (larger sizes), :data:`REMEDY_WHOLE_FACE` (sizes already that
        large: the whole face), :data:`REMEDY_NOT_SHAREABLE` (the whole face was removed already);
        else ``None``.
    """
    if summary.get("verdict") != FAIL:
        return None
    if not summary.get("brain_untouched", True):
        return REMEDY_BRAIN
    if not summary.get("face_found_after"):
        return None
    used = summary.get("deface_options")
    if not isinstance(used, dict):
        return REMEDY_FACE
    if used.get("whole_face") is True:
        return REMEDY_NOT_SHAREABLE
    return REMEDY_WHOLE_FACE if is_stronger(used.get("nose_scale"), used.get("eye_box_scale")) else REMEDY_FACE


def face_still_found(summary: dict[str, object]) -> bool:
    """Whether a verification is a FAIL for a face found after defacing only, the one a larger nose removal and
    eye cover can answer (``--retry-stronger``); a changed brain region is no matter of distortion size.

    Parameters
    ----------
    summary : dict
        A verification summary (or a batch record's ``verify``): ``verdict``, ``face_found_after``,
        ``brain_untouched``.
    """
    return (summary.get("verdict") == FAIL and bool(summary.get("brain_untouched", True))
            and bool(summary.get("face_found_after")))


def attempt_record(options: dict[str, object], summary: dict[str, object]) -> dict[str, object]:
    """One attempt of a ``--retry-stronger`` run as recorded (sidecar, batch manifest): the sizes and the outcome.

    Parameters
    ----------
    options : dict
        The defacing's options as recorded in its provenance (``nose_scale``, ``eye_box_scale``).
    summary : dict
        Its verification summary.
    """
    found = summary.get("face_found_after")
    return {"nose_scale": options.get("nose_scale"), "eye_box_scale": options.get("eye_box_scale"),
            "whole_face": bool(options.get("whole_face", False)), "verdict": summary.get("verdict"), "face_found_after": list(found) if isinstance(found, list) else []}


def decide(face_before: bool, face_after: bool, brain_untouched: bool) -> str:
    """The verdict from the three findings.

    Parameters
    ----------
    face_before, face_after : bool
        Whether a counted detector found a face in the original's / the defaced head's renders.
    brain_untouched : bool
        Whether the brain region is within its tolerance.

    Returns
    -------
    str
        :data:`FAIL` when a face is found after or the brain changed, else :data:`INCONCLUSIVE`
        when no face was found before, else :data:`PASS`.
    """
    if face_after or not brain_untouched:
        return FAIL
    if not face_before:
        return INCONCLUSIVE
    return PASS


def css() -> str:
    """CSS classes ``.PASS``, ``.FAIL`` and ``.INCONCLUSIVE`` (badge colours) for HTML pages."""
    return "".join(f".{v}{{background:{c};color:#fff}}" for v, c in COLOURS.items())
