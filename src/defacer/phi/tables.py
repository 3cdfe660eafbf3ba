"""BIDS tables de-identified as the JSON sidecars are: dates and times, operators, ages over 89.

A BIDS dataset carries, beside its images, tab-separated tables that converters fill from the
DICOM headers: ``sub-<label>[_ses-<label>]_scans.tsv`` has an ``acq_time`` column with the full
date and time of every acquisition (HeuDiConv and dcm2bids write it, HeuDiConv an ``operator``
column too), ``sub-<label>_sessions.tsv`` the sessions' dates, and ``participants.tsv`` each
person's age.  Under HIPAA Safe Harbor every date element more precise than the year goes and
ages over 89 are pooled; PS3.15 Annex E removes the acquisition dates and times and the
operators' names from a DICOM header.  :func:`clean_table` applies the same to these columns:

- a date or time column (:func:`is_date_column`: ``acq_time``, ``*_date``, ``*_time``, a birth
  date...; or any column whose values are all calendar dates, :func:`holds_dates`) and a person
  column (:data:`PERSON_COLUMNS`: ``operator``, a physician, a name, an ID)
  get ``n/a`` (BIDS's missing value) in every row;
- an ``age`` (also ``age_at_scan``, ``PatientAge``...) above 89 years becomes ``89+`` (what the
  BIDS specification recommends for ``participants.tsv``; ``95``, ``095Y`` as in a DICOM header,
  ``95 years``); ``n/a`` and ages up to 89 stay.

Column names are compared in one spelling (:func:`column_key`): ``AcquisitionDateTime``,
``Acq Time`` and ``acq-time`` are date columns as ``acq_time`` is.

Every other column, the header row, the row order and the line endings stay as they are.  The
profile's options reach the tables as they reach a header: ``--retain-long-full-dates`` keeps the
date and time columns; ``--retain-patient-characteristics`` keeps a header's ages but none over 89 (``090Y``),
so ``defacer batch`` pools the tables' ages over 89 under it too (``keep_ages`` is never passed: it would keep
them); ``defacer batch --no-deidentify`` keeps every table (and the DICOM headers and sidecars) as it is.
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
#: Units an age column may be kept in, by a word of its name (``age_months``, ``AgeInDays``), per year.
_AGE_UNITS: dict[str, float] = {"month": 12.0, "months": 12.0, "mo": 12.0, "week": 52.1775, "weeks": 52.1775,
                                "wk": 52.1775, "day": 365.25, "days": 365.25, "d": 365.25, "hour": 8766.0,
                                "hours": 8766.0, "h": 8766.0}
#: A word boundary inside camelCase (``AcquisitionDateTime``, ``PatientID``) and any run of non-alphanumerics.
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_SEPARATORS = re.compile(r"[^0-9a-z]+")
#: An age in years as written by hand or copied from a DICOM header: ``95``, ``095Y``, ``95.5``, ``95,5 years``.
_AGE_YEARS = re.compile(r"0*(\d+(?:[.,]\d+)?)\s*(?:y|yr|yrs|year|years)?", re.IGNORECASE)

#: What ends a cell outside quotes: a tab, or a row's end (LF, CRLF or CR, as TSV readers split them, and nothing
#: else); and the same, one separator at a time.
_CELL_END = re.compile(r"[\t\r\n]")
_SEPARATOR = re.compile(r"\t|\r\n|\r|\n")


def is_bids_table(name: str, folder: str = "") -> bool:
    """Whether a file (its name, and the name of the folder holding it) is one of the BIDS tables :func:`clean_table`
    cleans.

    ``participants.tsv``, ``*_scans.tsv``, ``*_sessions.tsv`` and every ``.tsv`` in ``phenotype/`` (assessments and
    questionnaires, which may hold ages and dates); other tables (events, physiology, channels) hold no acquisition
    dates or personal data by the specification.  Any case: ``Participants.tsv`` or ``sub-01_scans.TSV`` (a dataset
    made by hand, or on a file system that ignores case) holds the same columns and was carried as it was.
    """
    lower = name.lower()
    return (lower == "participants.tsv" or lower.endswith(("_scans.tsv", "_sessions.tsv"))
            or (folder.lower() == "phenotype" and lower.endswith(".tsv")))


def column_key(column: str) -> str:
    """A column name in one spelling: lower case, words joined by ``_``.

    ``"AcquisitionDateTime"`` -> ``"acquisition_date_time"``, ``"Acq Time"`` and ``" acq-time "`` ->
    ``"acq_time"``, ``"PatientID"`` -> ``"patient_id"``; a byte order mark (a table saved by a
    spreadsheet) goes.  Only ``acq_time`` itself, in any case and with spaces around, used to be
    recognised: a table exported by hand or from DICOM keywords kept its dates, names and ages.
    """
    name = column.replace("\ufeff", "").strip()
    return _SEPARATORS.sub("_", _CAMEL.sub("_", name).lower()).strip("_")


#: A cell that is a calendar date, with or without a time: ISO 8601 (``2023-03-14``, ``2023-03-14T09:12:44.5``,
#: ``2023-03-14 09:12+01:00``) or written by hand (``14/03/2023``, ``3/14/23``, ``14.03.2023``; a two-digit
#: year only with slashes).
_DATE_VALUE = re.compile(r"\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?)?(?:Z|[+-]\d{2}:?\d{2})?"
                         r"|\d{1,2}[/.]\d{1,2}[/.]\d{4}|\d{1,2}/\d{1,2}/\d{2}")  # 1.12.10 (a version) is no date


def holds_dates(values: list[str]) -> bool:
    """Whether a column's values are dates, whatever its name: each cell that is not ``n/a`` or empty (at least one)
    is a calendar date (:data:`_DATE_VALUE`).  A ``visit`` or ``scan`` column of dates is as identifying as
    ``acq_time``."""
    present = [v.strip() for v in values if v.strip() and v.strip() != MISSING]
    return bool(present) and all(_DATE_VALUE.fullmatch(v) for v in present)


def is_date_column(column: str) -> bool:
    """Whether a column (its header name) holds dates or times: ``acq_time``, ``*_date``, ``birthdate``..."""
    name = column_key(column)
    return name in DATE_COLUMNS or bool(_DATE_NAME.search(name))


def _action(column: str, keep_dates: bool = False, keep_ages: bool = False) -> str | None:
    """What happens to a column's values: ``"missing"``, ``"age"`` or ``None`` (kept).

    ``keep_dates`` keeps date and time columns (not person columns), ``keep_ages`` the ages.
    """
    name = column_key(column)
    if name in PERSON_COLUMNS or (is_date_column(name) and not keep_dates):
        return "missing"
    if _AGE_NAME.search(name) and not keep_ages and not is_date_column(name):
        return "age"
    return None


def _years(value: str) -> float | None:
    """An age cell's number of years (``95``, ``095Y`` as in a DICOM header, ``95,5 years``), or ``None`` (text)."""
    try:
        return float(value)
    except ValueError:
        match = _AGE_YEARS.fullmatch(value.strip())
        return float(match.group(1).replace(",", ".")) if match else None


