"""What each Table E.1-1 action does to one value, by value representation (VR).

These are pure functions of values; :mod:`defacer.phi.scrub` decides which one applies to
which element.  Compound codes ("X unless Z/D is needed for IOD conformance") are resolved
by :func:`resolve_compound` without IOD knowledge, always in the direction that removes
the value: the element is dropped (X) or kept empty/dummy, never kept with its value.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from collections.abc import Iterable

#: Dummy values for ``D`` by VR (non-zero length, valid for the VR).
DUMMY_BY_VR: dict[str, object] = {
    "AE": "ANONYMOUS", "AS": "000Y", "CS": "ANONYMOUS", "DA": "19000101", "DS": "0", "DT": "19000101000000.000000",
    "IS": "0", "LO": "ANONYMOUS", "LT": "ANONYMOUS", "PN": "ANONYMOUS", "SH": "ANONYMOUS", "ST": "ANONYMOUS",
    "TM": "000000.00", "UC": "ANONYMOUS", "UR": "ANONYMOUS", "UT": "ANONYMOUS",
    "FL": 0.0, "FD": 0.0, "SL": 0, "SS": 0, "UL": 0, "US": 0, "SV": 0, "UV": 0,
    "OB": b"\x00\x00", "OD": b"\x00" * 8, "OF": b"\x00" * 4, "OL": b"\x00" * 4, "OV": b"\x00" * 8,
    "OW": b"\x00\x00", "UN": b"\x00\x00",
}
#: VRs whose values are free or coded text that "clean" (C) rewrites.
TEXT_VRS = frozenset({"LO", "LT", "SH", "ST", "UT", "UC", "PN", "CS"})
#: Patterns masked by the C action in text: dates, long digit runs (IDs, phone numbers), e-mail addresses.
_GENERIC_PHI = re.compile(
    r"(\b\d{4}[-./]?\d{2}[-./]?\d{2}\b|\b\d{1,2}[-./]\d{1,2}[-./]\d{2,4}\b|\d{5,}|[\w.+-]+@[\w-]+\.[\w.]+)"
)


#: Ages above this many years are one category under HIPAA Safe Harbor (45 CFR 164.514(b)(2)(i)(C): "all ages over
#: 89 ... aggregated into a single category of age 90 or older"); a kept age (AS) above it is written :data:`POOLED_AGE`.
MAX_AGE_YEARS = 89
#: The one value every age over :data:`MAX_AGE_YEARS` years becomes (the AS form of "90 or older").
POOLED_AGE = "090Y"
#: An age as DICOM writes it (``095Y``, ``1070M``) and as people and careless writers do (``95``, ``95 years``).
_AGE = re.compile(r"\s*(\d+(?:[.,]\d+)?)\s*(y|years?|m|months?|w|weeks?|d|days?)?\s*", re.IGNORECASE)
#: How many of an age unit (its first letter) make a year.
_AGE_PER_YEAR: dict[str, float] = {"y": 1.0, "m": 12.0, "w": 52.1775, "d": 365.25}


#: An age as DICOM AS writes it: three digits and its unit (``045Y``, ``006M``, ``010W``, ``003D``).
_AS_AGE = re.compile(r"\d{3}[DWMY]")


def kept_age(value: str) -> str:
    """What a kept age (VR AS) becomes: a DICOM age of 89 years or less as it is, any age over 89 years as
    :data:`POOLED_AGE`, and anything else emptied (``""``).

    An age that cannot be read as a DICOM age string (``abc``, ``12``, ``45 years`` under 90, ``age 95``) cannot be
    checked against HIPAA's 89 years and may hold other text: it is not kept (HOSTILE22; it was written as it was).
    Padding (spaces, NULs) around an AS value is dropped (``" 045Y "`` -> ``045Y``).

    Parameters
    ----------
    value : str
        The kept value.

    Returns
    -------
    str
        ``090Y``, the AS value, or ``""``.
    """
    pooled = pooled_age(value)
    if pooled == POOLED_AGE:
        return pooled
    text = value.strip(" \x00")
    return text if _AS_AGE.fullmatch(text) else ""


def pooled_age(value: str) -> str:
    """:data:`POOLED_AGE` for an age over :data:`MAX_AGE_YEARS` years, ``value`` itself otherwise.

    Parameters
    ----------
    value : str
        An age string (VR AS: three digits and D, W, M or Y, e.g. ``095Y``; also ``95``, ``95 years``, a unit of
        months, weeks or days compared as that many years: ``1070M`` is over 89 years, ``1068M`` is not).

    Returns
    -------
    str
        ``090Y`` for an age over 89 years; the value unchanged when it is 89 years or less, empty, or not an age
        (text kept as the caller would keep it).
    """
    match = _AGE.fullmatch(value.rstrip("\x00"))
    if match is None:
        return value
    unit = (match.group(2) or "y")[0].lower()
    years = float(match.group(1).replace(",", ".")) / _AGE_PER_YEAR[unit]
    return POOLED_AGE if years > MAX_AGE_YEARS else value


def resolve_compound(code: str, vr: str, keyword: str) -> str:
    """Reduce a compound action code to one of ``D, Z, X, K, C, U`` (or ``R`` for "recurse").

    ``R`` keeps a sequence and applies the table to its items, which is how ``X/Z/U*``
    keeps references (their UIDs replaced consistently) and how ``D``/``K``/``C`` treat
    sequences.

    Rules: ``Z/D`` gives Z (D for PatientID, which gets a keyed pseudonym); ``X/Z`` gives
    Z (the attribute may be Type 2); ``X/D`` and ``X/Z/D`` give D or Z for plain values
    and X for sequences; ``X/Z/U*`` recurses into a sequence and gives U otherwise.
    """
    is_sequence = vr == "SQ"
    if code == "Z/D":
        return "D" if keyword == "PatientID" else "Z"
    if code == "X/Z":
        return "Z"
    if code == "X/D":
        return "X" if is_sequence else "D"
    if code == "X/Z/D":
        return "X" if is_sequence else "Z"
    if code == "X/Z/U*":
        return "R" if is_sequence else "U"
    if is_sequence and code in {"D", "K", "C"}:
        return "R"
    return code


def empty_value(vr: str) -> object:
    """Zero-length value for ``Z`` (an empty sequence for SQ)."""
    if vr == "SQ":
        return []
    return None


def dummy_value(vr: str) -> object:
    """A non-zero-length dummy value consistent with ``vr`` for ``D``."""
    return DUMMY_BY_VR.get(vr, "ANONYMOUS")


def shift_date_text(value: str, days: int, vr: str) -> str:
    """Move a DA or DT value ``days`` days into the past; unparseable values become empty.

    Ranges (``A-B``) are shifted at both ends; the time part of a DT is kept.
    """
    if "-" in value and vr == "DA":
        return "-".join(shift_date_text(part, days, vr) if part else "" for part in value.split("-"))
    text = value.strip()
    if len(text) < 8 or not text[:8].isdigit():
        return ""
    try:
        day = dt.date(int(text[:4]), int(text[4:6]), int(text[6:8]))
    except ValueError:
        return ""
    shifted = day - dt.timedelta(days=days)
    return shifted.strftime("%Y%m%d") + (text[8:] if vr == "DT" else "")


def clean_text(value: str, identifying: Iterable[str]) -> str:
    """Clean free text for ``C``: mask known identifying values and generic PHI patterns.

    Parameters
    ----------
    value : str
        The text (a description or comment).
    identifying : iterable of str
        Values known to identify (names and their parts, IDs, birth date, institution, staff
        names), case-insensitively replaced by ``*``: anywhere from 4 characters, shorter
        ones only as whole words.
    """
    return _GENERIC_PHI.sub("*", mask_values(value, identifying))


def mask_values(value: str, identifying: Iterable[str]) -> str:
    """``value`` with each of ``identifying`` (2 characters or more) replaced by ``*``, case-insensitively:
    anywhere from 4 characters, shorter ones only as whole words (``Li`` masks ``Li``, not ``Lithium``)."""
    pattern = values_pattern(tuple(identifying))
    return value if pattern is None else pattern.sub("*", value)


@functools.lru_cache(maxsize=256)
def values_pattern(identifying: tuple[str, ...]) -> re.Pattern[str] | None:
    """One case-insensitive pattern matching any of ``identifying`` as :func:`mask_values` does (longest first),
    or ``None`` when none is 2 characters or more."""
    tokens = sorted({t for t in identifying if len(t) >= 2}, key=lambda t: (-len(t), t))
    if not tokens:
        return None
    # A short name part ("Li") only as a word of its own, not inside other words; but not in a script written
    # without spaces between words (Chinese, Japanese, Korean names take particles and honorifics: "山田太郎様"),
    # where a name is no word of its own and the rule let every 2- and 3-character name through.
    parts = [re.escape(t) if len(t) >= 4 or UNSPACED_SCRIPT.search(t)
             else rf"(?<![^\W_]){re.escape(t)}(?![^\W_])" for t in tokens]
    return re.compile("|".join(parts), flags=re.IGNORECASE)


#: Characters of scripts written without spaces between words (or with names run into the next word): CJK
#: ideographs (and their extensions and compatibility forms), hiragana, katakana (full and half width), hangul, Thai,
#: Lao, Khmer, Myanmar.  A name part in them is masked wherever it occurs, however short.
UNSPACED_SCRIPT = re.compile(
    "[\u1000-\u109f\u0e00-\u0eff\u1100-\u11ff\u1780-\u17ff\u2e80-\u2fdf\u3005-\u3007\u3040-\u31ff"
    "\u3400-\u4dbf\u4e00-\u9fff\ua960-\ua97f\uac00-\ud7ff\uf900-\ufaff\uff66-\uffdc\U00020000-\U0003134f]"
)


def joined_name_groups(name: str) -> list[str]:
    """The components of each group of a person name (PN) run together, for the groups written in a script without
    spaces between words, and with one space between them: ``"Wang^Wei=王^伟"`` gives ``["王伟", "王 伟"]``, the
    forms in which the name is written in text (each of its one-character components alone is too short to mask)."""
    joined = []
    for group in name.split("="):
        if UNSPACED_SCRIPT.search(group):
            parts = [part.strip() for part in group.split("^") if part.strip()]
            joined += [run for run in dict.fromkeys(("".join(parts), " ".join(parts))) if len(run) >= 2]
    return joined
