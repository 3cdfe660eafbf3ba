"""`defacer anonymize` and `defacer deface` on DICOM folders, end to end."""

from __future__ import annotations

import json
import logging
import os
import shutil
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


def test_a_de_identified_series_sidecar_holds_no_plain_digest_of_the_identified_input(phantom_series, tmp_path):
    """Before: the sidecar shared beside the de-identified series held the input folder's plain sha256, which
    anyone holding the identified original could recompute to link the two. Now only a digest keyed with the
    de-identification key; the files the sidecar names are checked too."""
    from defacer.phi.pseudonym import Pseudonymizer
    from defacer.provenance import sha256_of

    out = tmp_path / "defaced"
    assert main(["deface", str(phantom_series / "in"), str(out), "--labels", str(phantom_series / "labels.nii.gz"),
                 "--key", KEY]) == 0
    text = (tmp_path / "defaced.defacer.json").read_text()
    plain = sha256_of(phantom_series / "in")
    assert plain not in text
    recorded = json.loads(text)["input"]
    assert recorded["sha256_keyed"] == Pseudonymizer(KEY.encode()).keyed_digest(plain)
    original_names = {p.name for p in (phantom_series / "in").iterdir()}
    assert not original_names & {p.name for p in out.iterdir()}, "files are numbered, not named as the input's"


@pytest.mark.parametrize(("name", "warned"), [("QUEXWORTH_Ambrose_defaced", True), ("sub-01_T1w", False)])
def test_deface_warns_about_an_output_named_after_the_patient(phantom_series, tmp_path, caplog, name, warned):
    """Before: 'defacer deface QUEXWORTH_Ambrose/' wrote 'QUEXWORTH_Ambrose_defaced/' (its default) without a word
    although the headers inside no longer hold the name. The name is the user's: a warning, not a refusal."""
    out = tmp_path / name
    assert main(["deface", str(phantom_series / "in"), str(out), "--labels", str(phantom_series / "labels.nii.gz"),
                 "--key", KEY]) == 0
    expected = f"The output '{name}' holds the patient's name from its own DICOM headers"
    assert any(expected in m for m in caplog.messages) == warned
    # The warning says to rename the folder and its .defacer.json before sharing; the sidecar recorded the name
    # inside it all the same ('"path": "QUEXWORTH_Ambrose_defaced"'), so the renamed copy still named the patient.
    sidecar = (tmp_path / f"{name}.defacer.json").read_text()
    assert ("QUEXWORTH" not in sidecar.upper()) and (json.loads(sidecar)["output"]["path"] ==
                                                      ("<output>" if warned else name))


@pytest.mark.parametrize(("name", "warned"), [("QUEXWORTH_Ambrose_anon", True), ("sub-01", False)])
def test_anonymize_warns_about_an_output_named_after_the_patient(phantom_series, tmp_path, caplog, name, warned):
    """'defacer anonymize QUEXWORTH_Ambrose/ QUEXWORTH_Ambrose_anon/' said nothing: only deface (a warning) and
    batch (a refusal) compared output names with the headers."""
    assert main(["anonymize", str(phantom_series / "in"), str(tmp_path / name), "--key", KEY]) == 0
    expected = f"The output '{name}' holds the patient's name from its own DICOM headers"
    assert any(expected in m for m in caplog.messages) == warned
    assert not any(".defacer.json" in m for m in caplog.messages), "anonymize writes no sidecar"


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


def _study(phantom_series: Path, folder: Path) -> Path:
    """A study folder of two series of the phantom head (SeriesNumber 2 and 4), one StudyInstanceUID."""
    from defacer.phantom import make_phantom

    phantom = make_phantom(3.0)
    affine = phantom.volume.affine
    origin_lps = (-affine[0, 3], -affine[1, 3], affine[2, 3])
    for name, number in (("a", 2), ("b", 4)):
        write_series(folder / name, phantom.volume.raw.astype(np.int16), row_cos=(-1, 0, 0), col_cos=(0, -1, 0),
                     spacing=(3.0, 3.0), origin=origin_lps, step=(0, 0, 3.0), series_number=number,
                     series_uid=f"1.2.826.0.1.3680043.8.498.{number}", seed=number,
                     extra={"PatientName": "Quexworth^Ambrose", "StudyInstanceUID": "1.2.826.0.1.3680043.8.498.77"})
    return folder


