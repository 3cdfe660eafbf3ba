"""Explain what de-identification will do to each attribute (``--what-if``)."""

from __future__ import annotations

from pydicom.datadict import DicomDictionary

from defacer.phi.actions import resolve_compound
from defacer.phi.options import DeidOptions
from defacer.phi.rules import EDITION, Rule, load_rules

#: Plain-language meaning of each resolved action.
ACTION_TEXT = {
    "X": "removed",
    "Z": "emptied (zero length)",
    "D": "replaced with a dummy value",
    "K": "kept",
    "C": "cleaned (dates shifted per patient; identifying text masked)",
    "U": "replaced with a keyed UID (same original, same new UID)",
    "R": "kept; every item de-identified by the same rules (UIDs inside remapped consistently)",
}


def describe_rule(rule: Rule, options: DeidOptions) -> str:
    """One line: tag, name, the table's code, and what defacer does with these options."""
    code = options.action_for(rule)
    value = rule.value
    vr = DicomDictionary.get(value, ("",))[0] if value is not None else ""
    resolved = resolve_compound(code, vr, "PatientID" if value == 0x00100020 else "")
    text = ACTION_TEXT[resolved]
    if value == 0x00100020 and resolved == "D":
        text = "replaced with a keyed pseudonymous ID (same patient, same ID)"
    if value == 0x00100010 and resolved == "Z":
        text = "replaced with the patient's keyed pseudonymous ID"
    return f"{rule.tag} {rule.name}: {code} -> {text}"


def describe_actions(options: DeidOptions) -> list[str]:
    """Every line ``--what-if`` prints: the general steps, then one line per table row."""
    chosen = ", ".join(options.chosen) or "none"
    lines = [
        (f"De-identification: DICOM PS3.15 {EDITION} Annex E Basic Application Level Confidentiality Profile; "
         f"options: {chosen}."),
        "Private attributes (odd groups): "
        + ("kept only where listed as safe, others removed" if options.retain_safe_private else "all removed") + ".",
        "Person names (PN) the table does not list: emptied. Instance/frame-of-reference UIDs it does not list: "
        + ("kept" if options.retain_uids else "replaced with keyed UIDs") + ".",
        ("Web addresses (UR) the table does not list: removed (coding-scheme URLs kept). Attributes no dictionary "
         "knows (UN) holding the patient's own name, ID or birth date: removed. Dates (DA, DT) it does not list: "
         "as Study Date."),
        "Sequences: de-identified item by item at any depth with the same rules.",
        "File meta information: rebuilt (new MediaStorageSOPInstanceUID, defacer's ImplementationClassUID).",
        "Set: PatientIdentityRemoved=YES, DeidentificationMethod and DeidentificationMethodCodeSequence ("
        + ", ".join(code for code, _ in options.method_codes())
        + f"), LongitudinalTemporalInformationModified={options.dates_modified}"
        + (", RecognizableVisualFeatures=NO" if options.clean_recognizable_visual_features else "") + ".",
        "Burned-in text: instances whose BurnedInAnnotation is not NO, secondary captures, encapsulated PDFs and screen "
        + "captures, and content that identifies by itself (photographs, voice recordings, surface scans) "
        + ("are processed (pixels NOT cleaned)." if options.allow_burned_in else "are refused."),
        "Attributes not listed below and not covered above are kept.",
    ]
    lines += [describe_rule(rule, options) for rule in load_rules()]
    return lines
