"""Apply PS3.15 Annex E to a pydicom dataset: the rules, the options and the bookkeeping.

:class:`Scrubber` walks every element, nested sequences included, applies the action the
table and options give it (:mod:`defacer.phi.rules`, :mod:`defacer.phi.options`), removes
private attributes, rebuilds the file meta group and records PatientIdentityRemoved,
DeidentificationMethod(CodeSequence), LongitudinalTemporalInformationModified and, for
defaced pixels, RecognizableVisualFeatures.

Beyond the standard, as a safety net: a person-name (PN) attribute the table does not list
is emptied, and an instance-UID attribute it does not list is replaced like ``U``.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import math
import re
import struct
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pydicom.charset import decode_bytes
from pydicom.datadict import DicomDictionary
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.uid import UID

from defacer.errors import DicomSeriesError
from defacer.io.dicom_vr_notice import vr_notices
from defacer.phi import actions
from defacer.phi.codestream import blank_encapsulated_text
from defacer.phi.options import DeidOptions
from defacer.phi.pixel_bits import clear_unused_bits
from defacer.phi.pseudonym import Pseudonymizer
from defacer.phi.rules import Rule, find_rule, rule_index

logger = logging.getLogger(__name__)

#: ImplementationClassUID written into the rebuilt file meta group (defacer's own, fixed).
IMPLEMENTATION_CLASS_UID = "2.25.187930442152476211420519612093815634962"
IMPLEMENTATION_VERSION_NAME = "DEFACER_0_1"
#: SOP classes that usually carry burned-in text: secondary captures and encapsulated documents.
BURNED_IN_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image",
    "1.2.840.10008.5.1.4.1.1.7.1": "Multi-frame Single Bit Secondary Capture Image",
    "1.2.840.10008.5.1.4.1.1.7.2": "Multi-frame Grayscale Byte Secondary Capture Image",
    "1.2.840.10008.5.1.4.1.1.7.3": "Multi-frame Grayscale Word Secondary Capture Image",
    "1.2.840.10008.5.1.4.1.1.7.4": "Multi-frame True Color Secondary Capture Image",
    "1.2.840.10008.5.1.4.1.1.104.1": "Encapsulated PDF",
    "1.2.840.10008.5.1.4.1.1.77.1.1.1": "Video Endoscopic Image",
}
#: SOP classes whose content itself identifies the patient, whatever the header says: a photograph (most often of
#: the face or the body; a full-face photograph is one of HIPAA Safe Harbor's identifiers), a recording of a voice
#: (a voice print is one, and a dictation says names) and a scan of the body's surface (the shape of the face).
#: Header de-identification keeps their pixels, waveform samples and points as they are.
IDENTIFYING_CONTENT_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.77.1.4": ("VL Photographic Image", "a photograph, often of the patient's face"),
    "1.2.840.10008.5.1.4.1.1.77.1.4.1": ("Video Photographic Image", "a video, often of the patient's face"),
    "1.2.840.10008.5.1.4.1.1.9.4.1": ("Basic Voice Audio Waveform", "a recording of a voice, which may say names"),
    "1.2.840.10008.5.1.4.1.1.9.4.2": ("General Audio Waveform", "a sound recording, which may hold a voice"),
    "1.2.840.10008.5.1.4.1.1.68.1": ("Surface Scan Mesh", "a 3D scan of the body's surface, which may be the face"),
    "1.2.840.10008.5.1.4.1.1.68.2": ("Surface Scan Point Cloud",
                                      "a 3D scan of the body's surface, which may be the face"),
}
#: Private attributes kept by the Retain Safe Private option: (private creator, group, element byte) -> (VR, most
#: values), as the vendors' dictionaries (pydicom's) give them.  A subset of PS3.15 Table E.3.10-1 (diffusion and
#: scaling parameters without identity).  A slot is safe for what it holds there: numbers of that VR, never a
#: sequence or free text (:func:`_safe_private_value`).
SAFE_PRIVATE: dict[tuple[str, int, int], tuple[str, int]] = {
    ("SIEMENS MR HEADER", 0x0019, 0x0C): ("IS", 1),  # B_value
    ("SIEMENS MR HEADER", 0x0019, 0x0D): ("CS", 1),  # DiffusionDirectionality
    ("SIEMENS MR HEADER", 0x0019, 0x0E): ("FD", 3),  # DiffusionGradientDirection
    ("SIEMENS MR HEADER", 0x0019, 0x27): ("FD", 6),  # B_matrix
    ("SIEMENS MR HEADER", 0x0019, 0x28): ("FD", 1),  # BandwidthPerPixelPhaseEncode
    ("GEMS_PARM_01", 0x0043, 0x39): ("IS", 4),  # Slop_int_6... (b value)
    ("GEMS_ACQU_01", 0x0019, 0xBB): ("DS", 1),  # User data 25
    ("GEMS_ACQU_01", 0x0019, 0xBC): ("DS", 1),  # User data 26
    ("GEMS_ACQU_01", 0x0019, 0xBD): ("DS", 1),  # User data 27
    ("Philips MR Imaging DD 001", 0x2001, 0x03): ("FL", 1),  # Diffusion B-Factor
    ("Philips MR Imaging DD 001", 0x2005, 0xB0): ("FL", 1),  # Diffusion direction RL
}
#: What a kept safe private value of a text VR may hold: one or more numbers (IS, DS) or code words (CS).
_SAFE_TEXT = {"IS": re.compile(r" *[+-]?[0-9]+ *"), "DS": re.compile(r" *[+-]?[0-9.]+([eE][+-]?[0-9]+)? *"),
              "CS": re.compile(r"[ A-Z0-9_]*")}
#: Values gathered from a dataset before cleaning, used by the C action on free text.
IDENTIFYING_KEYWORDS = (
    "PatientName", "PatientID", "OtherPatientIDs", "OtherPatientNames", "PatientBirthName", "PatientMotherBirthName",
    "PatientBirthDate", "AccessionNumber", "InstitutionName", "InstitutionAddress", "ReferringPhysicianName",
    "PerformingPhysicianName", "OperatorsName", "NameOfPhysiciansReadingStudy", "PhysiciansOfRecord",
    "RequestingPhysician", "PatientAddress", "PatientTelephoneNumbers", "StationName", "DeviceSerialNumber",
    "StudyID", "InstitutionalDepartmentName", "MilitaryRank", "MedicalRecordLocator", "PatientInsurancePlanCodeSequence",
)
_TAG_PATIENT_NAME = 0x00100010
_TAG_PATIENT_ID = 0x00100020
_TAG_TEXT_VALUE = 0x0040A160
_TAG_STUDY_DATE = 0x00080020
_TAG_CONTENT_SEQUENCE = 0x0040A730
_VR_BY_TAG: dict[int, str] = {tag: entry[0] for tag, entry in DicomDictionary.items()}
_INSTANCE_UID_SUFFIXES = ("InstanceUID", "FrameOfReferenceUID")
#: UI attributes not in the table, not named for an instance, that still hold UIDs made for one instance, event or
#: object of this patient's study (or refer to such a UID the table replaces: Fiducial UID is U, so a reference to it
#: must be replaced alike).
_UNLISTED_OBJECT_UIDS = frozenset({
    "RadiopharmaceuticalAdministrationEventUID", "AssertionUID", "ReferencedAssertionUID", "ReferencedFiducialUID",
    "TableTopPositionAlignmentUID", "ModelGroupUID", "VolumetricPresentationInputSetUID", "PrivateRecordUID",
})
#: UI attributes not in the table whose keyword names an instance (anywhere in it: SOPInstanceUIDOfConcatenationSource,
#: the original SOP Instance UID of a concatenation's source) or a frame of reference, or one of
#: :data:`_UNLISTED_OBJECT_UIDS`: replaced like U (kept as they were, they named the original instances).
_UNLISTED_INSTANCE_UIDS = frozenset(
    tag for tag, entry in DicomDictionary.items()
    if entry[0] == "UI" and find_rule(tag) is None
    and ("InstanceUID" in entry[4] or entry[4].endswith(_INSTANCE_UID_SUFFIXES) or entry[4] in _UNLISTED_OBJECT_UIDS)
)
#: Unlisted URL/URI attributes (VR UR) that are kept: names of coding schemes and references inside a document.
#: Every other unlisted UR attribute is removed: a RetrieveURL or RetrieveURI names the original study by its
#: StudyInstanceUID (``.../studies/1.2.840...``) and the hospital's server, file and folder URIs may hold names, and
#: web addresses are one of the identifiers HIPAA's Safe Harbor method removes.
_KEPT_UNLISTED_URLS = frozenset(
    tag for tag, entry in DicomDictionary.items()
    if entry[4] in ("CodingSchemeURL", "URNCodeValue", "RelativeURIReferenceWithinEncapsulatedDocument")
)
#: The VR of an element no dictionary knows (an attribute of a newer standard, or a misused tag, stored as UN or read
#: with implicit VR): its bytes may hold anything.
_UNKNOWN_VRS = frozenset({"UN", ""})


#: Free-text VRs: overlay attributes of these VRs the table does not list follow Overlay Comments.
_FREE_TEXT_VRS = frozenset({"LO", "LT", "SH", "ST", "UT", "UC"})


def unlisted_net(tag: int, vr: str) -> str:
    """The safety net for an attribute the Annex E table does not list, by its tag and value representation.

    One rule for the header (:meth:`Scrubber._unlisted`) and a JSON sidecar's keys
    (:func:`defacer.phi.sidecar.scrub_sidecar`), each carrying it out its own way:

    * ``"items"``: a sequence (SQ), its items cleaned like the dataset;
    * ``"remove"``: a person name (PN) or a web address (UR, but coding-scheme URLs): HIPAA identifiers;
    * ``"uid"``: a UID made for one of the patient's instances (:data:`_UNLISTED_INSTANCE_UIDS`) or held by an
      attribute no dictionary knows: replaced by keyed UIDs (a sidecar, which has no key, removes it);
    * ``"mask"``: free text, kept less the patient's own names and IDs;
    * ``"date"``: a date or date-time, one of the study's dates: treated as Study Date;
    * ``"bytes"``: an element no dictionary knows (UN): removed when it holds the patient's values;
    * ``"keep"``: anything else.
    """
    if vr == "SQ":
        return "items"
    if vr == "PN" or (vr == "UR" and tag not in _KEPT_UNLISTED_URLS):
        return "remove"
    if vr == "UI":
        return "uid" if tag in _UNLISTED_INSTANCE_UIDS or tag not in DicomDictionary else "keep"
    if vr in _FREE_TEXT_VRS:
        return "mask"
    if vr in ("DA", "DT"):
        return "date"
    return "bytes" if vr in _UNKNOWN_VRS else "keep"


def study_date_rule() -> Rule:
    """The table's rule for Study Date, which every unlisted date follows (:func:`unlisted_net` ``"date"``)."""
    rule = find_rule(_TAG_STUDY_DATE)
    assert rule is not None, "the Annex E table lists Study Date"
    return rule