def test_series_folders_of_an_earlier_run_left_in_a_study_output_are_warned_about(phantom_series, tmp_path, caplog):
    """HOSTILE13: 'deface study2/ OUT --force' into the output of an earlier run replaces only the series folders it
    writes; the earlier run's other series (another study's, perhaps) stayed beside this study's without a word,
    all under one OUT to share.  They still stay (never deleted), named in a warning."""
    from defacer.phantom import make_phantom

    study = _study(phantom_series, tmp_path / "study")
    out = tmp_path / "out"
    labels = str(phantom_series / "labels.nii.gz")
    assert main(["deface", str(study), str(out), "--labels", labels, "--key", KEY]) == 0
    shutil.rmtree(study / "b")  # the next study: series 2 again and a series 6
    phantom = make_phantom(3.0)
    affine = phantom.volume.affine
    write_series(study / "c", phantom.volume.raw.astype(np.int16), row_cos=(-1, 0, 0), col_cos=(0, -1, 0),
                 spacing=(3.0, 3.0), origin=(-affine[0, 3], -affine[1, 3], affine[2, 3]), step=(0, 0, 3.0),
                 series_number=6, series_uid="1.2.826.0.1.3680043.8.498.6", seed=6,
                 extra={"PatientName": "Quexworth^Ambrose", "StudyInstanceUID": "1.2.826.0.1.3680043.8.498.77"})
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert main(["deface", str(study), str(out), "--labels", labels, "--key", KEY, "--force"]) == 0
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["01_series-2", "02_series-4", "02_series-6"]
    warned = [r.getMessage() for r in caplog.records if "earlier run" in r.getMessage()]
    assert len(warned) == 1 and "02_series-4" in warned[0] and "01_series-2" not in warned[0], caplog.text


def test_a_study_folder_is_defaced_series_by_series(phantom_series, tmp_path, capsys):
    """Issue 12, item 8: a folder of several series was refused ('choose one with --series'); now each series is
    defaced into its own folder under OUT, with one key for the study (the pseudonyms agree across series)."""
    study = _study(phantom_series, tmp_path / "study")
    out = tmp_path / "out"
    code = main(["deface", str(study), str(out), "--labels", str(phantom_series / "labels.nii.gz"), "--key", KEY])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "holds 2 series" in printed and "series 2" in printed and "series 4" in printed
    folders = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert folders == ["01_series-2", "02_series-4"]
    assert sorted(p.name for p in out.glob("*.defacer.json")) == ["01_series-2.defacer.json",
                                                             "02_series-4.defacer.json"]
    slices = len(list((study / "a").iterdir()))
    studies, series = set(), set()
    for folder in folders:
        files = sorted((out / folder).iterdir())
        assert len(files) == slices and all(b"Quexworth" not in f.read_bytes() for f in files)
        ds = pydicom.dcmread(files[0])
        studies.add(ds.StudyInstanceUID)
        series.add(ds.SeriesInstanceUID)
        sidecar = json.loads((out / f"{folder}.defacer.json").read_text())
        assert sidecar["dicom"]["deidentified"] and sum(sidecar["voxels_changed"].values()) > 0
    assert len(studies) == 1 and "1.2.826.0.1.3680043.8.498.77" not in studies, "one study, pseudonymised"
    assert len(series) == 2
    # --series still picks one, written as OUT itself.
    assert main(["deface", str(study), str(tmp_path / "one"), "--series", "4",
                 "--labels", str(phantom_series / "labels.nii.gz")]) == 0
    assert len(list((tmp_path / "one").iterdir())) == slices
    # A rerun without --force is refused and changes nothing; --save-mask (one file) cannot serve two series.
    assert main(["deface", str(study), str(out), "--labels", str(phantom_series / "labels.nii.gz")]) == 1
    assert "--force" in capsys.readouterr().err
    code = main(["deface", str(study), str(tmp_path / "masked"), "--labels", str(phantom_series / "labels.nii.gz"),
                 "--save-mask", str(tmp_path / "m.nii.gz")])
    err = capsys.readouterr().err
    assert code == 1 and "--series" in err and "series 2" in err and "series 4" in err
    assert not (tmp_path / "masked").exists() and not (tmp_path / "m.nii.gz").exists()


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


def test_a_label_map_follows_its_series_when_the_series_is_moved_or_renamed(phantom_series, tmp_path, capsys):
    """HOSTILE9 leftover 2: a label map belongs to the scan's voxel grid, not to its folder or file names. A series
    moved to another folder under another name, its files renamed, is defaced with its saved label map exactly as
    before; a map of another series (another grid) is refused in words and nothing is written."""
    import shutil

    first, mask = tmp_path / "first", tmp_path / "mask.nii.gz"
    assert main(["deface", str(phantom_series / "in"), str(first), "--labels",
                 str(phantom_series / "labels.nii.gz"), "--save-mask", str(mask), "--key", KEY]) == 0
    moved = tmp_path / "elsewhere" / "Renamed_Patient"
    moved.mkdir(parents=True)
    for index, dcm in enumerate(sorted((phantom_series / "in").iterdir())):  # reversed order, other names
        shutil.copy(dcm, moved / f"slice{1000 - index}")
    second = tmp_path / "second"
    assert main(["deface", str(moved), str(second), "--labels", str(mask), "--key", KEY]) == 0
    assert np.array_equal(read_dicom_volume(second).raw, read_dicom_volume(first).raw)
    capsys.readouterr()
    other = tmp_path / "other"
    phantom = read_dicom_volume(phantom_series / "in")
    write_series(other, phantom.raw[:, :, :-2].astype(np.int16), row_cos=(-1, 0, 0), col_cos=(0, -1, 0),
                 spacing=(3.0, 3.0), origin=(0.0, 0.0, 0.0), step=(0, 0, 3.0))
    code = main(["deface", str(other), str(tmp_path / "third"), "--labels", str(mask), "--key", KEY])
    err = capsys.readouterr().err
    assert code != 0 and "on the scan's own grid" in err and "Traceback" not in err, err
    assert not (tmp_path / "third").exists() and not (tmp_path / "third.defacer.json").exists()


