"""Header de-identification on a corpus with planted PHI: nothing may survive."""

from __future__ import annotations

import hashlib
import json

import pydicom
import pytest
from phi_corpus import PATIENTS, build_corpus, leaks
from pydicom.dataset import Dataset

from defacer.errors import DicomSeriesError, OutputError
from defacer.io.dicom_series import anonymize_files, write_deid_mapping
from defacer.phi import DeidOptions, Pseudonymizer, Scrubber
from defacer.phi.scrub import BurnedInAnnotationError

KEY = b"corpus-test-key-0123456789abcdef"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build_corpus(tmp_path_factory.mktemp("planted") / "in")


def anonymize(corpus, out, options=None, key=KEY, **kwargs):
    scrubber = Scrubber(options or DeidOptions(), Pseudonymizer(key), **kwargs)
    written, skipped = anonymize_files(corpus.folder, out, scrubber)
    return scrubber, written, skipped


def test_the_corpus_really_holds_the_planted_phi(corpus):
    found = set()
    for path in corpus.files:
        found |= leaks(path.read_bytes(), corpus)
    assert found >= corpus.phi
    assert len(corpus.files) == 18 and len(corpus.phi) > 50


def test_no_planted_phi_survives_the_basic_profile(corpus, tmp_path):
    _, written, skipped = anonymize(corpus, tmp_path / "out")
    assert len(written) == len(corpus.files) and not skipped
    surviving = {value for path in written for value in leaks(path.read_bytes(), corpus)}
    assert surviving == set()


def test_output_file_and_folder_names_carry_no_phi(corpus, tmp_path):
    _, written, _ = anonymize(corpus, tmp_path / "out")
    names = " ".join(str(p.relative_to(tmp_path / "out")) for p in written)
    assert "Zorbaxian" not in names and "Pellwright" not in names
    assert sorted({p.parent.name for p in written}) == ["S001", "S002", "S003", "S004", "S005", "S006"]


def test_no_planted_phi_survives_with_retained_dates_and_cleaned_descriptors(corpus, tmp_path):
    options = DeidOptions(retain_long_modified_dates=True, clean_descriptors=True)
    _, written, _ = anonymize(corpus, tmp_path / "out", options)
    surviving = {value for path in written for value in leaks(path.read_bytes(), corpus)}
    assert surviving == set()
    ds = pydicom.dcmread(written[0])
    assert ds.StudyDescription == "Head MRI for * *"
    assert ds.LongitudinalTemporalInformationModified == "MODIFIED"


def test_uids_are_remapped_identically_across_runs_and_scrubber_instances(corpus, tmp_path):
    _, first, _ = anonymize(corpus, tmp_path / "a")
    _, second, _ = anonymize(corpus, tmp_path / "b")
    for a, b in zip(first, second, strict=True):
        assert a.read_bytes() == b.read_bytes()


def test_another_key_gives_other_uids(corpus, tmp_path):
    _, first, _ = anonymize(corpus, tmp_path / "a")
    _, other, _ = anonymize(corpus, tmp_path / "b", key=b"another-secret-key-0123456789")
    assert pydicom.dcmread(first[0]).StudyInstanceUID != pydicom.dcmread(other[0]).StudyInstanceUID


def test_references_inside_sequences_point_at_the_new_uids(corpus, tmp_path):
    scrubber, written, _ = anonymize(corpus, tmp_path / "out", record_mapping=True)
    by_source = dict(zip(sorted(corpus.files), written, strict=True))
    for referencing, referenced in corpus.references:
        ds = pydicom.dcmread(by_source[referencing])
        target = pydicom.dcmread(by_source[referenced])
        assert ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID == target.SOPInstanceUID
        assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == target.SOPInstanceUID
        assert ds.StudyInstanceUID == target.StudyInstanceUID
    assert scrubber.mapping.uids[str(pydicom.dcmread(min(corpus.files)).SOPInstanceUID)] == str(
        pydicom.dcmread(written[0]).SOPInstanceUID)


def test_study_and_patient_structure_is_kept(corpus, tmp_path):
    _, written, _ = anonymize(corpus, tmp_path / "out")
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in written]
    assert len({h.PatientID for h in headers}) == len(PATIENTS)
    assert len({h.StudyInstanceUID for h in headers}) == 3
    assert len({h.SeriesInstanceUID for h in headers}) == 6
    assert len({h.SOPInstanceUID for h in headers}) == len(written)


def test_bookkeeping_attributes_and_file_meta_are_rebuilt(corpus, tmp_path):
    _, written, _ = anonymize(corpus, tmp_path / "out")
    ds = pydicom.dcmread(written[0])
    assert ds.PatientIdentityRemoved == "YES"
    assert "PS3.15" in ds.DeidentificationMethod
    assert [item.CodeValue for item in ds.DeidentificationMethodCodeSequence] == ["113100"]
    assert ds.DeidentificationMethodCodeSequence[0].CodingSchemeDesignator == "DCM"
    assert ds.LongitudinalTemporalInformationModified == "REMOVED"
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert "SourceApplicationEntityTitle" not in ds.file_meta
    assert "PrivateInformation" not in ds.file_meta
    assert not any(element.tag.is_private for element in ds.iterall())


