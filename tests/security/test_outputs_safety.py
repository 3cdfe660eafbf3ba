"""What defacer may write: never an input, never a user's folder, nothing before every check passed.

Each test here is a regression test of a defect in issue 11 (the number in its docstring) and
fails on the code before the fix.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from defacer.cli.main import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "batch"))
from batch_fixtures import write_bids_phantoms, write_dicom_phantom
from run_checks import digest, plant_user_file

KEY = "outputs-safety-test-key-0123456789"


@pytest.fixture(scope="module")
def series(tmp_path_factory) -> tuple[Path, Path]:
    """A 3 mm phantom head as a DICOM series folder and its label map (NIfTI); read only."""
    root = tmp_path_factory.mktemp("series")
    write_dicom_phantom(root / "in", root / "labels.nii.gz", patient="Quexworth^Ambrose")
    return root / "in", root / "labels.nii.gz"


@pytest.fixture(scope="module")
def phantom_files(tmp_path_factory) -> tuple[Path, Path]:
    """A 3 mm phantom head as NIfTI and its label map."""
    from defacer.phantom import make_phantom, save_phantom

    root = tmp_path_factory.mktemp("nifti")
    save_phantom(make_phantom(3.0), root / "head.nii.gz", root / "labels.nii.gz")
    return root / "head.nii.gz", root / "labels.nii.gz"


def deface_series(series: tuple[Path, Path], out: Path, *extra: str) -> int:
    return main(["deface", str(series[0]), str(out), "--labels", str(series[1]), "--key", KEY, *extra])


# --- 2: --force never deletes a user's folder -------------------------------------------------------------------


def user_folder(out: Path) -> Path:
    (out / "thesis").mkdir(parents=True)
    chapter = out / "thesis" / "chapter1.tex"
    chapter.write_text("\\chapter{Years of work}\n")
    return chapter


def test_force_refuses_to_replace_a_folder_defacer_did_not_write_deface(series, tmp_path, capsys):
    """2: ``deface SERIES OUT --force`` removed OUT with everything in it."""
    out = tmp_path / "out"
    chapter = user_folder(out)
    assert deface_series(series, out, "--force") == 1
    err = capsys.readouterr().err
    assert "chapter1.tex" in err and "did not write" in err
    assert chapter.read_text() == "\\chapter{Years of work}\n"
    assert sorted(p.name for p in out.rglob("*")) == ["chapter1.tex", "thesis"]


def test_force_refuses_to_replace_a_folder_defacer_did_not_write_anonymize(series, tmp_path, capsys):
    """2: ``anonymize IN OUT --force`` removed OUT with everything in it."""
    out = tmp_path / "out"
    chapter = user_folder(out)
    assert main(["anonymize", str(series[0]), str(out), "--key", KEY, "--force"]) == 1
    assert "chapter1.tex" in capsys.readouterr().err
    assert chapter.exists()


def test_force_replaces_defacers_own_earlier_output(series, tmp_path):
    out = tmp_path / "out"
    assert deface_series(series, out) == 0
    first = digest(out)
    assert (tmp_path / ".out.defacer-output.json").is_file()
    assert not any(name.startswith(".") for name in first), "the folder holds only the series"
    assert deface_series(series, out, "--force") == 0
    assert digest(out).keys() == first.keys()
    assert main(["anonymize", str(series[0]), str(tmp_path / "anon"), "--key", KEY]) == 0
    assert main(["anonymize", str(series[0]), str(tmp_path / "anon"), "--key", KEY, "--force"]) == 0


def test_force_refuses_a_user_file_added_to_defacers_output(series, tmp_path, capsys):
    out = tmp_path / "out"
    assert deface_series(series, out) == 0
    notes = out / "notes.txt"
    notes.write_text("mine")
    (out / "empty_user_folder").mkdir()
    assert deface_series(series, out, "--force") == 1
    err = capsys.readouterr().err
    assert "notes.txt" in err and "empty_user_folder" in err
    assert notes.read_text() == "mine" and (out / "empty_user_folder").is_dir()
    # A file defacer wrote but someone changed since (another size) is not replaced either.
    notes.unlink()
    (out / "empty_user_folder").rmdir()
    victim = min(out.iterdir())
    victim.write_bytes(victim.read_bytes() + b"edited")
    assert deface_series(series, out, "--force") == 1
    assert victim.name in capsys.readouterr().err


def test_a_forged_ownership_record_does_not_cover_unlisted_files(tmp_path):
    from defacer.errors import OutputError
    from defacer.io.output_guard import check_replaceable, owner_record, remove_owned_folder

    out = tmp_path / "out"
    user_folder(out)
    owner_record(out).write_text(json.dumps({"written_by": "defacer", "files": {"IM00001.dcm": 10}}))
    with pytest.raises(OutputError, match="chapter1.tex"):
        check_replaceable(out, force=True)
    with pytest.raises(OutputError, match="chapter1.tex"):
        remove_owned_folder(out)
    assert (out / "thesis" / "chapter1.tex").exists()


def test_a_symlink_inside_an_owned_folder_is_never_followed(tmp_path):
    from defacer.errors import OutputError
    from defacer.io.output_guard import check_replaceable, owner_record

    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "keep.txt").write_text("keep")
    out = tmp_path / "out"
    out.mkdir()
    (out / "link").symlink_to(precious)
    owner_record(out).write_text(json.dumps({"written_by": "defacer", "files": {"link/keep.txt": 4}}))
    with pytest.raises(OutputError, match="link"):
        check_replaceable(out, force=True)
    assert (precious / "keep.txt").read_text() == "keep"


# --- batch --force writes beside a user's files, never over them ---------------------------------------------------


@pytest.fixture(scope="module")
def bids_one(tmp_path_factory) -> tuple[Path, Path]:
    """A BIDS dataset of one 3 mm phantom (sub-01 T1w, with README and a JSON sidecar) and its labels folder."""
    root = tmp_path_factory.mktemp("bids")
    write_bids_phantoms(root / "ds", root / "labels", [("01", None, "T1w", "T1")])
    return root / "ds", root / "labels"


def batch_into(bids: tuple[Path, Path], out: Path, *extra: str) -> int:
    return main(["batch", str(bids[0]), str(out), "--labels-dir", str(bids[1]), "-q", *extra])


#: Files a batch of ``bids_one`` writes into OUT: the image, its JSON sidecar, its provenance, a carried-over
#: file and the BIDS dataset description.
BATCH_OUTPUTS = ["sub-01/anat/sub-01_T1w.nii.gz", "sub-01/anat/sub-01_T1w.json",
                 "sub-01/anat/sub-01_T1w.defacer.json", "README", "dataset_description.json"]


@pytest.mark.parametrize("victim", BATCH_OUTPUTS)
def test_batch_force_refuses_a_user_file_that_has_an_outputs_name(bids_one, tmp_path, victim, capsys):
    """``batch IN OUT --force`` into a folder that is no batch output replaced a user file named as an output."""
    out = tmp_path / "out"
    plant_user_file(out, victim)
    before = digest(out)
    assert batch_into(bids_one, out, "--force", "--dry-run") == 1, "the dry run says so too"
    assert victim in capsys.readouterr().err
    assert batch_into(bids_one, out, "--force") == 1
    err = capsys.readouterr().err
    assert victim in err and "did not write" in err and "Traceback" not in err
    assert digest(out) == before and not (out / ".defacer").exists(), "nothing is written when refused"


def test_batch_force_writes_beside_user_files_and_replaces_only_its_own(bids_one, tmp_path):
    out = tmp_path / "out"
    (out / "notes").mkdir(parents=True)
    (out / "notes" / "todo.txt").write_text("mine")
    assert batch_into(bids_one, out) == 1, "a non-empty folder that is no batch output needs --force"
    assert batch_into(bids_one, out, "--force") == 0
    assert all((out / name).is_file() for name in BATCH_OUTPUTS) and (out / "notes" / "todo.txt").read_text() == "mine"
    image = out / BATCH_OUTPUTS[0]
    image.write_bytes(b"damaged")
    assert batch_into(bids_one, out) == 0 and image.read_bytes() != b"damaged", "a rerun redoes what the batch wrote"


def test_a_batch_output_never_gains_a_user_file_into_its_ownership(bids_one, tmp_path, capsys):
    out = tmp_path / "out"
    assert batch_into(bids_one, out, "--others", "skip") == 0
    readme = out / "README"
    readme.write_text("my notes on this output\n")
    # The rerun would now copy IN's README: that name was never the batch's, so it is refused, --force or not.
    for extra in ([], ["--force"], ["--redo", "--force"]):
        assert batch_into(bids_one, out, *extra) == 1
        assert "'README'" in capsys.readouterr().err
        assert readme.read_text() == "my notes on this output\n"
    assert batch_into(bids_one, out, "--others", "skip") == 0


def test_a_batch_output_written_before_the_ownership_record_still_resumes(bids_one, tmp_path):
    out = tmp_path / "out"
    assert batch_into(bids_one, out) == 0
    record = out / ".defacer" / "owned.jsonl"
    record.unlink()  # as an older defacer left it: a manifest, no record
    assert batch_into(bids_one, out, "--redo") == 0, "credited with its manifest's outputs and dataset description"
    names = {json.loads(line)["path"] for line in record.read_text().splitlines()}
    assert set(BATCH_OUTPUTS) - {"README"} <= names


def test_a_record_line_cut_short_by_a_killed_run_is_ignored_and_the_next_starts_afresh(tmp_path):
    from defacer.batch.ownership import OwnershipRecord

    path = tmp_path / ".defacer" / "owned.jsonl"
    path.parent.mkdir()
    path.write_text('{"path": "a.nii.gz"}\n{"path": "b.ni')
    record = OwnershipRecord(path, tmp_path)
    assert record.names == {"a.nii.gz"}
    record.add([tmp_path / "c.nii.gz"])
    assert OwnershipRecord(path, tmp_path).names == {"a.nii.gz", "c.nii.gz"}


def test_a_damaged_record_line_that_is_not_utf8_loses_that_line_only(tmp_path):
    """Found by HOSTILE4: a byte that is not UTF-8 in OUT/.defacer/owned.jsonl (or a QC folder's
    .defacer-owned.jsonl) stopped the batch or verify with "error: 'utf-8' codec can't decode byte 0xff", for good:
    every rerun stopped the same way. The line is skipped, as one cut short: its name is not counted as defacer's."""
    from defacer.batch.ownership import OwnershipRecord

    path = tmp_path / ".defacer" / "owned.jsonl"
    path.parent.mkdir()
    path.write_bytes(b'{"path": "a.nii.gz"}\n{"path": "\xff.nii.gz"}\n{"path": "b.nii.gz"}\n')
    assert OwnershipRecord(path, tmp_path).names == {"a.nii.gz", "b.nii.gz"}