@pytest.mark.parametrize("name", ["defaced.nii.gz", "defaced.nrrd", "Defaced.MGZ"])
def test_a_dicom_output_named_as_a_file_of_another_format_is_refused(phantom_series, tmp_path, capsys, name):
    """HOSTILE10: 'deface series/ out.nii.gz' wrote a folder of DICOM files named out.nii.gz (exit 0), which every
    tool opening it as a NIfTI file refuses. Refused in words before anything is read; the API too."""
    from defacer.errors import OutputError
    from defacer.route import deface_path

    out = tmp_path / name
    code = main(["deface", str(phantom_series / "in"), str(out), "--labels", str(phantom_series / "labels.nii.gz"),
                 "--key", KEY])
    err = capsys.readouterr().err
    assert code == 1 and "a DICOM series is written as a new DICOM series folder" in err and "Traceback" not in err
    with pytest.raises(OutputError, match="Give a folder name"):
        deface_path(phantom_series / "in", out, labels_path=phantom_series / "labels.nii.gz")
    code = main(["anonymize", str(phantom_series / "in"), str(out), "--key", KEY])
    err = capsys.readouterr().err
    assert code == 1 and "a DICOM series is written as a new DICOM series folder" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_reader_warning_in_the_sidecar_names_no_input_folder(tmp_path):
    """A series of uneven slice spacing is warned about by its reader, naming the folder as given: the sidecar of
    the de-identified series kept that text in its top-level 'warnings' (only 'dicom.geometry_warnings' read
    '<input>'), so the absolute path and a folder named after the patient reached the record shared beside the
    series (HOSTILE12: ge-headct_tilted_dicom, '/work/shared/data/heads/...' in the sidecar and in a batch's
    sidecar and manifest)."""
    from defacer.phantom import make_phantom

    phantom = make_phantom(3.0)
    affine = phantom.volume.affine
    raw = phantom.volume.raw.astype(np.int16)
    origin = np.array([-affine[0, 3], -affine[1, 3], affine[2, 3]])
    positions = [origin + [0.0, 0.0, 3.0 * k + (0.3 if k % 2 else 0.0)] for k in range(raw.shape[2])]
    folder = tmp_path / "Quexworth^Ambrose_19610203"
    write_series(folder, raw, row_cos=(-1, 0, 0), col_cos=(0, -1, 0), spacing=(3.0, 3.0), positions=positions,
                 extra={"PatientName": "Quexworth^Ambrose"})
    volume = read_dicom_volume(folder)
    assert any("uneven slice spacing" in w for w in volume.extra["warnings"])
    nib.save(nib.Nifti1Image(phantom.labels.astype(np.uint8), volume.affine), str(tmp_path / "labels.nii.gz"))
    out = tmp_path / "sub-01"
    assert main(["deface", str(folder), str(out), "--labels", str(tmp_path / "labels.nii.gz"), "--key", KEY]) == 0
    sidecar = json.loads((tmp_path / "sub-01.defacer.json").read_text())
    text = json.dumps(sidecar)
    assert "uneven slice spacing in '<input>'" in " ".join(sidecar["warnings"])
    assert "Quexworth" not in text and str(tmp_path) not in text  # main: both, in 'warnings'


