"""A planted-PHI DICOM corpus built from scratch: every identifying value is a unique string
that can be searched for in the output bytes.

Used by tests/phi and by benchmarks/dicom_anonymize.py.  No real data is involved.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian

MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
ROOT = "1.2.826.0.1.3680043.10.99"  # planted original UIDs start with this; none may survive

PATIENTS = (
    {"name": "Zorbaxian^Quillonius", "id": "MRN88231", "birth": "19740523", "other_id": "OTHID5531",
     "address": "12 Larkspur Lane Springfield", "phone": "5550147", "mother": "Vexmoor^Ottilie"},
    {"name": "Pellwright^Saskorine", "id": "MRN44719", "birth": "19811107", "other_id": "OTHID7720",
     "address": "99 Brambleton Road Shelbyville", "phone": "5550982", "mother": "Quandril^Merribel"},
)
#: Values the same for all patients (institution and staff).
COMMON = {
    "institution": "Saint Ombrellina Hospital",
    "institution_address": "1 Infirmary Square Ogdenville",
    "referring": "Hollowmere^Gregorius",
    "performing": "Tantamount^Ysolde",
    "operator": "Brindlecombe^Auberon",
    "reading": "Castellane^Morwenna",
    "station": "STATIONQX9",
    "serial": "SERIAL77421",
    "department": "Neuroradiology Wing Q7",
    "requesting": "Fenwhistle^Idony",
}


@dataclass
class Corpus:
    """Files written, the planted strings that must not survive, and the references planted."""

    folder: Path
    files: list[Path] = field(default_factory=list)
    phi: set[str] = field(default_factory=set)
    uids: set[str] = field(default_factory=set)
    #: (referencing file, referenced file) pairs: ReferencedImageSequence points at another instance.
    references: list[tuple[Path, Path]] = field(default_factory=list)


def _uid(*parts: int) -> str:
    return ROOT + "." + ".".join(str(p) for p in parts)


def _person_sequence(name: str, ident: str) -> Sequence:
    item = Dataset()
    item.PersonName = name
    code = Dataset()
    code.CodeValue = ident
    code.CodingSchemeDesignator = "LOCAL"
    code.CodeMeaning = f"staff {name}"
    item.PersonIdentificationCodeSequence = [code]
    return Sequence([item])


def _instance(p: int, st: int, se: int, n: int, patient: dict[str, str], corpus: Corpus) -> Dataset:
    study_uid, series_uid, sop_uid = _uid(p, st), _uid(p, st, se), _uid(p, st, se, n)
    date = f"2019{p + 3:02d}{st + 10:02d}"
    corpus.phi.update({date})
    corpus.uids.update({study_uid, series_uid, sop_uid, _uid(p, 0, 0, 1), _uid(p, st, 0, 2), _uid(p, st, se, n, 9)})
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = MR_STORAGE
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.SourceApplicationEntityTitle = "QUILLONPACS"
    ds.file_meta.PrivateInformationCreatorUID = _uid(p, 0, 0, 1)
    ds.file_meta.PrivateInformation = b"Zorbaxian private meta"
    ds.SOPClassUID = MR_STORAGE
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = _uid(p, st, 0, 2)
    ds.InstanceCreatorUID = _uid(p, st, se, n, 9)
    ds.Modality = "MR"
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = ds.InstanceCreationDate = date
    ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = "101502.123"
    ds.AccessionNumber = f"ACC{p}{st}9887"
    ds.StudyID = f"STX{p}{st}42"
    ds.InstitutionName = COMMON["institution"]
    ds.InstitutionAddress = COMMON["institution_address"]
    ds.InstitutionalDepartmentName = COMMON["department"]
    ds.ReferringPhysicianName = COMMON["referring"]
    ds.PerformingPhysicianName = COMMON["performing"]
    ds.OperatorsName = COMMON["operator"]
    ds.NameOfPhysiciansReadingStudy = COMMON["reading"]
    ds.StationName = COMMON["station"]
    ds.DeviceSerialNumber = COMMON["serial"]
    ds.PatientName = patient["name"]
    ds.PatientID = patient["id"]
    ds.PatientBirthDate = patient["birth"]
    ds.PatientSex = "M"
    ds.PatientAge = "045Y"
    ds.OtherPatientIDs = patient["other_id"]
    ds.PatientAddress = patient["address"]
    ds.PatientTelephoneNumbers = patient["phone"]
    ds.PatientMotherBirthName = patient["mother"]
    ds.StudyDescription = f"Head MRI for {patient['name'].replace('^', ' ')}"
    ds.SeriesDescription = f"T1 {patient['id']} series"
    ds.ProtocolName = f"protocol of {patient['name'].split('^')[0]}"
    ds.ImageComments = f"patient {patient['name'].split('^')[0]} moved, call {patient['phone']}"
    ds.PatientComments = f"lives at {patient['address']}"
    ds.AdditionalPatientHistory = f"born {patient['birth']}"
    other = Dataset()
    other.PatientID = patient["other_id"] + "B"
    other.IssuerOfPatientID = "OTHERHOSPITALQ"
    ds.OtherPatientIDsSequence = [other]
    request = Dataset()
    request.RequestedProcedureID = f"REQ{p}{st}5521"
    request.ScheduledProcedureStepID = f"SPS{p}{st}8812"
    request.AccessionNumber = f"ACC{p}{st}9887"
    request.RequestingPhysician = COMMON["requesting"]
    request.StudyInstanceUID = study_uid
    ds.RequestAttributesSequence = [request]
    ds.OperatorIdentificationSequence = _person_sequence(COMMON["operator"], "OPID3141")
    # A public sequence that the table keeps (K): PHI nested inside must still go.
    anatomy = Dataset()
    anatomy.CodeValue = "T-A0100"
    anatomy.CodingSchemeDesignator = "SRT"
    anatomy.CodeMeaning = "Brain"
    deep = Dataset()
    deep.ReferringPhysicianName = COMMON["referring"]
    deep.PatientID = patient["id"]
    anatomy.ReferencedStudySequence = [deep]
    ds.AnatomicRegionSequence = [anatomy]
    # Private block with identifying text and a private sequence.
    block = ds.private_block(0x0029, "ACME PRIVATE", create=True)
    block.add_new(0x10, "LO", f"{patient['name']} {patient['id']}")
    private_item = Dataset()
    private_item.PatientName = patient["name"]
    block.add_new(0x11, "SQ", [private_item])
    # Overlay comment and curve-like repeating group entries.
    ds.add_new(0x60004000, "LT", f"overlay by {COMMON['operator']}")
    ds.Rows = ds.Columns = 8
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [0, 0, 2 * n]
    ds.PixelSpacing = [1, 1]
    ds.InstanceNumber = n
    ds.PixelData = (np.arange(64, dtype=np.uint16) + n).tobytes()
    for value in (*patient.values(), *COMMON.values()):
        corpus.phi.add(value)
    corpus.phi.update({ds.AccessionNumber, ds.StudyID, other.PatientID, "OTHERHOSPITALQ", request.RequestedProcedureID,
                       request.ScheduledProcedureStepID, "OPID3141", "QUILLONPACS", "Zorbaxian private meta"})
    for name in (patient["name"], patient["mother"], COMMON["referring"], COMMON["performing"], COMMON["operator"],
                 COMMON["reading"], COMMON["requesting"]):
        corpus.phi.update(name.split("^"))
    return ds


def build_corpus(folder: Path, *, slices: int = 3) -> Corpus:
    """Write 2 patients (the first with 2 studies), 2 series per study, ``slices`` files per series.

    Each file after the first of a series references the first through
    ReferencedImageSequence (a UID reference that must be remapped consistently).
    """
    corpus = Corpus(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for p, patient in enumerate(PATIENTS, start=1):
        for st in range(1, (3 if p == 1 else 2)):
            for se in (1, 2):
                first_path = None
                for n in range(1, slices + 1):
                    ds = _instance(p, st, se, n, patient, corpus)
                    if n > 1:
                        ref = Dataset()
                        ref.ReferencedSOPClassUID = MR_STORAGE
                        ref.ReferencedSOPInstanceUID = _uid(p, st, se, 1)
                        ds.ReferencedImageSequence = [ref]
                        source = Dataset()
                        source.ReferencedSOPClassUID = MR_STORAGE
                        source.ReferencedSOPInstanceUID = _uid(p, st, se, 1)
                        ds.SourceImageSequence = [source]
                    path = folder / f"{patient['name'].split('^')[0]}_{p}_{st}_{se}_{n}.dcm"
                    ds.save_as(path, enforce_file_format=True)
                    corpus.files.append(path)
                    if n == 1:
                        first_path = path
                    else:
                        corpus.references.append((path, first_path))  # type: ignore[arg-type]
    return corpus


def leaks(data: bytes, corpus: Corpus) -> set[str]:
    """Planted strings (case-insensitive) and original UIDs found in ``data``."""
    lowered = data.lower()
    found = {s for s in corpus.phi if s.lower().encode() in lowered}
    found |= {u for u in corpus.uids if u.encode() in data}
    found |= {"original UID root"} if ROOT.encode() in data else set()
    return found
