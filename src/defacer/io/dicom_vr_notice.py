"""pydicom's "VR lookup failed" said once per series and element, in words, instead of once per file.

An implicit-VR file does not write each element's type (VR); pydicom looks it up in its dictionary, and for an element
it does not know (a public tag no standard defines, a vendor's mistake) it logs and warns "VR lookup failed for the
raw element with tag (0018,ABCD) - setting VR to 'UN'" for every file of the series, when de-identification walks
it: 120 console lines for a 60-slice series with two such elements, and Python's own copy of each warning on top.
:func:`vr_notices` (around the walk of one file, :meth:`defacer.phi.scrub.Scrubber.scrub`) lets the first of each
element through per series folder, reworded, and drops the rest and Python's copies; every other warning of pydicom's
passes as before.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import re
import warnings
from collections.abc import Iterator
from pathlib import Path

_PATTERN = re.compile(r"^VR lookup failed for the raw element with tag (\([0-9A-Fa-f]{4},[0-9A-Fa-f]{4}\))")
#: Python's copy (``warnings.warn``) of the message, which pydicom also logs: never shown, the log line says it.
_WARNING_TEXT = r"VR lookup failed for the raw element with tag"
#: The series folder the warnings of the moment belong to (``None``: outside :func:`vr_notices`, once per process).
_series: contextvars.ContextVar[str | None] = contextvars.ContextVar("defacer_dicom_series", default=None)
#: ``(series folder, tag)`` pairs already said; bounded (a server running for weeks).
_said: set[tuple[str | None, str]] = set()
_MAX_SAID = 10_000
#: In a worker process of ``anonymize --jobs N`` (:func:`collected_vr_notices`): the notices kept here, not said; the
#: main process says each once (:func:`say_vr_notices`).  Said by each worker, it was printed once per worker.
_collected: list[list[tuple[str | None, str]]] = []


class _OncePerSeries(logging.Filter):
    """Lets pydicom's first "VR lookup failed" of each element per series through, reworded; drops the repeats."""

    def filter(self, record: logging.LogRecord) -> bool:
        match = _PATTERN.match(str(record.msg))
        if match is None:
            return True
        series, tag = _series.get(), match.group(1)
        if (series, tag) in _said:
            return False
        if len(_said) < _MAX_SAID:
            _said.add((series, tag))
        if _collected:
            _collected[-1].append((series, tag))
            return False
        record.msg = ("%s: DICOM element %s is in no DICOM dictionary and this implicit-VR series does not say its "
                      "type, so it is read as unknown bytes (VR UN); said once per series, other files may hold it too")
        record.args = (f"'{series}'" if series is not None else "a DICOM file", tag)
        return True


_FILTER = _OncePerSeries()


def _install() -> None:
    """Put the filter on pydicom's logger and silence Python's copy of that one message (idempotent)."""
    logger = logging.getLogger("pydicom")
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
    if not any(entry[0] == "ignore" and entry[1] is not None and entry[1].pattern == _WARNING_TEXT
               for entry in warnings.filters):
        warnings.filterwarnings("ignore", message=_WARNING_TEXT, category=UserWarning)


@contextlib.contextmanager
def vr_notices(source: str | Path | None) -> Iterator[None]:
    """Inside the block, pydicom's "VR lookup failed" is said once per element for the series folder of ``source``
    (a file's path; ``None`` or empty: once per process)."""
    _install()
    token = _series.set(str(Path(source).parent) if source else None)
    try:
        yield
    finally:
        _series.reset(token)


@contextlib.contextmanager
def collected_vr_notices() -> Iterator[list[tuple[str | None, str]]]:
    """Inside the block, the notices of :func:`vr_notices` are kept in the yielded list of ``(series folder, tag)``
    instead of said: a worker process hands them to the main process, which says each once (:func:`say_vr_notices`)."""
    _install()
    kept: list[tuple[str | None, str]] = []
    _collected.append(kept)
    try:
        yield kept
    finally:
        _collected.remove(kept)


def say_vr_notices(notices: list[tuple[str | None, str]]) -> None:
    """Say notices kept by :func:`collected_vr_notices` (in a worker) here, each once per series folder and element."""
    logger = logging.getLogger("pydicom")
    _install()
    for series, tag in notices:
        token = _series.set(series)
        try:
            # pydicom's own words, the tag in the text (the filter matches the message, not its arguments)
            logger.warning("VR lookup failed for the raw element with tag " + tag.replace("%", "") + " - setting VR "
                           "to 'UN'")
        finally:
            _series.reset(token)
