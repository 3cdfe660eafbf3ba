"""PS3.15 Annex E for a BIDS JSON sidecar: its keys that name DICOM attributes get the header's treatment.

A converter such as dcm2niix writes DICOM attributes into the sidecar under their keywords; with
its anonymisation off (``-ba n``) that includes ``PatientName``, ``PatientID``,
``PatientBirthDate``, ``InstitutionName``, ``DeviceSerialNumber``, ``AcquisitionDateTime``...  A
defaced scan's sidecar carried over unchanged would hand the patient's name to whoever receives
the defaced dataset.  Each key that is a DICOM keyword listed in Table E.1-1 is kept when the
profile (with the options in force) keeps that attribute (``K``), cleaned of the sidecar's own
identifying values and generic PHI patterns when it cleans it (``C``, text only; a date or time
whose ``C`` means "shifted" is removed, as there is no patient's offset for it here), and removed
otherwise (dummies, pseudonyms and shifted dates are for DICOM headers, where the attribute must
stay; a sidecar key can simply go).  Keys that are no DICOM keyword (``EchoTime`` is one, and not
in the table: kept) are kept as they are.
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any

from defacer.phi import actions
from defacer.phi.options import DeidOptions
from defacer.phi.rules import find_rule

_PARTS = re.compile(r"[\W_]+")
_TAG_DIGITS = re.compile(r"[0-9a-f]{8}")
#: Keys converters write under a name that is no DICOM keyword (lower case, as :func:`tag_of_key` compares): dcm2niix
#: writes (0040,0254) PerformedProcedureStepDescription as ``ProcedureStepDescription``.
_CONVERTER_KEYS: dict[str, int] = {"procedurestepdescription": 0x00400254}
#: Value representations of dates and times: their ``C`` (the modified-dates option) shifts a header's dates by a
#: per-patient offset, which a sidecar beside a NIfTI has no patient for; cleaning text would keep the real date.
_DATE_VRS = frozenset({"DA", "DT", "TM"})
#: Value representations of free text, whose kept values are masked of the patient's own values (as in a header).
_FREE_TEXT_VRS = frozenset({"LO", "LT", "SH", "ST", "UT", "UC"})


def scrub_sidecar(data: dict[str, Any], options: DeidOptions) -> tuple[dict[str, Any], list[str]]:
    """The sidecar with Annex E applied to its DICOM-keyword keys, and the keys removed.

    The rules apply at every depth: an object nested in a kept key (``{"Custom": {"PatientName": ...}}``,
    dcmstack's ``{"global": {"const": {...}}}``, the items of a kept sequence, a list of objects) is scrubbed as the
    sidecar itself, and the patient's own values found anywhere in it (also a DICOM-JSON attribute,
    ``{"vr": "PN", "Value": [{"Alphabetic": ...}]}``) are masked in kept text at every depth.  Only the top-level
    keys were looked at: a converter's nested ``PatientName`` or ``AccessionNumber`` reached the output.  Containers
    nested deeper than :data:`MAX_DEPTH` are removed (listed).

    Parameters
    ----------
    data : dict
        The sidecar's JSON object (not modified).
    options : DeidOptions
        The profile options in force (those of the run's DICOM de-identification).

    Returns
    -------
    scrubbed : dict
        The kept keys in their order, cleaned text for ``C``.
    removed : list of str
        The keys removed, in their order (names only: never a value); a nested key by its path
        (``Custom.PatientName``, ``Items[0].AccessionNumber``).
    """
    fields = _fields(data)
    identifying = _identifying_values(fields)
    patient = _patient_values(fields)
    removed: list[str] = []
    scrubbed = _scrub_object(data, options, identifying, patient, None, "", 0, removed)
    return scrubbed, removed


#: Depth of nested objects and lists looked into; deeper containers are removed (JSON can nest ~1000 deep).
MAX_DEPTH = 32


def _scrub_object(data: dict[str, Any], options: DeidOptions, identifying: list[str], patient: tuple[str, ...],
                  owner: int | None, path: str, depth: int, removed: list[str]) -> dict[str, Any]:
    """One object of the sidecar with the key rules applied (its nested containers by :func:`_scrub_value`);
    ``owner`` is the attribute whose value it is, if any (a DICOM-JSON attribute's ``Value`` is masked as that
    attribute's value: never a coded string)."""
    dicom_json = isinstance(data.get("vr"), str)
    scrubbed: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{path}.{key}" if path else key
        tag = tag_of_key(key)
        rule = find_rule(tag) if tag is not None else None
        action = "K" if rule is None else options.action_for(rule)
        if rule is None and tag is not None:
            action = _unlisted_action(tag, options, value)
        if action == "K":
            if dicom_json and key == "vr":  # a DICOM-JSON attribute's value representation
                scrubbed[key] = value
                continue
            if dicom_json and key == "Value" and tag is None:
                tag = owner
            kept = _scrub_value(value, options, identifying, patient, tag, name, depth + 1, removed)
            if kept is not _REMOVED:
                scrubbed[key] = kept
        elif action == "C" and isinstance(value, str) and not _is_date(tag):
            scrubbed[key] = actions.clean_text(value, identifying)
        else:
            removed.append(name)
    return scrubbed


_REMOVED = object()


def _scrub_value(value: Any, options: DeidOptions, identifying: list[str], patient: tuple[str, ...],
                 tag: int | None, path: str, depth: int, removed: list[str]) -> Any:
    """A kept value: objects scrubbed as the sidecar, lists item by item, text masked (:func:`_masked`)."""
    if isinstance(value, dict | list) and depth > MAX_DEPTH:
        removed.append(path)
        return _REMOVED
    if isinstance(value, dict):
        return _scrub_object(value, options, identifying, patient, tag, path, depth, removed)
    if isinstance(value, list) and any(isinstance(item, dict | list) for item in value):
        items = (_scrub_value(item, options, identifying, patient, tag, f"{path}[{index}]", depth + 1, removed)
                 for index, item in enumerate(value))
        return [item for item in items if item is not _REMOVED]
    return _masked(_pooled(value, tag), patient, tag)


def _pooled(value: Any, tag: int | None) -> Any:
    """A kept age (a key naming an AS attribute: ``PatientAge`` under --retain-patient-characteristics) over 89 years
    as ``090Y`` (:func:`defacer.phi.actions.kept_age`, HIPAA Safe Harbor; a number over 89 as 90), text that is no DICOM
    age emptied (it cannot be checked), else ``value``."""
    from pydicom.datadict import dictionary_VR

    try:
        if tag is None or dictionary_VR(tag) != "AS":
            return value
    except KeyError:
        return value
    if isinstance(value, str):
        return actions.kept_age(value)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return [age for age in map(actions.kept_age, value) if age]
    if isinstance(value, int | float) and not isinstance(value, bool) and value > actions.MAX_AGE_YEARS:
        return actions.MAX_AGE_YEARS + 1
    return value


def _fields(data: dict[str, Any]) -> list[tuple[str, Any]]:
    """Every key of the sidecar naming a DICOM attribute, at any depth (to :data:`MAX_DEPTH`), with its value as
    plain text, numbers or a list of text (a DICOM-JSON attribute's ``Value`` read as such), outer keys first."""
    found: list[tuple[str, Any]] = []
    level: list[Any] = [data]
    for _ in range(MAX_DEPTH + 1):
        below: list[Any] = []
        for node in level:
            for item in (node.values() if isinstance(node, dict) else node):
                if isinstance(item, dict | list):
                    below.append(item)
            if not isinstance(node, dict):
                continue
            for key, value in node.items():
                if tag_of_key(key) is not None:
                    found.append((key, _plain(value)))
        if not below:
            break
        level = below
    return found


def _plain(value: Any) -> Any:
    """A DICOM-JSON attribute (``{"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]}``) as the list of its text
    values; any other value as it is."""
    if isinstance(value, dict) and isinstance(value.get("Value"), list):
        items: list[str] = []
        for item in value["Value"]:
            if isinstance(item, dict):  # a person name's groups
                items.extend(part for part in item.values() if isinstance(part, str))
            elif isinstance(item, str | int) and not isinstance(item, bool):
                items.append(str(item))
        return items
    return value


def _patient_values(fields: list[tuple[str, Any]]) -> tuple[str, ...]:
    """The patient's own names, IDs and birth date in the sidecar (:func:`defacer.phi.scrub.patient_values` of its
    keys that name those attributes, the outermost first; text, numbers and lists of text only), at most
    :data:`defacer.phi.scrub.MAX_PATIENT_VALUES` (a sidecar listing thousands of names would otherwise make a mask
    pattern of thousands of alternatives, searched in every kept text)."""
    from pydicom.datadict import keyword_for_tag

    from defacer.phi.scrub import MAX_PATIENT_VALUES, patient_values

    plain_fields: list[tuple[str, Any]] = []
    for key, value in fields:
        tag = tag_of_key(key)
        keyword = keyword_for_tag(tag) if tag is not None else ""
        plain = isinstance(value, str | int) and not isinstance(value, bool)
        if keyword and (plain or (isinstance(value, list) and all(isinstance(v, str) for v in value))):
            plain_fields.append((keyword, value))
    chosen: dict[str, Any] = {}
    for keyword, value in plain_fields:
        chosen.setdefault(keyword, value)
    found = dict.fromkeys(patient_values(chosen))
    for keyword, value in plain_fields:  # further occurrences (a second, nested PatientName) are the patient's too
        if len(found) >= MAX_PATIENT_VALUES:
            break
        if value is not chosen[keyword]:
            found.update(dict.fromkeys(patient_values({keyword: value})))
    return tuple(sorted(list(found)[:MAX_PATIENT_VALUES]))


def _masked(value: Any, patient: tuple[str, ...], tag: int | None) -> Any:
    """A kept value with the patient's own values masked (:func:`defacer.phi.actions.mask_values`), as a header's
    kept text is: text, or a list of text, of a key that is no DICOM keyword or names a free-text attribute (never a
    coded string such as PatientPosition 'HFS', which a placeholder name can equal)."""
    from pydicom.datadict import dictionary_VR

    if not patient:
        return value
    if tag is not None:
        try:
            if dictionary_VR(tag) not in _FREE_TEXT_VRS:
                return value
        except KeyError:
            pass
    if isinstance(value, str):
        return actions.mask_values(value, patient)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return [actions.mask_values(v, patient) for v in value]
    return value


def _unlisted_action(tag: int, options: DeidOptions, value: Any = None) -> str:
    """The action on a key naming a DICOM attribute the table does not list: the header's safety net
    (:func:`defacer.phi.scrub.unlisted_net`) carried out on a sidecar.  A person name or web address is removed
    (``X``), a date or date-time follows Study Date, a UID made for one of the patient's instances is removed (a
    header replaces it with a keyed UID, which a sidecar has no key for; kept under ``retain_uids``); text, lists
    and objects are kept (``K``) and masked of the patient's values by the caller.  A tag no dictionary knows,
    written in DICOM-JSON form, is judged by the VR it declares (kept when it declares none).  A private tag (odd
    group) is removed, as every private attribute of a header."""
    from pydicom.datadict import dictionary_VR

    from defacer.phi.scrub import study_date_rule, unlisted_net

    if (tag >> 16) & 1:
        return "X"
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        declared = value.get("vr") if isinstance(value, dict) else None
        if not isinstance(declared, str):
            return "K"
        vr = declared.strip().upper()
    net = unlisted_net(tag, vr)
    if net == "remove" or (net == "uid" and not options.retain_uids):
        return "X"
    return options.action_for(study_date_rule()) if net == "date" else "K"


def _is_date(tag: int | None) -> bool:
    """Whether a tag's value representation is a date or a time (DA, DT, TM); an unknown tag is not."""
    from pydicom.datadict import dictionary_VR

    try:
        return tag is not None and dictionary_VR(tag) in _DATE_VRS
    except KeyError:
        return False


@cache
def _keywords() -> dict[str, int]:
    """Every DICOM keyword and attribute name, lower case without non-alphanumerics, with its tag.

    ``patientname`` (PatientName) and ``patientsname`` (Patient's Name, as some exports write keys); no two
    attributes share such a spelling (checked over pydicom's dictionary).
    """
    from pydicom.datadict import DicomDictionary, keyword_dict

    names = {_PARTS.sub("", entry[2]).lower(): int(tag) for tag, entry in DicomDictionary.items() if entry[4]}
    return {**names, **{keyword.lower(): int(tag) for keyword, tag in keyword_dict.items()}, **_CONVERTER_KEYS}


def tag_of_key(key: object) -> int | None:
    """The DICOM attribute a sidecar key names, or ``None``.

    A keyword in any case and spelling (``PatientName``, ``patientName``, ``"PatientName "``,
    ``patient_name``, ``Patient Name``; a byte order mark or other non-alphanumerics ignored), its
    attribute name (``Patient's Name``, ``Patient's Birth Date``) or a
    tag written as 8 hexadecimal digits (``"00100010"``, ``"(0010,0010)"``, as the DICOM JSON model
    does; ``"0010|0010"`` as ITK writes it into a NRRD header, ``"DICOM.0010.0010"`` as MITK does).  Only the exact keyword was looked up: ``"PatientName "`` or ``"patientName"`` kept the
    patient's name in the defaced dataset's sidecar.
    """
    if not isinstance(key, str):
        return None
    name = _PARTS.sub("", key).lower()
    if _TAG_DIGITS.fullmatch(name):
        return int(name, 16)
    if name.startswith("dicom") and _TAG_DIGITS.fullmatch(name[5:]):
        return int(name[5:], 16)  # MITK's "DICOM.0010.0010"
    return _keywords().get(name)


#: Most identifying values :func:`_identifying_values` gathers (each is searched in every text the ``C`` action
#: cleans; a sidecar listing thousands of names took minutes).
MAX_IDENTIFYING_VALUES = 256


def _identifying_values(fields: list[tuple[str, Any]]) -> list[str]:
    """The sidecar's own identifying values (the keys :data:`defacer.phi.scrub.IDENTIFYING_KEYWORDS` names, as in a
    header, at any depth, the outermost first), whole and by part (from 2 characters), for :func:`actions.clean_text`;
    at most :data:`MAX_IDENTIFYING_VALUES`."""
    from defacer.phi.scrub import IDENTIFYING_KEYWORDS

    wanted = {tag for keyword in IDENTIFYING_KEYWORDS if (tag := tag_of_key(keyword)) is not None}
    values: dict[str, None] = {}
    for key, items in fields:
        if len(values) >= MAX_IDENTIFYING_VALUES:
            break
        if tag_of_key(key) not in wanted:
            continue
        for item in items if isinstance(items, list) else [items]:
            if isinstance(item, str | int) and not isinstance(item, bool):
                text = str(item).strip()
                if len(text) >= 2:
                    values[text] = None
                values.update(dict.fromkeys(part for part in _PARTS.split(text) if len(part) >= 2))
                values.update(dict.fromkeys(actions.joined_name_groups(text)))
    return sorted(list(values)[:MAX_IDENTIFYING_VALUES])
