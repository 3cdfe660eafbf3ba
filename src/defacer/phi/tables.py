"""BIDS tables de-identified as the JSON sidecars are: dates and times, operators, ages over 89.

A BIDS dataset carries, beside its images, tab-separated tables that converters fill from the
DICOM headers: ``sub-<label>[_ses-<label>]_scans.tsv`` has an ``acq_time`` column with the full
date and time of every acquisition (HeuDiConv and dcm2bids write it, HeuDiConv an ``operator``
column too), ``sub-<label>_sessions.tsv`` the sessions' dates, and ``participants.tsv`` each
person's age.  Under HIPAA Safe Harbor every date element more precise than the year goes and
ages over 89 are pooled; PS3.15 Annex E removes the acquisition dates and times and the
operators' names from a DICOM header.  :func:`clean_table` applies the same to these columns:

- a date or time column (:func:`is_date_column`: ``acq_time``, ``*_date``, ``*_time``, a birth
  date...) and a person column (:data:`PERSON_COLUMNS`: ``operator``, a physician, a name, an ID)
  get ``n/a`` (BIDS's missing value) in every row;
- an ``age`` (also ``age_at_scan``, ``PatientAge``...) above 89 years becomes ``89+`` (what the
  BIDS specification recommends for ``participants.tsv``; ``95``, ``095Y`` as in a DICOM header,
  ``95 years``); ``n/a`` and ages up to 89 stay.

Column names are compared in one spelling (:func:`column_key`): ``AcquisitionDateTime``,
``Acq Time`` and ``acq-time`` are date columns as ``acq_time`` is.

Every other column, the header row, the row order and the line endings stay as they are.  A
dataset that needs the acquisition times (e.g. for a longitudinal design) keeps them with
``defacer batch --no-deidentify``, which also leaves the DICOM headers and sidecars as they are.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

#: Columns that name or identify a person other than by the subject label (set to ``n/a``).
PERSON_COLUMNS: frozenset[str] = frozenset({
    "operator", "operators", "operator_name", "operators_name", "technologist", "physician",
    "referring_physician", "performing_physician", "referring_physician_name", "performing_physician_name",
    "physician_name", "patient_name", "patient_id", "name", "mrn",
    "accession_number", "institution", "institution_name",
})

#: Columns whose values are dates or times by name (besides the ``*_date``/``*_time`` pattern).
DATE_COLUMNS: frozenset[str] = frozenset({
    "date", "time", "datetime", "dob", "birthdate", "birthday", "date_of_birth", "acq_time", "acq_date",
})

#: Ages above this many years are written as ``89+`` (HIPAA Safe Harbor, BIDS ``participants.tsv``).
MAX_AGE = 89

#: BIDS's missing value.
MISSING = "n/a"

_DATE_NAME = re.compile(r"(^|_)(date|time|datetime)$")
_AGE_NAME = re.compile(r"(^|_)age($|_)")
#: A word boundary inside camelCase (``AcquisitionDateTime``, ``PatientID``) and any run of non-alphanumerics.
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_SEPARATORS = re.compile(r"[^0-9a-z]+")
#: An age in years as written by hand or copied from a DICOM header: ``95``, ``095Y``, ``95.5``, ``95,5 years``.
_AGE_YEARS = re.compile(r"0*(\d+(?:[.,]\d+)?)\s*(?:y|yr|yrs|year|years)?", re.IGNORECASE)

#: What ends a row: LF, CRLF or CR, as TSV readers split them (pandas, Python's csv module), and nothing else.
_ROW_END = re.compile(r"(\r\n|\r|\n)")


def is_bids_table(name: str) -> bool:
    """Whether a file name is one of the BIDS tables :func:`clean_table` cleans.

    ``participants.tsv``, ``*_scans.tsv`` and ``*_sessions.tsv``; other tables (events,
    physiology, channels) hold no acquisition dates or personal data by the specification.
    """
    return name == "participants.tsv" or name.endswith(("_scans.tsv", "_sessions.tsv"))


def column_key(column: str) -> str:
    """A column name in one spelling: lower case, words joined by ``_``.

    ``"AcquisitionDateTime"`` -> ``"acquisition_date_time"``, ``"Acq Time"`` and ``" acq-time "`` ->
    ``"acq_time"``, ``"PatientID"`` -> ``"patient_id"``; a byte order mark (a table saved by a
    spreadsheet) goes.  Only ``acq_time`` itself, in any case and with spaces around, used to be
    recognised: a table exported by hand or from DICOM keywords kept its dates, names and ages.
    """
    name = column.replace("\ufeff", "").strip()
    return _SEPARATORS.sub("_", _CAMEL.sub("_", name).lower()).strip("_")


def is_date_column(column: str) -> bool:
    """Whether a column (its header name) holds dates or times: ``acq_time``, ``*_date``, ``birthdate``..."""
    name = column_key(column)
    return name in DATE_COLUMNS or bool(_DATE_NAME.search(name))


def _action(column: str) -> str | None:
    """What happens to a column's values: ``"missing"``, ``"age"`` or ``None`` (kept)."""
    name = column_key(column)
    if is_date_column(name) or name in PERSON_COLUMNS:
        return "missing"
    if _AGE_NAME.search(name):
        return "age"
    return None


