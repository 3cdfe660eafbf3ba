"""Identifiers of a DICOM series' headers found in the names of the folders its output would be written to.

A DICOM export often names folders after the patient, the birth date, the accession number or the original UIDs
(``DOE^JOHN_19600101/1.2.840.113619.2.55.3.../``).  The headers written are de-identified, but an output that keeps
such a folder name still names the patient, or links the shared series back to the source through the UIDs the
headers no longer hold.  :func:`identifiers_in_path` compares each folder name with the identifying values of the
series' own headers (:func:`header_identifiers`); ``defacer batch`` refuses to write such a series unless told to
(``--allow-identifying-paths``), see ``docs/batch.md``; ``defacer deface`` warns
(:func:`warn_identifying_name`).

Matching, case-insensitive, on the letters and digits of a folder name (separators ignored):

* a person name whole, in either order of its family and given parts (``Doe^John`` matches ``DOE_JOHN``,
  ``JohnDoe`` and ``doe-john-t1``), and each part of 2 to 5 characters as a whole word (``Li`` matches ``LI_T1``,
  not ``Lithium``), each part of 6 or more anywhere;
* an identifier (PatientID, OtherPatientIDs, AccessionNumber, StudyID, MedicalRecordLocator) of 3 to 5 characters
  as a whole word, of 6 or more anywhere;
* the birth date as ``YYYYMMDD``, ``DDMMYYYY`` or ``MMDDYYYY`` with any separators (``1960-01-31``, ``31.01.1960``);
* an original UID (Study, Series, SOP Instance, Frame of Reference) anywhere, as it is written.

Placeholders that identify nobody (``anonymous``, ``removed``, ``***``...) are ignored.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from defacer.errors import DefacerError

log = logging.getLogger(__name__)

#: Person-name attributes whose values (whole and by part) identify the patient.
NAME_KEYWORDS: tuple[str, ...] = ("PatientName", "OtherPatientNames", "PatientBirthName")
#: Identifier attributes whose values link a series to the patient's records.
ID_KEYWORDS: tuple[str, ...] = ("PatientID", "OtherPatientIDs", "AccessionNumber", "StudyID",
                                "MedicalRecordLocator")
#: Original UIDs, which the de-identified headers replace.
UID_KEYWORDS: tuple[str, ...] = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID")
#: Every attribute :func:`header_identifiers` reads (what ``dcmread(specific_tags=...)`` is given).
READ_KEYWORDS: tuple[str, ...] = (*NAME_KEYWORDS, *ID_KEYWORDS, "PatientBirthDate", *UID_KEYWORDS)

#: How each kind of identifier is named in messages.
KIND_NAMES: dict[str, str] = {
    "PatientName": "the patient's name", "OtherPatientNames": "another name of the patient",
    "PatientBirthName": "the patient's birth name", "PatientID": "the patient ID",
    "OtherPatientIDs": "another patient ID", "AccessionNumber": "the accession number", "StudyID": "the study ID",
    "MedicalRecordLocator": "the medical record locator", "PatientBirthDate": "the birth date",
    "StudyInstanceUID": "the original StudyInstanceUID", "SeriesInstanceUID": "the original SeriesInstanceUID",
    "SOPInstanceUID": "an original SOPInstanceUID", "FrameOfReferenceUID": "the original FrameOfReferenceUID",
}

#: Values that stand for no one (what other tools put in place of a name or ID).
PLACEHOLDERS: frozenset[str] = frozenset({
    "anonymous", "anonymized", "anonymised", "anon", "removed", "unknown", "none", "null", "na", "nn", "xx", "xxx",
    "patient", "test", "phantom", "deidentified", "redacted",
})
#: Shortest name part matched as a whole word, and shortest value matched anywhere in a folder name.
SHORTEST_NAME_PART = 2
SHORTEST_ID = 3
SHORTEST_ANYWHERE = 6

_NOT_ALNUM = re.compile(r"[\W_]+")


def _squash(text: str) -> str:
    """Lower-case letters and digits of ``text``, separators removed (``'Doe^John 1'`` -> ``'doejohn1'``)."""
    return _NOT_ALNUM.sub("", text).lower()


def _words(text: str) -> set[str]:
    """The lower-case runs of letters and digits in ``text``."""
    return {word for word in _NOT_ALNUM.split(text.lower()) if word}


@dataclass
class HeaderIdentifiers:
    """Identifying values read from the headers of one series, by kind (a keyword of :data:`READ_KEYWORDS`).

    Attributes
    ----------
    names : dict of str to set of tuple of str
        Per name attribute, each name as its lower-case parts in order (``Doe^John`` -> ``("doe", "john")``).
    ids : dict of str to set of str
        Per identifier attribute, its squashed values (:func:`_squash`).
    birth_dates : set of str
        Birth dates as 8 digits ``YYYYMMDD``.
    uids : dict of str to set of str
        Per UID attribute, the original UIDs.
    """

    names: dict[str, set[tuple[str, ...]]] = field(default_factory=dict)
    ids: dict[str, set[str]] = field(default_factory=dict)
    birth_dates: set[str] = field(default_factory=set)
    uids: dict[str, set[str]] = field(default_factory=dict)

    def add(self, keyword: str, value: object) -> None:
        """Remember one attribute's value (a multi-valued attribute: each of its values)."""
        from pydicom.multival import MultiValue

        values = value if isinstance(value, MultiValue | list | tuple) else [value]
        for item in values:
            text = str(item if item is not None else "").strip().strip("\x00").strip()
            if not text:
                continue
            if keyword in NAME_KEYWORDS:
                parts = tuple(p for p in _NOT_ALNUM.split(text.lower()) if p)
                if parts and _squash(text) not in PLACEHOLDERS:
                    self.names.setdefault(keyword, set()).add(parts)
            elif keyword in ID_KEYWORDS:
                squashed = _squash(text)
                if len(squashed) >= SHORTEST_ID and squashed not in PLACEHOLDERS:
                    self.ids.setdefault(keyword, set()).add(squashed)
            elif keyword == "PatientBirthDate":
                digits = re.sub(r"\D", "", text)
                if len(digits) == 8:
                    self.birth_dates.add(digits)
            elif keyword in UID_KEYWORDS and len(text) >= 8:
                self.uids.setdefault(keyword, set()).add(text)

    def found_in(self, folder: str) -> list[str]:
        """The kinds of identifier (keywords, in :data:`READ_KEYWORDS` order) that the folder name ``folder``
        holds; empty when it holds none."""
        squashed, words = _squash(folder), _words(folder)
        found = [keyword for keyword, names in self.names.items() if any(_name_in(parts, squashed, words)
                                                                         for parts in names)]
        found += [keyword for keyword, ids in self.ids.items() if any(_value_in(value, squashed, words)
                                                                      for value in ids)]
        if any(_date_in(date, squashed) for date in self.birth_dates):
            found.append("PatientBirthDate")
        found += [keyword for keyword, uids in self.uids.items() if any(uid in folder for uid in uids)]
        return [keyword for keyword in READ_KEYWORDS if keyword in found]