def test_a_defaced_series_keeps_no_icon_of_the_original_face(tmp_path):
    """HOSTILE12: 'deface SERIES OUT --no-deidentify' keeps every header attribute, and kept each instance's Icon
    Image Sequence: a thumbnail of the original slice, the face in it, beside the defaced pixels (80 of 80 files;
    the de-identified output lost it through the profile).  Icons are dropped wherever they lie, whatever the header
    options."""
    import pydicom
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    from defacer.phantom import make_phantom

    phantom = make_phantom(4.0)
    affine = phantom.volume.affine
    files = write_series(tmp_path / "in", phantom.volume.raw.astype(np.int16), row_cos=(-1, 0, 0), col_cos=(0, -1, 0),
                         spacing=(4.0, 4.0), origin=(-affine[0, 3], -affine[1, 3], affine[2, 3]), step=(0, 0, 4.0))

    def icon(ds: pydicom.Dataset) -> Dataset:
        thumb = ds.pixel_array[::2, ::2].astype(np.uint16)
        item = Dataset()
        item.Rows, item.Columns = thumb.shape
        item.SamplesPerPixel, item.PhotometricInterpretation = 1, "MONOCHROME2"
        item.BitsAllocated, item.BitsStored, item.HighBit, item.PixelRepresentation = 16, 16, 15, 0
        item.PixelData = thumb.tobytes()
        return item

    for file in files:
        ds = pydicom.dcmread(file)
        ds.IconImageSequence = Sequence([icon(ds)])
        reference = Dataset()
        reference.ReferencedSOPInstanceUID = ds.SOPInstanceUID
        reference.IconImageSequence = Sequence([icon(ds)])  # nested: an icon may sit in a referenced image's item
        ds.ReferencedImageSequence = Sequence([reference])
        ds.save_as(file)
    volume = read_dicom_volume(tmp_path / "in")
    nib.save(nib.Nifti1Image(phantom.labels.astype(np.uint8), volume.affine), str(tmp_path / "labels.nii.gz"))
    for extra in (["--no-deidentify"], ["--key", KEY]):
        out = tmp_path / f"out{len(extra)}"
        assert main(["deface", str(tmp_path / "in"), str(out), "--labels", str(tmp_path / "labels.nii.gz"), *extra]) == 0
        for written in sorted(out.iterdir()):
            ds = pydicom.dcmread(written)
            assert "IconImageSequence" not in ds, (extra, written.name)  # main: kept with --no-deidentify
            assert all("IconImageSequence" not in item for item in ds.get("ReferencedImageSequence", []))
    assert all("IconImageSequence" in pydicom.dcmread(f) for f in files), "the input is untouched"


@pytest.mark.parametrize("jobs", ["1", "2"])
@pytest.mark.parametrize("how", ["copy", "hard-link", "symbolic-link"])
def test_anonymize_refuses_an_input_holding_one_file_twice(tmp_path, capsys, how, jobs):
    """HOSTILE25's leftover: a slice copied beside itself (``IM0003 (1).dcm``), or a hard or symbolic link to it in the
    folder, was written twice by ``anonymize`` (two output files of one SOP Instance UID: an archive keeps one or
    refuses the series), where ``deface`` refuses it (019933f).  Now anonymize refuses it too, naming the two files
    and what to do; nothing is written and the input is untouched.  Two different slices are written as before."""
    import os

    folder = tmp_path / "in"
    paths = write_series(folder, np.arange(8 * 8 * 5, dtype=np.int16).reshape(8, 8, 5),
                         extra={"PatientName": "Quexworth^Ambrose"})
    twin = folder / "IM0003 (1).dcm"
    {"copy": shutil.copyfile, "hard-link": os.link, "symbolic-link": lambda a, b: os.symlink(a.name, b)}[how](
        paths[2], twin)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    out = tmp_path / "anon"
    code = main(["anonymize", str(folder), str(out), "--key", KEY, "--jobs", jobs])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "holds one DICOM file twice" in err and str(twin) in err and str(paths[2]) in err
    assert "Remove one of them (nothing was written)" in err and "Traceback" not in err
    assert not out.exists() and not list(tmp_path.glob(".defacer-tmp*"))
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    twin.unlink()
    assert main(["anonymize", str(folder), str(out), "--key", KEY, "--jobs", jobs]) == 0
    assert len(list(out.rglob("*.dcm"))) == len(paths)


@pytest.mark.parametrize("jobs", ["1", "2"])
@pytest.mark.parametrize("change", ["re-exported", "another-slice"])
def test_anonymize_refuses_two_different_files_of_one_instance(tmp_path, capsys, change, jobs):
    """SAFE27 (REVIEW26's leftover): two *different* files carrying one SOP Instance UID (a slice re-exported with an
    edited header beside the first export, or another slice given that slice's UID) were both written: two output
    files of one SOP Instance UID, of which an archive keeps one (losing the other silently) or refuses the series.
    Now the input is refused, naming both files and what to do; nothing is written and the input is untouched."""
    folder = tmp_path / "in"
    paths = write_series(folder, np.arange(8 * 8 * 5, dtype=np.int16).reshape(8, 8, 5),
                         extra={"PatientName": "Quexworth^Ambrose"})
    twin = folder / "zz twin.dcm"
    ds = pydicom.dcmread(paths[2 if change == "re-exported" else 3])
    if change == "re-exported":
        ds.SeriesDescription = "re-exported"
    else:
        ds.SOPInstanceUID = pydicom.dcmread(paths[2]).SOPInstanceUID
    ds.save_as(twin)
    assert twin.read_bytes() != paths[2].read_bytes()
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    out = tmp_path / "anon"
    code = main(["anonymize", str(folder), str(out), "--key", KEY, "--jobs", jobs])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "two different files of one instance" in err and str(twin) in err and str(paths[2]) in err, err
    assert "same SOP Instance UID" in err and "(nothing was written)" in err and "Traceback" not in err
    assert not out.exists() and not list(tmp_path.glob(".defacer-tmp*"))
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    twin.unlink()
    assert main(["anonymize", str(folder), str(out), "--key", KEY, "--jobs", jobs]) == 0
    instances = [pydicom.dcmread(p).SOPInstanceUID for p in out.rglob("*.dcm")]
    assert len(instances) == len(set(instances)) == len(paths)