#: String VRs whose values may be identifiers.
_ID_VRS = frozenset({"LO", "SH", "LT", "ST", "UT", "UC", "AE"})
#: Keywords of identifier attributes (PatientID, StudyID, AccessionNumber, DeviceSerialNumber...).
_ID_KEYWORD = re.compile(r"(ID|IDs|Number|Numbers|Locator|Institution\w*|Address|Department\w*|StationName)$")
#: Separators between name components: anything but letters and digits (PN component and group separators,
#: spaces, punctuation, hyphens, control characters and the replacement character of an undecodable byte, so
#: that "Quexworth\ufffd" in a damaged PatientName still masks "Quexworth" in a description).
_NAME_SPLIT = re.compile(r"[\W_]+")


def identifying_values(ds: Dataset) -> set[str]:
    """Values of ``ds`` that identify someone, for masking in free text (nested sequences included).

    Every person name (VR PN) whole and by component (family, given, middle... separately,
    from 2 characters), every value of an ID, number, institution, department, address or
    station attribute, and the attributes of :data:`IDENTIFYING_KEYWORDS` whole and by word
    (from 3 characters).
    """
    values: set[str] = set()

    def add(text: str, *, split: bool, shortest: int) -> None:
        text = text.strip().strip("\x00").strip()
        if len(text) >= 2:
            values.add(text)
        if split:
            values.update(part for part in _NAME_SPLIT.split(text) if len(part) >= shortest)

    listed = set(IDENTIFYING_KEYWORDS)
    for element in ds.iterall():
        vr = element.VR
        if vr in ("SQ", "OB", "OW", "UN", "OF", "OD", "OL", "OV") or element.value is None:
            continue
        raw = element.value
        items = raw if isinstance(raw, MultiValue | list) else [raw]
        keyword = element.keyword
        if vr == "PN":
            for item in items:
                add(str(item), split=True, shortest=2)
                values.update(actions.joined_name_groups(str(item)))  # "王^伟" is written "王伟"
        elif keyword in listed:
            for item in items:
                add(str(item), split=True, shortest=3)
        elif vr in _ID_VRS and keyword and _ID_KEYWORD.search(keyword):
            for item in items:
                add(str(item), split=False, shortest=2)
    return values


