"""Hostile NIfTI, NRRD and MGH/MGZ files against the reader and the command line (issue 11).

The files are generated here (see :mod:`hostile_files`): every header field at absurd values,
truncated and garbage compression, gzip bombs, detached NRRD data files outside the scan.
For each one: a clear :class:`~defacer.errors.DefacerError` (or, for the few files that are
merely odd, a valid volume), no traceback, nothing written, the input unchanged, and memory
bounded by the declared size, which is itself bounded by ``max_voxels``.

Tests marked with a defect number in their docstring are regression tests of that defect of
issue 11 and fail on the code before the fix.
"""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hostile_files import Case, all_cases, base_array, gzip_bomb, mgh_bytes, nifti_bytes, nrrd_bytes
from run_checks import digest, run_cli

from defacer.errors import DefacerError, InputImageError
from defacer.io import load_volume, save_volume

#: Most memory (bytes, as seen by tracemalloc) one hostile file may make the reader allocate.
MEMORY_BOUND = 32_000_000
CASES = all_cases()


def write_case(case: Case, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / case.name
    path.write_bytes(case.data)
    return path


# ----------------------------------------------------------------------------- the battery
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_file_is_refused_in_words_with_bounded_memory(case: Case, tmp_path: Path) -> None:
    """Every hostile file: a DefacerError (or a valid volume if merely odd), memory bounded, nothing touched."""
    path = write_case(case, tmp_path / "in")
    before = digest(tmp_path)
    tracemalloc.start()
    try:
        volume = load_volume(path)
    except DefacerError as err:
        message = str(err)
        assert len(message) > 40 and "Traceback" not in message
        volume = None
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < MEMORY_BOUND, f"reading {case.id} allocated {peak / 1e6:.1f} MB"
    if volume is not None:
        assert case.may_load, f"{case.id} was accepted; it must be refused"
        assert np.all(np.isfinite(volume.affine)) and volume.raw.ndim == 3
    assert digest(tmp_path) == before, "reading changed or created a file"


def test_hostile_files_are_refused_without_numpy_warnings(tmp_path: Path) -> None:
    """Refused in words, and nothing else on the terminal: NRRD space directions or origin of inf/NaN or 1e300,
    sizes of 1e20 and an MGH voxel size of inf printed numpy's 'invalid value encountered in matmul/cast/
    multiply' or 'overflow encountered in det/square' before the message (and the NRRD sizes message showed
    -9223372036854775808 for 1e20)."""
    import warnings

    leaked = {}
    for index, case in enumerate(CASES):
        path = write_case(case, tmp_path / str(index))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                load_volume(path)
            except DefacerError as err:
                assert "-9223372036854775808" not in str(err), (case.id, str(err))
        runtime = [f"{w.message} ({Path(w.filename).name}:{w.lineno})" for w in caught
                   if issubclass(w.category, RuntimeWarning)]
        if runtime:
            leaked[case.id] = runtime
    assert not leaked, leaked


def test_battery_covers_every_format_and_field() -> None:
    """The battery is what it claims: every NIfTI dim/pixdim and scaling/offset field, NRRD fields, MGZ."""
    ids = " ".join(c.id for c in CASES)
    for field in [f"dim{i}" for i in range(8)] + [f"pixdim{i}" for i in (1, 2, 3)] + [
            "scl_slope", "scl_inter", "vox_offset", "datatype", "srow_x", "quatern_b", "qform_code"]:
        assert f"nifti-{field}=" in ids, field
    for field in ("type", "dimension", "sizes", "encoding", "endian", "space", "space_directions",
                  "space_origin", "byte_skip", "line_skip", "kinds"):
        assert f"nrrd-{field}=" in ids, field
    assert "gzip-bomb" in ids and "mgz-truncated" in ids and "nifti-gz-truncated" in ids and "mgz-dims" in ids


# ----------------------------------------------------------------------------- defect 9: size limit
def test_small_gz_declaring_640_cubed_is_refused_before_allocating(tmp_path: Path) -> None:
    """Defect 9: a tiny .nii.gz declaring 640^3 voxels is refused from its header, with the limit and the way out."""
    path = tmp_path / "huge.nii.gz"
    path.write_bytes(gzip.compress(nifti_bytes({"dim[1]": 640, "dim[2]": 640, "dim[3]": 640},
                                               data=b"\0" * 2_000_000)))
    tracemalloc.start()
    try:
        with pytest.raises(InputImageError, match=r"640 x 640 x 640 = 262,144,000 voxels.*limit.*max_voxels"):
            load_volume(path)
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < 8_000_000, f"{peak / 1e6:.1f} MB allocated before refusing"


@pytest.mark.parametrize("make", [
    lambda: ("scan.nii", nifti_bytes()),
    lambda: ("scan.nrrd", nrrd_bytes()),
    lambda: ("scan.mgz", gzip.compress(mgh_bytes())),
], ids=["nifti", "nrrd", "mgz"])
def test_max_voxels_sets_the_limit_for_every_format(make, tmp_path: Path) -> None:
    """Defect 9: ``max_voxels`` refuses above it and accepts up to it, in every format; None lifts it."""
    name, data = make()
    path = tmp_path / name
    path.write_bytes(data)
    voxels = int(np.prod(base_array().shape))
    with pytest.raises(InputImageError, match="more than the limit"):
        load_volume(path, max_voxels=voxels - 1)
    assert load_volume(path, max_voxels=voxels).shape == base_array().shape
    assert load_volume(path, max_voxels=None).shape == base_array().shape
    from defacer.checks import DEFAULT_MAX_VOXELS

    assert DEFAULT_MAX_VOXELS == 512**3


def test_nrrd_gzip_bomb_is_not_decompressed_into_memory(tmp_path: Path) -> None:
    """Defect 9: 64 MB of zeros behind a header declaring 12^3 voxels stops after the declared size."""
    path = tmp_path / "bomb.nrrd"
    path.write_bytes(nrrd_bytes({"encoding": "gzip"}, data=gzip_bomb(64)))
    tracemalloc.start()
    try:
        with pytest.raises(InputImageError, match="more than 3,456 bytes"):
            load_volume(path)
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < 8_000_000


# ----------------------------------------------------------------------------- defect 1: detached NRRD
# (``secret``, a file that is no part of any scan, is a fixture of conftest.py)
def detached(folder: Path, data_file: str, *, comments: int = 0, byte_skip: str = "-1") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    header = folder / "scan.nhdr"
    header.write_bytes(nrrd_bytes({"type": "uchar", "sizes": "8 8 8", "data file": data_file, "byte skip": byte_skip,
                                   "endian": None}, comments=comments, data=b""))
    return header


@pytest.mark.parametrize("name", ["ABSOLUTE", "../private/secret.raw", "sub/../../private/secret.raw",
                                  "./../private/secret.raw", "..\\private\\secret.raw"])
def test_detached_nrrd_may_not_read_files_outside_its_folder(secret: Path, tmp_path: Path, name: str) -> None:
    """Defect 1: a header naming an absolute path or one with '..' is refused by default, before reading."""
    header = detached(tmp_path / "scan", str(secret) if name == "ABSOLUTE" else name)
    before = digest(tmp_path)
    with pytest.raises(InputImageError, match="not a plain file name in the header's own folder"):
        load_volume(header)
    assert digest(tmp_path) == before


def test_detached_nrrd_after_a_megabyte_of_comments_is_still_refused(secret: Path, tmp_path: Path) -> None:
    """Defect 1: the data-file line hidden after >1 MB of comments is found and refused (the web exploit)."""
    header = detached(tmp_path / "scan", str(secret), comments=14_000)
    assert header.stat().st_size > 1_100_000
    with pytest.raises(InputImageError, match="plain file name"):
        load_volume(header)
    with pytest.raises(InputImageError, match="detached NRRD header"):
        load_volume(header, data_files="none")


def test_detached_nrrd_beside_its_header_is_read(tmp_path: Path) -> None:
    """The normal case still works: a bare data-file name in the header's folder."""
    folder = tmp_path / "scan"
    header = detached(folder, "scan.raw", byte_skip="0")
    data = base_array()[:8, :8, :8].astype(np.uint8)
    (folder / "scan.raw").write_bytes(data.tobytes(order="F"))
    volume = load_volume(header, strict=False)
    assert np.array_equal(volume.raw, data)
    with pytest.raises(InputImageError, match="detached NRRD header"):
        load_volume(header, data_files="none")


def test_reading_outside_the_folder_needs_an_explicit_opt_in(secret: Path, tmp_path: Path) -> None:
    """``data_files="anywhere"`` is the only way to follow an absolute data-file path."""
    header = detached(tmp_path / "scan", str(secret), byte_skip="0")
    secret.write_bytes(bytes(range(256)) * 2)
    volume = load_volume(header, strict=False, data_files="anywhere")
    assert volume.raw.shape == (8, 8, 8)


@pytest.mark.parametrize("value", ["LIST", "slice%03d.raw 1 8 1", "", "missing.raw", "."])
def test_lists_patterns_and_missing_data_files_are_refused(tmp_path: Path, value: str) -> None:
    header = detached(tmp_path / "scan", value)
    with pytest.raises(InputImageError):
        load_volume(header)


def test_nrrd_data_file_field_is_found_whatever_its_spelling(secret: Path, tmp_path: Path) -> None:
    """'datafile:' and other spellings of the field are checked like 'data file:'."""
    folder = tmp_path / "scan"
    folder.mkdir()
    for spelling in ("datafile", "Data File", "DATAFILE"):
        header = folder / "scan.nhdr"
        header.write_bytes(nrrd_bytes({"type": "uchar", "sizes": "8 8 8", "endian": None, spelling: str(secret)},
                                      data=b""))
        with pytest.raises(InputImageError):
            load_volume(header)


# ----------------------------------------------------------------------------- defect 14: pixdim
@pytest.mark.parametrize("pixdim", [0.0, -2.0])
def test_zero_or_negative_pixdim_warns_that_geometry_is_invented_and_keeps_the_header(
        tmp_path: Path, pixdim: float, caplog: pytest.LogCaptureFixture) -> None:
    """Defect 14: pixdim 0/negative without sform: a warning, recorded on the volume; output header unchanged."""
    source = tmp_path / "odd.nii"
    source.write_bytes(nifti_bytes({"pixdim[2]": pixdim, "qform_code": 0, "sform_code": 0}))
    volume = load_volume(source)
    warnings = volume.extra["warnings"]
    assert len(warnings) == 2 and "invented" in warnings[0] and "pixdim" in warnings[0]
    assert "orientation is unknown" in warnings[1]  # no qform, no sform
    assert "invented" in caplog.text
    out = tmp_path / "out.nii"
    save_volume(volume, out)
    assert out.read_bytes()[:352] == source.read_bytes()[:352], "the header was not written back byte for byte"


def test_invented_geometry_is_recorded_in_the_provenance(tmp_path: Path) -> None:
    """Defect 14: the warning travels into the provenance (the sidecar), without the file's name."""
    from defacer.pipeline import deface

    class NothingFound:
        name, weights_sha256 = "finds nothing", None

        def predict(self, image_ras: np.ndarray, ras_affine: np.ndarray) -> np.ndarray:
            return np.zeros(image_ras.shape, np.uint8)

    source = tmp_path / "sub-07_odd.nii"
    source.write_bytes(nifti_bytes({"pixdim[3]": 0.0, "qform_code": 0, "sform_code": 0}))
    warnings = deface(load_volume(source), NothingFound()).provenance["warnings"]
    assert any("invented" in w for w in warnings) and not any("sub-07" in w for w in warnings)


def test_zero_pixdim_with_a_valid_sform_says_the_sform_was_used(tmp_path: Path) -> None:
    source = tmp_path / "odd.nii"
    source.write_bytes(nifti_bytes({"pixdim[1]": 0.0}))
    volume = load_volume(source)
    assert "sform" in volume.extra["warnings"][0] and "invented" not in volume.extra["warnings"][0]
    assert volume.spacing == (2.0, 2.0, 2.0)


def test_clean_header_gives_no_warning(tmp_path: Path) -> None:
    source = tmp_path / "fine.nii"
    source.write_bytes(nifti_bytes())
    assert load_volume(source).extra["warnings"] == []


# ----------------------------------------------------------------------------- the command line
@pytest.fixture(scope="module")
def labels_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("labels") / "labels.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(base_array().shape, np.uint8), np.diag([2.0, 2.0, 2.0, 1.0])), str(path))
    return path


REPRESENTATIVE = [
    ("huge.nii.gz", lambda s: gzip.compress(nifti_bytes({"dim[1]": 640, "dim[2]": 640, "dim[3]": 640})),
     "more than the limit"),
    ("garbage.nii.gz", lambda s: b"\x1f\x8b\x08\x00" + bytes(range(256)) * 4, "damaged gzip"),
    ("bomb.nrrd", lambda s: nrrd_bytes({"encoding": "gzip"}, data=gzip_bomb(16)), "more than 3,456 bytes"),
    ("steal.nhdr", lambda s: nrrd_bytes({"data file": str(s), "byte skip": "-1"}, data=b""), "plain file name"),
    ("cut.mgz", lambda s: gzip.compress(mgh_bytes()[:500]), "truncated"),
    ("nan.nii", lambda s: nifti_bytes({"srow_x": float("nan")}), "non-finite"),
]


@pytest.mark.parametrize(("name", "make", "expected"), REPRESENTATIVE, ids=[r[0] for r in REPRESENTATIVE])
def test_cli_refuses_hostile_files_in_words(name, make, expected, tmp_path: Path, secret: Path, labels_file: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """``defacer deface`` on hostile files: exit 1, a message, no traceback, nothing written, input unchanged."""
    folder = tmp_path / "work"
    folder.mkdir()
    source = folder / name
    source.write_bytes(make(secret))
    out = folder / ("out" + "".join(source.suffixes))
    before = digest(tmp_path)
    code, text = run_cli(["deface", str(source), str(out), "--labels", str(labels_file)], capsys, refusals=(expected,))
    assert code == 1, text
    assert digest(tmp_path) == before


def test_cli_in_a_real_process_prints_no_traceback(tmp_path: Path, secret: Path) -> None:
    """The same through a real ``defacer`` process: stderr has the message and no traceback."""
    source = tmp_path / "steal.nhdr"
    source.write_bytes(nrrd_bytes({"data file": str(secret), "byte skip": "-1"}, comments=14_000, data=b""))
    before = digest(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "defacer", "deface", str(source), str(tmp_path / "out.nhdr")],
        check=False, capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert result.returncode == 1
    assert "plain file name" in result.stderr and "Traceback" not in result.stderr
    assert "SECRET" not in result.stdout + result.stderr
    assert digest(tmp_path) == before


# ----------------------------------------------------------------------------- defect 6: empty volumes
@pytest.mark.parametrize("value", [0, 7])
def test_constant_volume_is_a_clear_error_not_a_crash(tmp_path: Path, value: int, labels_file: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """Defect 6: an all-zero (or constant) volume says there is no head, instead of 'cannot convert float NaN'."""
    source = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.full(base_array().shape, value, np.int16), np.diag([2.0, 2.0, 2.0, 1.0])),
             str(source))
    code, text = run_cli(["deface", str(source), str(tmp_path / "out.nii.gz"), "--labels", str(labels_file)], capsys,
                         refusals=("No head found",))
    assert code == 1 and "NaN" not in text
    assert not (tmp_path / "out.nii.gz").exists()