def test_pixels_are_untouched_by_header_anonymisation(corpus, tmp_path):
    _, written, _ = anonymize(corpus, tmp_path / "out")
    for source, target in zip(sorted(corpus.files), written, strict=True):
        assert pydicom.dcmread(source).PixelData == pydicom.dcmread(target).PixelData


def test_inputs_are_never_modified(corpus, tmp_path):
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in corpus.files}
    anonymize(corpus, tmp_path / "out")
    assert before == {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in corpus.files}


def test_retain_options_keep_what_they_name(corpus, tmp_path):
    options = DeidOptions(retain_uids=True, retain_patient_characteristics=True, retain_long_full_dates=True,
                          retain_device_identity=True)
    _, written, _ = anonymize(corpus, tmp_path / "out", options)
    original = pydicom.dcmread(min(corpus.files))
    ds = pydicom.dcmread(written[0])
    assert ds.SOPInstanceUID == original.SOPInstanceUID
    assert ds.StudyDate == original.StudyDate
    assert ds.PatientSex == "M" and ds.PatientAge == "045Y"
    assert ds.DeviceSerialNumber == original.DeviceSerialNumber
    assert ds.PatientName != original.PatientName
    assert [i.CodeValue for i in ds.DeidentificationMethodCodeSequence] == ["113100", "113110", "113109", "113108", "113106"]
    assert ds.LongitudinalTemporalInformationModified == "UNMODIFIED"


def test_shifted_dates_move_by_one_offset_per_patient(corpus, tmp_path):
    _, written, _ = anonymize(corpus, tmp_path / "out", DeidOptions(retain_long_modified_dates=True))
    import datetime as dt

    def day(text):
        return dt.date(int(text[:4]), int(text[4:6]), int(text[6:8]))

    shifts = {}
    for source, target in zip(sorted(corpus.files), written, strict=True):
        a, b = pydicom.dcmread(source), pydicom.dcmread(target)
        shift = (day(a.StudyDate) - day(b.StudyDate)).days
        assert shift == (day(a.PatientBirthDate) - day(b.PatientBirthDate)).days if "PatientBirthDate" in b and \
            b.PatientBirthDate else True
        shifts.setdefault(str(a.PatientID), set()).add(shift)
    assert all(len(s) == 1 for s in shifts.values())
    assert all(next(iter(s)) >= 365 for s in shifts.values())


def test_safe_private_option_keeps_only_listed_private_attributes(tmp_path):
    ds = Dataset()
    ds.PatientName = "Someone^Else"
    block = ds.private_block(0x0019, "SIEMENS MR HEADER", create=True)
    block.add_new(0x0C, "IS", "1000")
    block.add_new(0x0F, "LO", "Someone identifying")
    acme = ds.private_block(0x0029, "ACME PRIVATE", create=True)
    acme.add_new(0x10, "LO", "Someone")
    Scrubber(DeidOptions(retain_safe_private=True), Pseudonymizer(KEY)).scrub(ds)
    kept = {(e.tag.group, e.tag.element) for e in ds if e.tag.is_private}
    assert kept == {(0x0019, 0x0010), (0x0019, 0x100C)}


def test_burned_in_annotation_is_refused_unless_allowed(tmp_path):
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    with pytest.raises(BurnedInAnnotationError, match="--allow-burned-in"):
        Scrubber(DeidOptions(), Pseudonymizer(KEY)).scrub(ds)
    ds2 = Dataset()
    ds2.BurnedInAnnotation = "YES"
    with pytest.raises(DicomSeriesError, match="BurnedInAnnotation"):
        Scrubber(DeidOptions(), Pseudonymizer(KEY)).scrub(ds2)
    Scrubber(DeidOptions(allow_burned_in=True), Pseudonymizer(KEY)).scrub(ds2)
    assert ds2.PatientIdentityRemoved == "YES"



@pytest.mark.parametrize("keyword, value", [
    ("BurnedInAnnotation", " YES"), ("BurnedInAnnotation", "YES\\NO"), ("BurnedInAnnotation", ["NO", "YES"]),
    ("BurnedInAnnotation", b"YES "), ("ImageType", ["DERIVED", "SECONDARY", " SCREEN SAVE"]),
    ("SOPClassUID", "1.2.840.10008.5.1.4.1.1.7 "),
])
def test_burned_in_flags_are_read_as_coded_strings(keyword, value):
    """Found by HOSTILE5: the flags were compared exactly, so BurnedInAnnotation ' YES' (leading spaces are not
    significant in a CS, PS3.5 6.2) or a multi-valued 'YES\\NO', and ImageType ' SCREEN SAVE', let an instance with
    text in its pixels through without --allow-burned-in."""
    from defacer.phi.scrub import burned_in_reason

    ds = Dataset()
    if isinstance(value, bytes):
        ds.add_new(0x00280301, "UN", value)
    else:
        setattr(ds, keyword, value)
    assert burned_in_reason(ds)
    with pytest.raises(BurnedInAnnotationError):
        Scrubber(DeidOptions(), Pseudonymizer(KEY)).scrub(ds)