#: Attributes whose values identify the patient wherever else they appear (:func:`patient_values`).
_PATIENT_NAME_KEYWORDS = ("PatientName", "OtherPatientNames", "PatientBirthName")
_PATIENT_ID_KEYWORDS = ("PatientID", "OtherPatientIDs", "AccessionNumber", "MedicalRecordLocator")


#: Most values :func:`patient_values` returns: a conformant header has at most 15 name parts (5 components in 3
#: groups, each at most 64 characters), and every kept text value is searched for each, so a header padded with
#: thousands of parts would otherwise cost seconds per file.
MAX_PATIENT_VALUES = 64
#: Most identifying values (:func:`identifying_values`, gathered over a study) each text the ``C`` action cleans is
#: searched for: a header listing 2,000 names in a sequence took 2.5 s per file, linearly more with more.  The
#: patient's own values and the instance's top-level identifying attributes always come first, so padding a header
#: with names cannot push them out.
MAX_IDENTIFYING_VALUES = 512


def patient_values(ds: Dataset | dict[str, Any]) -> tuple[str, ...]:
    """The patient's own identifying values in ``ds`` (top level; or a dict of keywords to values, such as a
    JSON sidecar's), as masked in text the profile keeps.

    The birth date as written and as ``YYYY-MM-DD``, ``DD.MM.YYYY``, ``DD/MM/YYYY`` and ``MM/DD/YYYY``, each name
    whole and by part (2 characters or more), each ID and the accession number (3 or more); the first 8 values of
    an attribute, the first 16 parts of a name, and at most :data:`MAX_PATIENT_VALUES` in all, in that order of
    attributes (PatientName and PatientID first).  The Basic Profile
    keeps every attribute it does not list (Manufacturer, SequenceName, CodeMeaning...); a header that copies the
    patient's name or ID into one of them would otherwise keep it.
    """
    found: dict[str, None] = {}  # ordered, unique
    birth = re.sub(r"\D", "", str(ds.get("PatientBirthDate", "") or ""))
    if len(birth) == 8:
        found.update(dict.fromkeys(date_forms(birth)))
    for keyword in ("PatientName", "PatientID", *_PATIENT_NAME_KEYWORDS[1:], *_PATIENT_ID_KEYWORDS[1:]):
        value = ds.get(keyword)
        if value is None or value == "":
            continue
        items = value if isinstance(value, MultiValue | list) else [value]
        for item in items[:8]:
            text = str(item).strip().strip("\x00").strip()
            if keyword in _PATIENT_NAME_KEYWORDS:
                found.update(dict.fromkeys([text, *(p for p in _NAME_SPLIT.split(text)[:16] if len(p) >= 2),
                                            *actions.joined_name_groups(text)[:4]]))
            elif len(text) >= 3:
                found[text] = None
    return tuple(sorted(v for v in list(found)[:MAX_PATIENT_VALUES] if len(v) >= 2))


def date_forms(date: str) -> tuple[str, ...]:
    """A date ``YYYYMMDD`` as people and software write it: as is, ``YYYY-MM-DD``, ``YYYY/MM/DD``, ``YYYY.MM.DD``,
    ``DD.MM.YYYY``, ``DD/MM/YYYY``, ``MM/DD/YYYY`` and ``DD-MM-YYYY``."""
    year, month, day = date[:4], date[4:6], date[6:8]
    return (date, f"{year}-{month}-{day}", f"{year}/{month}/{day}", f"{year}.{month}.{day}", f"{day}.{month}.{year}",
            f"{day}/{month}/{year}", f"{month}/{day}/{year}", f"{day}-{month}-{year}")


