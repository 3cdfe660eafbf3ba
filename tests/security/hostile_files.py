"""Tiny hostile scans, generated on the fly: NIfTI, NRRD and MGH/MGZ headers with absurd fields.

Every generator returns ``(file name, bytes)`` so a test can write it wherever it wants (a
folder of its own, or an upload body).  The files are a few kB at most; the ones that
*declare* a huge volume never contain it.
"""

from __future__ import annotations

import gzip
import math
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

#: Grid of the well-formed base volume (small but big enough to pass the "is it 3D" checks).
SHAPE = (12, 12, 12)
HUGE = 32767  # largest int16 dimension NIfTI-1 can declare
NAN, INF = math.nan, math.inf


@dataclass(frozen=True)
class Case:
    """One hostile file: an id for the test report, its file name and its bytes."""

    id: str
    name: str
    data: bytes
    #: The reader may accept it (for example NaN pixdim with a valid sform); otherwise it must refuse it.
    may_load: bool = False


def base_array() -> np.ndarray:
    """A small head-like blob: a bright ball in dark air (int16)."""
    grid = np.indices(SHAPE).astype(np.float32) - (np.asarray(SHAPE, np.float32)[:, None, None, None] - 1) / 2
    ball = (grid**2).sum(axis=0) < 16
    return np.where(ball, 800, 5).astype(np.int16)


# ----------------------------------------------------------------------------- NIfTI-1
def nifti_bytes(fields: dict[str, object] | None = None, *, data: bytes | None = None) -> bytes:
    """A single-file NIfTI-1 image (``n+1``) whose header fields are overwritten *after* nibabel built it.

    The fields are written into the raw header array, so nibabel's setters never get the
    chance to refuse or fix an absurd value.
    """
    import nibabel as nib

    array = base_array()
    image = nib.Nifti1Image(array, np.diag([2.0, 2.0, 2.0, 1.0]))
    header = image.header
    header.set_data_dtype(np.int16)
    header["vox_offset"] = 352
    header["qform_code"], header["sform_code"] = 1, 1
    raw = header.binaryblock
    structured = np.frombuffer(bytearray(raw), dtype=header.template_dtype).copy()
    for key, value in (fields or {}).items():
        name, _, index = key.partition("[")
        if index:
            structured[name][0][int(index.rstrip("]"))] = value
        else:
            structured[name] = value
    block = structured.tobytes()
    body = array.tobytes(order="F") if data is None else data
    return block + b"\0" * 4 + body


