"""Inputs are made of every file the reader reads, and only the scan's own files are read (audit of
2026-12-03, ``/work/team/NOTE-from-AUDIT.md``).

Each test failed on the code before its fix.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from run_checks import digest, plant_user_file, run_cli

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "batch"))

from defacer.batch.discover import discover
from defacer.cli.main import main


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> tuple[Path, Path]:
    """A 3 mm phantom head (NIfTI) and its label map; read only."""
    from defacer.phantom import make_phantom, save_phantom

    root = tmp_path_factory.mktemp("phantom")
    save_phantom(make_phantom(3.0), root / "head.nii.gz", root / "labels.nii.gz")
    return root / "head.nii.gz", root / "labels.nii.gz"


def detached_nrrd(phantom: Path, header: Path, data_name: str, *, comment_bytes: int = 0) -> Path:
    """Write the phantom as a NRRD header ``header`` (any ending) naming the gzip data file ``data_name``
    beside it, after ``comment_bytes`` of comment lines; return the data file."""
    import nrrd

    from defacer.io import load_volume

    volume = load_volume(phantom)
    nrrd.write(str(header.with_name("tmp.nhdr")), np.asarray(volume.raw), {
        "space": "right-anterior-superior", "space directions": volume.affine[:3, :3].T,
        "space origin": volume.affine[:3, 3], "encoding": "gzip",
    }, detached_header=True)
    header.with_name("tmp.raw.gz").rename(header.with_name(data_name))
    lines = header.with_name("tmp.nhdr").read_text().splitlines()
    header.with_name("tmp.nhdr").unlink()
    comments = ["# " + "x" * 998] * (comment_bytes // 1001)
    fields = [line for line in lines[1:] if line and not line.startswith(("data file", "#"))]
    header.write_text("\n".join([lines[0], *comments, *fields, f"data file: {data_name}"]) + "\n")
    return header.with_name(data_name)


@pytest.mark.parametrize("case", ["nrrd-ending", "field-after-a-megabyte", "field-name-spaced"])
def test_an_output_never_overwrites_the_data_file_any_nrrd_header_names(phantom, tmp_path, case, capsys):
    """A ``.nrrd`` header naming a detached data file, or a ``.nhdr`` naming it after 1 MiB of comments
    (the reader reads 4 MiB) or as ``Data  File``: the data file was not counted as an input, and
    ``deface IN victim.nrrd --force`` overwrote it."""
    work = tmp_path / "work"
    work.mkdir()
    header = work / ("head.nrrd" if case == "nrrd-ending" else "head.nhdr")
    data = detached_nrrd(phantom[0], header, "victim.nrrd", comment_bytes=1_200_000 if case.endswith("megabyte") else 0)
    if case == "field-name-spaced":
        header.write_text(header.read_text().replace("data file:", "Data  File:"))
    assert main(["deface", str(header), str(tmp_path / "check.nrrd"), "--labels", str(phantom[1])]) == 0, \
        "the reader does not read this header: the case tests nothing"
    before = digest(work)
    code = main(["deface", str(header), str(data), "--labels", str(phantom[1]), "--force"])
    assert code == 1
    assert "it is the input file" in capsys.readouterr().err
    assert digest(work) == before


def test_batch_never_copies_the_data_file_of_a_nrrd_scan_into_its_output(phantom, tmp_path):
    """A ``.nrrd`` scan whose header names a detached data file: the data file (the face, undefaced) was
    listed among the dataset's other files, which batch copies into OUT."""
    root = tmp_path / "files"
    root.mkdir()
    detached_nrrd(phantom[0], root / "head.nrrd", "head_voxels.raw.gz")
    found = discover(root, layout="files")
    assert [scan.relpath.as_posix() for scan in found.scans] == ["head.nrrd"]
    assert "head_voxels.raw.gz" not in [rel.as_posix() for rel in found.others]


def test_demo_never_writes_through_a_link_nor_over_a_file_without_force(tmp_path, capsys):
    """``defacer demo --out DIR`` wrote its phantom through a symbolic link in DIR (the user's file it
    pointed at became a NIfTI) and replaced existing files without ``--force``."""
    out = tmp_path / "demo"
    out.mkdir()
    precious = plant_user_file(tmp_path, "precious.txt")
    (out / "phantom_labels.nii.gz").symlink_to(precious)
    argv = ["demo", "--out", str(out), "--voxel-size", "4", "--use-true-labels"]
    code, text = run_cli(argv, capsys)
    assert code == 1 and "phantom_labels.nii.gz" in text and "--force" in text
    assert precious.read_text() == "years of work\n"
    assert sorted(p.name for p in out.iterdir()) == ["phantom_labels.nii.gz"], "a refused demo wrote files"
    assert run_cli([*argv, "--force"], capsys)[0] == 0
    assert precious.read_text() == "years of work\n"
    assert not (out / "phantom_labels.nii.gz").is_symlink()


