"""Hostile DICOM series, generated here: every one gives a clear error or a correct output.

Each case damages one file of a small, valid 3D series (or all of them) the way a broken
exporter or an attacker would: truncation at several depths, random bytes, missing pixel
data, values of the wrong VR, absurd sequences and declared lengths, Rows/Columns that do
not match the pixel data.  Both ``defacer anonymize`` and ``defacer deface`` (given a label
map, so no detector is needed) run in process; each must exit 0 with a readable output or
non-zero with a message (no traceback, no "bug in defacer"), leave the input byte for byte
unchanged and write nothing beside its output.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian
from run_checks import CLEAN_PREAMBLE, run_on_input

KEY = "hostile-test-key-0123456789"
SHAPE = (24, 20, 8)  # columns, rows, slices


def _dataset(k: int, study: str, series: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"{series}.{k + 1}"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.FrameOfReferenceUID = study + ".9"
    ds.Modality = "MR"
    ds.PatientName = "Hostile^Harriet"
    ds.PatientID = "HOST-0042"
    ds.PatientBirthDate = "19610203"
    ds.InstanceNumber = k + 1
    ds.Rows, ds.Columns = SHAPE[1], SHAPE[0]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelSpacing = [1.0, 1.0]
    ds.SliceThickness = 2.0
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [0.0, 0.0, 2.0 * k]
    pixels = (np.arange(SHAPE[0] * SHAPE[1]).reshape(SHAPE[1], SHAPE[0]) + 10 * k).astype("<u2")
    ds.PixelData = pixels.tobytes()
    ds["PixelData"].VR = "OW"
    return ds


def _series(folder: Path) -> list[Path]:
    folder.mkdir(parents=True)
    paths = []
    for k in range(SHAPE[2]):
        path = folder / f"IM{k:04d}.dcm"
        _dataset(k, "1.2.826.0.1.3680043.77.1", "1.2.826.0.1.3680043.77.1.1").save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


# ----------------------------------------------------------------------------- the damage
def _cut(at: float) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        data = path.read_bytes()
        path.write_bytes(data[: int(at * len(data)) if isinstance(at, float) else at])
    return damage


def _random(path: Path) -> None:
    path.write_bytes(np.random.default_rng(7).integers(0, 256, 2000, dtype=np.uint8).tobytes())


def _edit(change: Callable[[Dataset], None]) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        ds = pydicom.dcmread(path)
        change(ds)
        ds.save_as(path, enforce_file_format=False)
    return damage


def _patch_bytes(find: bytes, replace: bytes) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        data = path.read_bytes()
        assert find in data
        path.write_bytes(data.replace(find, replace, 1))
    return damage


def _set(tag: int, vr: str, value: object) -> Callable[[Dataset], None]:
    def change(ds: Dataset) -> None:
        ds.add_new(tag, vr, value)
    return change


def _delete(keyword: str) -> Callable[[Dataset], None]:
    def change(ds: Dataset) -> None:
        delattr(ds, keyword)
    return change


def _bad_text(keyword: str, placeholder: str, bad: bytes) -> Callable[[Path], None]:
    """Store ``bad`` (same even length as ``placeholder``) as the value of ``keyword``; pydicom refuses to."""
    assert len(bad) == len(placeholder) and len(bad) % 2 == 0

    def damage(path: Path) -> None:
        ds = pydicom.dcmread(path)
        setattr(ds, keyword, placeholder)
        ds.save_as(path, enforce_file_format=False)
        element = pydicom.datadict.tag_for_keyword(keyword)
        head = struct.pack("<HH", element >> 16, element & 0xFFFF) + ds[keyword].VR.encode()
        head += struct.pack("<H", len(placeholder))
        _patch_bytes(head + placeholder.encode(), head + bad)(path)
    return damage


def _nested(depth: int) -> Callable[[Path], None]:
    """Referenced Image Sequences nested ``depth`` deep (undefined lengths), before PatientName."""
    def damage(path: Path) -> None:
        sequence = b"\x08\x00\x40\x11SQ\x00\x00\xff\xff\xff\xff"
        item = b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
        close = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00" + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
        body = (sequence + item) * depth + b"\x08\x00\x00\x01SH\x02\x00x " + close * depth
        data = path.read_bytes()
        at = data.index(b"\x10\x00\x10\x00PN")
        path.write_bytes(data[:at] + body + data[at:])
    return damage


def _wide(items: int) -> Callable[[Dataset], None]:
    def change(ds: Dataset) -> None:
        one = Dataset()
        one.ReferencedSOPInstanceUID = "1.2.3"
        ds.ReferencedImageSequence = [one] * items
    return change


def _huge_length(path: Path) -> None:
    """PatientName (0010,0010) PN declaring 0xFFF0 bytes; the file ends long before."""
    data = path.read_bytes()
    at = data.index(b"\x10\x00\x10\x00PN")
    path.write_bytes(data[: at + 6] + struct.pack("<H", 0xFFF0) + data[at + 8:])


def _undefined_sequence(path: Path) -> None:
    """A sequence of undefined length that is never closed, with a lying item length inside."""
    data = path.read_bytes()
    at = data.index(b"\x10\x00\x10\x00PN")
    junk = b"\x08\x00\x40\x11SQ\x00\x00\xff\xff\xff\xff" + b"\xfe\xff\x00\xe0" + struct.pack("<I", 0x7FFFFFF0)
    path.write_bytes(data[:at] + junk + data[at:])


def _pixel_length_lies(path: Path) -> None:
    """PixelData declaring 4 GB - 2 bytes (explicit OW: 4-byte length after two reserved bytes)."""
    data = path.read_bytes()
    at = data.index(b"\xe0\x7f\x10\x00OW\x00\x00")
    path.write_bytes(data[: at + 8] + struct.pack("<I", 0xFFFFFFFE) + data[at + 12:])


CASES: dict[str, tuple[Callable[[Path], None], bool]] = {
    # name: (damage, applied to every file rather than to one)
    "truncated-10-bytes": (_cut(10), False),
    "truncated-in-preamble": (_cut(100), False),
    "truncated-after-DICM": (_cut(132), False),
    "truncated-in-meta": (_cut(180), False),
    "truncated-in-header": (_cut(0.3), False),
    "truncated-in-pixels": (_cut(0.8), False),
    "empty-file": (_cut(0), False),
    "random-bytes": (_random, False),
    "random-bytes-all": (_random, True),
    "missing-pixel-data-one": (_edit(_delete("PixelData")), False),
    "missing-pixel-data-all": (_edit(_delete("PixelData")), True),
    "rows-as-text": (_edit(_set(0x00280010, "LO", "sixteen")), False),
    "rows-zero": (_edit(_set(0x00280010, "US", 0)), True),
    "rows-mismatch-pixels": (_edit(_set(0x00280010, "US", 512)), False),
    "columns-huge": (_edit(_set(0x00280011, "US", 65535)), True),
    "bits-allocated-3": (_edit(_set(0x00280100, "US", 3)), True),
    "bits-allocated-zero": (_edit(_set(0x00280100, "US", 0)), False),
    "samples-per-pixel-zero": (_edit(_set(0x00280002, "US", 0)), True),
    "frames-as-text": (_bad_text("NumberOfFrames", "77", b"1A"), False),
    "frames-huge": (_edit(_set(0x00280008, "IS", "2000000000")), False),
    "position-not-numbers": (_bad_text("ImagePositionPatient", "1\\2\\3 ", b"a\\b\\c "), False),
    "position-two-values": (_edit(_set(0x00200032, "DS", [1, 2])), False),
    "orientation-zero": (_edit(_set(0x00200037, "DS", [0, 0, 0, 0, 0, 0])), True),
    "orientation-nan": (_bad_text("ImageOrientationPatient", "1\\0\\0\\0\\1\\0 ", b"n\\0\\0\\0\\1\\0 "), True),
    "spacing-zero": (_edit(_set(0x00280030, "DS", [0, 0])), True),
    "spacing-negative": (_bad_text("PixelSpacing", "1\\1 ", b"-1\\0"), True),
    "slope-text": (_bad_text("RescaleSlope", "1.0 ", b"stp "), False),
    "slope-zero": (_edit(_set(0x00281053, "DS", 0)), True),
    "patient-name-binary": (_edit(_set(0x00100010, "PN", b"\xff\xfe\x00Hostile".decode("latin-1"))), False),
    "sop-class-missing": (_edit(_delete("SOPClassUID")), True),
    "sop-instance-missing": (_edit(_delete("SOPInstanceUID")), False),
    "nested-sequence-depth-30": (_nested(30), False),
    "nested-sequence-depth-3000": (_nested(3000), False),
    "wide-sequence-20000-items": (_edit(_wide(20000)), False),
    "huge-declared-length": (_huge_length, False),
    "unclosed-sequence": (_undefined_sequence, False),
    "pixel-data-length-lies": (_pixel_length_lies, False),
    "transfer-syntax-unknown": (_patch_bytes(b"1.2.840.10008.1.2.1\x00", b"1.2.840.99999.9.9.1\x00"), True),
}


@pytest.fixture(scope="module")
def labels_file(tmp_path_factory) -> Path:
    """A label map on the series' grid with a small 'nose' box, so deface needs no detector."""
    folder = tmp_path_factory.mktemp("labels")
    from defacer.io.dicom_series import read_dicom_volume

    volume = read_dicom_volume(_series(folder / "series"))
    labels = np.zeros(volume.raw.shape, np.uint8)
    labels[2:6, 2:6, 2:5] = 2
    path = folder / "labels.nii.gz"
    nib.save(nib.Nifti1Image(labels, volume.affine), path)
    return path