def _per_year(column: str) -> float:
    """How many of an age column's units make a year: 1, or 12 for ``age_months``, 365.25 for ``age_days``..."""
    return next((_AGE_UNITS[word] for word in column_key(column).split("_") if word in _AGE_UNITS), 1.0)


def _pooled_age(value: str, per_year: float = 1.0) -> str:
    """``89+`` for an age above :data:`MAX_AGE` years, the value itself otherwise (``n/a``, text, ``89+``).

    In a column of months, weeks, days or hours (``per_year`` of them a year) the same age is compared,
    and pooled in that unit (``1068+`` months): an infant's 100 months are no age over 89.
    """
    number = _years(value)
    if number is None or number / per_year <= MAX_AGE:
        return value
    return f"{MAX_AGE}+" if per_year == 1.0 else f"{int(MAX_AGE * per_year)}+"


def _quoted_end(text: str, start: int) -> int | None:
    """Where the quoted cell opening at ``text[start] == '"'`` ends (after its closing quote), or ``None``."""
    at = start + 1
    while (close := text.find('"', at)) != -1:
        if text.startswith('""', close):
            at = close + 2  # an escaped quote inside the cell
            continue
        return close + 1
    return None


def _split_rows(text: str) -> list[tuple[list[str], str]]:
    """The rows of a table: each row's cells as written (quotes kept) and its line ending (``""`` for a last row
    without one).

    Cells end at a tab and rows at LF, CRLF or CR, except inside a cell that opens with a double
    quote, which runs to its closing quote (``""`` inside it is a quote): BIDS writes a value that
    holds a tab that way.  A quote that never closes is taken as a character.  Nothing else ends a
    row: :meth:`str.splitlines` also ended one at a form feed, U+0085, U+2028... inside a cell, and
    the rest of the row was read one column to the left.
    """
    rows: list[tuple[list[str], str]] = []
    cells: list[str] = []
    at, size = 0, len(text)
    while at < size:
        quoted = _quoted_end(text, at) if text[at] == '"' else None
        found = _CELL_END.search(text, at if quoted is None else quoted)
        end = found.start() if found else size
        cells.append(text[at:end])
        if found is None:
            rows.append((cells, ""))
            break
        if text[end] == "\t":
            at = end + 1
            if at == size:  # a tab ends the text: one more, empty, cell
                rows.append(([*cells, ""], ""))
            continue
        ending = "\r\n" if text.startswith("\r\n", end) else text[end]
        rows.append((cells, ending))
        cells, at = [], end + len(ending)
    return rows