@pytest.mark.parametrize("value", ["Y", "yes", "TRUE", "1", "NO\\MAYBE"])
def test_a_burned_in_flag_that_is_neither_yes_nor_no_is_refused(value):
    """Found by HOSTILE14: BurnedInAnnotation 'Y' (not a defined term; PS3.3 C.7.6.3.1.11 allows YES or NO) was read
    as "no burned-in text" and the instance de-identified without --allow-burned-in.  Only NO (or an empty flag)
    says the pixels carry no text."""
    from defacer.phi.scrub import burned_in_reason

    ds = Dataset()
    ds.BurnedInAnnotation = value
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M"]
    assert "BurnedInAnnotation" in burned_in_reason(ds)
    with pytest.raises(BurnedInAnnotationError, match="--allow-burned-in"):
        Scrubber(DeidOptions(), Pseudonymizer(KEY)).scrub(ds)


@pytest.mark.parametrize("value", ["NO", " NO ", ""])
def test_burned_in_annotation_no_is_not_refused(value):
    from defacer.phi.scrub import burned_in_reason

    ds = Dataset()
    ds.BurnedInAnnotation = value
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M"]
    assert burned_in_reason(ds) == ""

def test_a_refused_instance_leaves_no_partial_output(corpus, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for path in corpus.files[:3]:
        (folder / path.name).write_bytes(path.read_bytes())
    ds = pydicom.dcmread(corpus.files[0])
    ds.BurnedInAnnotation = "YES"
    ds.save_as(folder / "zz_burned.dcm")
    with pytest.raises(BurnedInAnnotationError):
        anonymize_files(folder, tmp_path / "out", Scrubber(DeidOptions(), Pseudonymizer(KEY)))
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".defacer-tmp*"))


def test_defaced_marking_sets_recognizable_visual_features_no(corpus):
    ds = pydicom.dcmread(corpus.files[0])
    Scrubber(DeidOptions(clean_recognizable_visual_features=True), Pseudonymizer(KEY)).scrub(ds)
    assert ds.RecognizableVisualFeatures == "NO"
    assert "113102" in [i.CodeValue for i in ds.DeidentificationMethodCodeSequence]


def test_mapping_file_is_written_only_outside_the_output(corpus, tmp_path):
    scrubber, _, _ = anonymize(corpus, tmp_path / "out", record_mapping=True)
    with pytest.raises(OutputError, match="re-identify"):
        write_deid_mapping(scrubber.mapping.as_dict(), tmp_path / "out" / "map.json", out_dir=tmp_path / "out")
    path = write_deid_mapping(scrubber.mapping.as_dict(), tmp_path / "private" / "map.json", out_dir=tmp_path / "out")
    data = json.loads(path.read_text())
    assert PATIENTS[0]["id"] in data["patients"]
    assert len(data["uids"]) >= 18
    with pytest.raises(OutputError, match="exists"):
        write_deid_mapping(scrubber.mapping.as_dict(), path, out_dir=tmp_path / "out")


def test_non_dicom_files_are_skipped_not_copied(corpus, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / corpus.files[0].name).write_bytes(corpus.files[0].read_bytes())
    (folder / "README.txt").write_text("Zorbaxian's scans")
    written, skipped = anonymize_files(folder, tmp_path / "out", Scrubber(DeidOptions(), Pseudonymizer(KEY)))
    assert len(written) == 1 and [p.name for p, _ in skipped] == ["README.txt"]
    assert not list((tmp_path / "out").rglob("*.txt"))


def test_existing_output_is_refused_without_force_and_input_overlap_always(corpus, tmp_path):
    (tmp_path / "out").mkdir()
    scrubber = Scrubber(DeidOptions(), Pseudonymizer(KEY))
    with pytest.raises(OutputError, match="--force"):
        anonymize_files(corpus.folder, tmp_path / "out", scrubber)
    with pytest.raises(OutputError, match="overlaps"):
        anonymize_files(corpus.folder, corpus.folder / "sub", scrubber, force=True)
    with pytest.raises(OutputError, match="overlaps"):
        anonymize_files(corpus.folder, corpus.folder.parent, scrubber, force=True)


def test_parallel_workers_give_byte_identical_output_and_the_same_mapping(corpus, tmp_path):
    serial = Scrubber(DeidOptions(), Pseudonymizer(KEY), record_mapping=True)
    parallel = Scrubber(DeidOptions(), Pseudonymizer(KEY), record_mapping=True)
    first, _ = anonymize_files(corpus.folder, tmp_path / "serial", serial)
    second, _ = anonymize_files(corpus.folder, tmp_path / "parallel", parallel, jobs=2)
    assert [p.relative_to(tmp_path / "serial") for p in first] == [p.relative_to(tmp_path / "parallel") for p in second]
    for a, b in zip(first, second, strict=True):
        assert a.read_bytes() == b.read_bytes()
    assert serial.mapping.as_dict() == parallel.mapping.as_dict()
    assert not list((tmp_path / "parallel").rglob(".work"))


