"""A BIDS JSON sidecar's DICOM keys get the header's PS3.15 Annex E treatment (a converter's PatientName goes)."""

from __future__ import annotations

import json

from defacer.phi.options import DeidOptions
from defacer.phi.sidecar import scrub_sidecar

#: What dcm2niix writes with its anonymisation off (-ba n), plus acquisition fields BIDS needs.
CONVERTER_SIDECAR = {
    "Modality": "MR",
    "MagneticFieldStrength": 3,
    "Manufacturer": "Siemens",
    "InstitutionName": "Quexworth General Hospital",
    "InstitutionAddress": "1 Quexworth Road",
    "DeviceSerialNumber": "41234",
    "StationName": "QUEXMR1",
    "PatientName": "Quexworth^Jane",
    "PatientID": "QX-778812",
    "PatientBirthDate": "19610412",
    "PatientSex": "F",
    "PatientWeight": 61,
    "AccessionNumber": "ACC99812",
    "AcquisitionDateTime": "2023-03-14T09:12:44.000000",
    "SeriesDescription": "T1 MPRAGE for Jane Quexworth",
    "ProtocolName": "t1_mprage_sag",
    "ImageComments": "call QX-778812 back",
    "SeriesInstanceUID": "1.2.826.0.1.3680043.2.1125.1.7788",
    "EchoTime": 0.00293,
    "RepetitionTime": 2.3,
    "FlipAngle": 9,
    "ConversionSoftware": "dcm2niix",
}
PLANTED = ("Quexworth", "Jane", "QX-778812", "19610412", "41234", "QUEXMR1", "ACC99812", "2023-03-14", "1.2.826")


def test_the_default_profile_removes_every_identifying_key_and_keeps_the_acquisition() -> None:
    scrubbed, removed = scrub_sidecar(dict(CONVERTER_SIDECAR), DeidOptions())
    text = json.dumps(scrubbed)
    assert not [value for value in PLANTED if value in text], text
    for key in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "InstitutionName", "DeviceSerialNumber",
                "AcquisitionDateTime", "SeriesDescription", "ImageComments", "SeriesInstanceUID", "AccessionNumber"):
        assert key in removed and key not in scrubbed
    for key in ("Modality", "MagneticFieldStrength", "Manufacturer", "EchoTime", "RepetitionTime", "FlipAngle",
                "ConversionSoftware"):
        assert scrubbed[key] == CONVERTER_SIDECAR[key]
    assert list(scrubbed) == [k for k in CONVERTER_SIDECAR if k not in removed]  # order kept


def test_the_options_keep_or_clean_what_they_keep_or_clean_in_a_header() -> None:
    options = DeidOptions(retain_patient_characteristics=True, clean_descriptors=True,
                          retain_institution_identity=True)
    scrubbed, removed = scrub_sidecar(dict(CONVERTER_SIDECAR), options)
    assert scrubbed["PatientSex"] == "F" and scrubbed["PatientWeight"] == 61
    assert scrubbed["InstitutionName"] == "* General Hospital"  # kept, less the patient's surname, as in a header
    description = scrubbed["SeriesDescription"]
    assert description.startswith("T1 MPRAGE for") and "Jane" not in description and "Quexworth" not in description
    assert "QX-778812" not in scrubbed.get("ImageComments", "")
    assert "PatientName" in removed and "PatientBirthDate" in removed


def test_a_sidecar_without_dicom_keys_is_returned_as_it_is() -> None:
    data = {"TaskName": "rest", "Custom": {"Note": "no DICOM key at any depth", "Items": [1, "a", [2.5]]}, "7": 1,
            "GeneratedBy": [{"Name": "dcm2niix", "Version": "v1.0"}]}
    scrubbed, removed = scrub_sidecar(json.loads(json.dumps(data)), DeidOptions())
    assert scrubbed == data and removed == []