def _unquoted(cell: str) -> str:
    """A cell's value: without its enclosing quotes and with ``""`` read as ``"``, when it is quoted."""
    if len(cell) >= 2 and cell[0] == cell[-1] == '"':
        return cell[1:-1].replace('""', '"')
    return cell


def _plain_columns(cells: list[str]) -> list[set[int]]:
    """For each cell, the columns its parts fall in for a reader that splits at every tab and line break, quotes or
    not: a quoted cell holding a tab spans two (its second part is read as the next column's value there)."""
    columns: list[set[int]] = []
    column = 0
    for cell in cells:
        spanned = {column}
        for separator in _SEPARATOR.finditer(cell):
            column = column + 1 if separator.group() == "\t" else 0
            spanned.add(column)
        columns.append(spanned)
        column += 1
    return columns


def clean_table(text: str, *, keep_dates: bool = False, keep_ages: bool = False) -> tuple[str, dict[str, int]]:
    """The table ``text`` with its date, time and person columns emptied and ages over 89 pooled.

    A cell is cleaned when its column is one to clean as BIDS reads the table (a quoted value may
    hold a tab) or as a reader that splits at every tab reads it: a quoted ``"Jane<TAB>Quexworth"``
    before ``acq_time`` put the date one column further for such a reader, where it was kept.

    Parameters
    ----------
    text : str
        A BIDS tab-separated table: a header row of column names, then one row per entry.
    keep_dates, keep_ages : bool
        Keep the date and time columns (PS3.15's Retain Longitudinal Temporal Information with Full Dates
        option, ``--retain-long-full-dates``), and the ages as they are (its Retain Patient
        Characteristics option, ``--retain-patient-characteristics``), as a header keeps them under those
        options.  Person columns go whatever the options.

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
    header = [_unquoted(cell) for cell in rows[0][0]]
    actions = {i: action for i, column in enumerate(header)
               if (action := _action(column, keep_dates, keep_ages)) is not None}
    plain = {i: action for i, column in enumerate(_SEPARATOR.split("\t".join(rows[0][0])))
             if (action := _action(column, keep_dates, keep_ages)) is not None}
    if not keep_dates:  # a column of dates is one whatever its name (a 'visit' of ISO dates)
        for i in range(len(header)):
            if i not in actions and holds_dates([_unquoted(cells[i]) for cells, _ in rows[1:] if i < len(cells)]):
                actions[i] = "missing"
    if not actions and not plain:
        return text, {}
    changed: dict[str, int] = {}
    out = ["\t".join(rows[0][0]) + rows[0][1]]
    for cells, ending in rows[1:]:
        for i, spanned in enumerate(_plain_columns(cells)):
            wanted = {actions.get(i), *(plain.get(column) for column in spanned)}
            if "missing" in wanted:
                new = MISSING
            elif "age" in wanted:
                value = _unquoted(cells[i])
                per_year = _per_year(header[i]) if i < len(header) else 1.0
                new = pooled if (pooled := _pooled_age(value, per_year)) != value else cells[i]
            else:
                continue
            if new != cells[i] and _unquoted(cells[i]).strip() != MISSING:
                name = header[i] if i < len(header) else f"column {i + 1}"
                changed[name] = changed.get(name, 0) + 1
                cells[i] = new
        out.append("\t".join(cells) + ending)
    return "".join(out), changed


def describe_changes(changed: Mapping[str, int]) -> str:
    """``"acq_time (3 rows), age (1 row)"``: the columns :func:`clean_table` changed, for a message."""
    return ", ".join(f"{column} ({n} row{'s' if n != 1 else ''})" for column, n in changed.items())