# --- 3: no output is ever an input --------------------------------------------------------------------------------


def test_a_detached_nrrd_output_never_overwrites_the_inputs_data_file(phantom_files, tmp_path, capsys):
    """3: ``deface head.nhdr MRHeadResampled.nhdr --force`` overwrote the input's MRHeadResampled.raw.gz."""
    import nrrd

    from defacer.io import load_volume

    volume = load_volume(phantom_files[0])
    work = tmp_path / "work"
    work.mkdir()
    nrrd.write(str(work / "MRHeadResampled.raw.gz"), np.asarray(volume.raw), {"encoding": "gzip"})
    data = work / "MRHeadResampled.raw.gz"
    # A detached header named differently from its data file (as 3D Slicer writes them).
    header = work / "head.nhdr"
    nrrd.write(str(header), np.asarray(volume.raw), {
        "space": "right-anterior-superior", "space directions": volume.affine[:3, :3].T,
        "space origin": volume.affine[:3, 3], "encoding": "gzip", "kinds": ["domain"] * 3,
    }, detached_header=True)
    (work / "head.raw.gz").rename(data)
    header.write_text(header.read_text().replace("data file: head.raw.gz", "data file: MRHeadResampled.raw.gz"))
    before = digest(work)
    labels = tmp_path / "labels.nii.gz"
    labels.write_bytes(phantom_files[1].read_bytes())
    code = main(["deface", str(header), str(work / "MRHeadResampled.nhdr"), "--labels", str(labels), "--force"])
    assert code == 1
    assert "MRHeadResampled.raw.gz" in capsys.readouterr().err
    assert digest(work) == before


