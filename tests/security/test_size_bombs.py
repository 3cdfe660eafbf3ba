"""Small files that unpack into huge ones: refused in bounded memory, before the unpacking.

Deflate packs about 1,000 bytes into one, so a 1 MB file can hold a gigabyte of zeros. A deflated
DICOM data set (transfer syntax 1.2.840.10008.1.2.1.99) is inflated whole by pydicom before any
element is read: a 1 MB file took 2.1 GB of memory.
"""

from __future__ import annotations

import sys
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.errors import InvalidDicomError
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import DeflatedExplicitVRLittleEndian
from run_checks import run_on_input

from defacer.io import dicom_files
from defacer.io.dicom_files import dcmread_any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "dicom"))
from dicom_factory import base_dataset

KEY = "size-bomb-test-key-0123456789"

#: Most memory (bytes, as tracemalloc sees it) reading one bomb may take.
PEAK = 64 << 20


def _bomb_slice(k: int, series: str, size: int, syntax: str, bits: int = 16) -> pydicom.Dataset:
    """Slice ``k`` of a small synthetic MR series (:func:`dicom_factory.base_dataset`) stored with ``syntax``;
    ``series`` tells the bomb series' UIDs apart."""
    ds = base_dataset(size, size)
    ds.file_meta.TransferSyntaxUID = syntax
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"1.2.826.0.1.3680043.77.{series}.1.{k + 1}"
    ds.StudyInstanceUID = f"1.2.826.0.1.3680043.77.{series}"
    ds.SeriesInstanceUID = f"1.2.826.0.1.3680043.77.{series}.1"
    ds.FrameOfReferenceUID = f"1.2.826.0.1.3680043.77.{series}.9"
    ds.PatientName, ds.PatientID = "Bomb^Bertha", "BOMB-0042"
    ds.InstanceNumber = k + 1
    ds.BitsAllocated = ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelSpacing = [1.0, 1.0]
    return ds


def _deflated(folder: Path, k: int, padding: int) -> Path:
    """A small valid MR slice stored deflated, with ``padding`` zero bytes in a private OB element."""
    ds = _bomb_slice(k, "2", 16, DeflatedExplicitVRLittleEndian)
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [0.0, 0.0, 2.0 * k]
    ds.PixelData = (np.arange(256, dtype="<u2") + k).tobytes()
    ds["PixelData"].VR = "OW"
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    packer = zlib.compressobj(1, zlib.DEFLATED, -zlib.MAX_WBITS)
    packed = [packer.compress(body.getvalue())]
    if padding:
        packed.append(packer.compress(b"\x11\x00\x10\x00LO\x04\x00BOMB"))  # private creator (0011,0010)
        packed.append(packer.compress(b"\x11\x00\x00\x10OB\x00\x00" + padding.to_bytes(4, "little")))
        zeros = bytes(16 << 20)
        for start in range(0, padding, len(zeros)):
            packed.append(packer.compress(zeros[: min(len(zeros), padding - start)]))
    packed.append(packer.flush())
    meta = DicomBytesIO()
    meta.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(meta, ds.file_meta, enforce_standard=True)
    path = folder / f"IM{k:04d}.dcm"
    path.write_bytes(meta.getvalue() + b"".join(packed))
    return path


def _series(folder: Path, bomb_bytes: int = 0) -> Path:
    folder.mkdir(parents=True)
    for k in range(4):
        _deflated(folder, k, bomb_bytes if k == 1 else 0)
    return folder


def test_a_deflated_dicom_bomb_is_refused_before_it_is_inflated(tmp_path):
    bomb = _deflated(tmp_path, 0, (512 << 20) + (1 << 20))  # just over the limit
    assert bomb.stat().st_size < 4 << 20
    tracemalloc.start()
    try:
        with pytest.raises(InvalidDicomError, match="inflates to more than 512 MiB"):
            dcmread_any(bomb, stop_before_pixels=True)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < PEAK, f"reading a {bomb.stat().st_size} byte file took {peak >> 20} MiB"