def _years(value: str) -> float | None:
    """An age cell's number of years (``95``, ``095Y`` as in a DICOM header, ``95,5 years``), or ``None`` (text)."""
    try:
        return float(value)
    except ValueError:
        match = _AGE_YEARS.fullmatch(value.strip())
        return float(match.group(1).replace(",", ".")) if match else None


def _pooled_age(value: str) -> str:
    """``89+`` for an age above :data:`MAX_AGE` years, the value itself otherwise (``n/a``, text, ``89+``)."""
    years = _years(value)
    return f"{MAX_AGE}+" if years is not None and years > MAX_AGE else value


def _split_rows(text: str) -> list[tuple[str, str]]:
    """The rows of a table as (cells' text, line ending) pairs: ``"a\\tb\\r\\n"`` gives ``[("a\\tb", "\\r\\n")]``.

    Rows end at LF, CRLF or CR only.  :meth:`str.splitlines` also ends a line at a form feed, a
    vertical tab, U+001C-U+001E, U+0085 (NEL: byte 0x85, Windows-1252's ellipsis, read as Latin-1)
    and U+2028/U+2029: such a character inside a cell split its row in two, and the cells after it
    were read one column to the left (an operator "Jane<NEL>Quexworth" kept "Quexworth").  The last
    row may have no ending (``""``).
    """
    parts = _ROW_END.split(text)
    bodies, endings = parts[0::2], [*parts[1::2], ""]
    if bodies and bodies[-1] == "":
        bodies, endings = bodies[:-1], endings[:-1]
    return list(zip(bodies, endings, strict=True))


def clean_table(text: str) -> tuple[str, dict[str, int]]:
    """The table ``text`` with its date, time and person columns emptied and ages over 89 pooled.

    Parameters
    ----------
    text : str
        A BIDS tab-separated table: a header row of column names, then one row per entry.

    Returns
    -------
    cleaned : str
        The same table with each changed cell replaced (``n/a``, or ``89+`` for an age); the
        header, the other cells, the row order and the line endings are unchanged.
    changed : dict of str to int
        Per column name, the number of cells changed (only columns with at least one).
    """
    rows = _split_rows(text)
    if not rows:
        return text, {}
    header = rows[0][0].split("\t")
    actions = {i: action for i, column in enumerate(header) if (action := _action(column)) is not None}
    if not actions:
        return text, {}
    changed: dict[str, int] = {}
    out = ["".join(rows[0])]
    for body, ending in rows[1:]:
        cells = body.split("\t")
        for i, action in actions.items():
            if i >= len(cells):
                continue
            new = MISSING if action == "missing" else _pooled_age(cells[i])
            if new != cells[i] and cells[i].strip() != MISSING:
                changed[header[i]] = changed.get(header[i], 0) + 1
                cells[i] = new
        out.append("\t".join(cells) + ending)
    return "".join(out), changed


def describe_changes(changed: Mapping[str, int]) -> str:
    """``"acq_time (3 rows), age (1 row)"``: the columns :func:`clean_table` changed, for a message."""
    return ", ".join(f"{column} ({n} row{'s' if n != 1 else ''})" for column, n in changed.items())