def test_a_mapping_file_on_an_input_dicom_is_refused_before_anything_is_written(series, tmp_path, capsys):
    """3: ``anonymize IN OUT --mapping-file IN/0000.dcm --force`` replaced an input DICOM with JSON."""
    source = tmp_path / "in"
    source.mkdir()
    for p in series[0].iterdir():
        (source / p.name).write_bytes(p.read_bytes())
    victim = min(source.iterdir())
    before = digest(source)
    out = tmp_path / "out"
    assert main(["anonymize", str(source), str(out), "--key", KEY, "--mapping-file", str(victim), "--force"]) == 1
    assert victim.name in capsys.readouterr().err
    assert digest(source) == before and not out.exists()
    code = main(["deface", str(source), str(out), "--labels", str(series[1]), "--key", KEY,
                 "--mapping-file", str(victim), "--force"])
    assert code == 1 and digest(source) == before and not out.exists()


@pytest.mark.parametrize("which", ["save-mask", "sidecar-of-output"])
def test_no_secondary_output_may_be_the_input(phantom_files, tmp_path, which, capsys):
    source = tmp_path / "head.nii.gz"
    source.write_bytes(phantom_files[0].read_bytes())
    before = source.read_bytes()
    if which == "save-mask":
        args = [str(source), str(tmp_path / "out.nii.gz"), "--save-mask", str(source)]
    else:
        # The sidecar of out.nii.gz is out.defacer.json: make that name the input (a hard link to the scan).
        (tmp_path / "out.defacer.json").hardlink_to(source)
        args = [str(source), str(tmp_path / "out.nii.gz")]
    assert main(["deface", *args, "--labels", str(phantom_files[1]), "--force"]) == 1
    assert "Refusing" in capsys.readouterr().err
    assert source.read_bytes() == before and not (tmp_path / "out.nii.gz").exists()


def test_a_save_mask_equal_to_the_output_is_refused(phantom_files, tmp_path, capsys):
    out = tmp_path / "out.nii.gz"
    code = main(["deface", str(phantom_files[0]), str(out), "--labels", str(phantom_files[1]), "--save-mask", str(out)])
    assert code == 1 and "same file" in capsys.readouterr().err and not out.exists()


def test_an_output_inside_a_dicom_input_folder_is_refused(series, tmp_path):
    source = tmp_path / "in"
    source.mkdir()
    for p in series[0].iterdir():
        (source / p.name).write_bytes(p.read_bytes())
    before = digest(source)
    assert deface_series((source, series[1]), source / "defaced") == 1
    assert deface_series((source, series[1]), tmp_path / "out", "--save-mask", str(source / "m.nii.gz")) == 1
    assert digest(source) == before


# --- 10: everything is checked before anything is written -------------------------------------------------------


@pytest.mark.parametrize("command", ["deface", "anonymize"])
@pytest.mark.parametrize("case", ["inside-output", "exists"])
def test_a_bad_mapping_file_leaves_no_output_behind(series, tmp_path, command, case, capsys):
    """10: ``--mapping-file`` inside the output, or an existing one, exited 1 but left the whole output folder."""
    out = tmp_path / "out"
    mapping = out / "map.json" if case == "inside-output" else tmp_path / "map.json"
    if case == "exists":
        mapping.write_text("{}")
    args = [command, str(series[0]), str(out), "--key", KEY, "--mapping-file", str(mapping)]
    if command == "deface":
        args += ["--labels", str(series[1])]
    assert main(args) == 1
    assert "map.json" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "out.defacer.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == (["map.json"] if case == "exists" else [])


#: A second output that cannot be written, by how it is wrong: a folder under a file, a mask name without an image
#: ending.  Each was refused only after the first output was written (exit 1, the defaced scan and its ownership
#: record left behind, no sidecar).
UNWRITABLE_SECOND_OUTPUTS = [
    ("nifti", "--save-mask", "note.txt/mask.nii.gz"),
    ("nifti", "--save-mask", "mask.txt"),
    ("dicom", "--save-mask", "mask.txt"),
    ("dicom", "--save-mask", "note.txt/mask.nii.gz"),
    ("dicom", "--mapping-file", "note.txt/map.json"),
    ("dicom-anonymize", "--mapping-file", "note.txt/map.json"),
]