@pytest.fixture(scope="module")
def series(tmp_path_factory) -> Path:
    """A 3 mm phantom head as an axial DICOM series folder (read only: tests copy it)."""
    from batch_fixtures import write_dicom_phantom  # after the sys.path entry above

    root = tmp_path_factory.mktemp("series")
    write_dicom_phantom(root / "in", root / "labels.nii.gz", patient="Quexworth^Ambrose")
    return root / "in"


def copied_series(series: Path, folder: Path) -> Path:
    """A copy of the phantom series in ``folder``."""
    shutil.copytree(series, folder)
    return folder


@pytest.mark.parametrize("command", ["anonymize", "deface"])
def test_a_dicom_folder_linking_to_a_file_outside_it_is_refused(series, tmp_path, command, capsys):
    """A DICOM folder holding a symbolic link to another patient's file elsewhere: the file was read and
    written into the de-identified output with the series (``anonymize``: 36 files from a 35-file folder)."""
    folder = copied_series(series, tmp_path / "study" / "in")
    other = tmp_path / "elsewhere" / "other_patient.dcm"
    other.parent.mkdir()
    shutil.copy(next(iter(sorted(series.iterdir()))), other)
    (folder / "zz_extra.dcm").symlink_to(other)
    out = tmp_path / "study" / "out"
    argv = [command, str(folder), str(out), "--key", "k" * 20]
    if command == "deface":
        argv += ["--labels", str(series.parent / "labels.nii.gz")]
    before = digest(tmp_path)
    code, text = run_cli(argv, capsys)
    assert code == 1 and "zz_extra.dcm" in text and "outside" in text
    assert not out.exists() and digest(tmp_path) == before


def test_links_into_the_git_annex_holding_a_dicom_folder_are_read(series, tmp_path, capsys):
    """What stays allowed: DataLad's links into the annex of the repository holding the folder."""
    dataset = tmp_path / "dataset"
    folder = copied_series(series, dataset / "sub-01" / "dicom")
    for number, file in enumerate(sorted(folder.iterdir())[:3]):
        annex = dataset / ".git" / "annex" / "objects" / "Xk" / f"9v{number}" / f"MD5E-s1--abc{number}.dcm"
        annex.parent.mkdir(parents=True)
        file.rename(annex)
        file.symlink_to(os.path.relpath(annex, file.parent))
    code, text = run_cli(["anonymize", str(folder), str(tmp_path / "out"), "--key", "k" * 20], capsys)
    assert code == 0, text
    assert len(list((tmp_path / "out").rglob("*.dcm"))) == len(list(series.iterdir()))


def test_batch_never_carries_a_link_out_of_the_dataset(tmp_path, caplog):
    """A BIDS dataset whose ``participants.tsv`` is a link to a private file elsewhere: batch copied the
    private file into OUT (the dataset to be shared)."""
    secret = plant_user_file(tmp_path / "home", "id_rsa")
    root = tmp_path / "bids"
    (root / "sub-01" / "anat").mkdir(parents=True)
    (root / "participants.tsv").symlink_to(secret)
    annexed = root / ".git" / "annex" / "objects" / "aa" / "bb" / "SHA256E-s3--x.tsv"
    annexed.parent.mkdir(parents=True)
    annexed.write_text("participant_id\n")
    (root / "sub-01" / "sub-01_scans.tsv").symlink_to(os.path.relpath(annexed, root / "sub-01"))
    (root / "README").write_text("a dataset\n")
    found = discover(root, layout="bids")
    assert [rel.as_posix() for rel in found.others] == ["README", "sub-01/sub-01_scans.tsv"]
    assert "participants.tsv" in caplog.text


@pytest.fixture
def scans(phantom, tmp_path) -> tuple[Path, Path]:
    """A folder holding the phantom as ``ph.nii.gz`` and a folder holding its label map ``ph.labels.nii.gz``."""
    folder, labels = tmp_path / "scans", tmp_path / "labels"
    folder.mkdir()
    labels.mkdir()
    shutil.copy(phantom[0], folder / "ph.nii.gz")
    shutil.copy(phantom[1], labels / "ph.labels.nii.gz")
    return folder, labels


