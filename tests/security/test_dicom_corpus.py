"""Every file of the DICOM test corpus that pydicom ships, through ``anonymize`` and ``deface``.

Nobody on this project wrote these files: big and little endian, implicit and explicit VR,
JPEG, JPEG-LS, JPEG 2000, RLE, deflate, truncated files, DICOMDIRs, odd character sets,
bad VRs, files without meta, fragments, and a few non-DICOM files.  Each file is put alone
in a folder and given to the command line (in process).  Every run must end in a correct
output or a clear error (non-zero exit, a message, no traceback, no "bug in defacer"),
never write outside its output, never change its input, and an anonymized output must hold
no identifying value of its input (names, IDs, dates of the header).

A single 2D slice gets a clear "2D image / needs a 3D head volume" error from ``deface``,
which is the expected answer for it.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pydicom
import pytest
from pydicom.multival import MultiValue
from run_checks import CLEAN_PREAMBLE, run_on_input

CORPUS = Path(pydicom.__file__).parent / "data" / "test_files"
FILES = sorted(p.relative_to(CORPUS).as_posix() for p in CORPUS.rglob("*") if p.is_file())
KEY = "corpus-test-key-0123456789"
#: What a refusal says: an error, or (deface) that no requested feature was found.
REFUSALS = ("error", "no requested facial feature")
#: Values that are not identifying although they sit in identifying attributes of some files.
NOT_IDENTIFYING = {"", "anonymous", "anonymized", "none", "unknown", "n/a", "na"}
#: VRs whose values are numbers (a group length of 204 is not PatientID 204), and sequences.
NUMERIC_VRS = {"SQ", "UL", "US", "SL", "SS", "FL", "FD", "SV", "UV", "AT"}
#: Attributes whose values identify (beyond every PN and every date, collected by VR).
IDENTIFYING_KEYWORDS = {
    "PatientID", "OtherPatientIDs", "AccessionNumber", "StudyID", "InstitutionName", "InstitutionAddress",
    "PatientAddress", "PatientTelephoneNumbers", "MedicalRecordLocator", "StationName", "DeviceSerialNumber",
    "InstitutionalDepartmentName", "RequestedProcedureID", "PerformedProcedureStepID", "ScheduledProcedureStepID",
}


def test_the_corpus_is_there_and_varied():
    assert len(FILES) > 150, f"pydicom's test files not found under {CORPUS}"
    syntaxes = set()
    for name in FILES:
        try:
            syntaxes.add(str(pydicom.dcmread(CORPUS / name, stop_before_pixels=True).file_meta.TransferSyntaxUID))
        except Exception:  # noqa: BLE001, S112 - non-DICOM members of the corpus
            continue
    for uid in ("1.2.840.10008.1.2", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.90",
                "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.1.99"):
        assert uid in syntaxes


def _setup(tmp_path: Path, name: str) -> Path:
    """A folder ``in`` holding only the corpus file ``name``."""
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(CORPUS / name, folder / Path(name).name)
    return folder


def _identifying(path: Path) -> set[str]:
    """Names (whole and by component), IDs and dates in the header of ``path``."""
    try:
        ds = pydicom.dcmread(path, force=True, stop_before_pixels=True)
    except Exception:  # noqa: BLE001 - not readable: nothing of it can be written either
        return set()
    values: set[str] = set()
    for element in ds.iterall():
        if element.VR not in ("PN", "DA", "DT") and element.keyword not in IDENTIFYING_KEYWORDS:
            continue
        raw = element.value
        for item in raw if isinstance(raw, MultiValue | list) else [raw]:
            text = str(item or "").strip().strip("\x00")
            parts = [text] + ([p for p in text.replace("=", "^").split("^") if p] if element.VR == "PN" else [])
            values.update(p.strip() for p in parts if len(p.strip()) >= 3 and p.strip().lower() not in NOT_IDENTIFYING)
    return values


def _written_text(path: Path) -> str:
    ds = pydicom.dcmread(path)
    texts = []
    for element in [*ds.file_meta, *ds.iterall()]:
        if element.tag == 0x7FE00010:
            continue
        value = element.value
        if isinstance(value, bytes):
            texts.append(value.decode("latin-1"))
        elif element.VR not in NUMERIC_VRS:
            texts.append(str(value))
    return "\n".join(texts)


@pytest.mark.parametrize("name", FILES)
def test_anonymize_gives_a_clean_copy_or_a_clear_error(name, tmp_path, capsys):
    folder = _setup(tmp_path, name)
    out = tmp_path / "out"
    code, text = run_on_input(["anonymize", str(folder), str(out), "--key", KEY], capsys, source=folder, out=out,
                              allowed={"in", "out"}, refusals=REFUSALS)
    if code != 0:
        return
    written = sorted(out.rglob("*.dcm"))
    assert len(written) == 1, text
    assert written[0].read_bytes()[:132] == CLEAN_PREAMBLE
    kept = _written_text(written[0])
    leaked = {value for value in _identifying(CORPUS / name) if re.search(rf"(?<![\w.]){re.escape(value)}(?![\w.])", kept)}
    assert not leaked, f"{name}: {leaked} survived anonymize"


@pytest.mark.parametrize("name", FILES)
def test_deface_as_a_one_file_series_gives_a_series_or_a_clear_error(name, tmp_path, capsys):
    folder = _setup(tmp_path, name)
    out = tmp_path / "out"
    code, text = run_on_input(["deface", str(folder), str(out), "--key", KEY], capsys, source=folder, out=out,
                              allowed={"in", "out", "out.defacer.json"}, refusals=REFUSALS)
    if code != 0:
        return
    written = sorted(out.rglob("*.dcm"))
    assert len(written) == 1, text
    assert written[0].read_bytes()[:132] == CLEAN_PREAMBLE
    pydicom.dcmread(written[0]).pixel_array  # noqa: B018 - decodable
    name_value = str(pydicom.dcmread(CORPUS / name, force=True).get("PatientName", "") or "")
    if len(name_value) >= 3:
        assert name_value not in _written_text(written[0])
