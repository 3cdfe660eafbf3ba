"""Writing DICOM series back: new pixels in every instance, nothing else changed, inputs safe."""

from __future__ import annotations

import hashlib

import numpy as np
import pydicom
import pytest
from dicom_factory import write_enhanced, write_series
from pydicom.uid import ExplicitVRLittleEndian, RLELossless

from defacer.errors import DicomSeriesError, OutputError
from defacer.io import load_volume, save_volume
from defacer.io.dicom_series import read_dicom_volume, write_dicom_volume
from defacer.phi import DeidOptions, Pseudonymizer, Scrubber


def ramp(shape=(12, 10, 6), dtype=np.uint16):
    return (np.arange(np.prod(shape)).reshape(shape) % 2000).astype(dtype)


def digest(paths):
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def test_round_trip_keeps_modified_pixels_exactly_and_geometry(tmp_path):
    paths = write_series(tmp_path / "in", ramp(), row_cos=(0, 1, 0), col_cos=(0, 0, -1))
    before = digest(paths)
    volume = read_dicom_volume(tmp_path / "in")
    raw = volume.raw.copy()
    raw[:4, :4, :] = 0
    written = write_dicom_volume(volume.with_raw(raw), tmp_path / "out")
    assert len(written) == 6 and all(p.exists() for p in written)
    again = read_dicom_volume(tmp_path / "out")
    assert np.array_equal(again.raw, raw)
    assert np.allclose(again.affine, volume.affine)
    assert digest(paths) == before


def test_without_deidentification_every_other_attribute_is_untouched(tmp_path):
    paths = write_series(tmp_path / "in", ramp(), shuffle_names=False)
    volume = read_dicom_volume(tmp_path / "in")
    write_dicom_volume(volume.with_raw(volume.raw[::-1].copy()), tmp_path / "out")
    for path in paths:
        a = pydicom.dcmread(path)
        b = pydicom.dcmread(tmp_path / "out" / path.name)
        assert a.PixelData != b.PixelData
        del a.PixelData, b.PixelData
        assert a == b
        assert a.file_meta.MediaStorageSOPInstanceUID == b.file_meta.MediaStorageSOPInstanceUID


def test_save_volume_dispatches_a_dicom_volume_to_the_series_writer(tmp_path):
    write_series(tmp_path / "in", ramp())
    volume = load_volume(tmp_path / "in")
    save_volume(volume, tmp_path / "out")
    assert np.array_equal(load_volume(tmp_path / "out").raw, volume.raw)
    with pytest.raises(OutputError, match="--force"):
        save_volume(volume, tmp_path / "out")
    save_volume(volume, tmp_path / "out", force=True)


def test_values_beyond_the_stored_bits_are_clipped(tmp_path):
    write_series(tmp_path / "in", ramp(dtype=np.int16), extra={"BitsStored": 12, "HighBit": 11})
    volume = read_dicom_volume(tmp_path / "in")
    raw = volume.raw.copy()
    raw[0, 0, 0], raw[1, 0, 0] = 5000, -5000
    write_dicom_volume(volume.with_raw(raw), tmp_path / "out")
    again = read_dicom_volume(tmp_path / "out").raw
    assert again[0, 0, 0] == 2047 and again[1, 0, 0] == -2048


def test_per_slice_scaling_is_requantised_with_each_slice_scaling(tmp_path):
    scaling = [(0.5 + k / 4, float(10 * k)) for k in range(6)]
    write_series(tmp_path / "in", ramp(), scaling=scaling)
    volume = read_dicom_volume(tmp_path / "in")
    physical = volume.raw.copy()
    physical[:3] = 10.0 * np.arange(6, dtype=np.float32)  # each slice's intercept: stored value 0
    write_dicom_volume(volume.with_raw(physical), tmp_path / "out")
    again = read_dicom_volume(tmp_path / "out")
    assert np.allclose(again.values(), physical, atol=max(s for s, _ in scaling) / 2 + 1e-4)
    for path in (tmp_path / "out").glob("*.dcm"):
        assert pydicom.dcmread(path).pixel_array[:, :3].max() == 0