def _value_in(value: str, squashed: str, words: set[str]) -> bool:
    """A squashed value: anywhere when long enough to be no accident, else as a whole word."""
    return value in squashed if len(value) >= SHORTEST_ANYWHERE else value in words


def _name_in(parts: tuple[str, ...], squashed: str, words: set[str]) -> bool:
    """A name whole (its parts in order, or the family part last) or by one of its parts."""
    wholes = {"".join(parts), "".join(parts[1:] + parts[:1])}
    if any(len(whole) >= SHORTEST_NAME_PART + 2 and whole in squashed for whole in wholes):
        return True
    return any(len(part) >= SHORTEST_NAME_PART and part not in PLACEHOLDERS and _value_in(part, squashed, words)
               for part in parts)


def _date_in(date: str, squashed: str) -> bool:
    """A birth date ``YYYYMMDD`` written as it is, day first or month first."""
    year, month, day = date[:4], date[4:6], date[6:]
    return any(form in squashed for form in (date, day + month + year, month + day + year))


def header_identifiers(files: Iterable[Path]) -> HeaderIdentifiers:
    """Read the identifying attributes (:data:`READ_KEYWORDS`) of every DICOM file in ``files``.

    Only those attributes are read (no pixels).  A file pydicom cannot read is passed over: the series reader
    refuses it with its own message.
    """
    from defacer.io.dicom_files import dcmread_any

    found = HeaderIdentifiers()
    for file in files:
        try:
            ds = dcmread_any(file, stop_before_pixels=True, specific_tags=list(READ_KEYWORDS))
        except Exception:  # noqa: BLE001, S112 - unreadable here is refused, with its reason, by the reader
            continue
        for keyword in READ_KEYWORDS:
            if keyword in ds:
                found.add(keyword, ds[keyword].value)
    return found