def _anonymize_deflated(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                        bomb_bytes: int) -> tuple[int, str, Path]:
    """``anonymize`` of a deflated series whose IM0001.dcm inflates to ``bomb_bytes`` more, the limit lowered to
    1 MiB: the exit status, the words said and the output folder (nothing written outside it: :func:`run_on_input`)."""
    monkeypatch.setattr(dicom_files, "MAX_INFLATED_BYTES", 1 << 20, raising=False)
    folder = _series(tmp_path / "in", bomb_bytes=bomb_bytes)
    out = tmp_path / "out"
    code, text = run_on_input(["anonymize", str(folder), str(out), "--key", KEY], capsys, source=folder, out=out,
                              allowed={"in", "out"})
    return code, text, out


def test_anonymize_refuses_a_series_holding_a_deflated_bomb_in_words(tmp_path, capsys, monkeypatch):
    code, text, _ = _anonymize_deflated(tmp_path, capsys, monkeypatch, 2 << 20)
    assert code == 1
    assert "IM0001.dcm" in text and "inflates to more than 1 MiB" in text


def test_a_deflated_series_within_the_limit_is_still_anonymized(tmp_path, capsys, monkeypatch):
    code, _, out = _anonymize_deflated(tmp_path, capsys, monkeypatch, 1 << 19)
    assert code == 0
    written = sorted(out.rglob("*.dcm"))
    assert len(written) == 4
    for path in written:
        assert "Bertha" not in str(pydicom.dcmread(path).PatientName)


# ----------------------------------------------------------------------------- NIfTI header extensions
def _nifti_with_extensions(path: Path, extensions: list[tuple[int, int]], tail: int = 0) -> Path:
    """A small .nii.gz whose header declares ``extensions`` ((esize, zero bytes stored) each), then ``tail`` zeros."""
    import struct

    import nibabel as nib

    image = nib.Nifti1Image(np.arange(16 ** 3, dtype=np.int16).reshape(16, 16, 16), np.eye(4))
    header = bytearray(image.header.binaryblock)
    stored = sum(n + 8 for _, n in extensions)
    struct.pack_into("<f", header, 108, float(352 + stored))
    packer = zlib.compressobj(1, zlib.DEFLATED, 31)
    packed = [packer.compress(bytes(header) + b"\x01\x00\x00\x00")]
    zeros = bytes(16 << 20)
    for esize, n in extensions:
        packed.append(packer.compress(struct.pack("<ii", esize, 6)))
        for start in range(0, n, len(zeros)):
            packed.append(packer.compress(zeros[: min(len(zeros), n - start)]))
    packed.append(packer.compress(np.asarray(image.dataobj).tobytes(order="F")))
    for start in range(0, tail, len(zeros)):
        packed.append(packer.compress(zeros[: min(len(zeros), tail - start)]))
    path.write_bytes(b"".join(packed) + packer.flush())
    return path