#: Most distinct dates of one instance masked in its kept text (:func:`instance_dates`).
MAX_INSTANCE_DATES = 8


def instance_dates(ds: Dataset) -> tuple[str, ...]:
    """The calendar dates of ``ds``'s own top-level date and date-time attributes (StudyDate, SeriesDate,
    AcquisitionDate, ContentDate, AcquisitionDateTime...) in the forms of :func:`date_forms`, at most
    :data:`MAX_INSTANCE_DATES` distinct dates.

    The profile removes or shifts these attributes; the same date typed into a text it keeps (SequenceName
    ``fl3d 2007-03-02``) stayed, and beside shifted dates it gives the patient's offset away, which unshifts them all.
    """
    dates: dict[str, None] = {}
    for element in ds:
        if element.VR not in ("DA", "DT") or element.value in (None, "", b""):
            continue
        values = element.value if isinstance(element.value, MultiValue | list) else [element.value]
        for value in values:
            digits = str(value).strip()[:8]
            if len(digits) == 8 and digits.isdigit() and 1 <= int(digits[4:6]) <= 12 and 1 <= int(digits[6:]) <= 31:
                dates[digits] = None
        if len(dates) >= MAX_INSTANCE_DATES:
            break
    return tuple(form for date in list(dates)[:MAX_INSTANCE_DATES] for form in date_forms(date))


def _bounded_identifying(values: set[str], ds: Dataset) -> set[str]:
    """``values`` (a study's identifying values), at most :data:`MAX_IDENTIFYING_VALUES`: first the patient's own
    (:func:`patient_values`) and those of ``ds``'s top-level attributes of :data:`IDENTIFYING_KEYWORDS`, then the
    rest in sorted order."""
    if len(values) <= MAX_IDENTIFYING_VALUES:
        return values
    top = Dataset()
    for keyword in IDENTIFYING_KEYWORDS:
        if keyword in ds and ds[keyword].VR != "SQ":
            top.add(ds[keyword])
    first = dict.fromkeys([*patient_values(ds), *sorted(identifying_values(top))])
    kept = [value for value in first if value in values][:MAX_IDENTIFYING_VALUES]
    rest = sorted(values - set(kept))
    return set(kept) | set(rest[:MAX_IDENTIFYING_VALUES - len(kept)])


def _holds_patient(value: object, context: _Context) -> bool:
    """Whether a value (text, numbers, or raw bytes of an implicit-VR private element) holds one of the patient's
    own values (:func:`patient_values`)."""
    pattern = actions.values_pattern(context.patient)
    if pattern is None or value is None:
        return False
    if not isinstance(value, bytes):
        return pattern.search(str(value)) is not None
    return any(pattern.search(text) is not None for text in _bytes_as_text(value, context.encodings))


#: Set while defacer itself decodes raw bytes only to look for the patient's values in them
#: (:func:`_bytes_as_text`): what pydicom logs then ("Failed to decode byte string with encodings ...") is about
#: defacer's probe, not the file, and was logged once per file.
_PROBING: contextvars.ContextVar[bool] = contextvars.ContextVar("defacer_probing_bytes", default=False)


class _NotWhileProbing(logging.Filter):
    """Drops pydicom's log records emitted, in this thread, while :data:`_PROBING` is set."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not _PROBING.get()


_PROBE_FILTER = _NotWhileProbing()


@contextlib.contextmanager
def _quiet_pydicom() -> Iterator[None]:
    """Inside the block (this thread only), pydicom's log records are dropped (:class:`_NotWhileProbing`)."""
    logger = logging.getLogger("pydicom")
    if _PROBE_FILTER not in logger.filters:
        logger.addFilter(_PROBE_FILTER)
    token = _PROBING.set(True)
    try:
        yield
    finally:
        _PROBING.reset(token)