@pytest.mark.parametrize(("kind", "option", "name"), UNWRITABLE_SECOND_OUTPUTS)
def test_a_second_output_that_cannot_be_written_leaves_no_first_output_behind(phantom_files, series, tmp_path, kind,
                                                                              option, name, capsys):
    """``--save-mask mask.txt`` or ``--save-mask note.txt/mask.nii.gz`` (a folder under a file), or such a
    ``--mapping-file``, exited 1 after the output had been written."""
    note = tmp_path / "note.txt"
    note.write_text("a user's note\n")
    if kind == "nifti":
        out = tmp_path / "out.nii.gz"
        args = ["deface", str(phantom_files[0]), str(out), "--labels", str(phantom_files[1])]
    else:
        out = tmp_path / "out"
        args = ([kind.split("-")[1], str(series[0]), str(out), "--key", KEY] if kind == "dicom-anonymize"
                else ["deface", str(series[0]), str(out), "--labels", str(series[1]), "--key", KEY])
    assert main([*args, option, str(tmp_path / name)]) == 1
    err = capsys.readouterr().err
    assert ("is a file, not a folder" in err) if "/" in name else ("no image ending" in err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["note.txt"]
    assert note.read_text() == "a user's note\n"


@pytest.mark.parametrize("output", ["out", "out.txt"])
def test_an_output_without_an_image_ending_is_named_as_the_output(phantom_files, tmp_path, output, capsys):
    """The message said 'has an unsupported file type ... Convert it (e.g. with dcm2niix or 3D Slicer)', as if the
    output were a scan to convert."""
    assert main(["deface", str(phantom_files[0]), str(tmp_path / output), "--labels", str(phantom_files[1])]) == 1
    err = capsys.readouterr().err
    assert "The output" in err and "no image ending" in err and "out.nii.gz" in err and "Convert" not in err
    assert list(tmp_path.iterdir()) == []


def test_deface_verify_creates_nothing_when_the_output_is_refused(phantom_files, tmp_path):
    out = tmp_path / "out.nii.gz"
    out.write_bytes(b"user data")
    assert main(["deface", str(phantom_files[0]), str(out), "--labels", str(phantom_files[1]), "--verify"]) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.nii.gz"] and out.read_bytes() == b"user data"


# --- --verify never replaces a user's file in the QC folder ---------------------------------------------------------

#: A report, a render and the README that ``deface --verify`` writes into ``OUT-stem-qc/``.
DEFACE_QC_NAMES = ["verify_report.html", "front_before.png", "README.txt"]


def deface_verify(phantom_files: tuple[Path, Path], out: Path, *extra: str) -> int:
    return main(["deface", str(phantom_files[0]), str(out), "--labels", str(phantom_files[1]), "--verify", *extra])


@pytest.mark.parametrize("force", [False, True])
@pytest.mark.parametrize("victim", DEFACE_QC_NAMES)
def test_deface_verify_never_replaces_a_user_file_with_a_qc_name(phantom_files, tmp_path, victim, force, capsys):
    """``deface IN OUT --verify --force`` overwrote a user's file named like a QC report in ``OUT-stem-qc/``."""
    mine = plant_user_file(tmp_path / "out-qc", victim)
    assert deface_verify(phantom_files, tmp_path / "out.nii.gz", *(["--force"] if force else [])) == 1
    err = capsys.readouterr().err
    assert str(mine) in err and "Traceback" not in err
    assert mine.read_text() == "years of work\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out-qc"], "nothing is written when refused"
    assert [p.name for p in mine.parent.iterdir()] == [victim]


def test_deface_verify_reruns_over_its_own_qc_folder_and_keeps_a_users_other_files(phantom_files, tmp_path, capsys):
    out = tmp_path / "out.nii.gz"
    first = deface_verify(phantom_files, out)
    assert first != 1, capsys.readouterr().err
    notes = tmp_path / "out-qc" / "my_notes.txt"
    notes.write_text("looked fine\n")
    assert deface_verify(phantom_files, out) == 1, "an existing output still needs --force"
    assert "--force" in capsys.readouterr().err
    assert deface_verify(phantom_files, out, "--force") == first, capsys.readouterr().err
    assert notes.read_text() == "looked fine\n"


def test_verify_never_replaces_a_user_file_in_its_out_folder_and_reruns_over_its_own(phantom_files, tmp_path,
                                                                                        capsys):
    """``defacer verify ORIGINAL DEFACED --out DIR`` overwrote a user's ``DIR/verify_summary.json``."""
    head = str(phantom_files[0])
    mine = plant_user_file(tmp_path / "mine", "verify_summary.json")
    assert main(["verify", head, head, "--out", str(mine.parent)]) == 1
    err = capsys.readouterr().err
    assert str(mine) in err and "--out" in err and "Traceback" not in err
    assert [p.name for p in mine.parent.iterdir()] == ["verify_summary.json"] and mine.read_text() == "years of work\n"
    first = main(["verify", head, head, "--out", str(tmp_path / "qc")])
    assert first != 1 and main(["verify", head, head, "--out", str(tmp_path / "qc")]) == first


#: Files ``batch --verify`` of ``bids_one`` writes into ``OUT-qc/``: the gallery, and a report and render of the scan.
BATCH_QC_NAMES = ["index.html", "sub-01__anat__sub-01_T1w/verify_report.html",
                  "sub-01__anat__sub-01_T1w/front_after.png"]


@pytest.mark.parametrize("victim", BATCH_QC_NAMES)
def test_batch_verify_never_replaces_a_user_file_with_a_qc_name(bids_one, tmp_path, victim, capsys):
    """``batch IN OUT --verify`` overwrote a user's file named like its gallery or a report in ``OUT-qc/``."""
    qc = tmp_path / "out-qc"
    mine = plant_user_file(qc, victim)
    before = digest(qc)
    assert batch_into(bids_one, tmp_path / "out", "--verify", "--dry-run") == 1, "the dry run says so too"
    assert victim.split("/")[-1] in capsys.readouterr().err
    for extra in ([], ["--force"]):
        assert batch_into(bids_one, tmp_path / "out", "--verify", *extra) == 1
        err = capsys.readouterr().err
        assert str(mine) in err and "did not write" in err and "Traceback" not in err
        assert digest(qc) == before and not (tmp_path / "out").exists(), "nothing is written when refused"


def test_batch_verify_reruns_over_its_own_qc_folder(bids_one, tmp_path, capsys):
    pytest.importorskip("mediapipe")
    out = tmp_path / "out"
    first = batch_into(bids_one, out, "--verify")
    err = capsys.readouterr().err
    assert "did not write" not in err and "Traceback" not in err, err
    notes = tmp_path / "out-qc" / "my_notes.txt"
    notes.write_text("looked fine\n")
    (tmp_path / "out-qc" / "index.html").unlink()  # a rerun rewrites the gallery
    assert batch_into(bids_one, out, "--verify") == first
    assert batch_into(bids_one, out, "--verify", "--force") == first
    assert (tmp_path / "out-qc" / "index.html").is_file() and notes.read_text() == "looked fine\n"
    assert "did not write" not in capsys.readouterr().err


# --- 12: temporaries of a killed run are swept on the next run ---------------------------------------------------


