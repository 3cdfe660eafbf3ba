"""Identifying text in a NIfTI or NRRD header's free-text fields leaves with no defaced output.

On main 2401ebd (HOSTILE19, 2026-12-06 00:19 UTC) ``defacer deface`` of a NIfTI whose ``descrip`` held
``Quexworth^Zelda ... 02-Mar-2007`` (SPM writes the acquisition date there) and of a NRRD holding ITK's DICOM
key/value pairs (``0010|0010:=Quexworth^Zelda``, ``0010|0030:=19610203``; MITK's ``DICOM.0010.0020``) wrote them all
into the output, without a word.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
import pytest

from defacer.cli.main import main
from defacer.phantom import make_phantom

SECRETS = (b"Quexworth", b"Zelda", b"19610203", b"2007", b"QZ-7", b"zq@example.org")


@pytest.fixture(scope="module")
def head(tmp_path_factory) -> tuple[Path, object]:
    folder = tmp_path_factory.mktemp("head")
    phantom = make_phantom(4.0)
    nib.save(nib.Nifti1Image(phantom.labels.astype(np.uint8), phantom.volume.affine), str(folder / "labels.nii.gz"))
    return folder, phantom


def _nifti(folder: Path, phantom) -> Path:
    image = nib.Nifti1Image(phantom.volume.raw, phantom.volume.affine, phantom.volume.header)
    image.header["descrip"] = b"Quexworth^Zelda 1.5T 3D GR TR=9.7ms 02-Mar-2007 11:34:26"
    image.header["aux_file"] = b"QZ19610203"
    image.header["db_name"] = b"Quexworth"
    image.header["intent_name"] = b"zq@example.org"
    path = folder / "scan.nii.gz"
    nib.save(image, str(path))
    return path


def _nrrd(folder: Path, phantom) -> Path:
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ phantom.volume.affine
    header = {"space": "left-posterior-superior", "space directions": lps[:3, :3].T, "space origin": lps[:3, 3],
              "content": "head of Zelda", "0010|0010": "Quexworth^Zelda", "0010|0030": "19610203",
              "0008|0020": "20070302", "DICOM.0010.0020": "QZ-7", "0018|0080": "9.7", "ITK_InputFilterName": "Nrrd"}
    path = folder / "scan.nrrd"
    nrrd.write(str(path), phantom.volume.raw, header, index_order="F")
    return path


def _bytes(path: Path) -> bytes:
    data = path.read_bytes()
    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


@pytest.mark.parametrize("kind", ["nifti", "nrrd"])
def test_identifying_text_in_an_image_header_leaves_no_defaced_output(head, tmp_path, kind, caplog):
    folder, phantom = head
    source = _nifti(tmp_path, phantom) if kind == "nifti" else _nrrd(tmp_path, phantom)
    before = source.read_bytes()
    out = tmp_path / ("out" + "".join(source.suffixes))
    assert main(["deface", str(source), str(out), "--labels", str(folder / "labels.nii.gz")]) == 0
    err = caplog.text
    data = _bytes(out)
    assert not [s for s in SECRETS if s in data]
    assert "removed or masked in the output" in err and "Quexworth" not in err
    assert source.read_bytes() == before
    if kind == "nifti":
        header = nib.load(str(out)).header
        assert bytes(header["descrip"]).rstrip(b"\0") == b"* 1.5T 3D GR TR=9.7ms * 11:34:26"
        assert np.array_equal(header.get_best_affine(), nib.load(str(source)).header.get_best_affine())
    else:
        header = nrrd.read_header(str(out))
        assert header["0018|0080"] == "9.7" and header["ITK_InputFilterName"] == "Nrrd"
        assert "0010|0010" not in header and header["content"] == "head of *"
    record = (tmp_path / "out.defacer.json").read_text()
    assert "Quexworth" not in record and "removed or masked" in record


def test_no_deidentify_keeps_the_image_header_as_it_is(head, tmp_path):
    folder, phantom = head
    source = _nrrd(tmp_path, phantom)
    out = tmp_path / "out.nrrd"
    assert main(["deface", str(source), str(out), "--labels", str(folder / "labels.nii.gz"), "--no-deidentify"]) == 0
    assert nrrd.read_header(str(out))["0010|0010"] == "Quexworth^Zelda"


@pytest.mark.parametrize("text", ["TE=2.5;Time=153152.362;phase=1", "FSL5.0", "NRRD i2nii v1.0.0707",
                                  "?TR:2250.000 TE:4.", "!T11mm3D192sl", "x^2 fit 12345678"])
def test_what_converters_write_is_no_identifying_text(text):
    from defacer.phi.image_headers import mask_identifying_text

    assert mask_identifying_text(text) == text