def test_compressed_input_is_written_as_explicit_vr_little_endian(tmp_path):
    paths = write_series(tmp_path / "in", ramp())
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.compress(RLELossless)
        ds.save_as(path)
    volume = read_dicom_volume(tmp_path / "in")
    raw = volume.raw.copy()
    raw[5:, 5:, 2] = 7
    written = write_dicom_volume(volume.with_raw(raw), tmp_path / "out")
    assert {str(pydicom.dcmread(p).file_meta.TransferSyntaxUID) for p in written} == {ExplicitVRLittleEndian}
    assert np.array_equal(read_dicom_volume(tmp_path / "out").raw, raw)


def test_enhanced_multiframe_is_written_back_in_one_file(tmp_path):
    write_enhanced(tmp_path / "in" / "mf.dcm", ramp())
    volume = read_dicom_volume(tmp_path / "in")
    raw = volume.raw.copy()
    raw[:, :, 0] = 1
    written = write_dicom_volume(volume.with_raw(raw), tmp_path / "out")
    assert len(written) == 1
    assert np.array_equal(read_dicom_volume(tmp_path / "out").raw, raw)


def test_deidentified_output_has_new_uids_and_the_visual_features_marking(tmp_path):
    write_series(tmp_path / "in", ramp())
    volume = read_dicom_volume(tmp_path / "in")
    scrubber = Scrubber(DeidOptions(clean_recognizable_visual_features=True), Pseudonymizer(b"k" * 32))
    written = write_dicom_volume(volume, tmp_path / "out", deid=scrubber)
    assert [p.name for p in written] == [f"IM{n:05d}.dcm" for n in range(1, 7)]
    ds = pydicom.dcmread(written[0])
    original = volume.header
    assert ds.RecognizableVisualFeatures == "NO" and ds.PatientIdentityRemoved == "YES"
    assert ds.SeriesInstanceUID != original.SeriesInstanceUID
    assert "Synthetic" not in str(ds.PatientName)
    assert np.array_equal(read_dicom_volume(tmp_path / "out").raw, volume.raw)


def test_output_overlapping_the_input_is_refused_even_with_force(tmp_path):
    write_series(tmp_path / "in", ramp())
    volume = read_dicom_volume(tmp_path / "in")
    for target in (tmp_path / "in", tmp_path / "in" / "sub", tmp_path):
        with pytest.raises(OutputError, match="overlaps"):
            write_dicom_volume(volume, target, force=True)
    assert len(list((tmp_path / "in").iterdir())) == 6


def test_a_failure_while_writing_leaves_no_output(tmp_path):
    paths = write_series(tmp_path / "in", ramp())
    volume = read_dicom_volume(tmp_path / "in")
    ds = pydicom.dcmread(paths[3])
    ds.BurnedInAnnotation = "YES"
    ds.save_as(paths[3])
    with pytest.raises(DicomSeriesError, match="BurnedInAnnotation"):
        write_dicom_volume(volume, tmp_path / "out", deid=Scrubber(DeidOptions(), Pseudonymizer(b"k" * 32)))
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".defacer-tmp*"))


def test_volumes_not_read_from_dicom_are_refused(tmp_path):
    from defacer.volume import Volume

    with pytest.raises(DicomSeriesError, match="NIfTI"):
        write_dicom_volume(Volume(np.zeros((4, 4, 4)), np.eye(4)), tmp_path / "out")


def test_enhanced_multiframe_with_per_frame_scaling_round_trips(tmp_path):
    scaling = [(1.0 + k / 2, float(-5 * k)) for k in range(6)]
    write_enhanced(tmp_path / "in" / "mf.dcm", ramp(), scaling=scaling)
    volume = read_dicom_volume(tmp_path / "in")
    assert volume.extra["per_slice_scaling"] is not None
    expected = np.stack([ramp()[:, :, k] * s + i for k, (s, i) in enumerate(scaling)], axis=2)
    assert np.allclose(volume.values(), expected)
    physical = volume.raw.copy()
    physical[:2] = -5.0 * np.arange(6)  # stored 0 in every frame
    write_dicom_volume(volume.with_raw(physical), tmp_path / "out")
    again = read_dicom_volume(tmp_path / "out")
    assert np.allclose(again.values(), physical)
    assert pydicom.dcmread(tmp_path / "out" / "mf.dcm").pixel_array[:, :, :2].max() == 0