def test_the_temporary_folder_of_a_killed_run_is_removed_by_the_next_run(phantom_files, tmp_path):
    """12: after SIGKILL, ``.defacer-tmp-*`` stayed in the output folder forever."""
    import os
    import subprocess
    import time

    out_dir = tmp_path / "outputs"
    out_dir.mkdir()
    killed = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from defacer.io.atomic import atomic_outputs\n"
        "with atomic_outputs([Path(sys.argv[1]) / 'scan.nii.gz']) as (temp,):\n"
        "    temp.write_bytes(b'half written')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    result = subprocess.run([sys.executable, "-c", killed, str(out_dir)], check=False)
    assert result.returncode == -9
    leftovers = [p for p in out_dir.iterdir() if p.name.startswith(".defacer-tmp-")]
    assert len(leftovers) == 1
    # Not defacer's, or not stale: kept.
    user_dir = out_dir / ".defacer-tmp-mine"  # not a name defacer makes
    user_dir.mkdir()
    recent_legacy = out_dir / ".defacer-tmp-abcd1234"  # an older defacer's name, but fresh: may be in use
    recent_legacy.mkdir()
    old_legacy = out_dir / ".defacer-tmp-zyxw9876"
    (old_legacy / "x").mkdir(parents=True)
    two_hours_ago = time.time() - 7200
    os.utime(old_legacy, (two_hours_ago, two_hours_ago))
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "keep.txt").write_text("keep")
    link = out_dir / ".defacer-tmp-link1234"
    link.symlink_to(precious)

    code = main(["deface", str(phantom_files[0]), str(out_dir / "defaced.nii.gz"), "--labels", str(phantom_files[1])])
    assert code == 0
    names = {p.name for p in out_dir.iterdir()}
    assert leftovers[0].name not in names and old_legacy.name not in names
    assert {user_dir.name, recent_legacy.name, link.name} <= names
    assert (precious / "keep.txt").read_text() == "keep"


def test_a_running_writers_temporary_folder_is_never_swept(tmp_path):
    import os

    from defacer.io.atomic import atomic_outputs, sweep_stale_temporaries

    with atomic_outputs([tmp_path / "a.json"]) as (temp,):
        temp.write_text("{}")
        assert sweep_stale_temporaries(tmp_path) == []
        assert temp.exists()
        other = temp.parent.with_name(temp.parent.name.replace(f"-{os.getpid()}-", f"-{os.getppid()}-"))
        other.mkdir()
        assert sweep_stale_temporaries(tmp_path) == [] and other.exists()
        other.rmdir()
    assert (tmp_path / "a.json").read_text() == "{}"


# --- 5: the library has the command line's privacy defaults; no sidecar records where the user's files are -------


def test_the_library_deidentifies_a_dicom_series_by_default(series, tmp_path):
    """5: ``deface_file(dicom_folder, out)`` wrote the series with PatientName kept and the input path recorded
    (now :func:`defacer.route.deface_path`, the one route)."""
    import pydicom

    from defacer.route import deface_path

    provenance = deface_path(series[0], tmp_path / "out", labels_path=series[1]).provenance
    files = sorted((tmp_path / "out").iterdir())
    assert files and all(b"Quexworth" not in f.read_bytes() for f in files)
    assert pydicom.dcmread(files[0]).PatientIdentityRemoved == "YES"
    sidecar = (tmp_path / "out.defacer.json").read_text()
    assert provenance["dicom"]["deidentified"] is True
    for private in ("Quexworth", str(series[0].parent), str(tmp_path)):
        assert private not in sidecar
    # Asked for explicitly: headers kept.
    deface_path(series[0], tmp_path / "kept", labels_path=series[1], deidentify=None)
    assert str(pydicom.dcmread(min((tmp_path / "kept").iterdir())).PatientName) == "Quexworth^Ambrose"
    assert str(series[0].parent) not in (tmp_path / "kept.defacer.json").read_text()


def test_file_sidecars_record_base_names_only(phantom_files, tmp_path):
    from defacer.route import deface_path

    private = tmp_path / "Quexworth_Ambrose_1970"
    private.mkdir()
    source = private / "head.nii.gz"
    source.write_bytes(phantom_files[0].read_bytes())
    deface_path(source, tmp_path / "out" / "defaced.nii.gz", labels_path=phantom_files[1],
                mask_path=tmp_path / "masks" / "m.nii.gz")
    sidecar = json.loads((tmp_path / "out" / "defaced.defacer.json").read_text())
    assert "Quexworth" not in json.dumps(sidecar) and str(tmp_path) not in json.dumps(sidecar)
    assert sidecar["input"]["path"] == "head.nii.gz" and sidecar["output"]["path"] == "defaced.nii.gz"
    assert sidecar["mask"]["path"] == "m.nii.gz"


def test_batch_manifests_and_sidecars_record_no_absolute_path(phantom_files, tmp_path):
    from defacer.batch.runner import BatchConfig, run_batch

    ds = tmp_path / "Quexworth_Ambrose_study"
    (ds / "labels").mkdir(parents=True)
    (ds / "scans").mkdir()
    (ds / "scans" / "head.nii.gz").write_bytes(phantom_files[0].read_bytes())
    (ds / "labels" / "scans").mkdir()
    (ds / "labels" / "scans" / "head.labels.nii.gz").write_bytes(phantom_files[1].read_bytes())
    (ds / "scans" / "broken.nii.gz").write_bytes(b"\x1f\x8b" + b"not really gzip")
    out = tmp_path / "out"
    summary = run_batch(BatchConfig(in_root=ds / "scans", out_root=out, labels_dir=ds / "labels", quiet=True))
    assert sorted(r.status for r in summary.records) == ["done", "failed"]
    for path in [out / ".defacer" / "manifest.jsonl", *out.rglob("*.json")]:
        text = path.read_text()
        assert "Quexworth" not in text and str(tmp_path) not in text, path


# --- --max-voxels: the loader's size limit, raised or lifted from the command line --------------------------------


def test_max_voxels_refuses_a_large_scan_and_raising_it_lets_it_through(phantom_files, tmp_path, capsys):
    from defacer.io import load_volume

    voxels = int(np.prod(load_volume(phantom_files[0]).shape))
    out = tmp_path / "out.nii.gz"
    base = ["deface", str(phantom_files[0]), str(out), "--labels", str(phantom_files[1])]
    assert main([*base, "--max-voxels", str(voxels - 1)]) == 1
    assert "--max-voxels" in capsys.readouterr().err and not out.exists()
    assert main([*base, "--max-voxels", str(voxels)]) == 0
    assert main([*base, "--max-voxels", "0", "--force"]) == 0
    assert main([*base, "--max-voxels", "lots"]) == 2


