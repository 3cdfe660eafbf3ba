"""defacer.files: the one table of image endings, stems and the one file hash."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from defacer.files import IMAGE_FORMATS, file_sha256, image_stem, image_suffix, is_image_name


@pytest.mark.parametrize("name, suffix, stem", [
    ("sub-01_T1w.nii.gz", ".nii.gz", "sub-01_T1w"),
    ("SCAN.NII.GZ", ".NII.GZ", "SCAN"),
    ("a.nii", ".nii", "a"),
    ("head.NRRD", ".NRRD", "head"),
    ("head.nhdr", ".nhdr", "head"),
    ("brain.mgz", ".mgz", "brain"),
    ("odd.name.mgh", ".mgh", "odd.name"),
    ("notes.txt", "", "notes.txt"),
    ("slice.dcm", "", "slice.dcm"),
    ("archive.gz", "", "archive.gz"),
])
def test_suffix_and_stem_ignore_case_and_keep_the_name(name, suffix, stem):
    assert image_suffix(name) == suffix
    assert image_stem(name) == stem
    assert is_image_name(name) is bool(suffix)


def test_dicom_files_on_request():
    assert image_suffix("slice.DCM", dicom=True) == ".DCM"
    assert image_stem("slice.dcm", dicom=True) == "slice"


def test_longest_ending_wins():
    assert list(IMAGE_FORMATS).index(".nii.gz") < list(IMAGE_FORMATS).index(".nii")


def test_file_sha256_matches_hashlib(tmp_path):
    data = np.random.default_rng(0).bytes((1 << 20) * 2 + 7)
    (tmp_path / "f").write_bytes(data)
    assert file_sha256(tmp_path / "f") == hashlib.sha256(data).hexdigest()
    (tmp_path / "empty").write_bytes(b"")
    assert file_sha256(str(tmp_path / "empty")) == hashlib.sha256(b"").hexdigest()