@pytest.mark.parametrize("where", ["another-position", "same-position"])
def test_deface_refuses_a_series_with_two_different_files_of_one_instance(phantom_series, tmp_path, capsys, where):
    """SAFE27: ``deface`` given a series in which two different files carry one SOP Instance UID wrote both (another
    position: a series of two instances of one UID, which an archive keeps one of; the same position: refused as
    "several volumes", the wrong advice).  Now refused before a pixel is read, naming both files; nothing written."""
    folder = tmp_path / "in"
    shutil.copytree(phantom_series / "in", folder)
    files = sorted(folder.iterdir())
    first, second = pydicom.dcmread(files[0]), pydicom.dcmread(files[1])
    second.SOPInstanceUID = first.SOPInstanceUID
    if where == "same-position":
        second.ImagePositionPatient = first.ImagePositionPatient
    second.save_as(files[1])
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    out = tmp_path / "defaced"
    code = main(["deface", str(folder), str(out), "--labels", str(phantom_series / "labels.nii.gz"), "--key", KEY])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "two different files of one instance" in err and str(files[0]) in err and str(files[1]) in err, err
    assert "several volumes" not in err and "Traceback" not in err
    assert not out.exists() and not list(tmp_path.glob(".defacer-tmp*"))
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def _sparse_large_slice(path: Path, beside: Path, series_number: int, *, bloat: int = 0, preamble: bool = True) -> Path:
    """A file over :data:`defacer.io.dicom_files.MAX_FILE_BYTES` (1 GiB) of another series of ``beside``'s patient
    and study: a real header written by pydicom (a classic multi-frame MR of 2,100 frames of 512 x 512 16-bit
    pixels), then its PixelData element declaring the 1,101,004,800 bytes it holds, left a hole (``truncate``: no
    disk is taken).  ``bloat``: bytes of a private OB element before the pixels; ``preamble=False``: no
    preamble, no file meta (an old export)."""
    import struct

    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset, write_file_meta_info

    from defacer.io.dicom_files import MAX_FILE_BYTES

    ds = pydicom.dcmread(beside)
    del ds.PixelData
    ds.SeriesInstanceUID = f"1.2.826.0.1.3680043.8.498.{series_number}"
    ds.SeriesNumber, ds.SeriesDescription = series_number, "too large to read"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"1.2.826.0.1.3680043.8.498.{series_number}.1"
    ds.Rows = ds.Columns = 512
    ds.NumberOfFrames = 2100
    if bloat:
        ds.private_block(0x0011, "BLOAT", create=True).add_new(0x01, "OB", bytes(bloat))
    pixels = 512 * 512 * 2 * 2100
    buffer = DicomBytesIO()
    if preamble:
        buffer.write(b"\x00" * 128 + b"DICM")
        write_file_meta_info(buffer, ds.file_meta, enforce_standard=True)
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_dataset(buffer, ds)
    header = buffer.getvalue() + b"\xe0\x7f\x10\x00OW\x00\x00" + struct.pack("<I", pixels)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header)
    os.truncate(path, len(header) + pixels)
    assert path.stat().st_size > MAX_FILE_BYTES
    return path