def test_nested_objects_are_scrubbed_as_the_sidecar_is() -> None:
    """Found by HOSTILE5: only the top-level keys were looked at, so a name, a date or an accession number inside an
    object or a list of objects (dcmstack's {"global": {"const": {...}}}, a custom block, a kept sequence's items,
    a DICOM-JSON attribute) reached the output as they were."""
    data = {
        "EchoTime": 0.003,
        "global": {"const": {"PatientName": "Quexworth^Jane", "AccessionNumber": "ACC99812",
                             "StudyDate": "20230314", "RepetitionTime": 2.3}},
        "Custom": [{"OperatorsName": "Dr Quexmore", "Note": "Jane was calm"}, "plain"],
        "Extra": {"Attributes": {"00080070": {"vr": "LO", "Value": ["Quexworth Imaging"]},
                                 "00100030": {"vr": "DA", "Value": ["19610412"]}}},
        "PatientPosition": "HFS",
    }
    scrubbed, removed = scrub_sidecar(json.loads(json.dumps(data)), DeidOptions())
    text = json.dumps(scrubbed)
    for planted in ("Quexworth", "Jane", "ACC99812", "20230314", "Quexmore", "19610412"):
        assert planted not in text, (planted, text)
    assert scrubbed["global"]["const"] == {"RepetitionTime": 2.3} and scrubbed["PatientPosition"] == "HFS"
    assert scrubbed["Custom"] == [{"Note": "* was calm"}, "plain"]
    assert scrubbed["Extra"]["Attributes"]["00080070"] == {"vr": "LO", "Value": ["* Imaging"]}
    assert removed == ["global.const.PatientName", "global.const.AccessionNumber", "global.const.StudyDate",
                       "Custom[0].OperatorsName", "Extra.Attributes.00100030"]


def test_a_nested_dicom_json_name_is_masked_in_kept_text_and_coded_values_stay() -> None:
    data = {"00100010": {"vr": "PN", "Value": [{"Alphabetic": "Hfs^Quexworth"}]}, "SequenceName": "Quexworth_tfl",
            "00185100": {"vr": "CS", "Value": ["HFS"]}}
    scrubbed, removed = scrub_sidecar(json.loads(json.dumps(data)), DeidOptions())
    assert removed == ["00100010"]
    assert scrubbed == {"SequenceName": "*_tfl", "00185100": {"vr": "CS", "Value": ["HFS"]}}


def test_containers_nested_too_deep_are_removed_not_followed() -> None:
    deep: object = "Quexworth"
    for _ in range(200):
        deep = {"x": [deep]}
    scrubbed, removed = scrub_sidecar({"EchoTime": 1, "Deep": deep}, DeidOptions())
    assert "Quexworth" not in json.dumps(scrubbed) and removed and removed[0].startswith("Deep.x[0].x")


def test_shifted_dates_asked_for_never_keep_the_real_dates() -> None:
    """With the modified-dates option the table's action for dates is C ('shifted' in a header); cleaning the text
    kept '2023-03-14T09:12:44' as it was."""
    scrubbed, removed = scrub_sidecar(dict(CONVERTER_SIDECAR, AcquisitionTime="09:12:44.000000"),
                                      DeidOptions(retain_long_modified_dates=True))
    assert "2023-03-14" not in json.dumps(scrubbed) and "09:12:44" not in json.dumps(scrubbed)
    assert {"AcquisitionDateTime", "AcquisitionTime"} <= set(removed)
    full, _ = scrub_sidecar(dict(CONVERTER_SIDECAR), DeidOptions(retain_long_full_dates=True))
    assert full["AcquisitionDateTime"] == CONVERTER_SIDECAR["AcquisitionDateTime"]  # asked for: kept