def test_attributes_stored_with_unknown_vr_are_handled_by_their_dictionary_vr(tmp_path):
    import struct

    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    item = Dataset()
    item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    item.ReferencedSOPInstanceUID = "1.2.826.0.1.3680043.10.99.5"
    item.PatientName = "Hidden^Inside"
    inner = Dataset()
    inner.ReferencedImageSequence = [item]
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, True
    write_dataset(buffer, inner)
    sequence_value = buffer.getvalue()[8:]  # the items, implicit VR, as a UN value holds them

    def un_element(group, element, value):
        return struct.pack("<HH", group, element) + b"UN\x00\x00" + struct.pack("<I", len(value)) + value

    ds = Dataset()
    ds.PatientName = "Visible^Outside"
    ds.save_as(tmp_path / "un.dcm", implicit_vr=False, little_endian=True)
    with (tmp_path / "un.dcm").open("ab") as handle:
        handle.write(un_element(0x0008, 0x1140, sequence_value) + un_element(0x0010, 0x1000, b"OTHERID123"))
    ds = pydicom.dcmread(tmp_path / "un.dcm", force=True)
    assert ds.get_item(0x00081140).VR == "UN"
    Scrubber(DeidOptions(), Pseudonymizer(KEY)).scrub(ds)
    assert "OtherPatientIDs" not in ds
    sequence = ds.ReferencedImageSequence
    assert sequence[0].ReferencedSOPInstanceUID.startswith("2.25.")
    assert "Hidden" not in str(sequence[0].get("PatientName", ""))