def test_a_file_too_large_to_read_in_another_series_is_left_out_unread(phantom_series, tmp_path, capsys):
    """SAFE28: a study folder holding one DICOM file over the 1 GiB limit (SAFE27's 017115f) was refused whole, even
    to ``--series`` of another series, whose files alone are read ("1 DICOM file(s) ... cannot be read, so the
    series would be incomplete"); defacing the study defaced none of it.  The large file's header alone (at most
    4 MiB, up to its pixel data) now tells its series: another series is read without it, as without that series'
    other files; its own series is still refused in the same words, nothing written for it."""
    import tracemalloc

    from defacer.io.dicom_series import scan

    study = tmp_path / "study"
    shutil.copytree(phantom_series / "in", study / "a")
    big = _sparse_large_slice(study / "b" / "IM0001.dcm", min((study / "a").iterdir()), 9)
    stat = big.stat()
    slices = len(list((study / "a").iterdir()))
    labels = str(phantom_series / "labels.nii.gz")

    one = tmp_path / "one"
    code = main(["deface", str(study), str(one), "--series", "1", "--labels", labels, "--key", KEY])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert len(list(one.iterdir())) == slices and "cannot be read" not in captured.err + captured.out

    tracemalloc.start()
    try:
        found = scan(study)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20, f"{peak >> 20} MiB"  # the header alone was read, not the gigabyte after it
    assert not found.damaged and [p for p, _ in found.oversize] == [big], found
    assert [(s.series_number, len(s.files)) for s in found.series] == [("1", slices), ("9", 1)], found.series

    whole = tmp_path / "whole"
    code = main(["deface", str(study), str(whole), "--labels", labels, "--key", KEY])
    captured = capsys.readouterr()
    assert code == 1, captured.out + captured.err
    assert "larger than the 1024 MiB defacer reads from one DICOM file" in captured.out, captured.out
    assert "Traceback" not in captured.out + captured.err
    assert sorted(p.name for p in whole.iterdir() if p.is_dir()) == ["01_series-1"], list(whole.iterdir())
    assert len(list((whole / "01_series-1").iterdir())) == slices

    refused = tmp_path / "refused"
    code = main(["deface", str(study), str(refused), "--series", "9", "--labels", labels, "--key", KEY])
    err = capsys.readouterr().err
    assert code == 1, err
    assert str(big) in err and "larger than the 1024 MiB defacer reads from one DICOM file" in err, err
    assert "nothing was written" in err and "Traceback" not in err, err
    assert not refused.exists() and not list(tmp_path.glob(".defacer-tmp*"))
    after = big.stat()
    assert (after.st_size, after.st_mtime_ns, after.st_blocks) == (stat.st_size, stat.st_mtime_ns, stat.st_blocks)


@pytest.mark.parametrize("case", ["bloated-header", "no-preamble"])
def test_a_large_file_is_judged_by_its_header_alone_only_when_that_header_is_small(phantom_series, tmp_path, case):
    """SAFE28: the header of a file over the 1 GiB limit is read up to 4 MiB (``MAX_LARGE_HEADER_BYTES``): one that
    holds 5 MiB of private bloat before its pixels is not judged, and still refuses the folder as before; a file
    without preamble (an old export) is read as :func:`defacer.io.dicom_files.dcmread_any` reads one."""
    from defacer.errors import DicomSeriesError

    study = tmp_path / "study"
    shutil.copytree(phantom_series / "in", study / "a")
    big = _sparse_large_slice(study / "b" / "IM0001.dcm", min((study / "a").iterdir()), 9,
                              bloat=(5 << 20) if case == "bloated-header" else 0, preamble=case != "no-preamble")
    if case == "bloated-header":
        with pytest.raises(DicomSeriesError) as refused:
            read_dicom_volume(study, series="1")
        assert str(big) in str(refused.value) and "larger than the 1024 MiB" in str(refused.value)
    else:
        assert read_dicom_volume(study, series="1").raw.shape[2] == len(list((study / "a").iterdir()))
        with pytest.raises(DicomSeriesError, match="larger than the 1024 MiB"):
            read_dicom_volume(study, series="9")