def _peak_of_loading(path: Path) -> tuple[str, int]:
    from defacer.errors import InputImageError
    from defacer.io import load_volume

    tracemalloc.start()
    try:
        with pytest.raises(InputImageError) as refused:
            load_volume(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return str(refused.value), peak


def test_a_nifti_extension_bomb_is_refused_before_it_is_read(tmp_path):
    size = (64 << 20) + (1 << 20)
    bomb = _nifti_with_extensions(tmp_path / "bomb.nii.gz", [(size + 8, size)])
    assert bomb.stat().st_size < 1 << 20
    message, peak = _peak_of_loading(bomb)
    assert "bytes of extensions (defacer reads at most 64 MiB)" in message and "bomb.nii.gz" in message
    assert peak < 16 << 20, f"reading a {bomb.stat().st_size} byte file took {peak >> 20} MiB"


def test_a_nifti_extension_of_negative_size_does_not_read_the_rest_of_the_file(tmp_path):
    # nibabel reads esize - 8 bytes: read(-9) is the whole rest of the decompressed file
    bomb = _nifti_with_extensions(tmp_path / "negative.nii.gz", [(-1, 8)], tail=96 << 20)
    message, peak = _peak_of_loading(bomb)
    assert "an extension of -1 bytes" in message
    assert peak < 16 << 20, f"took {peak >> 20} MiB"


def test_millions_of_empty_nifti_extensions_are_refused(tmp_path):
    bomb = _nifti_with_extensions(tmp_path / "many.nii.gz", [(8, 0)] * 300_000)
    message, peak = _peak_of_loading(bomb)
    assert "more than 256 extensions" in message
    assert peak < 16 << 20, f"took {peak >> 20} MiB"


def test_a_nifti_with_a_few_small_extensions_still_loads(tmp_path):
    from defacer.io import load_volume

    path = _nifti_with_extensions(tmp_path / "fine.nii.gz", [(32, 24), (48, 40)])
    volume = load_volume(path, strict=False)
    assert volume.raw.shape == (16, 16, 16)
    assert any("2 extension(s)" in w for w in volume.extra["warnings"])


# ----------------------------------------------------------------------------- compressed frames lying about their size
def _compressed_series(folder: Path, kind: str, declare: int = 0, padding: int = 0) -> Path:
    """A 4-slice series, JPEG 2000 (16 bit) or JPEG baseline (8 bit); slice 2's frame header declares ``declare``²,
    after ``padding`` bytes of application segments (JPEG) or of an XML box before the codestream (JP2)."""
    import io
    import struct

    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit

    folder.mkdir(parents=True)
    for k in range(4):
        pixels = (np.arange(4096).reshape(64, 64) % 251 + 3 * k).astype(np.uint16 if kind == "j2k" else np.uint8)
        if kind == "j2k":
            import openjpeg

            frame = bytearray(openjpeg.encode(pixels, codec_format=0))
            if declare and k == 2:  # SIZ: marker, Lsiz, Rsiz, then Xsiz, Ysiz, XOsiz, YOsiz, XTsiz, YTsiz
                struct.pack_into(">IIIIII", frame, frame.index(b"\xff\x51") + 6, declare, declare, 0, 0, declare, declare)
        else:
            from PIL import Image

            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
            frame = bytearray(buffer.getvalue())
            if declare and k == 2:  # SOF0: marker, length, precision, then rows and columns
                struct.pack_into(">HH", frame, frame.index(b"\xff\xc0") + 5, declare, declare)
        if padding and k == 2 and kind == "j2k":  # a JP2 file: signature, file type, a large XML box, then the codestream
            boxes = [b"jP  " + b"\r\n\x87\n", b"ftypjp2 \x00\x00\x00\x00jp2 ", b"xml " + bytes(padding),
                     b"jp2c" + bytes(frame)]
            frame = bytearray(b"".join(struct.pack(">I", len(box) + 4) + box for box in boxes))
        elif padding and k == 2:
            segment = b"\xff\xe5" + struct.pack(">H", 65535) + bytes(65533)
            frame = frame[:2] + segment * (padding // len(segment) + 1) + frame[2:]
        ds = _bomb_slice(k, "3", 64, JPEG2000Lossless if kind == "j2k" else JPEGBaseline8Bit,
                         bits=16 if kind == "j2k" else 8)
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [0.0, 0.0, 2.0 * k]
        ds.PixelData = encapsulate([bytes(frame)])
        ds["PixelData"].VR = "OB"
        ds.save_as(folder / f"IM{k:04d}.dcm", enforce_file_format=True)
    return folder


def _load_in_a_child(folder: Path, timeout: float = 300) -> tuple[str, int]:
    """(what load_volume said, peak resident memory in MiB) of a fresh process reading ``folder``."""
    import os
    import subprocess
    import sys

    # the child's own peak: VmHWM belongs to the memory map exec made; ru_maxrss carries the forking parent's peak
    # over exec (a pytest process grown to 1.4 GB in the whole suite read as the child's 1,447 MiB)
    script = ("import resource, sys\n"
              "def _peak_mib():\n"
              "    try:\n"
              "        with open('/proc/self/status') as status:\n"
              "            return next(int(line.split()[1]) // 1024 for line in status if line.startswith('VmHWM:'))\n"
              "    except (OSError, StopIteration):\n"
              "        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024\n"
              "from defacer.io import load_volume\ntry:\n    load_volume(sys.argv[1], strict=False)\n"
              "    print('LOADED')\nexcept Exception as err:\n    print(type(err).__name__, err)\n"
              "print('PEAK', _peak_mib())\n")
    done = subprocess.run([sys.executable, "-c", script, str(folder)], check=True, capture_output=True, text=True,
                          timeout=timeout,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    peak = int(done.stdout.rsplit("PEAK", 1)[1])
    return done.stdout.rsplit("PEAK", 1)[0].strip(), peak


@pytest.mark.parametrize(("kind", "declare", "padding"), [("j2k", 20000, 0), ("jpeg", 60000, 0),
                                                         ("j2k", 20000, 3 << 20), ("jpeg", 60000, 3 << 20)])
def test_a_compressed_frame_declaring_a_huge_picture_is_refused_before_decoding(tmp_path, kind, declare, padding):
    # padding: the frame header after megabytes of other segments (JPEG APPn, a JP2 XML box) is found too
    message, peak = _load_in_a_child(_compressed_series(tmp_path / "in", kind, declare, padding))
    assert message.startswith("DicomSeriesError") and "IM0002.dcm" in message, message
    assert f"declares {declare} x {declare} pixels" in message and "say 64 x 64" in message, message
    assert peak < 600, f"reading four 64 x 64 slices took {peak} MiB"


@pytest.mark.parametrize("kind", ["j2k", "jpeg"])
def test_compressed_frames_of_the_declared_size_still_decode(tmp_path, kind):
    from defacer.io import load_volume

    volume = load_volume(_compressed_series(tmp_path / "in", kind), strict=False)
    assert volume.raw.shape == (64, 64, 4)


def test_a_huge_nrrd_line_skip_ends_at_the_end_of_the_file(tmp_path):
    # the skip loop read on past the end of the file: 'line skip: 100000000000000' never returned
    path = tmp_path / "skip.nrrd"
    path.write_bytes(b"NRRD0004\ntype: int16\ndimension: 3\nspace: left-posterior-superior\nsizes: 8 8 8\n"
                     b"space directions: (1,0,0) (0,1,0) (0,0,1)\nspace origin: (0,0,0)\nencoding: raw\n"
                     b"endian: little\nline skip: 100000000000000\n\n" + bytes(1024))
    message, _ = _load_in_a_child(path, timeout=60)
    assert message.startswith("InputImageError") and "holds 0 bytes of voxel data" in message, message


def _compressed_nrrd(path: Path, *, byte_skip: int, before: int, kind: str = "gzip") -> np.ndarray:
    """An attached NRRD of 16^3 uint8 voxels whose compressed data holds ``before`` zero bytes, then the voxels."""
    import bz2

    voxels = (np.arange(16 ** 3) % 251).astype(np.uint8)
    packer = zlib.compressobj(1, zlib.DEFLATED, 31) if kind == "gzip" else bz2.BZ2Compressor(9)
    zeros = bytes(1 << 20)
    parts = [packer.compress(zeros) for _ in range(before >> 20)]
    parts += [packer.compress(voxels.tobytes()), packer.flush()]
    header = (f"NRRD0004\ntype: uint8\ndimension: 3\nsizes: 16 16 16\nspace: left-posterior-superior\n"
              f"space directions: (2,0,0) (0,2,0) (0,0,2)\nencoding: {kind}\nbyte skip: {byte_skip}\n\n")
    path.write_bytes(header.encode() + b"".join(parts))
    return voxels


@pytest.mark.parametrize("kind", ["gzip", "bzip2"])
def test_compressed_nrrd_data_is_not_decompressed_far_beyond_its_voxels_to_skip_bytes(tmp_path: Path,
                                                                                     kind: str) -> None:
    """HOSTILE25: every byte a compressed NRRD skips before its voxels is decompressed first, and was not bounded:
    ``byte skip: -1`` (the voxels are the last bytes) decompressed the whole stream (753 bytes of bzip2 are a
    gigabyte of zeros, 6 s; 7.5 MB, ten terabytes, hours), a positive skip as many bytes as it said.  At most
    :data:`defacer.io.nrrd.MAX_SKIPPED_BYTES` are skipped now; a header inside the stream still is."""
    import time

    import defacer.io.nrrd
    from defacer.errors import InputImageError
    from defacer.io import load_volume

    max_skipped = getattr(defacer.io.nrrd, "MAX_SKIPPED_BYTES", 64 * 1024 * 1024)  # (absent before the fix)
    small = tmp_path / "small.nrrd"
    voxels = _compressed_nrrd(small, byte_skip=-1, before=1 << 20, kind=kind)  # a 1 MB prefix: read
    assert np.array_equal(np.asarray(load_volume(small).raw).ravel(order="F"), voxels)
    big = tmp_path / "big.nrrd"
    _compressed_nrrd(big, byte_skip=-1, before=max_skipped + (4 << 20), kind=kind)
    assert big.stat().st_size < 1 << 20
    start = time.perf_counter()
    with pytest.raises(InputImageError, match="byte skip -1") as refused:
        load_volume(big)
    assert "damaged" not in str(refused.value)  # said as what it is, not as a broken stream
    assert time.perf_counter() - start < 30
    far = tmp_path / "far.nrrd"
    _compressed_nrrd(far, byte_skip=max_skipped + 1, before=0, kind=kind)
    with pytest.raises(InputImageError, match="byte skip 67,108,865"):
        load_volume(far)


@pytest.mark.parametrize("bloated", ["private-ob", "private-sequence"])
def test_a_series_whose_headers_carry_bloat_is_read_holding_one_file_at_a_time(tmp_path, bloated):
    """A series whose files each carry a large private OB element (a vendor's raw data, or a bloated header built to
    exhaust memory): the reading of its headers (``defer_size``) still read each such value whole, to learn its VR
    when checking how deep sequences nest, and kept every file's header: the whole series' bloat was held at once
    (80 files with 20 MB each: 1.65 GB to list them, 1.78 GB for the whole ``deface``, against 0.19 GB now); a
    private sequence (read whole whatever ``defer_size``: 20 items of 1 MB in each of 80 files, 1.78 GB) was kept
    whole too.  The headers are listed holding only what names a series, and the volume is read one file at a
    time."""
    from dicom_factory import write_series
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    from defacer.io.dicom_grouping import scan
    from defacer.io.dicom_series import read_dicom_volume

    bloat = 8 << 20
    paths = write_series(tmp_path / "in", np.arange(16 * 16 * 12, dtype=np.int16).reshape(16, 16, 12))
    for path in paths:
        ds = pydicom.dcmread(path)
        block = ds.private_block(0x0011, "BLOAT", create=True)
        if bloated == "private-ob":
            block.add_new(0x01, "OB", bytes(bloat))
        else:
            items = [Dataset() for _ in range(8)]
            for item in items:
                item.add_new(0x00091010, "LO", "BLOAT")
                item.add_new(0x00091011, "OB", bytes(bloat // 8))
            block.add_new(0x02, "SQ", Sequence(items))
        ds.save_as(path)
    tracemalloc.start()
    try:
        listed = scan(tmp_path / "in")
        _, listing_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        volume = read_dicom_volume(tmp_path / "in")
        _, reading_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [len(series.frames) for series in listed.series] == [12]
    assert volume.raw.shape == (16, 16, 12)
    # a few files' worth at once (the file read, the one before it, pydicom's copies), not the twelve files' 96 MB
    assert listing_peak < 5 * bloat, listing_peak
    assert reading_peak < 5 * bloat, reading_peak  # 24-33 MB whether 6, 12 or 24 files


def _declaring(folder: Path, declared: int) -> tuple[list[Path], Path]:
    """A real 4-slice series whose second file's PixelData element declares ``declared`` bytes (it holds 512, the
    file ends there): a damaged or hostile length, which pydicom allocated whole before reading what was left."""
    import struct

    from dicom_factory import write_series

    paths = sorted(write_series(folder, np.arange(16 * 16 * 4, dtype=np.int16).reshape(16, 16, 4)))
    data = bytearray(paths[1].read_bytes())
    at = data.rfind(b"\xe0\x7f\x10\x00OW\x00\x00")
    assert at > 0 and struct.unpack_from("<I", data, at + 8)[0] == 512
    struct.pack_into("<I", data, at + 8, declared)
    paths[1].write_bytes(bytes(data))
    return paths, paths[1]


def _refusal(command: str, folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """The words refusing the DICOM folder ``folder``: of ``anonymize`` (run on it, exit 1 checked, nothing written
    outside its output, the input unchanged: :func:`run_on_input`), or of reading it as ``deface`` does."""
    from defacer.errors import DicomSeriesError
    from defacer.io.dicom_series import read_dicom_volume

    if command == "anonymize":
        out = tmp_path / "out"
        code, text = run_on_input(["anonymize", str(folder), str(out), "--key", KEY], capsys, source=folder, out=out,
                                  allowed={"in", "out"})
        assert code == 1, text
        return text
    with pytest.raises(DicomSeriesError) as refused:
        read_dicom_volume(folder)
    return str(refused.value)


@pytest.mark.parametrize("command", ["anonymize", "deface"])
def test_an_element_declaring_more_bytes_than_the_file_holds_is_refused_before_they_are_allocated(
        tmp_path, capsys, command):
    """SAFE27: a 1 KB slice whose PixelData declares 2 GiB was read by allocating the 2 GiB first (a Python read of
    the declared length): under a memory limit the run said "out of memory. Close other programs", the wrong advice
    for a damaged file; without one ``anonymize`` wrote the damaged slice as if whole.  Each read now asks for no
    more than the file holds, and such a file is refused as damaged, named, nothing written."""
    folder = tmp_path / "in"
    _, bad = _declaring(folder, 0x7FFFFFF0)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    tracemalloc.start()
    try:
        text = _refusal(command, folder, tmp_path, capsys)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert bad.name in text and "declares 2,147,483,632 bytes" in text, text
    assert "nothing was written" in text and "Traceback" not in text, text
    assert peak < PEAK, f"{peak >> 20} MiB"
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


@pytest.mark.parametrize("command", ["anonymize", "deface"])
def test_a_dicom_file_over_the_size_limit_is_refused_before_it_is_read(tmp_path, capsys, monkeypatch, command):
    """SAFE27: a DICOM file is read whole (pixels, every element), whatever its size: one multi-GB file took that
    much memory, and more.  A file over :data:`defacer.io.dicom_files.MAX_FILE_BYTES` (1 GiB; twice a 512^3 volume
    of 32-bit voxels, the most the default voxel limit lets through) is refused from its size, before a byte of it is
    read, named, with what to do; here the limit is lowered to 4 MiB and the file holds a private element of 6 MiB."""
    from dicom_factory import write_series

    from defacer.io.dicom_series import read_dicom_volume

    monkeypatch.setattr(dicom_files, "MAX_FILE_BYTES", 4 << 20, raising=False)
    folder = tmp_path / "in"
    paths = sorted(write_series(folder, np.arange(16 * 16 * 4, dtype=np.int16).reshape(16, 16, 4)))
    ds = pydicom.dcmread(paths[2])
    ds.private_block(0x0011, "HUGE", create=True).add_new(0x01, "OB", bytes(6 << 20))
    ds.save_as(paths[2])
    text = _refusal(command, folder, tmp_path, capsys)
    assert paths[2].name in text and "larger than the 4 MiB defacer reads from one DICOM file" in text, text
    assert "nothing was written" in text and "Traceback" not in text, text
    monkeypatch.setattr(dicom_files, "MAX_FILE_BYTES", 8 << 20, raising=False)
    assert read_dicom_volume(folder).raw.shape == (16, 16, 4)  # under the limit: read as before