# ----------------------------------------------------------------- free text under the clean options
def _instance(folder, number, study, **values):
    """One small MR instance of ``study`` with the given attributes (keyword or (tag, VR) -> value)."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"1.2.826.0.1.3680043.99.{study}.{number}"
    ds.StudyInstanceUID = f"1.2.826.0.1.3680043.99.{study}"
    ds.SeriesInstanceUID = f"1.2.826.0.1.3680043.99.{study}.0"
    ds.Modality = "MR"
    for key, value in values.items():
        if isinstance(value, tuple):
            tag, vr, text = value
            ds.add_new(tag, vr, text)
        else:
            setattr(ds, key, value)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{study}_{number}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def _texts(out):
    return {str(value) for path in out.rglob("*.dcm") for value in _all_text(pydicom.dcmread(path))}


def _all_text(ds):
    from defacer.phi.scrub import iter_phi_free_text

    return list(iter_phi_free_text(ds))


CLEAN = DeidOptions(clean_descriptors=True, clean_graphics=True, clean_structured_content=True)


def test_clean_descriptors_masks_every_name_component_id_and_institution_in_free_text(tmp_path):
    person = Dataset()
    person.PersonName = "Okonkwo^Adaeze"  # a name only inside a sequence
    request = Dataset()
    request.RequestedProcedureID = "RQ-77"
    _instance(
        tmp_path / "in", 1, 5,
        PatientName="Li^Wu", PatientID="P-4411", InstitutionName="Saint Elsewhere Clinic",
        AccessionNumber="ACC9Q",
        ContentSequence=[person], RequestAttributesSequence=[request],
        SeriesDescription="Scan for Mr Li (wu) at SAINT ELSEWHERE CLINIC",
        StudyDescription="acc9q / p-4411 follow-up of li",
        ImageComments="Reviewed with Adaeze OKONKWO for RQ-77; Lithium level normal",
    )
    anonymize_files(tmp_path / "in", tmp_path / "out", Scrubber(CLEAN, Pseudonymizer(KEY)))
    ds = pydicom.dcmread(next((tmp_path / "out").rglob("*.dcm")))
    text = " ".join(str(ds.get(k, "")) for k in ("SeriesDescription", "StudyDescription", "ImageComments")).lower()
    for planted in ("li ", "(wu)", "elsewhere", "acc9q", "p-4411", "adaeze", "okonkwo", "rq-77"):
        assert planted not in text, (planted, text)
    assert "scan for mr" in text and "lithium" in text  # the rest of the text is kept (descriptors option)


def test_free_text_is_cleaned_of_names_that_only_another_file_of_the_study_holds(tmp_path):
    _instance(tmp_path / "in", 1, 6, PatientName="Rasmussen^Ingrid", ReferringPhysicianName="Haddad^Omar")
    _instance(tmp_path / "in", 2, 6, PatientName="", ImageComments="sent by dr haddad for INGRID rasmussen")
    anonymize_files(tmp_path / "in", tmp_path / "out", Scrubber(CLEAN, Pseudonymizer(KEY)))
    text = " ".join(_texts(tmp_path / "out")).lower()
    assert "sent by dr" in text
    assert not {"haddad", "ingrid", "rasmussen", "omar"} & set(text.replace("*", " ").split())


def test_clean_graphics_cleans_overlay_comments_description_and_label(tmp_path):
    _instance(
        tmp_path / "in", 1, 7, PatientName="Li^Wu",
        overlay_comments=(0x60024000, "LT", "Marked by Wu Li"),
        overlay_description=(0x60020022, "LO", "for Li"),
        overlay_label=(0x60021500, "LO", "Li Wu lesion"),
        overlay_rows=(0x60020010, "US", 8),
    )
    anonymize_files(tmp_path / "in", tmp_path / "graphics", Scrubber(CLEAN, Pseudonymizer(KEY)))
    ds = pydicom.dcmread(next((tmp_path / "graphics").rglob("*.dcm")))
    for tag in (0x60024000, 0x60020022, 0x60021500):
        assert tag in ds and not {"li", "wu"} & set(str(ds[tag].value).lower().split()), ds[tag]
    anonymize_files(tmp_path / "in", tmp_path / "basic", Scrubber(DeidOptions(), Pseudonymizer(KEY)))
    ds = pydicom.dcmread(next((tmp_path / "basic").rglob("*.dcm")))
    assert not {0x60024000, 0x60020022, 0x60021500} & set(ds.keys())  # removed without the option


def test_defaced_series_free_text_is_cleaned_too(tmp_path):
    import numpy as np

    from defacer.io.dicom_series import read_dicom_volume, write_dicom_volume

    for k in range(3):
        _instance(
            tmp_path / "in", k, 8, PatientName="Li^Wu", SeriesDescription="T1 for Mr LI",
            Rows=4, Columns=4, SamplesPerPixel=1, PhotometricInterpretation="MONOCHROME2", BitsAllocated=16,
            BitsStored=16, HighBit=15, PixelRepresentation=0, PixelSpacing=[1, 1],
            ImageOrientationPatient=[1, 0, 0, 0, 1, 0], ImagePositionPatient=[0, 0, 2 * k],
            PixelData=np.zeros((4, 4), np.uint16).tobytes(),
        )
    volume = read_dicom_volume(tmp_path / "in")
    written = write_dicom_volume(volume, tmp_path / "out", deid=Scrubber(CLEAN, Pseudonymizer(KEY)))
    assert all(str(pydicom.dcmread(p).SeriesDescription) == "T1 for Mr *" for p in written)


def _patient_everywhere(folder, name="Quexworth^Ambrose", patient_id="MRN778899", birth="19600131"):
    """One instance whose every public text attribute (LO, SH, LT, ST, UT, UC) holds the patient's name, ID,
    accession number or birth date, as a careless or hostile export can write them (a name typed into
    SequenceName, an ID in a CodeMeaning...)."""
    from pydicom.datadict import DicomDictionary
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = generate_uid(), generate_uid(), "MR"
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.AccessionNumber = name, patient_id, birth, "ACC55123"
    ds.PatientPosition = "HFS"
    planted = [f"scan of {name.replace('^', ' ')}", f"id {patient_id}", "acc ACC55123", "born 1960-01-31",
               f"{name.split('^')[0].upper()}_T1"]
    short = [f"{name.split('^')[0].upper()}_T1", patient_id, "ACC55123", "1960-01-31"]  # SH holds 16 characters
    count = 0
    for tag, (vr, _, _, retired, keyword) in DicomDictionary.items():
        if keyword and not retired and vr in ("LO", "SH", "LT", "ST", "UT", "UC") and tag >> 16 > 0x0002 \
                and not 0x5000 <= tag >> 16 <= 0x60FF and keyword not in ds:
            setattr(ds, keyword, short[count % len(short)] if vr == "SH" else planted[count % len(planted)])
            count += 1
    folder.mkdir(parents=True)
    ds.save_as(folder / "a.dcm", enforce_file_format=True)
    return count


def test_the_patients_identifiers_leave_no_text_attribute_the_profile_keeps(tmp_path):
    """The Basic Profile keeps every attribute it does not list. Before: a header with the patient's name, ID,
    accession number or birth date typed into public text attributes kept it in 400 of 630 of them (Manufacturer,
    SequenceName, CodeMeaning, StackID...). Now each kept text value is masked of the patient's own values."""
    planted = _patient_everywhere(tmp_path / "in")
    assert planted > 600
    scrubber = Scrubber(DeidOptions(), Pseudonymizer(KEY))
    written, _ = anonymize_files(tmp_path / "in", tmp_path / "out", scrubber)
    data = written[0].read_bytes().lower()
    for value in (b"quexworth", b"ambrose", b"mrn778899", b"acc55123", b"1960-01-31", b"19600131"):
        assert value not in data, value
    ds = pydicom.dcmread(written[0])
    assert ds.Manufacturer == "scan of * *" and ds.PatientPosition == "HFS", "the rest of a kept value stays"


def test_kept_text_loses_only_the_patients_own_values(tmp_path):
    """A short name part is masked as a word of its own only, and coded strings are not touched (a placeholder
    PatientName 'HFS' equals PatientPosition 'HFS', as in a real series of ../shared/data)."""
    from pydicom.uid import generate_uid

    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.4", generate_uid()
    ds.PatientName, ds.PatientID, ds.PatientPosition = "Li^Wu", "12", "HFS"
    ds.Manufacturer, ds.SequenceName, ds.SoftwareVersions = "Lithium Li", "WU_tfl3d", "VE11 12 build 123456"
    Scrubber(DeidOptions(), Pseudonymizer(KEY)).scrub(ds)
    assert (ds.Manufacturer, ds.SequenceName) == ("Lithium *", "*_tfl3d")
    assert ds.SoftwareVersions == "VE11 12 build 123456", "an ID under 3 characters and digit runs stay"
    other = Dataset()
    other.SOPClassUID, other.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.4", generate_uid()
    other.PatientName, other.PatientPosition = "HFS", "HFS"
    Scrubber(DeidOptions(), Pseudonymizer(KEY)).scrub(other)
    assert other.PatientPosition == "HFS"


