"""The options of the Basic Application Level Confidentiality Profile (PS3.15 E.3).

Each option is a column of Table E.1-1 whose cells override the Basic Profile action of
that row.  :class:`DeidOptions` holds the chosen ones, picks the effective action of a row,
and produces the codes (CID 7050) written into DeidentificationMethodCodeSequence.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from defacer.phi.rules import EDITION, OPTION_COLUMNS, Rule

#: CID 7050 "De-identification Method" codes (coding scheme DCM) of the profile and options.
METHOD_CODES: dict[str, tuple[str, str]] = {
    "basic": ("113100", "Basic Application Confidentiality Profile"),
    "clean_pixel_data": ("113101", "Clean Pixel Data Option"),
    "clean_recognizable_visual_features": ("113102", "Clean Recognizable Visual Features Option"),
    "clean_graphics": ("113103", "Clean Graphics Option"),
    "clean_structured_content": ("113104", "Clean Structured Content Option"),
    "clean_descriptors": ("113105", "Clean Descriptors Option"),
    "retain_long_full_dates": ("113106", "Retain Longitudinal Temporal Information Full Dates Option"),
    "retain_long_modified_dates": ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
    "retain_patient_characteristics": ("113108", "Retain Patient Characteristics Option"),
    "retain_device_identity": ("113109", "Retain Device Identity Option"),
    "retain_uids": ("113110", "Retain UIDs Option"),
    "retain_safe_private": ("113111", "Retain Safe Private Option"),
    "retain_institution_identity": ("113112", "Retain Institution Identity Option"),
}


@dataclass(frozen=True)
class DeidOptions:
    """Which PS3.15 options to apply on top of the Basic Profile.

    All default to False: the plain Basic Profile.  ``retain_long_full_dates`` and
    ``retain_long_modified_dates`` are mutually exclusive.

    Parameters
    ----------
    retain_safe_private : bool
        Keep the private attributes known to be safe (a built-in subset of PS3.15
        Table E.3.10-1); all other private attributes are always removed.
    retain_uids : bool
        Keep original UIDs instead of replacing them.
    retain_device_identity, retain_institution_identity : bool
        Keep device serial numbers/IDs, or institution names/addresses.
    retain_patient_characteristics : bool
        Keep sex, age, size, weight and similar.
    retain_long_full_dates : bool
        Keep all dates and times unchanged.
    retain_long_modified_dates : bool
        Shift all dates by a per-patient offset derived from the secret key (times kept).
    clean_descriptors : bool
        Keep descriptions and comments (study/series description, protocol name...) but
        clean them of identifying text, instead of removing them.
    clean_structured_content, clean_graphics : bool
        Clean instead of removing SR content / graphics where the table allows it.
    clean_recognizable_visual_features : bool
        The pixel data had its face features distorted (set by ``defacer deface``):
        RecognizableVisualFeatures becomes NO and code 113102 is recorded.
    allow_burned_in : bool
        Accept instances that may have burned-in text (BurnedInAnnotation other than NO, secondary
        captures, screenshots) instead of refusing them.  Their pixels are not cleaned.
    """

    retain_safe_private: bool = False
    retain_uids: bool = False
    retain_device_identity: bool = False
    retain_institution_identity: bool = False
    retain_patient_characteristics: bool = False
    retain_long_full_dates: bool = False
    retain_long_modified_dates: bool = False
    clean_descriptors: bool = False
    clean_structured_content: bool = False
    clean_graphics: bool = False
    clean_recognizable_visual_features: bool = False
    allow_burned_in: bool = False

    def __post_init__(self) -> None:
        if self.retain_long_full_dates and self.retain_long_modified_dates:
            message = (
                "Choose one way to keep dates: retain_long_full_dates (dates unchanged) or "
                "retain_long_modified_dates (dates shifted per patient), not both."
            )
            raise ValueError(message)

    @property
    def chosen(self) -> tuple[str, ...]:
        """Names of the table-column options that are on, in table order."""
        return tuple(name for name in OPTION_COLUMNS if getattr(self, name))

    def action_for(self, rule: Rule) -> str:
        """The action code this configuration applies to ``rule``'s attribute.

        A chosen option's cell overrides the Basic Profile action; when several chosen
        options have a cell, ``K`` (keep) wins over ``C`` (clean).
        """
        cells = [rule.options[name] for name in self.chosen if name in rule.options]
        if "K" in cells:
            return "K"
        if "C" in cells:
            return "C"
        return rule.basic

    @property
    def dates_modified(self) -> str:
        """Value of LongitudinalTemporalInformationModified (0028,0303)."""
        if self.retain_long_full_dates:
            return "UNMODIFIED"
        if self.retain_long_modified_dates:
            return "MODIFIED"
        return "REMOVED"

    def method_codes(self) -> list[tuple[str, str]]:
        """``(code value, code meaning)`` of the profile and every option in force."""
        names = ["basic", *self.chosen]
        if self.clean_recognizable_visual_features:
            names.insert(1, "clean_recognizable_visual_features")
        return [METHOD_CODES[name] for name in names]

    def method_text(self) -> str:
        """Short text for DeidentificationMethod (0012,0063), at most 64 characters per value."""
        return f"defacer PS3.15 {EDITION} Basic Profile" + (" + options" if len(self.method_codes()) > 1 else "")

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        """All field names (for command-line flags)."""
        return tuple(f.name for f in fields(cls))
