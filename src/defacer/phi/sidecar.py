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
from typing import Any

from defacer.phi import actions
from defacer.phi.options import DeidOptions
from defacer.phi.rules import find_rule

_PARTS = re.compile(r"[\W_]+")
#: Value representations of dates and times: their ``C`` (the modified-dates option) shifts a header's dates by a
#: per-patient offset, which a sidecar beside a NIfTI has no patient for; cleaning text would keep the real date.
_DATE_VRS = frozenset({"DA", "DT", "TM"})


def scrub_sidecar(data: dict[str, Any], options: DeidOptions) -> tuple[dict[str, Any], list[str]]:
    """The sidecar with Annex E applied to its DICOM-keyword keys, and the keys removed.

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
        The keys removed, in their order (names only: never a value).
    """
    from pydicom.datadict import dictionary_VR, tag_for_keyword

    identifying = _identifying_values(data)
    scrubbed: dict[str, Any] = {}
    removed: list[str] = []
    for key, value in data.items():
        tag = tag_for_keyword(key) if isinstance(key, str) and key.isidentifier() else None
        rule = find_rule(int(tag)) if tag is not None else None
        action = "K" if rule is None else options.action_for(rule)
        if action == "K":
            scrubbed[key] = value
        elif action == "C" and isinstance(value, str) and dictionary_VR(int(tag or 0)) not in _DATE_VRS:
            scrubbed[key] = actions.clean_text(value, identifying)
        else:
            removed.append(key)
    return scrubbed, removed


def _identifying_values(data: dict[str, Any]) -> list[str]:
    """The sidecar's own identifying values (the keys :data:`defacer.phi.scrub.IDENTIFYING_KEYWORDS` names, as in a
    header), whole and by part (from 2 characters), for :func:`actions.clean_text`."""
    from defacer.phi.scrub import IDENTIFYING_KEYWORDS

    values: set[str] = set()
    for key in IDENTIFYING_KEYWORDS:
        items = data.get(key)
        for item in items if isinstance(items, list) else [items]:
            if isinstance(item, str | int) and not isinstance(item, bool):
                text = str(item).strip()
                if len(text) >= 2:
                    values.add(text)
                values.update(part for part in _PARTS.split(text) if len(part) >= 2)
    return sorted(values)