@pytest.mark.parametrize("raw", [False, True], ids=["explicit", "implicit-bytes"])
def test_a_safe_private_slot_holding_the_patients_name_is_not_kept(tmp_path, raw):
    """--retain-safe-private keeps listed private slots (b-values...). Before: a hostile header that put the
    patient's name into such a slot kept it (as text, or as the raw bytes of an implicit-VR file)."""
    ds = Dataset()
    ds.PatientName, ds.PatientID = "Quexworth^Ambrose", "MRN778899"
    block = ds.private_block(0x0019, "SIEMENS MR HEADER", create=True)
    block.add_new(0x0C, "IS", "1000")
    block.add_new(0x0D, "UN" if raw else "CS", b"QUEXWORTH" if raw else "QUEXWORTH")
    block.add_new(0x0E, "UN" if raw else "LO", b"id MRN778899 " if raw else "id MRN778899")
    Scrubber(DeidOptions(retain_safe_private=True), Pseudonymizer(KEY)).scrub(ds)
    kept = {(e.tag.group, e.tag.element) for e in ds if e.tag.is_private}
    assert kept == {(0x0019, 0x0010), (0x0019, 0x100C)}


def test_a_safe_private_slot_keeps_only_the_numbers_it_is_listed_for(tmp_path):
    """HOSTILE13: --retain-safe-private kept whatever a listed slot held.  A B_value slot holding a sequence (an
    item with InstitutionName, ReferringPhysicianName, PatientBirthDate), a DiffusionDirectionality holding free
    text ('Saint Secretia Hospital, Zelda Drwho') and a gradient-direction slot holding text as raw bytes all
    reached the output of 'anonymize --retain-safe-private'.  PS3.15 E.3.10 lists each slot with its VR: only
    values of that VR and form (numbers; CS code words) are kept now."""
    import struct

    from pydicom.sequence import Sequence

    def scrubbed(fill) -> set[tuple[int, int]]:
        ds = Dataset()
        ds.PatientName, ds.PatientID = "Quexworth^Ambrose", "MRN778899"
        fill(ds.private_block(0x0019, "SIEMENS MR HEADER", create=True),
             ds.private_block(0x0043, "GEMS_PARM_01", create=True),
             ds.private_block(0x2005, "Philips MR Imaging DD 001", create=True))
        Scrubber(DeidOptions(retain_safe_private=True), Pseudonymizer(KEY)).scrub(ds)
        return {(e.tag.group, e.tag.element) for e in ds if e.tag.is_private and e.tag.element >= 0x1000}

    def hostile(siemens, ge, philips) -> None:
        item = Dataset()
        item.InstitutionName, item.ReferringPhysicianName = "Saint Secretia Hospital", "Drwho^Zelda"
        item.PatientBirthDate = "19610203"
        siemens.add_new(0x0C, "SQ", Sequence([item]))
        siemens.add_new(0x0D, "CS", "Saint Secretia Hospital, Zelda Drwho")
        siemens.add_new(0x0E, "UN", b"Saint Secretia Hospital 1961")  # 28 bytes: no whole number of doubles
        siemens.add_new(0x27, "UN", b"Saint Secretia Hospital, Zelda Drwho 19610203\x00\x00\x00")  # 48 bytes
        siemens.add_new(0x28, "FD", [1e180])
        ge.add_new(0x39, "UN", b"Saint Secretia")  # as an implicit-VR file holds it
        philips.add_new(0xB0, "FL", [float("nan")])

    assert scrubbed(hostile) == set()  # main: 0019,100C-100E and 1028, 0043,1039 and 2005,10B0 kept

    def plain(siemens, ge, philips) -> None:
        siemens.add_new(0x0C, "IS", "1000")
        siemens.add_new(0x0D, "CS", "DIRECTIONAL")
        siemens.add_new(0x0E, "UN", struct.pack("<3d", 0.7071, 0.0, -0.7071))  # an implicit-VR file's raw bytes
        siemens.add_new(0x27, "FD", [500.0, 0.0, -500.0, 0.0, 0.0, 500.0])
        siemens.add_new(0x28, "FD", 30.012)
        ge.add_new(0x39, "IS", ["1000", "0", "0", "0"])
        philips.add_new(0xB0, "FL", 0.5)

    assert scrubbed(plain) == {(0x0019, 0x100C), (0x0019, 0x100D), (0x0019, 0x100E), (0x0019, 0x1027),
                               (0x0019, 0x1028), (0x0043, 0x1039), (0x2005, 0x10B0)}