def test_a_dicom_key_in_another_spelling_is_treated_as_the_keyword() -> None:
    """Found by HOSTILE4: only the exact keyword was looked up, so 'PatientName ' (a trailing space), 'patientName',
    'patient_name', a byte order mark or the DICOM JSON model's tag form kept the patient's name in OUT's sidecar."""
    data = {"PatientName ": "Quexworth^Jane", "patientID": "QX-778812", "patient_birth_date": "19610412",
            "\ufeffInstitutionName": "Quexworth General Hospital", "00100010": {"vr": "PN", "Value": ["Quexworth"]},
            "(0008,0090)": "Dr Quexworth", "SERIESDESCRIPTION": "T1 for Jane Quexworth", "EchoTime": 0.003,
            "TaskName": "rest"}
    scrubbed, removed = scrub_sidecar(dict(data), DeidOptions())
    text = json.dumps(scrubbed)
    assert "Quexworth" not in text and "QX-778812" not in text and "19610412" not in text, text
    assert scrubbed == {"EchoTime": 0.003, "TaskName": "rest"}
    assert removed == [key for key in data if key not in scrubbed]
    cleaned, _ = scrub_sidecar(dict(data), DeidOptions(clean_descriptors=True))
    assert cleaned["SERIESDESCRIPTION"].startswith("T1 for") and "Quexworth" not in cleaned["SERIESDESCRIPTION"]


def test_kept_text_loses_the_patients_own_values_as_in_a_header() -> None:
    """Found by HOSTILE4: a header's kept text is masked of the patient's own name, IDs and birth date (a technologist
    typing them into SequenceName...), a sidecar's was not: 'Quexworth_tfl3d' stayed beside the removed PatientName."""
    data = {"PatientName": "Quexworth^Jane", "PatientID": "QX-778812", "PatientBirthDate": "19610412",
            "SequenceName": "Quexworth_tfl3d", "ImageTypeText": ["QX-778812 copy", "1961-04-12"],
            "PatientPosition": "HFS", "TaskName": "rest", "EchoTime": 0.003, "Notes": "Jane again"}
    scrubbed, _ = scrub_sidecar(dict(data), DeidOptions())
    assert scrubbed["SequenceName"] == "*_tfl3d"
    assert scrubbed["ImageTypeText"] == ["* copy", "*"] and scrubbed["Notes"] == "* again"
    assert (scrubbed["PatientPosition"], scrubbed["TaskName"], scrubbed["EchoTime"]) == ("HFS", "rest", 0.003)
    plain = {"SequenceName": "Quexworth_tfl3d", "Notes": "Jane again"}  # no identifiers in the sidecar: nothing to mask
    assert scrub_sidecar(dict(plain), DeidOptions())[0] == plain


def test_an_attribute_name_or_a_converters_own_key_is_treated_as_the_attribute() -> None:
    """Found by HOSTILE4: keys written as DICOM attribute names ("Patient's Name", "Patient's Birth Date", as some
    exports do) were no keyword and were kept, and so was dcm2niix's 'ProcedureStepDescription' ((0040,0254)
    PerformedProcedureStepDescription, which the profile removes from a header)."""
    data = {"Patient's Name": "Quexworth^Jane", "Patient's Birth Date": "19610412", "Institution Name": "Quexworth",
            "ProcedureStepDescription": "MR head for Quexworth", "EchoTime": 0.003}
    scrubbed, removed = scrub_sidecar(dict(data), DeidOptions())
    assert scrubbed == {"EchoTime": 0.003} and removed == [k for k in data if k != "EchoTime"]


def test_keys_the_table_does_not_list_get_the_headers_safety_nets():
    """Found by HOSTILE5: a header empties person names the table does not list, and (since HOSTILE5) removes
    unlisted web addresses and treats unlisted dates as Study Date; a sidecar kept such keys as they were."""
    data = {"RetrieveURL": "https://pacs.quexworth.org/studies/1.2.826.0.1.3680043.99.1",
            "StudyUpdateDateTime": "20230316101500", "PersonName": "Dr Quexmore", "EchoTime": 0.003,
            "CodingSchemeURL": "http://snomed.info/sct"}
    scrubbed, removed = scrub_sidecar(dict(data), DeidOptions())
    assert scrubbed == {"EchoTime": 0.003, "CodingSchemeURL": "http://snomed.info/sct"}
    assert removed == ["RetrieveURL", "StudyUpdateDateTime", "PersonName"]
    full, _ = scrub_sidecar(dict(data), DeidOptions(retain_long_full_dates=True))
    assert full["StudyUpdateDateTime"] == "20230316101500"