@pytest.mark.parametrize("name", ["evaluation.json", "ph/verify_report.html"])
def test_evaluate_never_replaces_a_users_file_in_its_out_folder(scans, tmp_path, name, capsys):
    """``defacer evaluate FOLDER --out DIR`` replaced DIR/evaluation.json and DIR/<scan>/verify_report.html
    that the user had there (no --force, no ownership record)."""
    out = tmp_path / "results"
    mine = plant_user_file(out, name)
    code, text = run_cli(["evaluate", str(scans[0]), "--labels-dir", str(scans[1]), "--out", str(out)], capsys)
    assert code == 1 and name in text
    assert mine.read_text() == "years of work\n"


def test_evaluate_never_writes_its_pictures_of_faces_into_the_scans_folder(scans, capsys):
    """``--out`` inside the folder of scans put the original faces' reports among the scans."""
    before = digest(scans[0])
    code, text = run_cli(["evaluate", str(scans[0]), "--labels-dir", str(scans[1]), "--out", str(scans[0] / "ev")],
                         capsys)
    assert code == 1 and "inside the input folder" in text
    assert digest(scans[0]) == before and not (scans[0] / "ev").exists()


def test_evaluate_reruns_over_its_own_out_folder(scans, tmp_path, capsys):
    """What stays allowed: a rerun replaces the evaluation's own files (listed in the folder's record)."""
    pytest.importorskip("mediapipe")
    argv = ["evaluate", str(scans[0]), "--labels-dir", str(scans[1]), "--out", str(tmp_path / "results")]
    # evaluated both times: the exit status is the worst verdict (19a9a8a), INCONCLUSIVE (5) for a phantom the face
    # detectors do not take for a face, or FAIL (3) when Face Mesh finds one after; 1 would be an error
    assert run_cli(argv, capsys, refusals=("exit status",))[0] in (0, 3, 5)
    assert run_cli(argv, capsys, refusals=("exit status",))[0] in (0, 3, 5)
    assert (tmp_path / "results" / "ph" / "verify_report.html").is_file()


def test_evaluate_evaluates_the_scans_it_claimed_and_no_other(scans, phantom, tmp_path, capsys, monkeypatch):
    """``defacer evaluate`` listed the folder twice: once to claim its outputs, again to evaluate. A scan put in the
    folder in between was evaluated and its report, showing a face, written where nothing had claimed it."""
    pytest.importorskip("mediapipe")
    import defacer.cli.evaluate as cli_evaluate

    claim = cli_evaluate.claim_outputs

    def claim_then_a_scan_arrives(*args, **kwargs):
        claim(*args, **kwargs)
        shutil.copy(phantom[0], scans[0] / "late.nii.gz")
        shutil.copy(phantom[1], scans[1] / "late.labels.nii.gz")

    monkeypatch.setattr(cli_evaluate, "claim_outputs", claim_then_a_scan_arrives)
    out = tmp_path / "results"
    code, text = run_cli(["evaluate", str(scans[0]), "--labels-dir", str(scans[1]), "--out", str(out)], capsys,
                         refusals=("exit status",))
    assert code in (0, 3, 5), text  # evaluated (the exit status is the worst verdict, not an error)
    assert [s["name"] for s in json.loads((out / "evaluation.json").read_text())["scans"]] == ["ph"]
    assert not (out / "late").exists()


def test_a_terminated_run_leaves_no_temporary_beside_the_users_files(tmp_path):
    """SIGTERM (``timeout``, ``scancel``, ``docker stop``) or SIGHUP (a closed terminal) during a write left
    ``.defacer-tmp-*`` with the half-written output in the user's folder; only Ctrl-C cleaned up. The
    console entry point (``run``) now stops on them as on Ctrl-C."""
    import subprocess

    out_dir = tmp_path / "outputs"
    out_dir.mkdir()
    plant_user_file(out_dir, "notes.txt")
    script = (
        "import os, signal, sys, time\n"
        "from pathlib import Path\n"
        "import defacer.cli.main as cli\n"
        "from defacer.io.atomic import atomic_outputs\n"
        "def writing(argv):\n"
        "    with atomic_outputs([Path(argv[0]) / 'scan.nii.gz']) as (temp,):\n"
        "        temp.write_bytes(b'half written')\n"
        "        os.kill(os.getpid(), getattr(signal, argv[1]))\n"
        "        time.sleep(30)\n"
        "    return 0\n"
        "cli.main = writing\n"
        "cli.run(sys.argv[1:])\n"
    )
    for name in ("SIGTERM", "SIGHUP"):
        result = subprocess.run([sys.executable, "-c", script, str(out_dir), name], check=False, timeout=60,
                                capture_output=True)
        assert result.returncode not in (0, -15, -1), name
        assert sorted(p.name for p in out_dir.iterdir()) == ["notes.txt"], name