def test_a_header_padded_with_thousands_of_name_parts_is_searched_for_a_bounded_number(tmp_path):
    """Each kept text value is searched for the patient's values. A hostile PatientName of 10,000 parts (and 5,000
    OtherPatientIDs) made one compiled pattern of 15,000 alternatives that took 3.7 s per file over a 60,000-character
    Manufacturer (74 s for 20 files, against 0.6 s before the search existed); the values are now bounded."""
    from defacer.phi.scrub import MAX_PATIENT_VALUES, patient_values

    ds = Dataset()
    ds.PatientName = "Quexworth^Ambrose^" + "^".join(f"part{i:05d}" for i in range(10000))
    ds.PatientID, ds.PatientBirthDate = "MRN778899", "19600131"
    ds.OtherPatientIDs = [f"ID{i:06d}" for i in range(5000)]
    values = patient_values(ds)
    assert len(values) <= MAX_PATIENT_VALUES
    assert {"Quexworth", "Ambrose", "MRN778899", "19600131", "1960-01-31"} <= set(values)


def test_unlisted_uids_that_name_original_instances_are_replaced_consistently(tmp_path):
    """Found by HOSTILE5: the safety net replaced unlisted UIDs only when the keyword *ended* with InstanceUID or
    FrameOfReferenceUID, so SOPInstanceUIDOfConcatenationSource (an enhanced object's original SOP Instance UID) kept
    the original UID, linking the de-identified object back; RadiopharmaceuticalAdministrationEventUID and
    ReferencedFiducialUID (which refers to Fiducial UID, replaced by the table) kept theirs too."""
    source = "1.2.826.0.1.3680043.99.7.1"
    paths = [_instance(tmp_path / "in", number, 7, SOPInstanceUIDOfConcatenationSource=source,
                       RadiopharmaceuticalAdministrationEventUID="1.2.826.0.1.3680043.99.7.90",
                       ReferencedFiducialUID="1.2.826.0.1.3680043.99.7.91")
             for number in (1, 2)]
    fiducial = Dataset()
    fiducial.FiducialUID = "1.2.826.0.1.3680043.99.7.91"
    ds = pydicom.dcmread(paths[1])
    ds.FiducialSetSequence = [Dataset()]
    ds.FiducialSetSequence[0].FiducialSequence = [fiducial]
    ds.save_as(paths[1], enforce_file_format=True)
    written, _ = anonymize_files(tmp_path / "in", tmp_path / "out", Scrubber(DeidOptions(), Pseudonymizer(KEY)))
    for path in written:
        assert b"1.2.826.0.1.3680043.99" not in path.read_bytes(), path
    out = {pydicom.dcmread(path).SOPInstanceUIDOfConcatenationSource for path in written}
    sources = [ds for path in written if (ds := pydicom.dcmread(path)).SOPInstanceUID in out]
    assert len(out) == 1 and len(sources) == 1, "the reference names the source's new UID in every file"
    second = next(pydicom.dcmread(p) for p in written if "FiducialSetSequence" in pydicom.dcmread(p))
    assert second.ReferencedFiducialUID == second.FiducialSetSequence[0].FiducialSequence[0].FiducialUID
    kept, _ = anonymize_files(tmp_path / "in", tmp_path / "kept",
                              Scrubber(DeidOptions(retain_uids=True), Pseudonymizer(KEY)))
    assert all(pydicom.dcmread(p).SOPInstanceUIDOfConcatenationSource == source for p in kept)


def test_an_element_no_dictionary_knows_holding_the_patients_name_is_removed(tmp_path):
    """Found by HOSTILE5: an attribute no dictionary knows (a newer standard's, or a misused tag), stored as UN, was
    kept whatever its bytes held: (0010,1234) holding 'Quexworth^Jane' left the patient's name in the output."""
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.4", "1.2.826.0.1.3680043.99.8.1"
    ds.PatientName, ds.PatientID = "Quexworth^Jane", "QX-778812"
    ds.add_new(0x00101234, "UN", b"Quexworth^Jane ")
    ds.add_new(0x00181234, "UN", b"id QX-778812")
    ds.add_new(0x00201234, "UN", b"\x01\x02harmless")
    Scrubber(DeidOptions(), Pseudonymizer(KEY)).scrub(ds)
    assert 0x00101234 not in ds and 0x00181234 not in ds
    assert ds[0x00201234].value == b"\x01\x02harmless", "an unknown element without the patient's values stays"


def test_unlisted_web_addresses_are_removed_and_coding_scheme_urls_kept():
    """Found by HOSTILE5: URL attributes the table does not list were kept as they were: RetrieveURL
    'https://pacs.quexworth-hospital.org/dicomweb/studies/<original StudyInstanceUID>' linked the output back to the
    original study (and named the hospital); web addresses are identifiers under HIPAA Safe Harbor."""
    study = "1.2.826.0.1.3680043.99.9"
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID, ds.StudyInstanceUID = "1.2.840.10008.5.1.4.1.1.4", f"{study}.1", study
    ds.RetrieveURL = f"https://pacs.quexworth-hospital.org/dicomweb/studies/{study}"
    ds.add_new(0x0040E010, "UR", f"https://pacs.quexworth-hospital.org/wado?studyUID={study}")  # RetrieveURI
    ds.add_new(0x00080409, "UR", "file:///archive/Quexworth_Jane/IM1.dcm")  # FileAccessURI
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "T-A0100", "SRT", "Brain"
    code.CodingSchemeURL = "http://snomed.info/sct"
    ds.AnatomicRegionSequence = [code]
    Scrubber(DeidOptions(), Pseudonymizer(KEY)).scrub(ds)
    assert "RetrieveURL" not in ds and 0x0040E010 not in ds and 0x00080409 not in ds
    assert ds.AnatomicRegionSequence[0].CodingSchemeURL == "http://snomed.info/sct"


