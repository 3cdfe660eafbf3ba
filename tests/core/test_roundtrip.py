"""Round trips: every format and orientation keeps geometry, dtype, header and untouched voxels."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
import pytest
from feature_box import allowed_region

from defacer.cli.main import main
from defacer.io import load_volume, save_volume
from defacer.phantom import make_phantom, save_phantom

ORIENTATIONS = ["RAS", "LPS", "ASL", "PIR", "LIA"]
SUFFIXES = [".nii", ".nii.gz", ".nrrd", ".nhdr", ".mgz"]


def _write_as(volume_path: Path, suffix: str, tmp_path: Path, name: str) -> Path:
    """Convert a NIfTI phantom to another format with its geometry (test fixture writer)."""
    image = nib.load(str(volume_path))
    data = np.asarray(image.dataobj)
    out = tmp_path / f"{name}{suffix}"
    if suffix in (".nii", ".nii.gz"):
        nib.save(nib.Nifti1Image(data, image.affine, image.header), str(out))
    elif suffix == ".mgz":
        nib.save(nib.MGHImage(data.astype(np.int16), image.affine), str(out))
    else:
        lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ image.affine
        header = {"space": "left-posterior-superior", "space directions": lps[:3, :3].T, "space origin": lps[:3, 3],
                  "encoding": "gzip", "kinds": ["domain"] * 3}
        nrrd.write(str(out), data, header, index_order="F", detached_header=suffix == ".nhdr")
    return out


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path, object]]:
    folder = tmp_path_factory.mktemp("phantoms")
    made = {}
    for axcodes in ORIENTATIONS:
        phantom = make_phantom(3.0, axcodes=axcodes, seed=1)
        scan, labels = folder / f"head_{axcodes}.nii.gz", folder / f"labels_{axcodes}.nii.gz"
        save_phantom(phantom, scan, labels)
        made[axcodes] = (scan, labels, phantom)
    return made


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("axcodes", ORIENTATIONS)
def test_defacing_keeps_format_geometry_dtype_and_untouched_voxels(phantoms, tmp_path, axcodes, suffix):
    scan_nii, labels_nii, phantom = phantoms[axcodes]
    scan = _write_as(scan_nii, suffix, tmp_path, "scan")
    labels = _write_as(labels_nii, suffix, tmp_path, "labels")
    out = tmp_path / f"defaced{suffix}"
    mask = tmp_path / f"mask{suffix}"
    assert main(["deface", str(scan), str(out), "--labels", str(labels), "--save-mask", str(mask)]) == 0
    before, after = load_volume(scan), load_volume(out)
    assert after.raw.dtype == before.raw.dtype
    assert after.raw.shape == before.raw.shape
    np.testing.assert_array_equal(after.affine, before.affine)
    assert after.axcodes == axcodes
    changed = after.raw != before.raw
    assert changed.any(), "the face must change"
    assert not (changed & phantom.brain).any(), "the brain must never change"
    detected = load_volume(mask).raw
    # Every changed voxel lies near a detected feature; away from them nothing moves.
    assert not (changed & ~allowed_region(detected, before.spacing)).any()


def test_nifti_header_bytes_and_scaling_are_preserved(tmp_path):
    phantom = make_phantom(3.0)
    data = phantom.volume.raw
    image = nib.Nifti1Image(data, phantom.volume.affine)
    image.header.set_data_dtype(np.int16)
    image.header.set_slope_inter(0.5, -10.0)
    image.header["descrip"] = b"scaled phantom"
    image.header.set_intent("none")
    scan = tmp_path / "scaled.nii.gz"
    nib.save(image, str(scan))
    labels = tmp_path / "labels.nii.gz"
    nib.save(nib.Nifti1Image(phantom.labels, phantom.volume.affine), str(labels))
    out = tmp_path / "out.nii.gz"
    assert main(["deface", str(scan), str(out), "--labels", str(labels)]) == 0
    with gzip.open(scan) as a, gzip.open(out) as b:
        head_in, head_out = a.read(352), b.read(352)
    assert head_in == head_out, "the NIfTI header must be written back byte for byte"
    before, after = load_volume(scan), load_volume(out)
    assert (after.slope, after.inter) == (0.5, -10.0)
    untouched = after.raw == before.raw
    assert untouched.mean() > 0.9


def test_nrrd_header_fields_survive(tmp_path, phantoms):
    scan = _write_as(phantoms["LPS"][0], ".nhdr", tmp_path, "scan")
    labels = _write_as(phantoms["LPS"][1], ".nhdr", tmp_path, "labels")
    out = tmp_path / "out.nhdr"
    assert main(["deface", str(scan), str(out), "--labels", str(labels)]) == 0
    _, h_in = nrrd.read(str(scan))
    _, h_out = nrrd.read(str(out))
    for key in ("type", "space", "encoding", "sizes"):
        assert str(h_in[key]) == str(h_out[key])
    np.testing.assert_allclose(h_in["space directions"], h_out["space directions"])
    assert (tmp_path / "out.raw.gz").exists(), "a detached header gets its own data file beside it"


def test_volume_written_by_save_volume_is_bit_identical_without_edits(tmp_path):
    phantom = make_phantom(4.0, axcodes="PIR")
    scan = tmp_path / "p.nii.gz"
    save_phantom(phantom, scan)
    volume = load_volume(scan)
    copy = tmp_path / "copy.nii"
    save_volume(volume, copy)
    np.testing.assert_array_equal(load_volume(copy).raw, volume.raw)


def test_a_compressed_nifti_is_the_same_bytes_whatever_the_compression_threads(tmp_path, monkeypatch) -> None:
    """``.nii.gz`` output is compressed on several threads; the file must not depend on how many
    (nor on the time or the temporary name), so a defaced scan is reproducible on any machine, and
    it must read back with the standard library's gzip as the header followed by the voxels."""
    from defacer.io import nifti

    source = tmp_path / "head.nii"
    save_phantom(make_phantom(4.0, axcodes="LPS"), source)
    volume = load_volume(source)
    written = []
    for threads in (1, 2, 4):
        monkeypatch.setattr(nifti, "GZIP_THREADS", threads)
        target = tmp_path / f"out{threads}" / "head.nii.gz"
        target.parent.mkdir()
        save_volume(volume, target)
        written.append(target.read_bytes())
    assert written[0] == written[1] == written[2]
    assert written[0][4:8] == b"\0\0\0\0"  # no modification time in the gzip header
    plain = source.read_bytes()
    assert gzip.decompress(written[0]) == plain  # header, padding to vox_offset and voxels, byte for byte
