"""De-identification of the text an image header (NIfTI, NRRD) carries beside its geometry.

A NIfTI header has four free-text fields (``descrip``, 80 bytes; ``aux_file``, 24; ``intent_name``, 16; the
ANALYZE ``db_name``, 18) that converters fill as they like: SPM writes the acquisition date into ``descrip``
(``1.5T 3D GR TR=9.7ms ... 02-Mar-2007 11:34:26``), others the patient's name in DICOM form (``Doe^John``).
A NRRD header holds key/value pairs (``key:=value``): ITK and SimpleITK write every DICOM attribute of the series
read into them (``0010|0010:=Doe^John``, ``0010|0030:=19610203``), MITK as ``DICOM.0010.0010``; its ``content``
field is free text.  ``defacer deface`` kept all of it byte for byte.

With de-identification on (the default), a NRRD key/value pair that names a DICOM attribute gets the treatment a
BIDS sidecar key gets (:func:`defacer.phi.sidecar.scrub_sidecar`: removed unless the profile keeps it, the patient's
own values masked in what is kept), and in every other free text of either header the dates, DICOM-form person
names and e-mail addresses are masked with ``*`` (:func:`mask_identifying_text`).  Nothing else of the header
changes: geometry, scaling and the other fields stay byte for byte.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from typing import Any

from defacer.phi.options import DeidOptions

_MONTHS = "jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec"
_YEAR = r"(?:18|19|20)\d\d"
_MONTH = r"(?:0[1-9]|1[0-2])"
_DAY = r"(?:0[1-9]|[12]\d|3[01])"
#: Text that identifies wherever it is: calendar dates (``19610203``, ``1961-02-03``, ``03.02.1961``,
#: ``02/03/1961``, ``03-Feb-1961``, ``3 February 1961``), a person name in DICOM form (``Doe^John``, any script) and
#: e-mail addresses.  A time (``Time=143321.000``, as dcm2niix writes) or an echo time is no date.
IDENTIFYING_TEXT = re.compile(
    rf"(?<!\d){_YEAR}[-./]?{_MONTH}[-./]?{_DAY}(?!\d)"
    rf"|(?<!\d)\d{{1,2}}[-./]\d{{1,2}}[-./]{_YEAR}(?!\d)"
    rf"|(?<!\d)\d{{1,2}}[- ]?(?:{_MONTHS})[a-z]*\.?[- ]?{_YEAR}(?!\d)"
    r"|[^\W\d_][^\s\^=\\]*\^[^\W\d_][^\s\^=\\]*(?:\^[^\s\^=\\]*)*"
    r"|[\w.+-]+@[\w-]+\.[\w.]+",
    flags=re.IGNORECASE,
)
#: The NIfTI header's free-text fields (``db_name`` is NIfTI-1 only).
NIFTI_TEXT_FIELDS = ("descrip", "aux_file", "intent_name", "db_name")
#: NRRD fields of free text (the others hold numbers, kinds and names of the format).
NRRD_TEXT_FIELDS = ("content",)


def mask_identifying_text(text: str, names: tuple[str, ...] = ()) -> str:
    """``text`` with every date, DICOM-form person name and e-mail address (:data:`IDENTIFYING_TEXT`), and each of
    ``names`` (:func:`name_parts`, masked as :func:`defacer.phi.actions.mask_values` does), replaced by ``*``."""
    from defacer.phi.actions import mask_values

    masked = IDENTIFYING_TEXT.sub("*", text)
    return mask_values(masked, names) if names else masked


def name_parts(texts: list[str]) -> tuple[str, ...]:
    """The parts (2 characters or more) of every DICOM-form person name in ``texts`` (``Doe^John`` gives ``Doe``,
    ``John``), to mask where they stand alone in the same header (``db_name`` = ``Doe``)."""
    from defacer.phi.actions import joined_name_groups

    parts: dict[str, None] = {}
    for text in texts:
        for match in IDENTIFYING_TEXT.finditer(text):
            if "^" in match.group(0):
                parts.update(dict.fromkeys(p for p in re.split(r"[\W_]+", match.group(0)) if len(p) >= 2))
                parts.update(dict.fromkeys(joined_name_groups(match.group(0))))
    return tuple(list(parts)[:64])


def deidentify_nifti_header(header: Any) -> list[str]:
    """Mask identifying text (:func:`mask_identifying_text`) in the free-text fields of a NIfTI header, in place.

    Parameters
    ----------
    header : nibabel.Nifti1Header or Nifti2Header
        The header to write (a copy of the input's).

    Returns
    -------
    list of str
        The names of the fields changed (never their values).
    """
    texts = {name: bytes(header[name].tobytes()).split(b"\x00", 1)[0].decode("latin-1")
             for name in NIFTI_TEXT_FIELDS if name in header}
    names = name_parts(list(texts.values()))
    changed = []
    for name, text in texts.items():
        masked = mask_identifying_text(text, names)
        if masked != text:
            header[name] = masked.encode("latin-1")
            changed.append(name)
    return changed


def _nrrd_fields() -> frozenset[str]:
    """The field names of the NRRD format (lower case), as pynrrd reads them: everything else is a key/value pair."""
    from nrrd.writer import _NRRD_FIELD_ORDER

    return frozenset({*_NRRD_FIELD_ORDER, "line skip", "lineskip", "byte skip", "byteskip", "block size",
                      "blocksize", "number", "datafile", "data file"})


def deidentify_nrrd_header(header: dict[str, Any], options: DeidOptions) -> tuple[OrderedDict[str, Any], list[str]]:
    """A NRRD header with its key/value pairs de-identified as a BIDS sidecar's keys are, and identifying text masked
    in the values kept and in its ``content`` field.

    Parameters
    ----------
    header : dict
        The header as pynrrd reads it (fields and key/value pairs in one mapping; not modified).
    options : DeidOptions
        The profile options in force.

    Returns
    -------
    header : OrderedDict
        The header to write, in the input's order.
    changed : list of str
        The keys removed or changed (never their values).
    """
    from defacer.phi.sidecar import scrub_sidecar

    fields = _nrrd_fields()
    free = {key: value for key, value in header.items()
            if isinstance(value, str) and (key.lower() not in fields or key.lower() in NRRD_TEXT_FIELDS)}
    scrubbed, _ = scrub_sidecar(free, options)
    names = name_parts(list(free.values()))
    result: OrderedDict[str, Any] = OrderedDict()
    changed = []
    for key, value in header.items():
        if key not in free:
            result[key] = value
            continue
        if key not in scrubbed:
            changed.append(key)
            continue
        kept = scrubbed[key]
        new = mask_identifying_text(kept, names) if isinstance(kept, str) else kept
        if new != value:
            changed.append(key)
        result[key] = new
    return result, changed
