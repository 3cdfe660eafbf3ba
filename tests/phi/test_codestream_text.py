"""Text inside kept compressed frames: ``anonymize`` keeps pixel data byte for byte, so a JPEG comment, an EXIF
block or a JPEG 2000 comment holding the patient's name and birth date reached the output (found in session 16:
``Patient Quexworth^Zelda 19610203`` in a JPEG COM segment survived ``defacer anonymize``)."""

from __future__ import annotations

import io
import struct
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit

from defacer.cli.main import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "dicom"))
from dicom_factory import base_dataset

NAME = b"Quexworth^Zelda 19610203"


def _jpeg(pixels: np.ndarray) -> bytes:
    """A baseline JPEG with a comment, an EXIF segment, a JFIF thumbnail and bytes after EOI naming the patient."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95, comment=b"Patient " + NAME)
    data = buffer.getvalue()
    exif = b"Exif\x00\x00" + b"MM\x00\x2a" + NAME * 2
    app1 = b"\xff\xe1" + struct.pack(">H", len(exif) + 2) + exif
    jfif = b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x02\x01" + NAME[:6]  # a 2 x 1 RGB thumbnail
    app0 = b"\xff\xe0" + struct.pack(">H", len(jfif) + 2) + jfif
    end = data.index(b"\xff\xe0")
    end += 2 + int.from_bytes(data[end + 2:end + 4], "big")  # replace Pillow's own APP0
    return data[:2] + app0 + app1 + data[end:] + b"\x00" + NAME


def _j2k(pixels: np.ndarray) -> bytes:
    """A JPEG 2000 codestream with a comment in its main header and bytes after EOC naming the patient."""
    import openjpeg

    data = bytes(openjpeg.encode(pixels, codec_format=0))
    siz = data.index(b"\xff\x51")
    after = siz + 2 + int.from_bytes(data[siz + 2:siz + 4], "big")
    com = b"\xff\x64" + struct.pack(">HH", len(NAME) + 4, 1) + NAME
    return data[:after] + com + data[after:] + NAME


def _series(folder: Path, kind: str) -> Path:
    folder.mkdir(parents=True)
    for k in range(3):
        pixels = (np.arange(4096).reshape(64, 64) % 200 + 7 * k).astype(np.uint8 if kind == "jpeg" else np.uint16)
        ds = base_dataset(64, 64)
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit if kind == "jpeg" else JPEG2000Lossless
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"1.2.826.0.1.3680043.77.4.1.{k + 1}"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.826.0.1.3680043.77.4", "1.2.826.0.1.3680043.77.4.1"
        ds.PatientName, ds.PatientID, ds.PatientBirthDate = "Quexworth^Zelda", "QZ-7", "19610203"
        ds.InstanceNumber = k + 1
        ds.BitsAllocated = ds.BitsStored = 8 if kind == "jpeg" else 16
        ds.HighBit = ds.BitsStored - 1
        ds.PixelData = encapsulate([_jpeg(pixels) if kind == "jpeg" else _j2k(pixels)])
        ds["PixelData"].VR = "OB"
        ds.save_as(folder / f"IM{k}.dcm", enforce_file_format=True)
    return folder


@pytest.mark.parametrize("kind", ["jpeg", "j2k"])
def test_anonymize_leaves_no_name_inside_compressed_frames(tmp_path, kind, capsys):
    source = _series(tmp_path / "in", kind)
    assert all(b"Quexworth" in p.read_bytes() for p in source.iterdir())
    out = tmp_path / "out"
    assert main(["anonymize", str(source), str(out), "--key", "k" * 24]) == 0, capsys.readouterr().err
    written = sorted(out.rglob("*.dcm"))
    assert len(written) == 3
    for path in written:
        data = path.read_bytes()
        assert b"Quexworth" not in data and b"19610203" not in data and b"Zelda" not in data
    before = {int(pydicom.dcmread(p).InstanceNumber): pydicom.dcmread(p).pixel_array for p in source.iterdir()}
    after = {int(pydicom.dcmread(p).InstanceNumber): pydicom.dcmread(p).pixel_array for p in written}
    assert before.keys() == after.keys()
    assert all(np.array_equal(before[k], after[k]) for k in before), "the pictures must decode as before"


def test_blanking_keeps_every_length_and_the_picture_segments():
    from defacer.phi.codestream import blank_frame_text

    frame = bytearray(_jpeg((np.arange(4096).reshape(64, 64) % 200).astype(np.uint8)))
    original = bytes(frame)
    assert blank_frame_text(frame) == 4  # the JFIF thumbnail, EXIF, the comment, the bytes after EOI
    assert len(frame) == len(original) and NAME not in frame
    for segment in (b"\xff\xdb", b"\xff\xc4", b"\xff\xc0", b"\xff\xda"):  # tables, frame and scan headers kept
        at = original.index(segment)
        size = int.from_bytes(original[at + 2:at + 4], "big")
        assert frame[at:at + 2 + size] == original[at:at + 2 + size]
    assert blank_frame_text(frame) == 0  # nothing left to blank