def test_batch_max_voxels_records_a_too_large_scan_as_failed(phantom_files, tmp_path):
    from defacer.batch.runner import BatchConfig, run_batch

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "head.nii.gz").write_bytes(phantom_files[0].read_bytes())
    summary = run_batch(BatchConfig(in_root=tmp_path / "in", out_root=tmp_path / "out", quiet=True, max_voxels=1000))
    assert [r.status for r in summary.records] == ["failed"] and "voxels" in summary.records[0].error


def test_verify_never_writes_its_report_into_a_dicom_input(series, tmp_path, capsys):
    """3: ``defacer verify ORIGINAL DEFACED --out ORIGINAL/qc`` wrote the report into the input series."""
    source = tmp_path / "in"
    source.mkdir()
    for p in series[0].iterdir():
        (source / p.name).write_bytes(p.read_bytes())
    before = digest(source)
    assert main(["verify", str(source), str(source), "--out", str(source / "qc")]) == 1
    assert "Refusing" in capsys.readouterr().err
    assert digest(source) == before


# --- the same folder under another name -------------------------------------------------------------------------


@pytest.fixture
def two_names(tmp_path: Path):
    """A folder ``real`` and the same folder as ``alias`` (a bind mount: as 'Anon' and 'anon' on a case-insensitive
    file system, two names that no path comparison unites).  Skipped where a bind mount cannot be made (not root)."""
    import subprocess

    real, alias = tmp_path / "real", tmp_path / "alias"
    real.mkdir()
    alias.mkdir()
    try:
        made = subprocess.run(["mount", "--bind", str(real), str(alias)], check=False, capture_output=True,
                              timeout=30)
    except (OSError, subprocess.SubprocessError):
        made = None
    if made is None or made.returncode != 0:
        pytest.skip("a bind mount cannot be made here (needs root)")
    try:
        yield real, alias
    finally:
        subprocess.run(["umount", "-l", str(alias)], check=False, capture_output=True, timeout=30)


def test_force_never_replaces_an_input_folder_reached_under_another_name(series, two_names, capsys):
    """``anonymize raw Anon; deface Anon anon --force`` on a case-insensitive file system (here: a bind mount): the
    input folder, written by defacer (so its ownership record covers it), was removed file by file and replaced by
    the defaced series."""
    real, alias = two_names
    assert main(["anonymize", str(series[0]), str(real / "anon"), "--key", KEY]) == 0
    before = digest(real / "anon")
    for output in (alias / "anon", alias / "anon" / "sub", alias):
        code = main(["deface", str(real / "anon"), str(output), "--labels", str(series[1]), "--key", KEY, "--force"])
        err = capsys.readouterr().err
        assert code == 1 and "under another name" in err, err
    assert digest(real / "anon") == before
    assert sorted(p.name for p in real.iterdir()) == [".anon.defacer-output.json", "anon"]


def test_batch_never_writes_into_its_input_reached_under_another_name(bids_one, two_names, capsys):
    import shutil

    real, alias = two_names
    ds = real / "ds"
    shutil.copytree(bids_one[0], ds)
    before = digest(ds)
    for output in (alias / "ds", alias / "ds" / "out", alias):
        assert main(["batch", str(ds), str(output), "--labels-dir", str(bids_one[1]), "-q"]) == 1
        assert "overlaps the input" in capsys.readouterr().err
    assert digest(ds) == before


@pytest.mark.parametrize("case", ["mask", "mapping", "unicode"])
def test_outputs_that_differ_only_in_letter_case_are_refused_on_any_disk(phantom_files, series, tmp_path, case,
                                                                         capsys):
    """HOSTILE10: two outputs of one run differing only in letter case (or Unicode form) are one file on macOS,
    Windows or exFAT: '--save-mask OUT.nii.gz' replaced the defaced 'out.nii.gz' with the label map there, and
    '--mapping-file OUT.defacer.json' put the original identifiers under the provenance record's name. Both were
    written on ext4 and never compared; the names are now compared casefolded by defacer itself, whatever the disk
    (this test runs on a case-sensitive one)."""
    out = tmp_path / "out"
    out.mkdir()
    plant_user_file(out, "notes.txt")
    if case == "mask":
        code = main(["deface", str(phantom_files[0]), str(out / "out.nii.gz"), "--labels", str(phantom_files[1]),
                     "--save-mask", str(out / "OUT.nii.gz")])
    elif case == "unicode":
        code = main(["deface", str(phantom_files[0]), str(out / "caf\u00e9.nii.gz"), "--labels", str(phantom_files[1]),
                     "--save-mask", str(out / "cafe\u0301.nii.gz")])
    else:
        code = deface_series(series, out / "Defaced", "--mapping-file", str(out / "defaced.defacer.json"))
    err = capsys.readouterr().err
    assert code == 1, err
    assert "differ only in letter case" in err and "case-insensitive disk" in err and "Traceback" not in err, err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"], "nothing written"