def nifti_cases() -> Iterator[Case]:
    """Every dimension, voxel size, scaling, offset and type field of a NIfTI-1 header at absurd values."""
    for axis in range(8):
        for value in (0, -1, HUGE):
            if axis == 0 and value == HUGE:
                value = 8
            # dim[4..7] beyond dim[0] = 3 are ignored, as the standard says
            yield Case(f"nifti-dim{axis}={value}", "scan.nii", nifti_bytes({f"dim[{axis}]": value}), may_load=axis > 3)
    yield Case("nifti-dims-huge-3d", "scan.nii", nifti_bytes({"dim[1]": HUGE, "dim[2]": HUGE, "dim[3]": HUGE}))
    for axis in range(1, 4):
        for value in (0.0, -2.0, NAN, INF, 1e30, 1e-30):
            yield Case(f"nifti-pixdim{axis}={value}-sform", "scan.nii",
                       nifti_bytes({f"pixdim[{axis}]": value}), may_load=value in (0.0, -2.0, NAN, INF, 1e30, 1e-30))
            yield Case(f"nifti-pixdim{axis}={value}-noform", "scan.nii",
                       nifti_bytes({f"pixdim[{axis}]": value, "qform_code": 0, "sform_code": 0}),
                       may_load=value in (0.0, -2.0))
    for value in (0.0, NAN, INF, -INF, 1e38, -1e38):
        yield Case(f"nifti-scl_slope={value}", "scan.nii", nifti_bytes({"scl_slope": value}), may_load=True)
        yield Case(f"nifti-scl_inter={value}", "scan.nii", nifti_bytes({"scl_inter": value}), may_load=True)
    for value in (0.0, -1.0, 351.0, NAN, INF, 1e30, 1e9, 353.5):
        yield Case(f"nifti-vox_offset={value}", "scan.nii", nifti_bytes({"vox_offset": value}),
                   may_load=value in (0.0, 351.0))
    for value in (0, 1, 128, 2304, 1792, 32767, -1):
        yield Case(f"nifti-datatype={value}", "scan.nii", nifti_bytes({"datatype": value}))
    for value in (0, -1, 3, 1000):
        yield Case(f"nifti-bitpix={value}", "scan.nii", nifti_bytes({"bitpix": value}), may_load=True)
    for field in ("srow_x", "srow_y", "srow_z"):
        for value in (NAN, INF, 0.0, 1e30):
            yield Case(f"nifti-{field}={value}", "scan.nii", nifti_bytes({field: value}), may_load=True)
    for field in ("quatern_b", "quatern_c", "quatern_d", "qoffset_x"):
        for value in (NAN, INF, 1e30):
            yield Case(f"nifti-{field}={value}", "scan.nii", nifti_bytes({field: value, "sform_code": 0}),
                       may_load=True)
    for field in ("qform_code", "sform_code"):
        for value in (-1, 99, 32767):
            yield Case(f"nifti-{field}={value}", "scan.nii", nifti_bytes({field: value}), may_load=True)
    yield Case("nifti-magic-bad", "scan.nii", nifti_bytes({"magic": b"n+9"}), may_load=True)
    yield Case("nifti-sizeof-bad", "scan.nii", nifti_bytes({"sizeof_hdr": 1000}))
    good = nifti_bytes()
    for cut in (10, 200, 347, 352, 400, len(good) - 1):
        yield Case(f"nifti-truncated-at-{cut}", "scan.nii", good[:cut])
    packed = gzip.compress(good)
    yield Case("nifti-gz-valid", "scan.nii.gz", packed, may_load=True)
    for cut in (5, 30, len(packed) // 2):
        yield Case(f"nifti-gz-truncated-at-{cut}", "scan.nii.gz", packed[:cut])
    # only the gzip trailer (CRC, length) is missing: every voxel is there
    yield Case("nifti-gz-no-trailer", "scan.nii.gz", packed[:-4], may_load=True)
    yield Case("nifti-gz-garbage", "scan.nii.gz", b"\x1f\x8b\x08\x00" + bytes(range(256)) * 4)
    yield Case("nifti-gz-huge-dims", "scan.nii.gz",
               gzip.compress(nifti_bytes({"dim[1]": 640, "dim[2]": 640, "dim[3]": 640})))


# ----------------------------------------------------------------------------- NRRD
def nrrd_bytes(fields: dict[str, str | None] | None = None, *, data: bytes | None = None, comments: int = 0,
               blank_line: bool = True) -> bytes:
    """An attached NRRD (raw int16 little-endian) with fields replaced (``None`` removes a field)."""
    array = base_array()
    header: dict[str, str | None] = {
        "type": "short", "dimension": "3", "space": "left-posterior-superior",
        "sizes": " ".join(map(str, SHAPE)), "space directions": "(2,0,0) (0,2,0) (0,0,2)",
        "kinds": "domain domain domain", "endian": "little", "encoding": "raw", "space origin": "(0,0,0)",
    }
    header.update(fields or {})
    lines = ["NRRD0004"] + ["# " + "x" * 78] * comments
    lines += [f"{key}: {value}" for key, value in header.items() if value is not None]
    text = "\n".join(lines) + "\n" + ("\n" if blank_line else "")
    return text.encode("latin-1") + (array.tobytes(order="F") if data is None else data)


def nrrd_cases() -> Iterator[Case]:
    """Every NRRD field at absurd values, broken encodings, and oversized headers."""
    values: dict[str, list[str]] = {
        "type": ["block", "quaternion", "", "unsigned char x"],
        "dimension": ["0", "-1", "2", "4", "99", "three"],
        "sizes": ["0 12 12", "-1 12 12", "12 12", "100000 100000 100000", "a b c", "12 12 12 12",
                  "99999999999999999999 1 1"],
        "encoding": ["zstd", "gzip", "bzip2", "hex", ""],
        "endian": ["middle", ""],
        "space": ["scanner-xyz", "3D-right-handed-time", "left-posterior-superior-time"],
        "space directions": ["(nan,0,0) (0,2,0) (0,0,2)", "(0,0,0) (0,0,0) (0,0,0)", "(2,0) (0,2)",
                             "(inf,0,0) (0,2,0) (0,0,2)", "none none none", "(1e300,0,0) (0,1e300,0) (0,0,1e300)"],
        "space origin": ["(nan,0,0)", "(inf,inf,inf)", "(0,0)", "garbage"],
        "byte skip": ["-2", "-1", "1000000000000", "x"],
        "line skip": ["-1", "100000", "1e3"],
        "kinds": ["RGB-color domain domain", "list"],
    }
    for field, options in values.items():
        for value in options:
            may = field in ("kinds",) or (field == "byte skip" and value == "-1")
            yield Case(f"nrrd-{field.replace(' ', '_')}={value[:20]}", "scan.nrrd", nrrd_bytes({field: value}),
                       may_load=may)
    for field in ("type", "dimension", "sizes", "encoding", "endian"):
        yield Case(f"nrrd-no-{field.replace(' ', '_')}", "scan.nrrd", nrrd_bytes({field: None}))
    yield Case("nrrd-no-geometry", "scan.nrrd", nrrd_bytes({"space directions": None, "space": None}))
    yield Case("nrrd-spacings-zero", "scan.nrrd",
               nrrd_bytes({"space directions": None, "space": None, "spacings": "0 0 0"}))
    yield Case("nrrd-spacings-negative-nan", "scan.nrrd",
               nrrd_bytes({"space directions": None, "space": None, "spacings": "-1 nan 2"}))
    good = nrrd_bytes()
    for cut in (3, 20, len(good) - len(base_array().tobytes()) - 1, len(good) - 1):
        yield Case(f"nrrd-truncated-at-{cut}", "scan.nrrd", good[:cut])
    yield Case("nrrd-extra-data", "scan.nrrd", good + b"\0" * 100)
    yield Case("nrrd-no-blank-line", "scan.nrrd", nrrd_bytes(blank_line=False, data=b""))
    yield Case("nrrd-header-5MB-of-comments", "scan.nrrd", nrrd_bytes(comments=5 * 1024 * 1024 // 80))
    yield Case("nrrd-binary-garbage-after-magic", "scan.nrrd", b"NRRD0004\n" + bytes(range(256)) * 64)
    yield Case("nrrd-duplicate-field", "scan.nrrd",
               nrrd_bytes().replace(b"type: short\n", b"type: short\ntype: float\n", 1))
    raw = base_array().tobytes(order="F")
    packed = gzip.compress(raw)
    yield Case("nrrd-gzip-valid", "scan.nrrd", nrrd_bytes({"encoding": "gzip"}, data=packed), may_load=True)
    yield Case("nrrd-gzip-truncated", "scan.nrrd", nrrd_bytes({"encoding": "gzip"}, data=packed[: len(packed) // 2]))
    yield Case("nrrd-gzip-garbage", "scan.nrrd", nrrd_bytes({"encoding": "gzip"}, data=b"\x1f\x8b\x08\x00" + raw[:64]))
    yield Case("nrrd-gzip-bomb", "scan.nrrd", nrrd_bytes({"encoding": "gzip"}, data=gzip_bomb()))
    # byte skip -1: the voxels are the *last* bytes; only that many are ever held
    yield Case("nrrd-gzip-bomb-byte-skip-minus-1", "scan.nrrd",
               nrrd_bytes({"encoding": "gzip", "byte skip": "-1"}, data=gzip_bomb()), may_load=True)
    yield Case("nrrd-raw-byte-skip-minus-1-short", "scan.nrrd", nrrd_bytes({"byte skip": "-1"}, data=raw[:100]))
    yield Case("nrrd-ascii-short", "scan.nrrd", nrrd_bytes({"encoding": "ascii"}, data=b"1 2 3 4"))
    yield Case("nrrd-ascii-words", "scan.nrrd", nrrd_bytes({"encoding": "ascii"}, data=b"one two three " * 600))


def gzip_bomb(megabytes: int = 64) -> bytes:
    """A gzip stream of ``megabytes`` MB of zeros (about 64 kB compressed per 64 MB)."""
    compressor = __import__("zlib").compressobj(9, 8, 31)
    block = b"\0" * (1 << 20)
    return b"".join(compressor.compress(block) for _ in range(megabytes)) + compressor.flush()


# ----------------------------------------------------------------------------- MGH / MGZ
def mgh_bytes(dims: tuple[int, int, int, int] = (*SHAPE, 1), *, kind: int = 4, spacing=(2.0, 2.0, 2.0),
              cosines: tuple[float, ...] = (-1, 0, 0, 0, 0, 1, 0, -1, 0), good_ras: int = 1,
              data: bytes | None = None) -> bytes:
    """An MGH file (version 1, big-endian) with the given header values; ``kind`` 4 is int16."""
    header = struct.pack(">7i", 1, *dims, kind, 0) + struct.pack(">h", good_ras)
    header += struct.pack(">3f", *spacing) + struct.pack(">9f", *cosines) + struct.pack(">3f", 0, 0, 0)
    header += b"\0" * (284 - len(header))
    if data is None:
        data = base_array().astype(">i2").tobytes(order="F")
    return header + data


def mgh_cases() -> Iterator[Case]:
    """Truncated MGH/MGZ, absurd dimensions, types and voxel sizes."""
    good = mgh_bytes()
    yield Case("mgz-valid", "scan.mgz", gzip.compress(good), may_load=True)
    for cut in (10, 283, 284, len(good) - 1):
        yield Case(f"mgz-truncated-at-{cut}", "scan.mgz", gzip.compress(good[:cut]))
    packed = gzip.compress(good)
    yield Case("mgz-gzip-cut", "scan.mgz", packed[: len(packed) // 2])
    for dims in ((0, 12, 12, 1), (-1, 12, 12, 1), (20000, 20000, 20000, 1), (12, 12, 12, 100000), (640, 640, 640, 1)):
        yield Case(f"mgz-dims={dims}", "scan.mgz", gzip.compress(mgh_bytes(dims)))
    for kind in (-1, 2, 99):
        yield Case(f"mgz-type={kind}", "scan.mgz", gzip.compress(mgh_bytes(kind=kind)))
    for spacing in ((0.0, 0.0, 0.0), (NAN, 1.0, 1.0), (INF, 1.0, 1.0), (-1.0, -1.0, -1.0)):
        yield Case(f"mgz-spacing={spacing}", "scan.mgz", gzip.compress(mgh_bytes(spacing=spacing)), may_load=True)
    yield Case("mgz-cosines-nan", "scan.mgz", gzip.compress(mgh_bytes(cosines=(NAN,) * 9)), may_load=True)
    yield Case("mgz-cosines-zero", "scan.mgz", gzip.compress(mgh_bytes(cosines=(0.0,) * 9)), may_load=True)
    yield Case("mgh-version-2", "scan.mgh", struct.pack(">i", 2) + good[4:], may_load=True)


def all_cases() -> list[Case]:
    """The whole battery."""
    return [*nifti_cases(), *nrrd_cases(), *mgh_cases()]