def _damaged_series(tmp_path: Path, case: str) -> Path:
    """The series in ``tmp_path/in`` with one file (or every file) damaged as ``case`` says."""
    damage, everywhere = CASES[case]
    paths = _series(tmp_path / "in")
    for path in paths if everywhere else paths[3:4]:
        damage(path)
    return tmp_path / "in"


@pytest.mark.parametrize("case", sorted(CASES))
def test_anonymize_survives_hostile_series(case, tmp_path, capsys):
    folder = _damaged_series(tmp_path, case)
    out = tmp_path / "out"
    code, _ = run_on_input(["anonymize", str(folder), str(out), "--key", KEY], capsys, source=folder, out=out,
                           allowed={"in", "out"})
    if code != 0:
        return
    for path in sorted(out.rglob("*.dcm")):
        data = path.read_bytes()
        assert data[:132] == CLEAN_PREAMBLE
        assert b"Harriet" not in data and b"HOST-0042" not in data and b"19610203" not in data
        pydicom.dcmread(path)


@pytest.mark.parametrize("case", sorted(CASES))
def test_deface_survives_hostile_series(case, tmp_path, capsys, labels_file):
    folder = _damaged_series(tmp_path, case)
    out = tmp_path / "out"
    code, _ = run_on_input(["deface", str(folder), str(out), "--labels", str(labels_file), "--features", "nose",
                            "--key", KEY], capsys, source=folder, out=out, allowed={"in", "out", "out.defacer.json"})
    if code != 0:
        return
    written = sorted(out.rglob("*.dcm"))
    assert len(written) == SHAPE[2], "a defaced series must hold every slice of its input"
    for path in written:
        data = path.read_bytes()
        assert data[:132] == CLEAN_PREAMBLE
        assert b"Harriet" not in data and b"HOST-0042" not in data
        pydicom.dcmread(path).pixel_array  # noqa: B018 - decodable