def _study_with_a_series_too_large_to_read(phantom_series: Path, tmp_path: Path
                                           ) -> tuple[Path, Path, Path, pydicom.Dataset]:
    """``tmp_path/study``: the phantom series in ``a/``, and in ``b/`` a series holding a file over the 1 GiB limit
    (``IM0001.dcm``, :func:`_sparse_large_slice`) and a small slice (``IM0002.dcm``).  Returns the study folder, the
    phantom's first file, the large file and the small slice's dataset as written."""
    study = tmp_path / "study"
    shutil.copytree(phantom_series / "in", study / "a")
    first = min((study / "a").iterdir())
    big = _sparse_large_slice(study / "b" / "IM0001.dcm", first, 9)
    sibling = pydicom.dcmread(first)
    sibling.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.9"
    sibling.SOPInstanceUID = sibling.file_meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.8.498.9.2"
    sibling.save_as(study / "b" / "IM0002.dcm")
    return study, first, big, sibling


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_anonymize_holds_out_only_the_series_of_a_file_too_large_to_read(phantom_series, tmp_path, capsys, jobs):
    """SAFE29: ``anonymize`` of a folder holding one DICOM file over the 1 GiB limit refused the whole folder ("cannot
    be read as DICOM, so a series would be written with missing instances"), every other series with it, although
    ``deface`` (SAFE28) reads that file's header alone and defaces the other series.  Now the large file's header
    (bounded, up to its pixel data) names its series, and that series alone is held out: none of its files is
    written, scrubbed or put in the mapping, each is listed as not written, the other series are de-identified, exit
    1 (as a study whose series failed); nothing of the large file is read past its header.  A folder with nothing
    else to write is refused, nothing written."""
    import hashlib
    import tracemalloc

    study, first, big, _ = _study_with_a_series_too_large_to_read(phantom_series, tmp_path)
    (study / "notes.txt").write_text("a note\n")
    slices = len(list((study / "a").iterdir()))
    series_a = str(pydicom.dcmread(first, stop_before_pixels=True).SeriesInstanceUID)
    stat = big.stat()
    digests = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in study.rglob("*") if p.is_file() and p != big}

    out, mapping = tmp_path / "anon", tmp_path / "map.json"
    tracemalloc.start()
    try:
        code = main(["anonymize", str(study), str(out), "--key", KEY, "--mapping-file", str(mapping), "--jobs", jobs])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    captured = capsys.readouterr()
    assert code == 1, captured.out + captured.err
    assert "Traceback" not in captured.out + captured.err
    assert peak < 64 << 20, f"{peak >> 20} MiB"  # the large file's header alone was read
    lines = captured.out.splitlines()
    assert f"  not written: {big}: too large DICOM file (1,101,0" in "\n".join(lines), captured.out
    assert any(line.startswith(f"  not written: {study / 'b' / 'IM0002.dcm'}: its series holds '{big}', a file too "
                               "large to read") for line in lines), captured.out
    assert f"  skipped (not copied): {study / 'notes.txt'}: not a DICOM file" in lines, captured.out
    assert "2 DICOM file(s)" in captured.err and "were not written" in captured.err, captured.err
    assert sorted(p.relative_to(out).parts[0] for p in out.rglob("*.dcm")) == ["S001"] * slices
    recorded = json.loads(mapping.read_text())["uids"]
    held = {"1.2.826.0.1.3680043.8.498.9", "1.2.826.0.1.3680043.8.498.9.1", "1.2.826.0.1.3680043.8.498.9.2"}
    assert series_a in recorded and not held & set(recorded), sorted(held & set(recorded))
    assert {str(pydicom.dcmread(p, stop_before_pixels=True).SeriesInstanceUID) for p in out.rglob("*.dcm")} == {
        recorded[series_a]}
    after = big.stat()
    assert (after.st_size, after.st_mtime_ns, after.st_blocks) == (stat.st_size, stat.st_mtime_ns, stat.st_blocks)
    assert digests == {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in digests}

    alone = tmp_path / "alone"
    code = main(["anonymize", str(study / "b"), str(alone), "--key", KEY, "--jobs", jobs])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err, err
    assert f"{big}: too large DICOM file" in err and "nothing was written" in err, err
    assert not alone.exists() and not list(tmp_path.glob(".defacer-tmp*"))


@pytest.mark.parametrize("jobs", ["1", "2"])
@pytest.mark.parametrize("twice", ["hard-link", "symbolic-link", "large-file-linked", "re-exported"])
def test_anonymize_names_one_file_twice_in_a_series_held_out_for_a_file_too_large_to_read(
        phantom_series, tmp_path, capsys, monkeypatch, twice, jobs):
    """SAFE30 (the last stop's leftover): a series held out because it holds a file over the 1 GiB limit (SAFE29)
    was held out whole with a file linked twice in it (two hard links, a symbolic link from another folder of the
    input, the large file itself linked twice) or two different files of one instance: each path listed as "not
    written" with its series, the other series written, and the twin named only once the large file was dealt with.
    The same input without the large file is refused, naming the two files (REVIEW26, SAFE27).  Now it is refused
    so, whatever series the twin lies in: the two paths named, nothing written, the input untouched; two large
    files that are one file are found from their inodes, neither read past its header."""
    import filecmp
    import hashlib

    study, _, big, sibling = _study_with_a_series_too_large_to_read(phantom_series, tmp_path)
    if twice == "hard-link":
        pair = (study / "b" / "IM0002.dcm", study / "b" / "IM0003.dcm")
        os.link(*pair)
    elif twice == "symbolic-link":
        pair = (study / "a" / "zz-link.dcm", study / "b" / "IM0002.dcm")
        os.symlink("../b/IM0002.dcm", pair[0])
    elif twice == "large-file-linked":
        pair = (big, study / "b" / "IM0004.dcm")
        os.link(*pair)
    else:
        sibling.SeriesDescription = "re-exported"
        pair = (study / "b" / "IM0002.dcm", study / "b" / "IM0003.dcm")
        sibling.save_as(pair[1])
    real_cmp = filecmp.cmp

    def compared(a, b, shallow=True):
        assert big not in (Path(a), Path(b)), "the large file was read to be compared"
        return real_cmp(a, b, shallow=shallow)

    monkeypatch.setattr(filecmp, "cmp", compared)
    digests = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in study.rglob("*")
               if p.is_file() and not os.path.samefile(p, big)}
    out, mapping = tmp_path / "anon", tmp_path / "map.json"
    code = main(["anonymize", str(study), str(out), "--key", KEY, "--mapping-file", str(mapping), "--jobs", jobs])
    captured = capsys.readouterr()
    assert code == 1, captured.out + captured.err
    words = "two different files of one instance" if twice == "re-exported" else "holds one DICOM file twice"
    assert words in captured.err and all(f"'{path}'" in captured.err for path in pair), captured.err
    assert "nothing was written" in captured.err and "Traceback" not in captured.err + captured.out
    assert "not written:" not in captured.out, captured.out
    assert not out.exists() and not mapping.exists() and not list(tmp_path.glob(".defacer-tmp*"))
    assert digests == {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in digests}


