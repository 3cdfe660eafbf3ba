"""Recognising uploads from their first bytes, before anything parses them."""

from __future__ import annotations

import gzip
import struct

import pytest

from defacer.web.uploads import SNIFF_BYTES, UnsupportedUpload, human_bytes, sniff


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
