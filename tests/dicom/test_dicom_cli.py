"""`defacer anonymize` and `defacer deface` on DICOM folders, end to end."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from dicom_factory import write_series

from defacer.cli.main import main
from defacer.io.dicom_series import read_dicom_volume
from defacer.phi.describe import describe_actions
from defacer.phi.options import DeidOptions

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "phi"))
from phi_corpus import build_corpus, leaks

KEY = "cli-test-key-0123456789"


@pytest.fixture(scope="module")
def phantom_series(tmp_path_factory):
    """A 3 mm synthetic head as a DICOM series (LPS slices) and its label map on the same grid."""
    from defacer.phantom import make_phantom

    root = tmp_path_factory.mktemp("phantom")
    phantom = make_phantom(3.0)
    affine = phantom.volume.affine
    origin_lps = (-affine[0, 3], -affine[1, 3], affine[2, 3])
    write_series(root / "in", phantom.volume.raw.astype(np.int16), row_cos=(-1, 0, 0), col_cos=(0, -1, 0),
                 spacing=(3.0, 3.0), origin=origin_lps, step=(0, 0, 3.0),
                 extra={"PatientName": "Quexworth^Ambrose", "StudyDescription": "Quexworth head"})
    volume = read_dicom_volume(root / "in")
    assert np.allclose(volume.affine, affine)
    nib.save(nib.Nifti1Image(phantom.labels.astype(np.uint8), volume.affine), str(root / "labels.nii.gz"))
    return root


def test_deface_dicom_distorts_pixels_and_deidentifies_headers(phantom_series, tmp_path, capsys):
    out = tmp_path / "defaced"
    code = main(["deface", str(phantom_series / "in"), str(out), "--labels", str(phantom_series / "labels.nii.gz"),
                 "--key", KEY])
    assert code == 0, capsys.readouterr().err
    before = read_dicom_volume(phantom_series / "in")
    after = read_dicom_volume(out)
    assert after.raw.shape == before.raw.shape and np.allclose(after.affine, before.affine)
    changed = after.raw != before.raw
    assert 0 < changed.sum() < changed.size // 10
    files = sorted(out.iterdir())
    ds = pydicom.dcmread(files[0])
    assert ds.PatientIdentityRemoved == "YES" and ds.RecognizableVisualFeatures == "NO"
    assert "113102" in [item.CodeValue for item in ds.DeidentificationMethodCodeSequence]
    assert all(b"Quexworth" not in f.read_bytes() for f in files)
    sidecar = json.loads((tmp_path / "defaced.defacer.json").read_text())
    assert sidecar["dicom"]["deidentified"] is True and "series" not in sidecar["dicom"]
    assert "Quexworth" not in json.dumps(sidecar)
    assert str(phantom_series) not in json.dumps(sidecar)


def test_deface_dicom_without_deidentification_keeps_headers(phantom_series, tmp_path):
    out = tmp_path / "defaced"
    code = main(["deface", str(phantom_series / "in"), str(out), "--labels", str(phantom_series / "labels.nii.gz"),
                 "--no-deidentify"])
    assert code == 0
    source = min((phantom_series / "in").iterdir())
    a, b = pydicom.dcmread(source), pydicom.dcmread(out / source.name)
    assert a.PatientName == b.PatientName and a.SOPInstanceUID == b.SOPInstanceUID


def test_what_if_prints_the_plan_and_writes_nothing(phantom_series, tmp_path, capsys):
    code = main(["deface", str(phantom_series / "in"), str(tmp_path / "x"), "--labels",
                 str(phantom_series / "labels.nii.gz"), "--what-if"])
    text = capsys.readouterr().out
    assert code == 0 and not (tmp_path / "x").exists()
    assert "(0010,0010) Patient's Name: Z" in text and "RecognizableVisualFeatures=NO" in text
    assert main(["anonymize", str(phantom_series / "in"), str(tmp_path / "y"), "--describe"]) == 0
    assert not (tmp_path / "y").exists()


def test_several_series_need_series_selection(phantom_series, tmp_path, capsys):
    mixed = tmp_path / "mixed"
    write_series(mixed / "a", np.ones((16, 16, 10), np.uint16), series_number=2)
    write_series(mixed / "b", np.ones((16, 16, 10), np.uint16), series_number=4)
    code = main(["deface", str(mixed), str(tmp_path / "out"), "--labels", str(phantom_series / "labels.nii.gz")])
    err = capsys.readouterr().err
    assert code == 1 and "--series" in err and "series 2" in err and "series 4" in err
    assert not (tmp_path / "out").exists()


def test_anonymize_command_leaves_no_planted_phi(tmp_path, capsys):
    corpus = build_corpus(tmp_path / "in")
    out = tmp_path / "anon"
    assert main(["anonymize", str(corpus.folder), str(out), "--key", KEY,
                 "--mapping-file", str(tmp_path / "private" / "map.json")]) == 0
    assert "18 DICOM file(s)" in capsys.readouterr().out
    files = sorted(out.rglob("*.dcm"))
    assert len(files) == 18
    assert set().union(*(leaks(f.read_bytes(), corpus) for f in files)) == set()
    assert (tmp_path / "private" / "map.json").exists()
    code = main(["anonymize", str(corpus.folder), str(out), "--key", KEY])
    assert code == 1 and "--force" in capsys.readouterr().err
    code = main(["anonymize", str(corpus.folder), str(tmp_path / "anon2"), "--mapping-file", str(tmp_path / "anon2" / "m.json")])
    assert code == 1 and "re-identify" in capsys.readouterr().err


def test_docs_show_the_what_if_header_of_the_basic_profile():
    docs = (Path(__file__).resolve().parents[2] / "docs" / "dicom.md").read_text()
    for line in describe_actions(DeidOptions())[:8]:
        assert line in docs


def test_anonymize_flags_reach_the_profile_options(tmp_path, capsys):
    corpus = build_corpus(tmp_path / "in", slices=1)
    out = tmp_path / "anon"
    assert main(["anonymize", str(corpus.folder), str(out), "--key", KEY, "--retain-uids", "--retain-shifted-dates",
                 "--retain-patient-characteristics", "--jobs", "2"]) == 0
    source = pydicom.dcmread(min(corpus.files))
    ds = pydicom.dcmread(min(out.rglob("*.dcm")))
    assert ds.StudyInstanceUID == source.StudyInstanceUID
    assert ds.PatientSex == source.PatientSex
    assert ds.StudyDate and ds.StudyDate != source.StudyDate
    assert [i.CodeValue for i in ds.DeidentificationMethodCodeSequence] == ["113100", "113110", "113108", "113107"]
    assert main(["anonymize", str(corpus.folder), str(tmp_path / "x"), "--retain-full-dates",
                 "--retain-shifted-dates"]) == 2