def test_anonymize_holds_out_two_large_files_of_one_instance_without_reading_them(phantom_series, tmp_path, capsys,
                                                                                 monkeypatch):
    """Two files over the 1 GiB limit whose headers carry one SOP Instance UID but that are not one file (no link):
    telling a copy from two different files would read both whole, so neither is compared; both are held out with
    their series (never written), the other series de-identified, exit 1, as one such file."""
    import filecmp

    study = tmp_path / "study"
    shutil.copytree(phantom_series / "in", study / "a")
    first = min((study / "a").iterdir())
    big = _sparse_large_slice(study / "b" / "IM0001.dcm", first, 9)
    copy = _sparse_large_slice(study / "b" / "IM0002.dcm", first, 9)
    monkeypatch.setattr(filecmp, "cmp", lambda *args, **kwargs: pytest.fail(f"read to be compared: {args}"))
    out = tmp_path / "anon"
    assert main(["anonymize", str(study), str(out), "--key", KEY, "--jobs", "1"]) == 1
    captured = capsys.readouterr()
    assert f"  not written: {big}: too large DICOM file" in captured.out, captured.out
    assert f"  not written: {copy}: too large DICOM file" in captured.out, captured.out
    assert sorted(p.relative_to(out).parts[0] for p in out.rglob("*.dcm")) == ["S001"] * len(list(first.parent.iterdir()))


def test_a_series_of_a_study_is_digested_over_its_own_files_alone(phantom_series, tmp_path, monkeypatch):
    """Before: ``deface STUDY --series 1`` recorded in its sidecar the sha256 of the whole study folder, so every
    file of every other series was read in full for it (SAFE28: about 5 s for a 1.1 GB file of another series),
    against "no read goes outside the scan's own files".  Now the digest is over the series' own files (their
    names relative to the folder given and their sha256, in the folder digest's order), and no other file is read
    for it; a folder of one series keeps the digest it had."""
    import hashlib

    from defacer import provenance
    from defacer.phi.pseudonym import Pseudonymizer

    study = tmp_path / "study"
    shutil.copytree(phantom_series / "in", study / "a")
    other = pydicom.dcmread(min((study / "a").iterdir()))
    other.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.99"
    other.SeriesNumber = 9
    other.SOPInstanceUID = other.file_meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.8.498.99.1"
    (study / "b").mkdir()
    other.save_as(study / "b" / "IM0001.dcm")
    hashed: list[Path] = []
    original = provenance.file_sha256

    def recording(path):
        hashed.append(Path(path))
        return original(path)

    monkeypatch.setattr(provenance, "file_sha256", recording)
    labels = str(phantom_series / "labels.nii.gz")
    assert main(["deface", str(study), str(tmp_path / "one"), "--series", "1", "--labels", labels,
                 "--key", KEY]) == 0
    recorded = json.loads((tmp_path / "one.defacer.json").read_text())["input"]
    expected = hashlib.sha256()
    for file in sorted((study / "a").iterdir(), key=lambda p: p.relative_to(study)):
        expected.update(str(file.relative_to(study)).encode())
        expected.update(hashlib.sha256(file.read_bytes()).digest())
    keyed = Pseudonymizer(KEY.encode()).keyed_digest
    assert recorded["sha256_keyed"] == keyed(expected.hexdigest())
    assert recorded["files"] == len(list((study / "a").iterdir()))
    assert (study / "b" / "IM0001.dcm") not in [p.resolve() for p in hashed], "another series' file was read"

    assert main(["deface", str(study / "a"), str(tmp_path / "alone"), "--labels", labels, "--key", KEY]) == 0
    alone = json.loads((tmp_path / "alone.defacer.json").read_text())["input"]
    assert alone["sha256_keyed"] == keyed(provenance.sha256_of(study / "a")), "one series' folder: its folder digest"
