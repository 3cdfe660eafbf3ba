"""Recognising uploads from their first bytes, before anything parses them."""

from __future__ import annotations

import gzip
import struct
import zipfile
from pathlib import Path

import pytest

from defacer.web.uploads import (
    SNIFF_BYTES,
    UnsupportedUpload,
    UploadTooLarge,
    extract_zip,
    human_bytes,
    sniff,
    zip_directory,
)


def nifti1_header(magic: bytes = b"n+1\0") -> bytes:
    header = bytearray(348)
    header[:4] = struct.pack("<i", 348)
    header[344:348] = magic
    return bytes(header) + b"\0" * 4


def mgh_header() -> bytes:
    return struct.pack(">7i", 1, 10, 10, 10, 1, 4, 0) + b"\0" * 300


@pytest.mark.parametrize(("head", "name", "expected"), [
    (nifti1_header(), "scan.nii", "nifti"),
    (gzip.compress(nifti1_header() + b"\0" * 1000)[:SNIFF_BYTES], "scan.nii.gz", "nifti-gz"),
    (gzip.compress(nifti1_header() + b"\0" * 1000)[:SNIFF_BYTES], "no-extension", "nifti-gz"),
    (gzip.compress(mgh_header())[:SNIFF_BYTES], "brain.mgz", "mgz"),
    (mgh_header(), "brain.mgh", "mgh"),
    (mgh_header(), "brain.mgz", "mgh"),  # uncompressed under a .mgz name: read as what it is (the load warns)
    (b"NRRD0004\ntype: short\n", "scan.nrrd", "nrrd"),
    (b"NRRD0004\ntype: short\n", "scan.nhdr", "nhdr"),  # a detached header: its data file comes with it
    (b"NRRD0004\ntype: short\ndata file: scan.raw.gz\n", "scan.nrrd", "nhdr"),  # detached, whatever its name
    (b"PK\x03\x04" + b"\0" * 100, "series.zip", "zip"),
    (b"\0" * 128 + b"DICM" + b"\0" * 100, "IM0001", "dicom"),
    (b"\x08\x00\x05\x00CS\x0a\x00ISO_IR 100", "old.dcm", "dicom"),
])
def test_supported_types_are_recognised_from_their_first_bytes(head: bytes, name: str, expected: str) -> None:
    assert sniff(head, name) == expected


@pytest.mark.parametrize(("head", "name", "message"), [
    (b"", "scan.nii.gz", "empty"),
    (b"hello world, I am a text file" * 20, "scan.nii.gz", "not a supported scan: it looks like text"),
    (b"\x89PNG\r\n\x1a\n" + b"\0" * 400, "face.png", "looks like a PNG picture"),  # in words, not hex
    (gzip.compress(b"just text" * 100)[:SNIFF_BYTES], "scan.nii.gz", "neither a NIfTI nor an MGH header"),
    (b"just text\n" * 40, "scan.nhdr", "not a NRRD header"),
])
def test_other_files_are_refused_saying_what_was_found(head: bytes, name: str, message: str) -> None:
    with pytest.raises(UnsupportedUpload, match=message):
        sniff(head, name)


def test_byte_counts_read_naturally() -> None:
    assert human_bytes(512) == "512 bytes"
    assert human_bytes(1_500_000) == "1.5 MB"
    assert human_bytes(1_000_000_000) == "1.0 GB"


def zip_with_lying_count(path: Path, entries: int, declared: int) -> None:
    """A zip of ``entries`` empty members whose end record claims ``declared`` (zipfile reads them all anyway)."""
    with zipfile.ZipFile(path, "w") as archive:
        for index in range(entries):
            archive.writestr(zipfile.ZipInfo(f"{index:06d}.dcm"), b"")
    data = bytearray(path.read_bytes())
    end = data.rfind(b"PK\x05\x06")
    data[end + 8:end + 12] = struct.pack("<HH", declared, declared)
    path.write_bytes(bytes(data))


def test_zip_directory_reads_what_zipfile_will_read(tmp_path: Path) -> None:
    path = tmp_path / "normal.zip"
    zip_with_lying_count(path, 70_000, 70_000 % 65536)  # over 65,535 entries: zipfile writes ZIP64 records
    entries, size = zip_directory(path) or (0, 0)
    with zipfile.ZipFile(path) as archive:
        assert entries == len(archive.infolist()) == 70_000
    assert size == 70_000 * (46 + 10)


def test_a_table_of_contents_larger_than_its_count_says_is_refused_before_reading(tmp_path: Path) -> None:
    """The size of the table bounds what zipfile reads into memory, whatever count the end record states."""
    archive = tmp_path / "lying.zip"
    zip_with_lying_count(archive, 2_000, 1)
    with zipfile.ZipFile(archive) as opened:
        assert len(opened.infolist()) == 2_000  # zipfile does not believe the count either
    into = tmp_path / "unpacked"
    with pytest.raises(UploadTooLarge, match="2,000 entries|112,000 bytes"):
        extract_zip(archive, into, max_bytes=10**9, max_files=100)
    assert not into.exists()
