"""A report filed in an image series is named for what it is and left out, not called a damaged file.

On main 2401ebd (HOSTILE19, 2026-12-06 00:10 UTC) ``defacer deface`` of a phantom series holding a Basic Text SR of the
same SeriesInstanceUID refused the whole series: "cannot be read, so the series would be incomplete ... damaged or
truncated DICOM file (an instance of an image series without pixel data)", sending the user after a file that was
whole.  An image instance without its pixels is still refused (``test_dicom_read``).
"""

from __future__ import annotations

from pathlib import Path

import pydicom
from dicom_factory import write_phantom_series
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from defacer.cli.main import main


def _report(folder: Path) -> Path:
    first = pydicom.dcmread(min(folder.glob("*.dcm")))
    sr = Dataset()
    sr.file_meta = FileMetaDataset()
    sr.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    sr.SOPClassUID = sr.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    sr.SOPInstanceUID = sr.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    sr.StudyInstanceUID, sr.SeriesInstanceUID = first.StudyInstanceUID, first.SeriesInstanceUID
    sr.PatientID, sr.Modality = first.PatientID, "SR"
    item = Dataset()
    item.ValueType, item.TextValue = "TEXT", "Zelda Quexworth was scanned"
    sr.ContentSequence = [item]
    path = folder / "report.dcm"
    sr.save_as(path, enforce_file_format=True)
    return path


def test_a_report_in_an_image_series_is_named_and_left_out(tmp_path, caplog):
    write_phantom_series(tmp_path / "in", tmp_path / "labels.nii.gz", voxel_mm=4.0)
    images = len(list((tmp_path / "in").glob("*.dcm")))
    _report(tmp_path / "in")
    assert main(["deface", str(tmp_path / "in"), str(tmp_path / "out"), "--labels", str(tmp_path / "labels.nii.gz"),
                 "--key", "k" * 24]) == 0
    assert "not an image: a Basic Text SR instance" in caplog.text and "damaged" not in caplog.text
    written = list((tmp_path / "out").glob("*.dcm"))
    assert len(written) == images
    assert not any(b"Quexworth" in path.read_bytes() for path in written)