def test_a_sidecar_listing_thousands_of_names_is_searched_for_a_bounded_number():
    """The nested search (HOSTILE5) gathered every name at any depth: a 2.6 MB sidecar listing 20,000 names made a mask
    pattern of 80,000 alternatives, searched in every kept text, and scrubbing ran for more than 5 minutes."""
    from defacer.phi import sidecar
    from defacer.phi.scrub import MAX_PATIENT_VALUES

    items = [{"PatientName": f"Qa{i:05d}^Qb{i:05d}", "AccessionNumber": f"ACC{i:06d}", "Note": f"Qa{i:05d} x"}
             for i in range(3000)]
    data = {"PatientName": "Quexworth^Jane", "Items": items, "SequenceName": "Quexworth_tfl3d"}
    fields = sidecar._fields(data)
    assert len(sidecar._patient_values(fields)) <= MAX_PATIENT_VALUES
    assert len(sidecar._identifying_values(fields)) <= sidecar.MAX_IDENTIFYING_VALUES
    scrubbed, removed = scrub_sidecar(data, DeidOptions(clean_descriptors=True))
    assert scrubbed["SequenceName"] == "*_tfl3d", "the outermost name comes first"
    assert len(removed) == 1 + 2 * 3000


def test_an_unknown_tag_in_dicom_json_form_is_judged_by_its_declared_vr():
    """Found by HOSTILE5: a DICOM-JSON attribute whose tag no dictionary knows kept its value whatever it declared:
    {"00209999": {"vr": "UI", "Value": [<original StudyInstanceUID>]}} linked the sidecar back to the original study
    (a header now replaces such UIDs; a sidecar has no key for that, so the key goes)."""
    data = {"00209999": {"vr": "UI", "Value": ["1.2.826.0.1.3680043.99.13"]},
            "00219998": {"vr": "PN", "Value": [{"Alphabetic": "Dr Quexmore"}]},
            "00209997": {"vr": "DA", "Value": ["20230316"]},
            "00209996": {"vr": "US", "Value": [3]}, "EchoTime": 0.003,
            "00291010": {"vr": "OB", "InlineBinary": "UXVleHdvcnRo"}}  # a private attribute
    scrubbed, removed = scrub_sidecar(json.loads(json.dumps(data)), DeidOptions())
    assert removed == ["00209999", "00219998", "00209997", "00291010"]
    assert scrubbed == {"00209996": {"vr": "US", "Value": [3]}, "EchoTime": 0.003}


def test_an_unlisted_uid_of_an_original_instance_goes_as_in_a_header():
    """A header replaces the UIDs of original instances the table does not list (SOPInstanceUIDOfConcatenationSource,
    ReferencedFiducialUID; HOSTILE5), but a sidecar's safety nets were a copy of the header's that left them out:
    such a key kept the original instance's UID.  Both now follow one rule (defacer.phi.scrub.unlisted_net); a
    sidecar has no key to replace UIDs with, so the key goes, and stays under the Retain UIDs option."""
    data = {"SOPInstanceUIDOfConcatenationSource": "1.2.826.0.1.3680043.99.14",
            "ReferencedFiducialUID": "1.2.826.0.1.3680043.99.15", "EchoTime": 0.003}
    scrubbed, removed = scrub_sidecar(dict(data), DeidOptions())
    assert scrubbed == {"EchoTime": 0.003}
    assert removed == ["SOPInstanceUIDOfConcatenationSource", "ReferencedFiducialUID"]
    kept, _ = scrub_sidecar(dict(data), DeidOptions(retain_uids=True))
    assert kept == data
