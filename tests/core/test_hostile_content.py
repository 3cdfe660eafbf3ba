"""Hostile image content and options through the library API: refused in words, never a silent unchanged copy."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

import defacer
from defacer.cli.main import main
from defacer.errors import InputImageError
from defacer.phantom import make_phantom


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(4.0)


@pytest.mark.parametrize("features", ["", " , ", (), []])
def test_the_api_refuses_an_empty_feature_choice_instead_of_returning_the_image_unchanged(phantom, features):
    """features='' distorted nothing and returned the unchanged image as the defaced one, without a word."""
    image = nib.Nifti1Image(phantom.volume.raw, phantom.volume.affine)
    with pytest.raises(ValueError, match="No feature chosen"):
        defacer.deface(image, labels=phantom.labels, features=features)
    with pytest.raises(ValueError, match="at least one of"):
        defacer.DefaceOptions(features=())


@pytest.mark.parametrize(("slope", "inter"), [(float("nan"), 0.0), (0.0, 0.0), (1.0, float("inf")), (float("-inf"), 0.0)])
def test_a_volume_whose_scaling_gives_no_intensities_is_refused_naming_the_scaling(phantom, slope, inter):
    """Before: 'No head found in this scan: no voxel is brighter than the air (all voxels are nan to nan)'."""
    volume = defacer.Volume(phantom.volume.raw, phantom.volume.affine, slope=slope, inter=inter)
    with pytest.raises(InputImageError, match="intensity scaling slope") as err:
        defacer.deface(volume, labels=phantom.labels)
    assert "slope that is not 0" in str(err.value)


def test_intensities_beyond_float32_are_refused_in_words_and_nothing_is_written(phantom, tmp_path, capsys):
    """A float64 NIfTI whose values reach 1e39 (or a slope of 1e38) became inf in float32: 'No head found ... (all
    voxels are 0 to inf)' with numpy's overflow warnings, though the head is there."""
    path = tmp_path / "huge.nii.gz"
    nib.save(nib.Nifti1Image(phantom.volume.raw.astype("float64") * 1e37, phantom.volume.affine), str(path))
    code = main(["deface", str(path), str(tmp_path / "out.nii.gz")])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err and "RuntimeWarning" not in err
    assert "32-bit floats" in err and "rescale the image" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["huge.nii.gz"]
    volume = defacer.Volume(phantom.volume.raw, phantom.volume.affine, slope=1e38)
    with pytest.raises(InputImageError, match="32-bit floats"):
        defacer.deface(volume, labels=phantom.labels)


def _without_orientation(path, raw, affine) -> None:
    """Save a NIfTI whose qform_code and sform_code are both 0 (nibabel's save would set them)."""
    nib.save(nib.Nifti1Image(raw, affine), str(path))
    data = bytearray(path.read_bytes())
    data[252:256] = bytes(4)  # qform_code, sform_code (int16 each)
    path.write_bytes(bytes(data))


def test_a_nifti_without_qform_or_sform_warns_that_its_orientation_was_assumed(phantom, tmp_path, capsys, caplog):
    """Neither qform nor sform: nibabel assumes LAS axes. A head stored as ASL was then searched sideways (real IXI
    head: 'eyes: distorted; nose: not found', exit 4) with no word about the orientation having been guessed."""
    import json

    from defacer.io import load_volume

    source = tmp_path / "head.nii"
    _without_orientation(source, phantom.volume.raw, phantom.volume.affine)
    labels = tmp_path / "labels.nii"
    nib.save(nib.Nifti1Image(phantom.labels, nib.load(str(source)).affine), str(labels))
    assert any("orientation is unknown" in w for w in load_volume(source).extra["warnings"])
    code = main(["deface", str(source), str(tmp_path / "out.nii"), "--labels", str(labels)])
    capsys.readouterr()
    assert code == 0 and "orientation is unknown" in caplog.text and "LAS" in caplog.text, caplog.text
    sidecar = json.loads((tmp_path / "out.defacer.json").read_text())
    assert any("orientation is unknown" in w for w in sidecar["warnings"])
    assert nib.load(str(tmp_path / "out.nii")).header["sform_code"] == 0  # the header is kept as stored


@pytest.mark.parametrize(("fields", "named"), [
    ({116: ("<f4", float("nan"))}, "intercept nan"),  # scl_inter NaN beside a valid scl_slope
    ({252: ("<i2", 1), 254: ("<i2", 0), 256: ("<f4", 5.0), 260: ("<f4", 5.0)}, "w2"),  # quaternion longer than 1
    ({40: ("<i2", 8)}, "dim[0] (the number of dimensions) is 8"),  # nibabel then reads it byte-swapped
    ({70: ("<i2", 999)}, "data code 999"),
])
def test_a_nifti_header_field_nibabel_refuses_is_called_a_header_problem_not_a_truncated_file(
        phantom, tmp_path, capsys, fields, named):
    """Before: 'Could not read ... as NIFTI: Valid slope but invalid intercept nan. The file may be truncated, corrupt
    or of another format' (and 'vox offset 0 too low' for a dim[0] of 8): the file is complete, one field is wrong."""
    path = tmp_path / "head.nii"
    nib.save(nib.Nifti1Image(phantom.volume.raw, phantom.volume.affine), str(path))
    data = bytearray(path.read_bytes())
    for offset, (dtype, value) in fields.items():
        encoded = np.array([value], dtype).tobytes()
        data[offset:offset + len(encoded)] = encoded
    path.write_bytes(bytes(data))
    code = main(["deface", str(path), str(tmp_path / "out.nii")])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert "NIfTI header that cannot be used" in err and named in err and "truncated" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["head.nii"]


@pytest.mark.parametrize("name", ["head.mgh", "head.mgz"])
def test_an_mgh_whose_geometry_is_marked_not_valid_warns_and_keeps_its_header(phantom, tmp_path, caplog, name):
    """goodRASFlag 0: nibabel reads 1 mm voxels in FreeSurfer's coronal default whatever the header holds. Before: no
    word of it, and the output's header got goodRASFlag 1 with those assumed sizes and directions (seen on a 2 mm
    head: delta 2,2,2 in, 1,1,1 out)."""
    import gzip
    import json

    source = tmp_path / name
    nib.save(nib.MGHImage(phantom.volume.raw.astype(np.float32), phantom.volume.affine), str(source))
    opened = gzip.open if name.endswith(".mgz") else open
    with opened(source, "rb") as fh:
        data = bytearray(fh.read())
    data[28:30] = bytes(2)  # goodRASFlag = 0
    with opened(source, "wb") as fh:
        fh.write(bytes(data))
    assumed = nib.load(str(source))
    assert assumed.header.get_zooms()[:3] == (1.0, 1.0, 1.0)  # nibabel's defaults, as FreeSurfer
    labels = tmp_path / "labels.nii.gz"
    nib.save(nib.Nifti1Image(phantom.labels, assumed.affine), str(labels))
    out = tmp_path / ("out" + source.suffix)
    code = main(["deface", str(source), str(out), "--labels", str(labels)])
    assert code == 0
    assert "goodRASFlag is 0" in caplog.text and "assumed 1 mm voxels" in caplog.text, caplog.text
    sidecar = json.loads((tmp_path / "out.defacer.json").read_text())
    assert any("goodRASFlag is 0" in w for w in sidecar["warnings"])
    with opened(out, "rb") as fh:
        written = fh.read()
    assert written[:284] == bytes(data[:284])  # the header as stored, goodRASFlag 0 included
    assert np.array_equal(nib.load(str(out)).affine, assumed.affine)


@pytest.mark.parametrize(("offset", "value", "said"), [(20, 77, "data type code 77"), (16, 0, "non-zero")])
def test_an_mgh_header_nibabel_refuses_is_called_a_damaged_header(phantom, tmp_path, capsys, offset, value, said):
    """Before: "Could not read '...' as MGH: 77. The file may be truncated, corrupt or of another format" (nibabel's
    KeyError on an unknown type code is just the code)."""
    path = tmp_path / "head.mgh"
    nib.save(nib.MGHImage(phantom.volume.raw.astype(np.float32), phantom.volume.affine), str(path))
    data = bytearray(path.read_bytes())
    data[offset:offset + 4] = np.array([value], ">i4").tobytes()  # type, or nframes
    path.write_bytes(bytes(data))
    code = main(["deface", str(path), str(tmp_path / "out.mgh")])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert "MGH header with" in err and said in err and "truncated" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["head.mgh"]


@pytest.mark.parametrize(("fields", "said"), [
    ({"space directions": [[4.0, 0, 0], [0, 4.0, 0], [0, 0, 4.0]]}, "names no space"),
    ({"spacings": [4.0, 4.0, 4.0]}, "gives only 'spacings'"),
])
def test_a_nrrd_that_names_no_space_warns_that_its_orientation_was_assumed(phantom, tmp_path, caplog, fields, said):
    """No 'space:' line: read as LPS (space directions) or RAS (spacings), without a word before."""
    import nrrd

    from defacer.io import load_volume

    path = tmp_path / "head.nrrd"
    nrrd.write(str(path), phantom.volume.raw, {"encoding": "raw", "endian": "little", **fields}, index_order="F")
    warnings = load_volume(path).extra["warnings"]
    assert len(warnings) == 1 and said in warnings[0] and "assumed" in warnings[0], warnings
    assert said in caplog.text
    named = tmp_path / "named.nrrd"
    nrrd.write(str(named), phantom.volume.raw, {"encoding": "raw", "endian": "little", "space": "left-posterior-superior",
                                               "space directions": np.diag([4.0, 4.0, 4.0])}, index_order="F")
    assert load_volume(named).extra["warnings"] == []


def test_nibabels_header_messages_are_printed_once(phantom, tmp_path):
    """nibabel's own handler and the command line's root handler each printed them: 'sizeof_hdr should be 348 ...'
    then 'WARNING nibabel.global: sizeof_hdr should be 348 ...' (a real process: pytest replaces the handlers)."""
    import subprocess
    import sys

    path = tmp_path / "head.nii"
    nib.save(nib.Nifti1Image(phantom.volume.raw, phantom.volume.affine), str(path))
    data = bytearray(path.read_bytes())
    data[40:42] = np.array([8], "<i2").tobytes()  # dim[0] = 8: nibabel reads it byte-swapped and logs its repairs
    path.write_bytes(bytes(data))
    run = subprocess.run([sys.executable, "-m", "defacer", "deface", str(path), str(tmp_path / "out.nii")],
                         capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 1, run.stderr
    assert run.stderr.count("sizeof_hdr should be 348") == 1, run.stderr


def test_a_nifti_header_extension_is_kept_and_warned_about(phantom, tmp_path, capsys, caplog):
    """A header extension holding 'PatientName=...' passed through to the output without a word (HOSTILE3): the
    header is kept byte for byte by design, so the user is told to look at it."""
    import json

    source = tmp_path / "head.nii"
    image = nib.Nifti1Image(phantom.volume.raw, phantom.volume.affine)
    image.header.extensions.append(nib.nifti1.Nifti1Extension("comment", b"PatientName=Quexworth^Zelda"))
    nib.save(image, str(source))
    labels = tmp_path / "labels.nii"
    nib.save(nib.Nifti1Image(phantom.labels, phantom.volume.affine), str(labels))
    code = main(["deface", str(source), str(tmp_path / "out.nii"), "--labels", str(labels)])
    capsys.readouterr()
    assert code == 0 and "1 extension(s) (ecode 6)" in caplog.text and "identifying text" in caplog.text
    sidecar = json.loads((tmp_path / "out.defacer.json").read_text())
    assert any("extension" in w for w in sidecar["warnings"])
    assert "Quexworth" not in json.dumps(sidecar)  # the warning names the code, never the content
    assert b"Quexworth" in (tmp_path / "out.nii").read_bytes()  # kept: the header is the input's


def test_a_two_valued_image_whose_low_value_is_padding_is_described_as_it_is(tmp_path, capsys):
    """An int16 image of -32768 (read as padding outside the field) and 32767 only (a mask saved as an image) said
    'no voxel is brighter than the air (all voxels are -32768 to 32767)' (HOSTILE11): half of them are brighter. It
    names the padding and the one value inside the field."""
    values = np.full((40, 40, 40), -32768, np.int16)
    values[8:32, 8:32, 8:32] = 32767
    path = tmp_path / "mask_as_image.nii.gz"
    nib.save(nib.Nifti1Image(values, np.diag([4.0, 4.0, 4.0, 1.0])), str(path))
    code = main(["deface", str(path), str(tmp_path / "out.nii.gz")])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert "-32768 is read as padding outside the scanned field" in err and "inside it are 32767" in err, err
    assert "-32768 to 32767" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask_as_image.nii.gz"]