def test_dates_the_table_does_not_list_follow_the_study_date():
    """Found by HOSTILE5: a date or date-time the table does not list (StudyUpdateDateTime, SecondaryReviewDate,
    ExpiryDate...) was kept as it was under the default profile; dates of a person's care are HIPAA Safe Harbor
    identifiers. Now they follow Study Date: emptied, kept with --retain-long-full-dates, shifted with
    --retain-long-modified-dates."""
    def scrubbed(options):
        ds = Dataset()
        ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.4", "1.2.826.0.1.3680043.99.10.1"
        ds.PatientID, ds.StudyDate = "QX-778812", "20230314"
        ds.StudyUpdateDateTime, ds.SecondaryReviewDate = "20230316101500", "20230317"
        return Scrubber(options, Pseudonymizer(KEY)).scrub(ds)

    plain = scrubbed(DeidOptions())
    assert not plain.get("StudyUpdateDateTime") and not plain.get("SecondaryReviewDate")
    full = scrubbed(DeidOptions(retain_long_full_dates=True))
    assert (full.StudyUpdateDateTime, full.SecondaryReviewDate) == ("20230316101500", "20230317")
    shifted = scrubbed(DeidOptions(retain_long_modified_dates=True))
    days = (int(shifted.StudyDate) - 20230314, int(shifted.SecondaryReviewDate) - 20230317)
    assert shifted.SecondaryReviewDate != "20230317" and shifted.StudyUpdateDateTime[8:] == "101500"
    assert shifted.StudyUpdateDateTime[:8] != "20230316"
    assert days[0] != 0 and days[1] != 0


def test_a_uid_in_an_attribute_no_dictionary_knows_is_replaced_unless_it_is_a_standard_one():
    """Found by HOSTILE5: an attribute no dictionary knows (a newer standard's, or a misused tag) with VR UI kept its
    value: (0020,9999) holding the original StudyInstanceUID linked the output back. Now replaced like U, with the
    same new UID as the attribute it copies; UIDs of the standard (SOP classes, transfer syntaxes) stay."""
    study = "1.2.826.0.1.3680043.99.11"
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID, ds.StudyInstanceUID = "1.2.840.10008.5.1.4.1.1.4", f"{study}.1", study
    ds.add_new(0x00209999, "UI", study)
    ds.add_new(0x00209998, "UI", ["1.2.840.10008.5.1.4.1.1.4", f"{study}.1"])
    Scrubber(DeidOptions(), Pseudonymizer(KEY)).scrub(ds)
    assert ds[0x00209999].value == ds.StudyInstanceUID != study
    assert list(ds[0x00209998].value) == ["1.2.840.10008.5.1.4.1.1.4", ds.SOPInstanceUID]
    kept = Dataset()
    kept.SOPClassUID, kept.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.4", f"{study}.1"
    kept.add_new(0x00209999, "UI", study)
    Scrubber(DeidOptions(retain_uids=True), Pseudonymizer(KEY)).scrub(kept)
    assert kept[0x00209999].value == study


def test_a_header_listing_thousands_of_names_is_cleaned_with_a_bounded_number_first_the_patients():
    """Found by HOSTILE5: with a cleaning option the identifying values of a study were all searched in every text
    cleaned: a header listing 2,000 names in a sequence took 2.5 s per file, linearly more with more. They are now
    bounded, the patient's own values and the instance's top-level identifying attributes first."""
    from defacer.phi.scrub import MAX_IDENTIFYING_VALUES

    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.4", "1.2.826.0.1.3680043.99.12.1"
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.99.12"
    ds.PatientName, ds.PatientID, ds.InstitutionName = "Zzquexworth^Jane", "QX-778812", "Zzlast General"
    people = []
    for i in range(3000):
        person = Dataset()
        person.PersonName = f"Aa{i:05d}^Ab{i:05d}"
        people.append(person)
    ds.ContentSequence = people
    ds.ImageComments = "Zzquexworth Jane, QX-778812, Zzlast General"
    scrubber = Scrubber(DeidOptions(clean_descriptors=True), Pseudonymizer(KEY))
    context = scrubber._context(ds)
    assert len(context.identifying) <= MAX_IDENTIFYING_VALUES
    assert {"Zzquexworth", "QX-778812", "Zzlast"} <= set(context.identifying)
    scrubber.scrub(ds)
    assert "Zzquexworth" not in str(ds.get("ImageComments", "")) and "Zzlast" not in str(ds.get("ImageComments", ""))