def test_a_full_disk_is_an_error_in_words_not_a_bug_report(phantom, tmp_path):
    """A write refused by the system (disk full, quota, file too large) was reported as "unexpected error:
    OSError ... This is a bug in defacer, not in your data" (measured on a 600 kB tmpfs: ENOSPC). Here the
    system refuses with EFBIG (a file-size limit), the same path without a small disk."""
    import subprocess

    script = (
        "import resource, signal, sys\n"
        "from defacer.cli.main import main\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, resource.RLIM_INFINITY))\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    out = tmp_path / "out"
    out.mkdir()
    argv = ["deface", str(phantom[0]), str(out / "defaced.nii.gz"), "--labels", str(phantom[1])]
    result = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 1
    assert "too large for this file system" in result.stderr and "bug" not in result.stderr, result.stderr
    assert list(out.iterdir()) == []


def test_batch_never_writes_through_a_linked_folder_in_its_output(tmp_path, capsys):
    """``OUT/sub-01`` a symbolic link to a folder elsewhere: ``batch IN OUT --force`` wrote the defaced scan,
    its sidecars and provenance into that other folder (outside OUT)."""
    from batch_fixtures import write_bids_phantoms

    write_bids_phantoms(tmp_path / "ds", tmp_path / "labels", [("01", None, "T1w", "T1")])
    elsewhere = tmp_path / "elsewhere"
    plant_user_file(elsewhere, "anat/notes.txt")
    out = tmp_path / "out"
    out.mkdir()
    (out / "sub-01").symlink_to(elsewhere)
    code, text = run_cli(["batch", str(tmp_path / "ds"), str(out), "--labels-dir", str(tmp_path / "labels"),
                          "-q", "--force"], capsys)
    assert code == 1 and "symbolic link" in text and "sub-01/anat/sub-01_T1w.nii.gz" in text
    assert sorted(p.name for p in (elsewhere / "anat").iterdir()) == ["notes.txt"]


@pytest.mark.parametrize("case", ["export-exists", "card-exists", "export-is-resume", "export-is-ensemble-member"])
def test_train_never_writes_over_a_file_without_force_nor_over_an_input(tmp_path, case, capsys):
    """``defacer train`` replaced --export (and its card), --out's checkpoints and a new --cache without any
    check: ``--resume r.onnx --export r.onnx`` or ``--ensemble a.pt b.pt --export a.pt`` wrote over an input."""
    pytest.importorskip("torch")
    pytest.importorskip("monai")
    export = tmp_path / "model.onnx"
    mine = plant_user_file(tmp_path, "model.json" if case == "card-exists" else "model.onnx")
    argv = ["train", "--out", str(tmp_path / "run"), "--export", str(export)]
    if case == "export-is-resume":
        argv += ["--resume", str(export), "--force"]
    elif case == "export-is-ensemble-member":
        argv += ["--ensemble", str(export), str(plant_user_file(tmp_path, "b.pt")), "--force"]
    code, text = run_cli(argv, capsys)
    assert code == 1 and mine.name in text
    assert mine.read_text() == "years of work\n"


@pytest.mark.parametrize("option", ["--protect-depth", "--eye-band", "--eye-box-scale", "--nose-scale"])
def test_a_nan_size_is_refused_and_never_switches_the_brains_protection_off(phantom, tmp_path, option, capsys):
    """``--protect-depth nan`` passed the ``< 0`` check (NaN fails every comparison), the protection gate then let
    every edit through: the phantom run wrote its output with 13,898 voxels changed inside the protected region,
    exit status 0. The library's DefaceOptions took NaN too."""
    from defacer.options import DefaceOptions

    out = tmp_path / "out.nii.gz"
    code, text = run_cli(["deface", str(phantom[0]), str(out), "--labels", str(phantom[1]), option, "nan"], capsys)
    assert code in (1, 2) and "nan" in text and not out.exists()
    field_name = {"--protect-depth": "protect_depth_mm", "--eye-band": "eye_band_mm",
                  "--eye-box-scale": "eye_box_scale", "--nose-scale": "nose_scale"}[option]
    with pytest.raises(ValueError, match="finite"):
        DefaceOptions(**{field_name: float("nan")})


def test_an_element_pydicom_cannot_write_is_refused_without_a_traceback(series, tmp_path, capsys):
    """An ImageComments longer than 64 kB (stored as UN) kept by --clean-descriptors cannot be written; the refusal
    quoted pydicom's message, which carries a whole Python traceback ("Traceback (most recent call last): File
    .../pydicom/filewriter.py ...")."""
    import pydicom
    from pydicom.dataelem import DataElement

    folder = copied_series(series, tmp_path / "in")
    first = min(folder.iterdir())
    ds = pydicom.dcmread(first)
    ds.add(DataElement(0x00204000, "UN", b"x" * 70_000))
    ds.save_as(first)
    out = tmp_path / "out"
    code, text = run_cli(["anonymize", str(folder), str(out), "--key", "k" * 20, "--clean-descriptors"], capsys)
    assert code == 1 and "(0020,4000)" in text and "Traceback" not in text and ".py" not in text
    assert not out.exists()


def test_a_name_with_an_undecodable_byte_is_still_masked_in_free_text(series, tmp_path, capsys):
    """PatientName ``Quexworth\\xff^Ambrose`` (UTF-8 declared, one byte invalid) decodes to ``Quexworth\\ufffd``:
    that component did not match ``Quexworth`` in the StudyDescription kept by --clean-descriptors, which went
    out as "Study of Quexworth *"."""
    import pydicom
    from pydicom.dataelem import DataElement

    folder = copied_series(series, tmp_path / "in")
    for file in folder.iterdir():
        ds = pydicom.dcmread(file)
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.add(DataElement(0x00100010, "PN", b"Quexworth\xff^Ambrose"))
        ds.add(DataElement(0x00081030, "LO", b"Study of Quexworth Ambrose"))
        ds.save_as(file)
    out = tmp_path / "out"
    code, text = run_cli(["anonymize", str(folder), str(out), "--key", "k" * 20, "--clean-descriptors"], capsys)
    assert code == 0, text
    written = list(out.rglob("*.dcm"))
    assert written and not [f for f in written if b"Quexworth" in f.read_bytes() or b"Ambrose" in f.read_bytes()]


def test_a_nrrd_data_file_linked_out_of_the_headers_folder_is_refused(phantom, tmp_path, capsys):
    """A ``.nhdr`` naming a data file beside it that is a symbolic link to another person's scan elsewhere: the
    linked file was read and defaced into the output (a documented limit, now closed); a link into the git-annex
    store of a repository holding the folder (DataLad) is still read."""
    elsewhere = tmp_path / "other_study"
    elsewhere.mkdir()
    data = detached_nrrd(phantom[0], elsewhere / "other.nhdr", "other_patient.raw.gz")
    work = tmp_path / "dataset" / "sub-01"
    work.mkdir(parents=True)
    header = work / "head.nhdr"
    header.write_text((elsewhere / "other.nhdr").read_text().replace("other_patient.raw.gz", "head.raw.gz"))
    (work / "head.raw.gz").symlink_to(data)
    argv = ["deface", str(header), str(tmp_path / "out.nhdr"), "--labels", str(phantom[1])]
    code, text = run_cli(argv, capsys)
    assert code == 1 and "symbolic link" in text and not (tmp_path / "out.nhdr").exists()
    annexed = tmp_path / "dataset" / ".git" / "annex" / "objects" / "Pq" / "x1" / "SHA256E-s9--abc.raw.gz"
    annexed.parent.mkdir(parents=True)
    shutil.copy(data, annexed)
    (work / "head.raw.gz").unlink()
    (work / "head.raw.gz").symlink_to(os.path.relpath(annexed, work))
    assert run_cli(argv, capsys)[0] == 0


def test_a_huge_key_file_is_refused_before_it_is_read_whole(series, tmp_path, capsys):
    """``--key-file`` was read whole: ``--key-file /dev/zero`` grew without bound, a scan given by mistake became
    the key. Now at most 64 KiB are read and a longer file is refused."""
    key = tmp_path / "sub-01_T1w.nii"
    key.write_bytes(b"\x01" * 200_000)
    code, text = run_cli(["anonymize", str(series), str(tmp_path / "out"), "--key-file", str(key)], capsys)
    assert code == 1 and "64 KiB" in text and not (tmp_path / "out").exists()
    if Path("/dev/zero").exists():
        code, text = run_cli(["anonymize", str(series), str(tmp_path / "out"), "--key-file", "/dev/zero"], capsys)
        assert code == 1 and "not a regular file" in text


def test_batch_never_copies_linked_private_files_into_the_dataset_files_it_writes(tmp_path, capsys):
    """A hostile BIDS dataset whose ``.bidsignore``, ``dataset_description.json`` and a scan's JSON sidecar are
    links to private files elsewhere: their contents went into OUT's .bidsignore, dataset_description.json and
    defaced sidecar (those three are written, not carried, so the carry-over rule did not see them)."""
    from batch_fixtures import write_bids_phantoms

    root = tmp_path / "ds"
    write_bids_phantoms(root, tmp_path / "labels", [("01", None, "T1w", "T1")])
    private = tmp_path / "home"
    private.mkdir()
    (private / "id_rsa").write_text("PRIVATE-KEY-LINE\n")
    (private / "creds.json").write_text('{"Name": "x", "BIDSVersion": "1.9.0", "Password": "hunter2"}')
    (root / ".bidsignore").symlink_to(private / "id_rsa")
    (root / "dataset_description.json").unlink()
    (root / "dataset_description.json").symlink_to(private / "creds.json")
    sidecar = root / "sub-01" / "anat" / "sub-01_T1w.json"
    sidecar.unlink()
    sidecar.symlink_to(private / "creds.json")
    out = tmp_path / "out"
    code, text = run_cli(["batch", str(root), str(out), "--labels-dir", str(tmp_path / "labels"), "-q"], capsys)
    assert code == 0, text
    leaked = [p for p in out.rglob("*") if p.is_file() and (b"PRIVATE-KEY" in p.read_bytes() or b"hunter2" in p.read_bytes())]
    assert leaked == []


def test_verify_refuses_a_provenance_that_is_no_sidecar_before_writing_anything(phantom, tmp_path, capsys):
    """``verify --provenance`` took any file: a JSON array ended in "unexpected error: AttributeError ... a bug in
    defacer" after the QC folder's README was written; ``/dev/zero`` was read until the memory ran out (rc 137).
    Also refused: a file over the 16 MiB read at most (sparse here), and one that is no UTF-8 text."""
    listing, large, binary = tmp_path / "list.json", tmp_path / "large.json", tmp_path / "binary.json"
    listing.write_text("[1, 2]")
    with large.open("wb") as handle:
        handle.truncate(16 * 2**20 + 1)
    binary.write_bytes(b'{"a": "\xff"}')
    out = tmp_path / "qc"
    reasons = {listing: "holds a JSON array", large: "larger than 16 MiB", binary: "not UTF-8 text",
               Path("/dev/zero"): "not a regular file"}
    for provenance, reason in reasons.items():
        if not provenance.exists():
            continue
        code, text = run_cli(["verify", str(phantom[0]), str(phantom[0]), "--provenance", str(provenance),
                              "--out", str(out)], capsys)
        assert code == 1 and "provenance file" in text and reason in text and "--provenance" in text
        assert not out.exists()


def test_verify_reads_the_provenance_sidecar_deface_wrote_for_an_upper_case_ending(phantom, tmp_path, capsys):
    """``verify ORIG head_defaced.NII.GZ`` looked for its sidecar by a case-sensitive list of endings of its own
    (no ``.dcm`` either): ``head_defaced.NII.GZ.defacer.json``, never the ``head_defaced.defacer.json`` that
    ``deface`` writes (:func:`defacer.provenance.sidecar_path`), so the report went without the provenance."""
    defaced = tmp_path / "head_defaced.NII.GZ"
    shutil.copy(phantom[0], defaced)
    (tmp_path / "head_defaced.defacer.json").write_text("[1]")  # a damaged sidecar: refused, so seen to be read
    code, text = run_cli(["verify", str(phantom[0]), str(defaced)], capsys)
    assert code == 1 and "head_defaced.defacer.json" in text and "holds a JSON array" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["head_defaced.NII.GZ", "head_defaced.defacer.json"]


def test_batch_never_deletes_a_users_look_alike_of_its_temporaries(tmp_path, capsys):
    """``batch IN OUT --force`` (writing beside a user's files) deleted every ``.defacer-tmp-*`` file and folder
    under OUT: a user's ``.defacer-tmp-mine/keep.txt`` and ``notes/.defacer-tmp-draft.txt`` were removed."""
    from batch_fixtures import write_bids_phantoms

    write_bids_phantoms(tmp_path / "ds", tmp_path / "labels", [("01", None, "T1w", "T1")])
    out = tmp_path / "out"
    mine = [plant_user_file(out, ".defacer-tmp-mine/keep.txt"), plant_user_file(out, "notes/.defacer-tmp-draft.txt")]
    code, text = run_cli(["batch", str(tmp_path / "ds"), str(out), "--labels-dir", str(tmp_path / "labels"), "-q",
                          "--force"], capsys)
    assert code == 0, text
    assert all(path.read_text() == "years of work\n" for path in mine)


def test_deface_of_the_current_folder_writes_beside_it(series, tmp_path, monkeypatch, capsys):
    """``cd series && defacer deface .`` ended in "unexpected error: ValueError: PosixPath('.') has an empty name ...
    a bug in defacer"; the default output is now the folder's sibling ``<name>_defaced``."""
    folder = copied_series(series, tmp_path / "study")
    monkeypatch.chdir(folder)
    code, text = run_cli(["deface", ".", "--labels", str(series.parent / "labels.nii.gz"), "--key", "k" * 20], capsys)
    assert code == 0, text
    assert len(list((tmp_path / "study_defaced").iterdir())) == len(list(series.iterdir()))


def test_verify_of_the_current_folder_puts_its_qc_folder_beside_it(series, tmp_path, monkeypatch, capsys):
    """``cd out && defacer verify ../in .`` chose ``./-qc`` (inside the defaced output) as its QC folder and was
    refused; its default is now the sibling ``out-qc``."""
    pytest.importorskip("mediapipe")
    labels = str(series.parent / "labels.nii.gz")
    assert run_cli(["deface", str(series), str(tmp_path / "out"), "--labels", labels, "--key", "k" * 20],
                   capsys)[0] == 0
    monkeypatch.chdir(tmp_path / "out")
    code = main(["verify", str(series), "."])
    assert code in (0, 3, 5), capsys.readouterr().err
    assert (tmp_path / "out-qc" / "verify_report.html").is_file() and not (tmp_path / "out" / "-qc").exists()


def test_a_nhdr_mask_whose_data_file_exists_refuses_the_run_before_the_output_is_written(phantom, tmp_path, capsys):
    """``--save-mask m.nhdr`` with a user's ``m.raw.gz`` there: the defaced output was written first, then the
    mask was refused (exit 1, "nothing written", yet the output and no sidecar were left)."""
    mine = plant_user_file(tmp_path, "m.raw.gz")
    out = tmp_path / "out.nii.gz"
    code, text = run_cli(["deface", str(phantom[0]), str(out), "--labels", str(phantom[1]), "--save-mask",
                          str(tmp_path / "m.nhdr")], capsys)
    assert code == 1 and "m.raw.gz" in text
    assert not out.exists() and mine.read_text() == "years of work\n"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_a_named_pipe_in_a_dataset_never_hangs_the_batch(tmp_path):
    """A named pipe in a BIDS dataset (a tar can hold one), among the other files or with a scan's name: finding
    the scans opened it to look for DICOM magic and waited for a writer forever (batch hung until killed)."""
    import subprocess

    from batch_fixtures import write_bids_phantoms

    root = tmp_path / "ds"
    write_bids_phantoms(root, tmp_path / "labels", [("01", None, "T1w", "T1")])
    os.mkfifo(root / "notes_pipe")
    os.mkfifo(root / "sub-01" / "anat" / "sub-01_T2w.nii.gz")
    script = ("import sys\nfrom defacer.batch.discover import discover\nfound = discover(sys.argv[1])\n"
              "print(sorted(s.relpath.as_posix() for s in found.scans), sorted(r.as_posix() for r in found.others))\n")
    try:
        result = subprocess.run([sys.executable, "-c", script, str(root)], capture_output=True, text=True,
                                timeout=60, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail("finding the scans of a dataset holding a named pipe hung")
    assert result.returncode == 0, result.stderr
    assert "sub-01/anat/sub-01_T1w.nii.gz" in result.stdout and "notes_pipe" not in result.stdout
    assert "sub-01_T2w" not in result.stdout and "not a regular file" in result.stderr


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
@pytest.mark.parametrize("case", ["dicom-file", "key-file"])
def test_a_named_pipe_given_as_an_input_is_refused_not_waited_on(series, tmp_path, case):
    """``anonymize pipe.dcm OUT`` and ``--key-file PIPE`` opened the pipe and waited for a writer forever."""
    import subprocess

    pipe = tmp_path / ("pipe.dcm" if case == "dicom-file" else "key")
    os.mkfifo(pipe)
    source = pipe if case == "dicom-file" else series
    argv = ["anonymize", str(source), str(tmp_path / "out"), "--key-file" if case == "key-file" else "--key",
            str(pipe) if case == "key-file" else "k" * 20]
    try:
        result = subprocess.run([sys.executable, "-m", "defacer", *argv], capture_output=True, text=True, timeout=60,
                                check=False)
    except subprocess.TimeoutExpired:
        pytest.fail(f"a named pipe as the {case} hung the command")
    assert result.returncode == 1 and "not a regular file" in result.stderr, result.stderr


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
@pytest.mark.parametrize("case", ["deface-scan", "deface-labels", "verify-original", "verify-labels"])
def test_a_named_pipe_with_a_nrrd_name_is_refused_not_waited_on(phantom, tmp_path, case):
    """A pipe named ``x.nrrd`` as the scan, label map or verified file: the output guard opened it to look for the
    ``data file:`` field before anything checked it was a file, and waited for a writer forever."""
    import subprocess

    pipe = tmp_path / "pipe.nrrd"
    os.mkfifo(pipe)
    scan = str(phantom[0])
    argv = {"deface-scan": ["deface", str(pipe), str(tmp_path / "out.nrrd")],
            "deface-labels": ["deface", scan, str(tmp_path / "out.nii.gz"), "--labels", str(pipe)],
            "verify-original": ["verify", str(pipe), scan, "--out", str(tmp_path / "qc")],
            "verify-labels": ["verify", scan, scan, "--labels", str(pipe), "--out", str(tmp_path / "qc")]}[case]
    try:
        result = subprocess.run([sys.executable, "-m", "defacer", *argv], capture_output=True, text=True, timeout=60,
                                check=False)
    except subprocess.TimeoutExpired:
        pytest.fail(f"a named pipe ({case}) hung the command")
    assert result.returncode == 1 and "not a regular file" in result.stderr, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe.nrrd"]


def test_a_linked_series_folder_in_a_dicom_input_is_named_not_silently_left_out(series, tmp_path, capsys, caplog):
    """``anonymize study out`` where ``study/s2`` links to another series: the search does not enter links to folders
    (no read outside the input), but nothing said so: one series of two was written, exit 0, no word; a folder
    holding only such links was called "empty"."""
    import shutil

    study = tmp_path / "study"
    shutil.copytree(series, study / "s1")
    (study / "s2").symlink_to(series, target_is_directory=True)
    code, text = run_cli(["anonymize", str(study), str(tmp_path / "out"), "--key", "k" * 20], capsys)
    assert code == 0
    assert "link(s) to folders, not entered" in caplog.text and "s2" in caplog.text
    only_links = tmp_path / "only"
    only_links.mkdir()
    (only_links / "s2").symlink_to(series, target_is_directory=True)
    code, text = run_cli(["anonymize", str(only_links), str(tmp_path / "out2"), "--key", "k" * 20], capsys)
    assert code == 1 and "only links to folders" in text


def test_a_forged_ownership_record_never_makes_force_delete_a_file_outside_the_output(series, tmp_path, capsys):
    """An ownership record beside the output (``.out.defacer-output.json``) listing ``../home/thesis.tex`` with its
    size: ``deface IN out --force`` unlinked every listed name, so the user's thesis outside the output was deleted."""
    thesis = plant_user_file(tmp_path / "home", "thesis.tex")
    (tmp_path / "out").mkdir()
    record = {"written_by": "defacer", "files": {"../home/thesis.tex": 14, str(thesis): 14}}
    (tmp_path / ".out.defacer-output.json").write_text(json.dumps(record))
    code, text = run_cli(["deface", str(series), str(tmp_path / "out"), "--labels", str(series.parent / "labels.nii.gz"),
                          "--key", "k" * 20, "--force"], capsys)
    assert code == 0, text
    assert thesis.read_text() == "years of work\n"
