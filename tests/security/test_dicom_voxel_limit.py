"""A DICOM series goes through the loader's voxel limit, from its headers, before any pixel is decoded."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import RLELossless, generate_uid

import defacer.io.dicom_geometry
from defacer.checks import DEFAULT_MAX_VOXELS
from defacer.errors import InputImageError
from defacer.io import load_volume
from defacer.io.dicom_series import read_dicom_volume

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "dicom"))
from dicom_factory import base_dataset, write_enhanced, write_series

SHAPE = (12, 10, 6)  # columns, rows, slices: 720 voxels


def _series(tmp_path: Path) -> Path:
    write_series(tmp_path / "s", np.arange(np.prod(SHAPE), dtype=np.uint16).reshape(SHAPE))
    return tmp_path / "s"


@pytest.fixture
def no_pixels_decoded(monkeypatch):
    """Fail the test if any pixel data is decoded."""
    def refuse(path):
        raise AssertionError(f"pixel data of {path} decoded before the voxel limit was checked")
    monkeypatch.setattr(defacer.io.dicom_geometry, "_decode", refuse)


def test_a_series_over_the_limit_is_refused_before_its_pixels_are_read(tmp_path, no_pixels_decoded):
    folder = _series(tmp_path)
    with pytest.raises(InputImageError, match=r"declares 12 x 10 x 6 = 720 voxels, more than the limit of 719"):
        read_dicom_volume(folder, max_voxels=719)
    with pytest.raises(InputImageError, match="limit"):
        load_volume(folder, max_voxels=500)


def test_a_series_at_the_limit_or_without_one_is_read(tmp_path):
    folder = _series(tmp_path)
    assert read_dicom_volume(folder, max_voxels=720).raw.shape == SHAPE
    assert load_volume(folder, max_voxels=None).raw.shape == SHAPE


def test_every_frame_of_a_multi_frame_file_counts(tmp_path, no_pixels_decoded):
    folder = tmp_path / "enhanced"
    folder.mkdir()
    write_enhanced(folder / "mf.dcm", np.zeros((8, 9, 20), dtype=np.uint16))
    with pytest.raises(InputImageError, match=r"8 x 9 x 20 = 1,440 voxels"):
        read_dicom_volume(folder, max_voxels=1439)


def test_the_pipeline_refuses_and_writes_nothing(tmp_path, no_pixels_decoded):
    from defacer.detect.label_file import LabelMapDetector
    from defacer.route import deface_path
    from defacer.volume import Volume

    folder = _series(tmp_path)
    detector = LabelMapDetector(Volume(np.zeros(SHAPE, np.uint8), np.eye(4)))
    with pytest.raises(InputImageError, match="limit"):
        deface_path(folder, tmp_path / "out", detector=detector, deidentify=None, max_voxels=100)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]


def test_compressed_files_declaring_a_huge_matrix_are_refused_by_the_default_limit(tmp_path, no_pixels_decoded):
    """Encapsulated pixel data cannot be length-checked from the header; the voxel limit still holds.

    Three RLE files each declaring 8192 x 8192 pixels (201 million voxels, 3.2 GB of working
    memory) hold a few bytes each: without the limit, decoding would allocate first.
    """
    folder = tmp_path / "huge"
    folder.mkdir()
    series, study = generate_uid(), generate_uid()
    for k in range(3):
        ds = base_dataset(8192, 8192)
        ds.file_meta.TransferSyntaxUID = RLELossless
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        ds.ImagePositionPatient = ["0", "0", str(2.0 * k)]
        ds.PixelSpacing = ["1", "1"]
        ds.PixelData = encapsulate([b"\x00" * 64])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
        ds.save_as(folder / f"{k}.dcm", enforce_file_format=True)
    assert pydicom.dcmread(folder / "0.dcm", stop_before_pixels=True).Rows == 8192
    assert 8192 * 8192 * 3 > DEFAULT_MAX_VOXELS
    with pytest.raises(InputImageError, match=r"8192 x 8192 x 3 = 201,326,592 voxels"):
        load_volume(folder)
