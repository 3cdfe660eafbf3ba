"""Instances whose content itself identifies the patient: photographs, voice recordings, surface scans.

Header de-identification keeps pixels, waveform samples and points as they are; a full-face photograph and a voice
print are HIPAA Safe Harbor identifiers, a dictation says names, and a surface scan of the head is the face.  On main
2401ebd (HOSTILE19, 2026-12-06 00:12 UTC) ``defacer anonymize`` wrote a VL Photographic Image, a Basic Voice Audio
Waveform and a Surface Scan Mesh with their content untouched, exit 0.  They are refused now, as secondary captures
are, unless ``--allow-burned-in``.
"""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from defacer.cli.main import main

PHOTO = "1.2.840.10008.5.1.4.1.1.77.1.4"
VOICE = "1.2.840.10008.5.1.4.1.1.9.4.1"
SURFACE = "1.2.840.10008.5.1.4.1.1.68.1"


def _instance(folder: Path, sop_class: str) -> Path:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID = "Quexworth^Zelda", "QZ-19610203"
    if sop_class == PHOTO:
        ds.Modality, ds.Rows, ds.Columns, ds.SamplesPerPixel = "XC", 4, 4, 3
        ds.PhotometricInterpretation, ds.PlanarConfiguration = "RGB", 0
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.PixelData = bytes(range(48))
    elif sop_class == VOICE:
        ds.Modality = "AU"
        wave = Dataset()
        wave.NumberOfWaveformChannels, wave.NumberOfWaveformSamples = 1, 64
        wave.WaveformBitsAllocated, wave.WaveformSampleInterpretation = 16, "SS"
        wave.WaveformData = bytes(range(128))
        ds.WaveformSequence = [wave]
    else:
        ds.Modality = "OSS"
        ds.add_new(0x00660016, "OF", bytes(range(96)))  # PointCoordinatesData of a (one-item) surface
    folder.mkdir(parents=True)
    path = folder / "IM0001.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize("sop_class", [PHOTO, VOICE, SURFACE], ids=["photograph", "voice", "surface-scan"])
def test_a_photograph_voice_or_surface_scan_is_refused_unless_allowed(tmp_path, capsys, sop_class):
    source = _instance(tmp_path / "in", sop_class)
    before = source.read_bytes()
    assert main(["anonymize", str(tmp_path / "in"), str(tmp_path / "out"), "--key", "k" * 24]) == 1
    err = capsys.readouterr().err
    assert "defacer refuses it" in err and "--allow-burned-in" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists() and source.read_bytes() == before
    assert main(["anonymize", str(tmp_path / "in"), str(tmp_path / "out"), "--key", "k" * 24,
                 "--allow-burned-in"]) == 0
    written = pydicom.dcmread(next((tmp_path / "out").rglob("*.dcm")))
    assert written.SOPClassUID == sop_class and "Quexworth" not in str(written.PatientName)