@pytest.mark.parametrize("kind", ["pipe", "device"])
def test_force_never_replaces_a_device_or_a_pipe(phantom_files, tmp_path, kind, capsys):
    """HOSTILE10: an output that is a device or a named pipe was renamed over under --force: 'deface scan /dev/null
    --force' as root (a container) replaced the system's /dev/null with the defaced scan. Refused in words, --force
    or not (checked here on a device node made in a temporary folder)."""
    import os
    import stat

    out = tmp_path / "o.nii.gz"
    if kind == "pipe":
        os.mkfifo(out)
    else:
        try:
            os.mknod(out, 0o644 | stat.S_IFCHR, os.makedev(1, 3))  # the null device's numbers
        except PermissionError:
            pytest.skip("making a device node needs root")
    for force in ([], ["--force"]):
        code = main(["deface", str(phantom_files[0]), str(out), "--labels", str(phantom_files[1]), *force])
        err = capsys.readouterr().err
        assert code == 1 and f"is a {kind}, not a file" in err and "Traceback" not in err, err
        mode = os.lstat(out).st_mode
        assert stat.S_ISFIFO(mode) if kind == "pipe" else stat.S_ISCHR(mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.nii.gz"]


# --- a real case-insensitive disk ---------------------------------------------------------------------------------


@pytest.fixture
def case_insensitive_disk(tmp_path: Path):
    """A real case-insensitive file system: a 256 MB exFAT image (sparse) on a loop device, mounted with FUSE
    (exfat-fuse).  Skipped where it cannot be made (not root, no exfatprogs / exfat-fuse, no loop device or FUSE).
    Such a mount numbers each spelling of a name apart: 'scan.nii.gz' and 'SCAN.nii.gz' open one file under two
    (device, inode) pairs, so only the names the folder lists tell them for one."""
    import os
    import shutil
    import subprocess

    tools = [shutil.which(t) for t in ("mkfs.exfat", "mount.exfat-fuse", "losetup", "umount")]
    if os.geteuid() != 0 or not all(tools):
        pytest.skip("an exFAT mount needs root, exfatprogs and exfat-fuse (apt-get install exfatprogs exfat-fuse)")
    image, mount = tmp_path / "exfat.img", tmp_path / "disk"
    with image.open("wb") as handle:
        handle.truncate(256 << 20)
    mount.mkdir()

    def run(*command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(command, check=False, capture_output=True, text=True, timeout=60)

    if run("mkfs.exfat", str(image)).returncode != 0:
        pytest.skip("mkfs.exfat failed")
    attached = run("losetup", "-f", "--show", str(image))
    if attached.returncode != 0:
        pytest.skip(f"no loop device: {attached.stderr.strip()}")
    loop = attached.stdout.strip()
    try:
        mounted = run("mount.exfat-fuse", loop, str(mount))
        if mounted.returncode != 0:
            pytest.skip(f"exFAT could not be mounted: {mounted.stderr.strip()}")
        (mount / "Probe").write_bytes(b"")
        if not (mount / "PROBE").exists():
            pytest.skip("the exFAT mount is not case-insensitive")
        (mount / "Probe").unlink()
        yield mount
    finally:
        run("umount", str(mount))
        run("losetup", "-d", loop)


def test_an_input_reached_in_another_letter_case_on_a_real_case_insensitive_disk_is_never_written(
        case_insensitive_disk, phantom_files, series, bids_one, capsys):
    """HOSTILE13, on a real exFAT disk: 'deface scan.nii.gz SCAN.nii.gz --force' replaced the input with the
    defaced head (exit 0), 'anonymize Anon anon --force' (an input defacer had written) removed the input folder
    and wrote its output there, 'batch ds DS' wrote into its input.  The (device, inode) check HOSTILE10 added
    (tested on a bind mount) does not see it: this FUSE mount gives each spelling its own inode number."""
    import shutil

    disk = case_insensitive_disk
    scan, labels = disk / "scan.nii.gz", disk / "labels.nii.gz"
    shutil.copyfile(phantom_files[0], scan)
    shutil.copyfile(phantom_files[1], labels)
    before = digest(scan)
    for output in ("SCAN.nii.gz", "Scan.nii.gz"):
        code = main(["deface", str(scan), str(disk / output), "--labels", str(labels), "--force"])
        err = capsys.readouterr().err
        assert code == 1 and "under another name" in err and "Traceback" not in err, err
    code = main(["deface", str(disk / "SCAN.nii.gz"), str(scan), "--labels", str(labels), "--force"])
    assert code == 1 and "it is the input file" in capsys.readouterr().err
    assert digest(scan) == before and sorted(p.name for p in disk.iterdir()) == ["labels.nii.gz", "scan.nii.gz"]

    assert main(["anonymize", str(series[0]), str(disk / "Anon"), "--key", KEY]) == 0
    capsys.readouterr()
    anon = digest(disk / "Anon")
    for output in ("anon", "ANON", "anon/sub"):
        code = main(["deface", str(disk / "Anon"), str(disk / output), "--labels", str(series[1]), "--key", KEY,
                     "--force"])
        err = capsys.readouterr().err
        assert code == 1 and "input folder" in err, err
        assert main(["anonymize", str(disk / "Anon"), str(disk / output), "--key", KEY, "--force"]) == 1
        capsys.readouterr()
    assert digest(disk / "Anon") == anon and "Anon" in [p.name for p in disk.iterdir()]

    shutil.copytree(bids_one[0], disk / "ds")
    dataset = digest(disk / "ds")
    for output in ("DS", "Ds/out"):
        assert main(["batch", str(disk / "ds"), str(disk / output), "--labels-dir", str(bids_one[1]), "-q"]) == 1
        assert "overlaps the input" in capsys.readouterr().err
    assert digest(disk / "ds") == dataset


def test_batch_never_writes_into_its_label_maps_folder(bids_one, tmp_path, capsys):
    """HOSTILE13: '--labels-dir' is an input too, but only IN was compared with OUT: 'batch ds labels --labels-dir
    labels --force' wrote the defaced dataset (images, sidecars, dataset description, .defacer/) among the label
    maps, exit 0; so did an OUT inside the labels folder, or a QC folder there."""
    import shutil

    labels = tmp_path / "labels"
    shutil.copytree(bids_one[1], labels)
    before = digest(labels)
    for output, extra in ((labels, ["--force"]), (labels / "out", []), (tmp_path / "x", ["--verify"])):
        if extra == ["--verify"]:
            labels_qc = tmp_path / "x-qc"
            shutil.copytree(labels, labels_qc)
            code = main(["batch", str(bids_one[0]), str(output), "--labels-dir", str(labels_qc), "-q", *extra])
            assert code == 1 and "overlaps the input" in capsys.readouterr().err
            continue
        code = main(["batch", str(bids_one[0]), str(output), "--labels-dir", str(labels), "-q", *extra])
        assert code == 1 and "overlaps the input" in capsys.readouterr().err
    assert digest(labels) == before


def test_an_output_sharing_another_outputs_record_in_another_letter_case_is_refused(case_insensitive_disk,
                                                                                    phantom_files, capsys):
    """HOSTILE13, on a real exFAT disk: 'deface b.nii O.nii --force' beside a defaced 'o.nii.gz' replaced that
    output's record ('O.defacer.json' opens 'o.defacer.json' there) with its own, exit 0: HOSTILE12's check for
    outputs sharing a record compared the names' letter case.  Replacing 'o.nii.gz' itself as 'O.NII.GZ' with
    --force stays allowed."""
    import gzip
    import json
    import shutil

    disk = case_insensitive_disk
    shutil.copyfile(phantom_files[0], disk / "a.nii.gz")
    shutil.copyfile(phantom_files[1], disk / "labels.nii.gz")
    (disk / "b.nii").write_bytes(gzip.decompress((disk / "a.nii.gz").read_bytes()))
    assert main(["deface", str(disk / "a.nii.gz"), str(disk / "o.nii.gz"), "--labels", str(disk / "labels.nii.gz")]) == 0
    record = json.loads((disk / "o.defacer.json").read_text())
    code = main(["deface", str(disk / "b.nii"), str(disk / "O.nii"), "--labels", str(disk / "labels.nii.gz"),
                 "--force"])
    err = capsys.readouterr().err
    assert code == 1 and "would share its provenance record" in err, err
    assert json.loads((disk / "o.defacer.json").read_text()) == record and not (disk / "O.nii").exists()
    assert main(["deface", str(disk / "b.nii"), str(disk / "O.NII.GZ"), "--labels", str(disk / "labels.nii.gz"),
                 "--force"]) == 0
    (listed,) = [p for p in disk.iterdir() if p.name.lower() == "o.defacer.json"]  # (a FUSE cache keeps the old
    assert json.loads(listed.read_text())["input"]["path"] == "b.nii"                # entry under the other name)


def test_the_library_replacing_an_output_in_another_letter_case_drops_its_record(case_insensitive_disk,
                                                                                 phantom_files):
    """HOSTILE13, on a real exFAT disk: deface_path(..., 'O.NII.GZ', sidecar=False, force=True) over an earlier
    'o.nii.gz' replaced the image but kept its record, which described the replaced image: the record's output name
    was compared with the new one's letter case (HOSTILE10's removal, ce00c31)."""
    import shutil

    from defacer.route import deface_path

    disk = case_insensitive_disk
    shutil.copyfile(phantom_files[0], disk / "a.nii.gz")
    shutil.copyfile(phantom_files[1], disk / "labels.nii.gz")
    deface_path(disk / "a.nii.gz", disk / "o.nii.gz", labels_path=disk / "labels.nii.gz")
    assert (disk / "o.defacer.json").is_file()
    deface_path(disk / "a.nii.gz", disk / "O.NII.GZ", labels_path=disk / "labels.nii.gz", sidecar=False, force=True)
    assert [p.name.lower() for p in disk.iterdir() if p.name.lower().endswith(".json")] == []


def test_a_batch_rerun_reaching_its_outputs_in_another_letter_case_knows_them_for_its_own(case_insensitive_disk,
                                                                                          bids_one, capsys):
    """HOSTILE14, on a real exFAT disk: batch's ownership record ('OUT/.defacer/owned.jsonl') compared names exactly.
    The input's 'anat' renamed 'ANAT' (the same folder to any tool on that disk), a rerun into the same OUT with
    --force refused the batch's own 'sub-01/anat/sub-01_T1w.nii.gz' (reached as 'sub-01/ANAT/...') as "files
    defacer did not write".  Names are now compared as the disk lists them; a user's file there still stays."""
    import json
    import shutil

    disk = case_insensitive_disk
    shutil.copytree(bids_one[0], disk / "ds")
    out = disk / "out"
    assert main(["batch", str(disk / "ds"), str(out), "--labels-dir", str(bids_one[1]), "-q"]) == 0
    (out / "sub-01" / "anat" / "notes.txt").write_text("mine")
    (disk / "ds" / "sub-01" / "anat").rename(disk / "ds" / "sub-01" / "x")
    (disk / "ds" / "sub-01" / "x").rename(disk / "ds" / "sub-01" / "ANAT")
    capsys.readouterr()
    code = main(["batch", str(disk / "ds"), str(out), "--labels-dir", str(bids_one[1]), "-q", "--force"])
    err = capsys.readouterr().err
    assert code == 0 and "did not write" not in err, err
    assert (out / "sub-01" / "anat" / "notes.txt").read_text() == "mine"
    assert [p.name for p in (out / "sub-01").iterdir() if p.name.lower() == "anat"] == ["anat"]
    owned = [json.loads(line)["path"] for line in (out / ".defacer" / "owned.jsonl").read_text().splitlines()]
    assert not [name for name in owned if "ANAT" in name]  # recorded as the disk spells them


def test_on_the_fuse_exfat_disk_rename_no_replace_falls_back_and_outputs_are_still_written(case_insensitive_disk,
                                                                                           phantom_files, capsys):
    """HOSTILE15: exfat-fuse does not take renameat2's RENAME_NOREPLACE (EINVAL on a free name; the kernel's own
    exfat and vfat drivers take it, but this kernel has neither), so there defacer falls back to its earlier no-replace
    step (no hard links there either: a look just before the rename).  A taken name is still refused by the call."""
    import shutil

    from defacer.io.no_replace import rename_no_replace

    disk = case_insensitive_disk
    (disk / "a").write_text("a")
    (disk / "taken").write_text("theirs")
    with pytest.raises(FileExistsError):  # the kernel sees the name before asking the file system
        rename_no_replace(disk / "a", disk / "taken")
    assert rename_no_replace(disk / "a", disk / "free") is False and (disk / "a").is_file()
    shutil.copyfile(phantom_files[0], disk / "scan.nii.gz")
    shutil.copyfile(phantom_files[1], disk / "labels.nii.gz")
    assert main(["deface", str(disk / "scan.nii.gz"), str(disk / "out.nii.gz"), "--labels",
                 str(disk / "labels.nii.gz")]) == 0
    assert (disk / "out.nii.gz").is_file() and (disk / "out.defacer.json").is_file()
    assert (disk / "taken").read_text() == "theirs"
