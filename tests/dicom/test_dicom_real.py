"""The real DICOM head series in ../shared/data: geometry as dcm2niix sees it, and a clean
round trip (defaced-like pixels + de-identified headers) that pydicom, dcm2niix and DCMTK read."""

from __future__ import annotations

import itertools
import shutil
import subprocess

import nibabel as nib
import numpy as np
import pydicom
import pytest

from defacer.io.dicom_series import read_dicom_volume, write_dicom_volume
from defacer.phi import DeidOptions, Pseudonymizer, Scrubber

pytestmark = pytest.mark.realdata
SERIES = ["fnndsc-3yo_T1w_dicom", "decubitus-HFS_T1w_dicom", "ge-headct_tilted_dicom", "studyforrest-defaced"]
_EXTRACTED: dict[str, object] = {}


def series_folder(shared_data, name, tmp_path_factory):
    """The folder of a real series; the already-defaced studyforrest series (implicit VR) is unpacked into tmp."""
    if name != "studyforrest-defaced":
        return shared_data / "heads" / name
    if name not in _EXTRACTED:
        import tarfile

        target = tmp_path_factory.mktemp("studyforrest")
        with tarfile.open(shared_data / "negative" / "studyforrest-defaced_T1w_dicom.tgz") as archive:
            archive.extractall(target, filter="data")
        _EXTRACTED[name] = target
    return _EXTRACTED[name]
#: dcm2niix stores an orthonormalised qform/sform; corners agree to this many mm on untilted series.
CORNER_TOLERANCE_MM = 0.01


def dcm2niix(folder, out_dir):
    if shutil.which("dcm2niix") is None:
        pytest.skip("dcm2niix is not installed (apt-get install dcm2niix)")
    out_dir.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["dcm2niix", "-z", "n", "-b", "n", "-o", str(out_dir), "-f", "vol", str(folder)],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return nib.as_closest_canonical(nib.load(str(out_dir / "vol.nii")))


def canonical(volume):
    return nib.as_closest_canonical(nib.Nifti1Image(volume.values(), volume.affine))


def corner_distance(a, b):
    corners = np.array([[i, j, k, 1] for i, j, k in itertools.product(*[(0, n - 1) for n in a.shape])]).T
    return float(np.abs(a.affine @ corners - b.affine @ corners).max())


@pytest.mark.parametrize("name", SERIES)
def test_real_series_geometry_matches_dcm2niix(shared_data, tmp_path, tmp_path_factory, name):
    folder = series_folder(shared_data, name, tmp_path_factory)
    volume = read_dicom_volume(folder)
    ours, theirs = canonical(volume), dcm2niix(folder, tmp_path)
    assert ours.shape == theirs.shape
    assert np.array_equal(np.asarray(ours.dataobj), np.asarray(theirs.dataobj, dtype=np.float32))
    if volume.extra["gantry_tilt_deg"] < 0.5:
        assert corner_distance(ours, theirs) < CORNER_TOLERANCE_MM
    else:
        # dcm2niix's uncorrected output for tilted CT scales rows by 1/cos(tilt) and uses the first gap as
        # spacing; ours follows ImageOrientationPatient/PixelSpacing and spans first to last slice exactly.
        assert np.allclose(ours.affine[:3, 0], theirs.affine[:3, 0], atol=1e-4)
        positions = volume.extra["slice_positions_lps"]
        lps = np.diag([-1, -1, 1]) @ volume.affine[:3]
        k_last = volume.shape[2] - 1
        assert np.allclose(lps @ [0, 0, 0, 1], positions[0], atol=1e-4)
        assert np.allclose(lps @ [0, 0, k_last, 1], positions[-1], atol=1e-4)


@pytest.mark.parametrize("name", SERIES)
def test_real_series_round_trip_reads_back_identically_everywhere(shared_data, tmp_path, tmp_path_factory, name):
    folder = series_folder(shared_data, name, tmp_path_factory)
    volume = read_dicom_volume(folder)
    raw = volume.raw.copy()
    raw[: raw.shape[0] // 4, : raw.shape[1] // 4, :] = raw.min()  # a stand-in for defaced voxels
    scrubber = Scrubber(DeidOptions(clean_recognizable_visual_features=True), Pseudonymizer(b"real-data-key-0123456789"))
    out = tmp_path / "out"
    written = write_dicom_volume(volume.with_raw(raw), out, deid=scrubber)
    assert len(written) == len([p for p in folder.rglob("*") if p.is_file()])

    again = read_dicom_volume(out)
    assert np.array_equal(again.raw, raw) and np.allclose(again.affine, volume.affine)
    for path in written:
        ds = pydicom.dcmread(path)
        assert ds.PatientIdentityRemoved == "YES" and ds.RecognizableVisualFeatures == "NO"
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID

    ref = dcm2niix(folder, tmp_path / "ref")
    converted = dcm2niix(out, tmp_path / "conv")
    assert np.allclose(converted.affine, ref.affine, atol=1e-4)
    assert np.array_equal(np.asarray(converted.dataobj), np.asarray(canonical(volume.with_raw(raw)).dataobj))

    if shutil.which("dcmdump") is None:
        pytest.skip("DCMTK is not installed (apt-get install dcmtk)")
    result = subprocess.run(["dcmdump", "-q", "+r", "+sd", str(out)], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0
    assert not [line for line in (result.stdout + result.stderr).splitlines() if line.startswith(("E:", "F:"))]


def test_original_identifiers_of_a_real_header_are_gone(shared_data, tmp_path):
    folder = shared_data / "heads" / "fnndsc-3yo_T1w_dicom"
    source = pydicom.dcmread(min(folder.iterdir()))
    volume = read_dicom_volume(folder)
    written = write_dicom_volume(volume, tmp_path / "out", deid=Scrubber(DeidOptions(), Pseudonymizer(b"k" * 32)))
    data = written[0].read_bytes()
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID",
                    "PatientBirthDate", "StudyDate", "PatientID"):
        value = str(source.get(keyword, "") or "")
        if len(value) >= 6:
            assert value.encode() not in data, keyword


def test_real_series_anonymized_headers_only_stay_valid_for_dcmtk_and_dcm2niix(shared_data, tmp_path):
    from defacer.io.dicom_series import anonymize_files

    folder = shared_data / "heads" / "decubitus-HFS_T1w_dicom"
    written, skipped = anonymize_files(folder, tmp_path / "anon", Scrubber(DeidOptions(), Pseudonymizer(b"k" * 32)))
    assert len(written) == len(list(folder.iterdir())) and not skipped
    assert np.array_equal(read_dicom_volume(tmp_path / "anon").raw, read_dicom_volume(folder).raw)
    converted = dcm2niix(tmp_path / "anon", tmp_path / "conv")
    assert np.array_equal(np.asarray(converted.dataobj), np.asarray(dcm2niix(folder, tmp_path / "ref").dataobj))
    if shutil.which("dcmdump") is None:
        pytest.skip("DCMTK is not installed (apt-get install dcmtk)")
    result = subprocess.run(["dcmdump", "-q", "+r", "+sd", str(tmp_path / "anon")], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0
    assert not [line for line in (result.stdout + result.stderr).splitlines() if line.startswith(("E:", "F:"))]