#: A PE ("MZ") header in the preamble: a DICOM/executable polyglot (CVE-2019-11687).
HOSTILE_PREAMBLE = b"MZ\x90\x00" + b"PatientName=Smith^John".ljust(124, b"\x00")


def _preamble_series(tmp_path):
    from dicom_factory import rewrite_raw

    paths = write_series(tmp_path / "in", ramp())
    for path in paths:
        rewrite_raw(path, preamble=HOSTILE_PREAMBLE)
    assert all(p.read_bytes()[:128] == HOSTILE_PREAMBLE for p in paths)
    return paths


@pytest.mark.parametrize("deidentify", [False, True], ids=["pixels-only", "deidentified"])
def test_written_series_never_carry_the_input_preamble(tmp_path, deidentify):
    paths = _preamble_series(tmp_path)
    before = digest(paths)
    volume = read_dicom_volume(tmp_path / "in")
    deid = Scrubber(DeidOptions(clean_recognizable_visual_features=True), Pseudonymizer(b"k" * 32)) if deidentify else None
    written = write_dicom_volume(volume.with_raw(volume.raw[::-1].copy()), tmp_path / "out", deid=deid)
    for path in written:
        data = path.read_bytes()
        assert data[:132] == b"\x00" * 128 + b"DICM"
        assert b"Smith" not in data
    assert digest(paths) == before


def test_anonymized_files_never_carry_the_input_preamble(tmp_path):
    from defacer.io.dicom_series import anonymize_files

    paths = _preamble_series(tmp_path)
    before = digest(paths)
    written, _ = anonymize_files(tmp_path / "in", tmp_path / "out", Scrubber(DeidOptions(), Pseudonymizer(b"k" * 32)))
    assert written and all(p.read_bytes()[:132] == b"\x00" * 128 + b"DICM" for p in written)
    assert digest(paths) == before


def _odd_series(tmp_path):
    """A series as other software writes it: Command Set elements, a meta element in the body, no
    MediaStorageSOPInstanceUID in the file meta."""
    from dicom_factory import rewrite_raw

    paths = write_series(tmp_path / "in", ramp())
    for path in paths:
        rewrite_raw(path, command_set=True, meta_in_body=True, drop_meta=("MediaStorageSOPInstanceUID",))
    assert 0x00000100 in pydicom.dcmread(paths[0])
    return paths


def _stored_tags(path):
    ds = pydicom.dcmread(path)
    return [el.tag for el in ds.iterall()], ds


@pytest.mark.parametrize("deidentify", [False, True], ids=["pixels-only", "deidentified"])
def test_command_set_and_misplaced_meta_elements_are_stripped_when_defacing(tmp_path, deidentify):
    paths = _odd_series(tmp_path)
    before = digest(paths)
    volume = read_dicom_volume(tmp_path / "in")
    deid = Scrubber(DeidOptions(clean_recognizable_visual_features=True), Pseudonymizer(b"k" * 32)) if deidentify else None
    written = write_dicom_volume(volume.with_raw(volume.raw[::-1].copy()), tmp_path / "out", deid=deid)
    for path in written:
        tags, ds = _stored_tags(path)
        assert not [t for t in tags if t.group in (0x0000, 0x0002)]
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert np.array_equal(read_dicom_volume(tmp_path / "out").raw, volume.raw[::-1])
    assert digest(paths) == before


def test_command_set_elements_are_stripped_when_anonymizing(tmp_path):
    from defacer.io.dicom_series import anonymize_files

    _odd_series(tmp_path)
    written, skipped = anonymize_files(tmp_path / "in", tmp_path / "out", Scrubber(DeidOptions(), Pseudonymizer(b"k" * 32)))
    assert len(written) == 6 and not skipped
    for path in written:
        tags, ds = _stored_tags(path)
        assert not [t for t in tags if t.group in (0x0000, 0x0002)]
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