def _bytes_as_text(value: bytes, encodings: tuple[str, ...]) -> Iterator[str]:
    """Raw bytes (an element no dictionary knows, a private slot) read as text every way a name may be stored in
    them: byte by byte (Latin-1, ASCII), UTF-8, the instance's own Specific Character Set (ISO 2022 Japanese or
    Korean, GB18030...) and UTF-16 (little endian).  Read as Latin-1 alone, a name in any multi-byte encoding
    ("山田太郎" in UTF-8) was never found in them."""
    yield value.decode("latin-1")
    yield value.decode("utf-8", errors="replace")
    if encodings:
        try:
            with warnings.catch_warnings(), _quiet_pydicom():
                warnings.simplefilter("ignore")  # pydicom warns about bytes its encodings cannot decode
                text = decode_bytes(value, list(encodings), set())
        except (LookupError, UnicodeError, ValueError):
            pass
        else:
            yield text
    yield value[: len(value) // 2 * 2].decode("utf-16-le", errors="replace")


def _safe_private_value(element: DataElement, vr: str, most: int) -> bool:
    """Whether a safe private slot holds what its table entry says: at most ``most`` values of ``vr`` (numbers, or
    code words for CS), read from the raw bytes (an implicit-VR file's ``UN``) when need be."""
    raw = element.value
    if element.VR not in (vr, "UN"):
        return False  # a sequence, free text, a name where the vendor keeps numbers
    if raw is None or raw == b"" or raw == "":
        return True
    if vr in ("FD", "FL"):
        size, code = (8, "d") if vr == "FD" else (4, "f")
        if isinstance(raw, bytes):
            if len(raw) % size:
                return False
            values: list[Any] = list(struct.unpack(f"<{len(raw) // size}{code}", raw))
        else:
            values = list(raw) if isinstance(raw, (list, tuple, MultiValue)) else [raw]
        # text read as numbers is mostly absurd (1e180, 1e-20); diffusion and bandwidth values are not
        return len(values) <= most and all(
            isinstance(v, (int, float)) and math.isfinite(v) and (v == 0 or 1e-6 <= abs(v) <= 1e7) for v in values)
    if isinstance(raw, bytes):
        text = raw.decode("latin-1")
    elif isinstance(raw, (list, tuple, MultiValue)):
        text = "\\".join(map(str, raw))
    else:
        text = str(raw)
    parts = text.strip("\x00 ").split("\\")
    return len(parts) <= most and all(len(part) <= 16 and _SAFE_TEXT[vr].fullmatch(part) for part in parts)


@dataclass
class _Context:
    """Per-dataset state: the patient's date offset and the values that identify them."""

    date_offset: int
    identifying: list[str]
    pseudo_id: str
    patient: tuple[str, ...] = ()
    #: Python codecs of the instance's Specific Character Set, for values pydicom left as bytes.
    encodings: tuple[str, ...] = ()


@dataclass
class Mapping:
    """Original → new identifiers produced in a run (written only when the user asks)."""

    uids: dict[str, str] = field(default_factory=dict)
    patients: dict[str, dict[str, Any]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"patients": self.patients, "uids": self.uids}


class BurnedInAnnotationError(DicomSeriesError):
    """An instance may show identifying text in its pixels and the user did not opt in."""


class Scrubber:
    """De-identify datasets with one key and one set of options.

    Parameters
    ----------
    options : DeidOptions
        The profile options.
    pseudonymizer : Pseudonymizer
        Keyed source of new UIDs, IDs and date offsets; share one across all files of a run
        (or reuse the same key across runs) to keep them consistent.
    record_mapping : bool
        Keep original → new identifiers in :attr:`mapping`.
    """

    def __init__(self, options: DeidOptions, pseudonymizer: Pseudonymizer, *, record_mapping: bool = False) -> None:
        self.options = options
        self.pseudonymizer = pseudonymizer
        self.record_mapping = record_mapping
        self.mapping = Mapping()
        self._code_cache: dict[tuple[int, str], str] = {}
        self._uid_cache: dict[str, str] = {}
        self._study_values: dict[str, set[str]] = {}
        self._told_uid_dates = False
        self._told_pooled_age = False
        self._told_unreadable_age = False

    # ------------------------------------------------------------------ public
    def check_burned_in(self, ds: Dataset, source: str = "") -> None:
        """Refuse instances that may carry burned-in text unless ``allow_burned_in``.

        Raises
        ------
        BurnedInAnnotationError
            With the reason and the opt-in flag.
        """
        if self.options.allow_burned_in:
            return
        reason = burned_in_reason(ds)
        if reason:
            where = f"'{source}' " if source else ""
            sop_class = str(ds.get("SOPClassUID", "")).strip().rstrip("\x00")
            shows = "what it shows or says" if sop_class in IDENTIFYING_CONTENT_SOP_CLASSES else \
                "names or dates in its pixels"
            message = (
                f"The instance {where}{reason}, so it may identify the patient by {shows}, which header "
                "de-identification cannot remove. defacer refuses it. Remove it from the input, or pass "
                "--allow-burned-in to process it anyway (its pixels and content are NOT cleaned)."
            )
            raise BurnedInAnnotationError(message)

    def scrub(self, ds: Dataset, source: str = "") -> Dataset:
        """De-identify ``ds`` in place and return it.

        The caller owns ``ds`` (typically freshly read from a file that is not modified).

        Parameters
        ----------
        ds : pydicom.Dataset
            A whole instance, with or without ``file_meta``.
        source : str
            Where it came from, for messages.
        """
        with vr_notices(source):  # pydicom's "VR lookup failed" once per element and series, not per file
            self.check_burned_in(ds, source)
            self._tell_kept_uid_dates(ds)
            context = self._context(ds)
            transfer_syntax = None
            if hasattr(ds, "file_meta") and "TransferSyntaxUID" in ds.file_meta:
                transfer_syntax = ds.file_meta.TransferSyntaxUID
            self._clean(ds, context, top=True)
            blank_encapsulated_text(ds)  # comments, EXIF and thumbnails inside kept compressed frames
            clear_unused_bits(ds)  # embedded overlays (names drawn in the bits above the values) and hidden bits
            self._mark(ds)
            self._rebuild_meta(ds, transfer_syntax)
        return ds

    # ----------------------------------------------------------------- helpers
    def _context(self, ds: Dataset) -> _Context:
        patient = str(ds.get("PatientID", "") or "") or f"{ds.get('PatientName', '')}|{ds.get('PatientBirthDate', '')}"
        pseudo_id = self.pseudonymizer.identifier(patient)
        offset = self.pseudonymizer.date_offset_days(patient)
        identifying: list[str] = []
        if self.cleans_text:
            identifying = sorted(_bounded_identifying(self.collect_identifying(ds), ds))
        if self.record_mapping:
            entry = self.mapping.patients.setdefault(patient, {})
            entry.update({"PatientID": pseudo_id, "PatientName_original": str(ds.get("PatientName", "")),
                          "date_offset_days": -offset if self.options.retain_long_modified_dates else None})
        try:
            charset = ds._character_set
            # the default set is one Python encoding name ('iso8859'), not a list: tuple() of it gave 'i', 's', ...,
            # and pydicom logged "Unknown encoding 'i'" twice per file (HOSTILE25)
            encodings = (charset,) if isinstance(charset, str) else tuple(charset)
        except (LookupError, ValueError, TypeError, AttributeError):  # an unknown or damaged character set
            encodings = ()
        own = patient_values(ds)
        if not self.options.retain_long_full_dates:  # the study's own dates, wherever kept text repeats them
            own = tuple(sorted({*own, *instance_dates(ds)}))
        return _Context(offset, identifying, pseudo_id, own, encodings)

    def _tell_kept_uid_dates(self, ds: Dataset) -> None:
        """Warn once per run when ``--retain-uids`` keeps UIDs that hold one of the instance's own dates (Siemens,
        UIH and others write the acquisition date and time into them: 3 of the 4 real DICOM heads in the shared
        data do), while the dates themselves are removed or shifted: the UIDs give them back.  Names the attribute,
        never the UID."""
        if self._told_uid_dates or not self.options.retain_uids or self.options.retain_long_full_dates:
            return
        dates = {form for form in instance_dates(ds) if form.isdigit()}
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID"):
            value = str(ds.get(keyword, "") or "")
            if any(date in value for date in dates):
                self._told_uid_dates = True
                logger.warning(
                    "--retain-uids keeps UIDs that hold the study's own dates (%s holds the 8 digits of one of its "
                    "dates, as many scanners write them), so the dates this de-identification removes or shifts can be "
                    "read back from the UIDs; HIPAA Safe Harbor removes every date but the year. Leave out "
                    "--retain-uids for such sharing (said once per run)", keyword)
                return

    def collect_identifying(self, ds: Dataset) -> set[str]:
        """Remember the identifying values of ``ds`` under its study and return all of that study's.

        Call it for every instance of a run before scrubbing any (the writers do when a
        cleaning option is on), so that free text in one file is also cleaned of the names
        and IDs that appear only in another file of the same study (StudyInstanceUID).
        """
        study = str(ds.get("StudyInstanceUID", "") or "").strip()
        values = self._study_values.setdefault(study, set()) if study else set()
        values |= identifying_values(ds)
        return set(values)

    @property
    def cleans_text(self) -> bool:
        """True when an option in force keeps some free text, cleaned (so identifying values are collected)."""
        return self._cleans_text

    @property
    def _cleans_text(self) -> bool:
        o = self.options
        return o.clean_descriptors or o.clean_structured_content or o.clean_graphics or o.retain_patient_characteristics

    def _new_uid(self, original: str) -> str:
        key = original.strip().rstrip("\x00")
        new = self._uid_cache.get(key)
        if new is None:
            new = self._uid_cache[key] = self.pseudonymizer.uid(key)
        if self.record_mapping:
            self.mapping.uids[key] = new
        return new

    def _code_for(self, tag_int: int, rule: Rule, vr: str) -> str:
        """The resolved action for ``rule`` with these options and this VR (cached)."""
        key = (tag_int, vr)
        code = self._code_cache.get(key)
        if code is None:
            keyword = "PatientID" if tag_int == _TAG_PATIENT_ID else ""
            code = self._code_cache[key] = actions.resolve_compound(self.options.action_for(rule), vr, keyword)
        return code

    def _clean(self, ds: Dataset, context: _Context, *, top: bool) -> None:
        exact, _ = rule_index()
        for tag in list(ds.keys()):
            tag_int = int(tag)
            group = tag_int >> 16
            if group & 1:
                self._private(ds, tag_int, context)
                continue
            if group == 0x0002 or ((tag_int & 0xFFFF) == 0 and group != 0):
                if group != 0x0002:
                    del ds[tag]  # group lengths are retired and would be wrong afterwards
                continue
            rule = exact.get(tag_int)
            if rule is None and 0x5000 <= group <= 0x60FF:
                rule = find_rule(tag_int)
            raw_vr = ds.get_item(tag).VR  # no value conversion
            vr = raw_vr if raw_vr and len(raw_vr) == 2 and raw_vr != "UN" else _VR_BY_TAG.get(tag_int, "")
            if len(vr) != 2:
                vr = ds[tag].VR  # ambiguous VR (e.g. "US or SS"): pydicom resolves it from the data set
            if rule is None and 0x6000 <= group <= 0x60FF and not group & 1 and vr in _FREE_TEXT_VRS:
                rule = find_rule((group << 16) | 0x4000)  # Overlay Description/Label: treated as Overlay Comments
            elif rule is None and tag_int == _TAG_TEXT_VALUE:
                rule = exact.get(_TAG_CONTENT_SEQUENCE)  # SR free text: as its Content Sequence (dummy, or cleaned)
            if rule is None:
                self._unlisted(ds, tag_int, vr, context)
            else:
                self._apply(ds, tag_int, rule, vr, context)

    def _private(self, ds: Dataset, tag_int: int, context: _Context) -> None:
        if self.options.retain_safe_private and (tag_int & 0xFFFF) >= 0x1000:
            block = (tag_int & 0xFF00) >> 8
            creator_tag = (tag_int & 0xFFFF0000) | block
            creator = ds.get(creator_tag)
            expected = SAFE_PRIVATE.get((str(creator.value), tag_int >> 16, tag_int & 0xFF)) if creator else None
            if expected is not None:
                # a safe slot holding a name, a sequence or free text (a hospital, a physician) is not safe
                if not _safe_private_value(ds[tag_int], *expected) or _holds_patient(ds[tag_int].value, context):
                    del ds[tag_int]
                return
        if self.options.retain_safe_private and 0x10 <= (tag_int & 0xFFFF) < 0x100:
            return  # creators are removed at the end if no element of their block survived
        del ds[tag_int]

    def _unlisted(self, ds: Dataset, tag_int: int, vr: str, context: _Context) -> None:
        net = unlisted_net(tag_int, vr)
        if net == "items":
            self._recurse(ds[tag_int].value, context)
        elif net == "remove" and vr == "PN":
            ds[tag_int] = DataElement(tag_int, "PN", None)
        elif net == "remove":
            del ds[tag_int]
        elif net == "uid" and not self.options.retain_uids:
            # an instance's UID is replaced whole; an attribute no dictionary knows keeps the standard's own UIDs
            self._set_uid(ds, tag_int, keep=None if tag_int in _UNLISTED_INSTANCE_UIDS else _is_standard_uid)
        elif net == "mask":
            self._mask_patient(ds[tag_int], context)
        elif net == "date":
            # a date the table does not list (StudyUpdateDateTime, SecondaryReviewDate...) is one of the study's
            # dates for HIPAA Safe Harbor: treated as Study Date (emptied; kept or shifted by the date options)
            self._apply(ds, tag_int, study_date_rule(), vr, context)
        elif net == "keep" and vr == "AS":
            self._pool_age(ds[tag_int])  # an age attribute the table does not list: over 89 pooled too
        elif net == "bytes" and _holds_patient(ds[tag_int].value, context):
            del ds[tag_int]  # an attribute no dictionary knows, holding the patient's name or ID as bytes

    @staticmethod
    def _mask_patient(element: Any, context: _Context) -> None:
        """Mask the patient's own names, IDs and birth date in a kept text value (:func:`patient_values`; text
        VRs only: coded strings (CS) hold enumerated terms such as PatientPosition 'HFS', which a placeholder
        PatientName can equal)."""
        if element.value in (None, "", b"") or not context.patient:
            return
        values = element.value if isinstance(element.value, MultiValue | list) else [element.value]
        masked = [actions.mask_values(str(v), context.patient) for v in values]
        if masked != [str(v) for v in values]:
            element.value = masked if len(masked) > 1 else masked[0]

    def _recurse(self, sequence: Any, context: _Context) -> None:
        for item in sequence or ():
            self._clean(item, context, top=False)
            self._drop_orphan_creators(item)

    def _set_uid(self, ds: Dataset, tag_int: int, keep: Callable[[str], bool] | None = None) -> None:
        """Replace the UID(s) of an element by keyed ones (the same original, the same new UID), but those ``keep``
        accepts."""
        element = ds[tag_int]
        value = element.value
        if not value:
            return
        if isinstance(value, MultiValue | list):
            element.value = [str(v) if keep and keep(str(v)) else self._new_uid(str(v)) for v in value]
        else:
            element.value = str(value) if keep and keep(str(value)) else self._new_uid(str(value))

    def _apply(self, ds: Dataset, tag_int: int, rule: Rule, vr: str, context: _Context) -> None:
        code = self._code_for(tag_int, rule, vr)
        if code == "X":
            del ds[tag_int]
        elif code == "Z":
            value = context.pseudo_id if tag_int == _TAG_PATIENT_NAME else actions.empty_value(vr)
            ds[tag_int] = DataElement(tag_int, vr, value)
        elif code == "D":
            if tag_int == _TAG_PATIENT_ID:
                ds[tag_int] = DataElement(tag_int, vr, context.pseudo_id)
            elif vr == "UI":
                self._set_uid(ds, tag_int)
            elif vr == "SQ":
                self._recurse(ds[tag_int].value, context)
            else:
                ds[tag_int] = DataElement(tag_int, vr, actions.dummy_value(vr))
        elif code == "U":
            self._set_uid(ds, tag_int)
        elif code == "R":
            self._recurse(ds[tag_int].value, context)
        elif code == "C":
            self._clean_value(ds[tag_int], vr, context)
        elif vr in _FREE_TEXT_VRS:  # "K": kept, less the patient's own identifiers
            self._mask_patient(ds[tag_int], context)
        elif vr == "AS":  # "K": an age (PatientAge under --retain-patient-characteristics), over 89 pooled
            self._pool_age(ds[tag_int])

    def _pool_age(self, element: Any) -> None:
        """Write a kept age (VR AS) over 89 years as ``090Y`` (:func:`defacer.phi.actions.kept_age`: HIPAA Safe
        Harbor aggregates every age over 89 into one category of 90 or older), and empty one that is no DICOM age
        (it cannot be checked); each said once per run, by attribute, never the value."""
        if element.value in (None, "", b""):
            return
        values = element.value if isinstance(element.value, MultiValue | list) else [element.value]
        texts = [v.decode("latin-1") if isinstance(v, bytes) else str(v) for v in values]
        kept = [actions.kept_age(v) for v in texts]
        if kept == texts:
            return
        unreadable = "" in kept
        pooled = any(new == actions.POOLED_AGE and old.strip(" \x00") != new for old, new in zip(texts, kept))
        kept = [v for v in kept if v]
        element.value = kept if len(kept) > 1 else (kept[0] if kept else "")
        if unreadable and not self._told_unreadable_age:
            self._told_unreadable_age = True
            logger.warning(
                "%s holds a value that is not a DICOM age (expected three digits and D, W, M or Y, such as 045Y): "
                "it is emptied, since an age that cannot be read cannot be checked against HIPAA's 89 years (said "
                "once per run; the value is not shown)", element.keyword or "an age")
        if pooled and not self._told_pooled_age:
            self._told_pooled_age = True
            logger.warning(
                "%s over 89 years is written as %s: HIPAA Safe Harbor puts every age over 89 into one category of "
                "90 or older, so the kept patient characteristics hold no older age (said once per run)",
                element.keyword or "an age", actions.POOLED_AGE)

    def _clean_value(self, element: Any, vr: str, context: _Context) -> None:
        if element.value in (None, "", b""):
            return
        if vr in ("DA", "DT"):
            if self.options.retain_long_modified_dates:
                values = element.value if isinstance(element.value, MultiValue | list) else [element.value]
                shifted = [actions.shift_date_text(str(v), context.date_offset, vr) for v in values]
                element.value = shifted if len(shifted) > 1 else shifted[0]
        elif vr in actions.TEXT_VRS:
            values = element.value if isinstance(element.value, MultiValue | list) else [element.value]
            cleaned = [actions.clean_text(str(v), context.identifying) for v in values]
            element.value = cleaned if len(cleaned) > 1 else cleaned[0]
        elif vr in ("OB", "OW", "UN", "OF", "OD", "OL", "OV"):
            element.value = actions.dummy_value(vr)

    @staticmethod
    def _drop_orphan_creators(ds: Dataset) -> None:
        for tag in [t for t in ds.keys() if t.group & 1 and 0x10 <= t.element < 0x100]:  # noqa: SIM118
            block = tag.element
            if not any(t.group == tag.group and (t.element >> 8) == block for t in ds.keys()):  # noqa: SIM118
                del ds[tag]

    def _mark(self, ds: Dataset) -> None:
        self._drop_orphan_creators(ds)
        options = self.options
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = options.method_text()
        items = []
        for value, meaning in options.method_codes():
            item = Dataset()
            item.CodeValue = value
            item.CodingSchemeDesignator = "DCM"
            item.CodeMeaning = meaning
            items.append(item)
        ds.DeidentificationMethodCodeSequence = items
        ds.LongitudinalTemporalInformationModified = options.dates_modified
        if options.clean_recognizable_visual_features:
            ds.RecognizableVisualFeatures = "NO"

    @staticmethod
    def _rebuild_meta(ds: Dataset, transfer_syntax: str | None) -> None:
        meta = FileMetaDataset()
        if "SOPClassUID" in ds:
            meta.MediaStorageSOPClassUID = ds.SOPClassUID
        if "SOPInstanceUID" in ds:
            meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        if transfer_syntax:
            meta.TransferSyntaxUID = UID(transfer_syntax)
        meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
        meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
        ds.file_meta = meta


def _is_standard_uid(value: str) -> bool:
    """Whether a UID is one of the standard's (SOP classes, transfer syntaxes, context groups: under the DICOM root
    1.2.840.10008), which names no instance; every other UID in an attribute no dictionary knows may name the
    original study, series or instance."""
    return value.strip().rstrip("\x00").startswith("1.2.840.10008.")


def burned_in_reason(ds: Dataset) -> str:
    """Why ``ds`` may carry burned-in text, or ``""`` when nothing suggests it."""
    flag = _coded_values(ds.get("BurnedInAnnotation")) - {"", "NO"}
    if "YES" in flag:
        return "has BurnedInAnnotation (0028,0301) = YES"
    if flag:  # PS3.3 allows only YES and NO; anything else ('Y', 'TRUE', '1') cannot be read as "no text"
        shown = "\\".join(sorted(value[:16] for value in flag))
        return f"has BurnedInAnnotation (0028,0301) = {shown!r}, which is neither YES nor NO"
    sop_class = str(ds.get("SOPClassUID", "")).strip().rstrip("\x00")
    if sop_class in BURNED_IN_SOP_CLASSES:
        return f"is a {BURNED_IN_SOP_CLASSES[sop_class]} (SOP class {sop_class}), a kind that usually has text in its pixels"
    if sop_class in IDENTIFYING_CONTENT_SOP_CLASSES:
        name, what = IDENTIFYING_CONTENT_SOP_CLASSES[sop_class]
        return f"is a {name} (SOP class {sop_class}), {what}"
    if _coded_values(ds.get("ImageType")) & {"SCREEN SAVE", "SCREENSHOT", "SCREEN_SHOT"}:
        return "is a screen capture (ImageType contains SCREEN SAVE)"
    return ""


def _coded_values(value: object) -> set[str]:
    """The values of a coded string (CS) as compared: each value of a multi-valued one, without the leading and
    trailing spaces (and NUL padding) PS3.5 makes insignificant in CS, upper case.  ``' YES'`` or ``'YES\\NO'``
    in BurnedInAnnotation passed the exact comparison with ``'YES'``."""
    if value is None:
        return set()
    if isinstance(value, bytes):  # an element pydicom left as raw bytes (UN)
        value = value.decode("latin-1")
    items = value if isinstance(value, MultiValue | list | tuple) else [value]
    if len(items) == 1 and isinstance(items[0], str) and "\\" in items[0]:
        items = items[0].split("\\")
    return {str(item).strip(" \x00").upper() for item in items}


def iter_phi_free_text(ds: Dataset) -> Iterator[str]:
    """Every text value left in ``ds`` and its sequences (for leak checks in tests and benchmarks)."""
    for element in ds.iterall():
        if element.VR in ("SQ", "OB", "OW", "UN", "OF", "OD", "OL", "OV"):
            continue
        value = element.value
        if value is None:
            continue
        values = value if isinstance(value, MultiValue | list) else [value]
        for item in values:
            yield str(item)