def dataset_identifiers(ds: object) -> HeaderIdentifiers:
    """The identifying values (:data:`READ_KEYWORDS`) of one dataset already read (a pydicom ``Dataset``)."""
    found = HeaderIdentifiers()
    for keyword in READ_KEYWORDS:
        value = getattr(ds, "get", lambda _: None)(keyword)
        if value is not None:
            found.add(keyword, value)
    return found


def warn_identifying_name(name: str, ds: object, *, retain_uids: bool = False, sidecar: bool = True) -> bool:
    """Warn when an output folder name chosen for a de-identified series (``defacer deface``: the user's, or the
    default ``<input folder>_defaced``) holds identifiers of its header ``ds``; nothing is refused, the user chose
    it (``defacer batch`` refuses instead: :func:`check_series_path`).  Returns whether it does: the caller then
    keeps the name out of the provenance sidecar, as it keeps the input's.  ``sidecar``: the output has a
    ``.defacer.json`` (``defacer anonymize`` writes none)."""
    kinds = _replaced_only(dataset_identifiers(ds), retain_uids).found_in(name)
    if kinds:
        held = describe([(name, kinds)]).partition(" holds ")[2]
        also = (f", its .defacer.json and the hidden .{name}.defacer-output.json beside it before sharing, e.g. to "
                "sub-01_T1w (the .defacer.json records it as '<output>')" if sidecar else
                f" and the hidden .{name}.defacer-output.json beside it before sharing, e.g. to sub-01_T1w")
        log.warning("The output '%s' holds %s from its own DICOM headers, which the de-identified headers no longer "
                    "hold. Rename it%s.", name, held, also)
    return bool(kinds)


class IdentifyingPathError(DefacerError):
    """The output path of a DICOM series would hold identifiers its de-identified headers no longer hold."""


def identifiers_in_path(folders: Sequence[str], identifiers: HeaderIdentifiers) -> list[tuple[str, list[str]]]:
    """``(folder name, kinds of identifier it holds)`` for each of ``folders`` that holds any, in order."""
    return [(folder, kinds) for folder in folders if (kinds := identifiers.found_in(folder))]


def describe(found: Sequence[tuple[str, list[str]]]) -> str:
    """``folder 'X' holds the patient's name and the birth date; folder 'Y' holds ...``."""
    parts = []
    for folder, kinds in found:
        names = [KIND_NAMES.get(kind, kind) for kind in kinds]
        listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
        parts.append(f"folder '{folder}' holds {listed}")
    return "; ".join(parts)


def _replaced_only(identifiers: HeaderIdentifiers, retain_uids: bool) -> HeaderIdentifiers:
    """``identifiers`` less the original UIDs when the headers keep them (``--retain-uids``): a folder named by a
    UID the shared header holds anyway links nothing more."""
    if retain_uids:
        identifiers.uids.clear()
    return identifiers


def check_series_path(relpath: str, files: Iterable[Path], *, allow: bool, retain_uids: bool = False) -> None:
    """Refuse (or with ``allow`` warn about) an output path of a DICOM series whose folder names hold identifiers
    of the series' own headers.

    Parameters
    ----------
    relpath : str
        The series' output folder relative to the output root (``DOE^JOHN_19600101/T1``), forward slashes.
    files : iterable of Path
        The series' input files (their headers are read, not their pixels).
    allow : bool
        Write anyway: log a warning instead of raising.
    retain_uids : bool
        The headers keep their original UIDs (``--retain-uids``): UIDs in folder names are not counted.

    Raises
    ------
    IdentifyingPathError
        A folder name holds an identifier and ``allow`` is off.
    """
    folders = [part for part in relpath.split("/") if part not in ("", ".")]
    found = identifiers_in_path(folders, _replaced_only(header_identifiers(files), retain_uids))
    if not found:
        return
    what = describe(found)
    if allow:
        log.warning("'%s' is written under names that identify: %s, from its DICOM headers (--allow-identifying-"
                    "paths). Before sharing the output, rename those folders there, and the series' '.defacer.json' "
                    "and hidden '.<name>.defacer-output.json' files beside it.", relpath, what)
        return
    raise IdentifyingPathError(
        f"Not written: the output '{relpath}' would be named after its own DICOM headers ({what}), which the "
        "de-identified headers no longer hold, so the shared output would name the patient or link back to the "
        "source. Rename those folders in the input (for example to sub-01/ses-1/T1w) and run again, or pass "
        "--allow-identifying-paths to write it under these names and rename them in the output before sharing."
    )
