"""A write that fails after the defaced output is in place (a full disk at the label map or the provenance sidecar)
leaves nothing new: before, the complete output stayed without its sidecar, after an error saying "no half-written
output was left under its name" (measured on a 190 kB tmpfs: a 191,690-byte out.nii.gz, no out.defacer.json, exit 1;
the rerun then met "already exists")."""

from __future__ import annotations

import errno
import os
import shutil
import sys
from pathlib import Path

import pytest

from defacer.cli.main import main
from defacer.phantom import make_phantom, save_phantom


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("late")
    save_phantom(make_phantom(4.0), base / "in.nii.gz", base / "in.labels.nii.gz")
    return base / "in.nii.gz", base / "in.labels.nii.gz"


def _full_disk(*_: object, **__: object) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("where", ["sidecar", "mask"])
def test_a_full_disk_after_the_output_leaves_nothing_new(tmp_path: Path, phantom: tuple[Path, Path], where: str,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    scan, labels = phantom
    import defacer.io
    import defacer.route

    if where == "sidecar":
        monkeypatch.setattr(defacer.route, "write_provenance", _full_disk)
    else:
        monkeypatch.setattr(defacer.io, "save_label_map", _full_disk)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("the user's")
    code = main(["deface", str(scan), str(out / "d.nii.gz"), "--labels", str(labels),
                 "--save-mask", str(out / "m.nii.gz")])
    assert code == 1
    assert "the disk is full" in capsys.readouterr().err
    assert sorted(os.listdir(out)) == ["keep.txt"], "the output written before the failure is removed"


def test_a_file_replaced_under_force_is_not_removed(tmp_path: Path, phantom: tuple[Path, Path],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """What existed before cannot be restored once replaced: it is left, not deleted too."""
    scan, labels = phantom
    import defacer.route

    out = tmp_path / "d.nii.gz"
    out.write_bytes(b"an earlier output")
    monkeypatch.setattr(defacer.route, "write_provenance", _full_disk)
    assert main(["deface", str(scan), str(out), "--labels", str(labels), "--force"]) == 1
    assert out.is_file()


def test_a_dicom_series_folder_and_its_record_are_removed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "batch"))
    from batch_fixtures import write_dicom_phantom

    import defacer.route

    write_dicom_phantom(tmp_path / "series", tmp_path / "series.labels.nii.gz", voxel_size=6.0)
    monkeypatch.setattr(defacer.route, "write_provenance", _full_disk)
    out = tmp_path / "out"
    out.mkdir()
    assert main(["deface", str(tmp_path / "series"), str(out / "defaced"), "--labels",
                 str(tmp_path / "series.labels.nii.gz")]) == 1
    assert os.listdir(out) == [], "no series folder, no hidden ownership record"


@pytest.mark.skipif(shutil.which("mount") is None or sys.platform != "linux", reason="needs mount")
def test_a_real_full_disk_at_the_sidecar(phantom: tuple[Path, Path], small_disk) -> None:
    scan, labels = phantom
    disk = small_disk(str(scan.stat().st_size + 3000))  # the defaced image fits, its sidecar (~5 kB) does not
    assert main(["deface", str(scan), str(disk / "d.nii.gz"), "--labels", str(labels)]) == 1
    assert os.listdir(disk) == []

def _scan_output_and_record(kind: str, tmp_path: Path, phantom: tuple[Path, Path]) -> tuple[Path, Path, Path, Path]:
    """A phantom scan of ``kind`` (``"nifti"`` or a ``"dicom"`` series), its labels, an output and that output's
    provenance record's path."""
    if kind == "nifti":
        scan, labels = phantom
        out = tmp_path / "d.nii.gz"
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "batch"))
        from batch_fixtures import write_dicom_phantom

        scan, labels = tmp_path / "series", tmp_path / "series.labels.nii.gz"
        write_dicom_phantom(scan, labels, voxel_size=6.0)
        out = tmp_path / "defaced"
    return scan, labels, out, tmp_path / (out.name.removesuffix(".nii.gz") + ".defacer.json")



@pytest.mark.parametrize("kind", ["nifti", "dicom"])
def test_under_force_the_earlier_record_does_not_stay_beside_the_new_output(
        tmp_path: Path, phantom: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], kind: str) -> None:
    """Before: ``--force`` over an earlier output, the sidecar write failing, left the new image beside the OLD
    sidecar (its checksum and options described the replaced image), after "no half-written output was left"."""
    import defacer.route

    scan, labels, out, record = _scan_output_and_record(kind, tmp_path, phantom)
    assert main(["deface", str(scan), str(out), "--labels", str(labels)]) == 0
    assert record.is_file()
    capsys.readouterr()
    monkeypatch.setattr(defacer.route, "write_provenance", _full_disk)
    assert main(["deface", str(scan), str(out), "--labels", str(labels), "--force"]) == 1
    err = capsys.readouterr().err
    assert os.path.exists(out), "the replaced output cannot be restored: the new one is left"
    assert not record.exists(), "the earlier record no longer describes the output: removed"
    assert "the disk is full" in err
    assert f"its earlier record '{record.name}'" in err and "was removed" in err, err


@pytest.mark.parametrize("kind", ["nifti", "dicom"])
def test_the_api_without_a_sidecar_under_force_removes_the_earlier_record(tmp_path: Path,
                                                                          phantom: tuple[Path, Path],
                                                                          kind: str) -> None:
    """Before: ``deface_path(..., sidecar=False, force=True)`` over an earlier output left the earlier run's
    sidecar beside the new image (its checksum and options described the replaced one); the CLI, which always
    writes one, replaced it. A file so named that describes another output is the user's and stays."""
    from defacer.provenance import sha256_of
    from defacer.route import deface_path

    scan, labels, out, record = _scan_output_and_record(kind, tmp_path, phantom)
    deface_path(scan, out, labels_path=labels)
    assert record.is_file()
    deface_path(scan, out, labels_path=labels, sidecar=False, force=True)
    assert os.path.exists(out) and sha256_of(out)
    assert not record.exists(), "the earlier record described the replaced output"
    # a user's file under that name, describing something else, is not defacer's to remove
    record.write_text('{"output": {"path": "another.nii.gz"}}\n')
    deface_path(scan, out, labels_path=labels, sidecar=False, force=True)
    assert record.read_text() == '{"output": {"path": "another.nii.gz"}}\n'


@pytest.mark.parametrize("where", ["image", "sidecar"])
def test_a_file_that_appears_under_an_output_name_while_defacing_is_never_replaced(
        tmp_path: Path, phantom: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, capsys, where: str) -> None:
    """HOSTILE14: outputs were checked before the work and renamed into place with os.replace: a file put under an
    output's name meanwhile (a second run writing the same output, a copy) was replaced without --force, exit 0.  Now
    a name taken since the check is never replaced (a hard link, which fails on a taken name): exit 1, the other
    file kept, and none of this run's outputs left (an image without its record is removed)."""
    from defacer import route
    from defacer.io import nifti

    scan, labels = phantom
    out = tmp_path / "out.nii.gz"
    sidecar = tmp_path / "out.defacer.json"
    taken = out if where == "image" else sidecar
    if where == "image":
        original = nifti.write_nifti

        def write_then_someone_else(volume, path, *digest):  # another run's output lands while this one writes its own
            digested = original(volume, path, *digest)
            taken.write_text("another run's output")
            return digested

        monkeypatch.setattr(nifti, "write_nifti", write_then_someone_else)
    else:
        original_record = route._record_common

        def record_then_someone_else(*args, **kwargs):
            original_record(*args, **kwargs)
            taken.write_text("another run's output")

        monkeypatch.setattr(route, "_record_common", record_then_someone_else)
    code = main(["deface", str(scan), str(out), "--labels", str(labels)])
    err = capsys.readouterr().err
    assert code == 1 and "appeared while defacer was writing" in err and "--force" in err, err
    assert taken.read_text() == "another run's output"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name not in ("scan.nii.gz", "labels.nii.gz")) == [taken.name]


@pytest.mark.parametrize("kind", ["nifti", "dicom"])
def test_a_name_taken_at_the_instant_of_the_final_rename_is_never_replaced(
        tmp_path: Path, phantom: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], kind: str) -> None:
    """HOSTILE15: without --force the final step looked for the name, then renamed: where a disk has no hard links
    (the kernel's exfat and vfat) a file written under the output's name between the look and the rename was
    replaced, and a DICOM series folder (never linked) replaced an empty folder made there, on any disk.  Here the
    other run's file (or folder) lands at the very instant of the rename, after every look defacer makes; the rename
    (renameat2 with RENAME_NOREPLACE) now checks the name itself: exit 1, the other file kept, nothing of this run
    left."""
    from defacer.io import atomic

    scan, labels, out, record = _scan_output_and_record(kind, tmp_path, phantom)
    before = sorted(p.name for p in tmp_path.iterdir())

    def someone_else_writes(destination: object) -> None:
        if Path(os.fsdecode(destination)) == out and not os.path.lexists(out):  # type: ignore[arg-type]
            if kind == "nifti":
                out.write_text("another run's output")
            else:
                out.mkdir()  # another run's series folder, still empty

    def hooked(rename):  # the other run lands at the rename's instant, after the last look
        def call(source, destination, *args, **kwargs):
            someone_else_writes(destination)
            return rename(source, destination, *args, **kwargs)
        return call

    def no_hard_links(*_: object, **__: object) -> None:  # a kernel exfat or vfat disk
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_hard_links)
    monkeypatch.setattr(os, "replace", hooked(os.replace))
    monkeypatch.setattr(os, "rename", hooked(os.rename))
    if hasattr(atomic, "rename_no_replace"):
        monkeypatch.setattr(atomic, "rename_no_replace", hooked(atomic.rename_no_replace))
    code = main(["deface", str(scan), str(out), "--labels", str(labels)])
    err = capsys.readouterr().err
    assert code == 1 and "appeared while defacer was writing" in err, err
    if kind == "nifti":
        assert out.read_text() == "another run's output"
    else:
        assert out.is_dir() and not any(out.iterdir()), "the other run's folder is not replaced"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*before, out.name]), "nothing of this run is left"
    assert not record.exists()


def test_a_series_losing_its_name_to_another_run_never_touches_that_runs_ownership_record(
        tmp_path: Path, phantom: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """HOSTILE16: a DICOM series folder's ownership record (``.<name>.defacer-output.json`` beside it) was written over
    whatever was there, then the folder renamed: a second run writing the same series whose folder lands at the
    rename's instant (its record just before it) had its record replaced by this run's, which this run then
    removed on its refusal: the other run's folder was left without a record (a later ``--force`` refused it as a
    user's folder).  The folder now goes first and its record after it: the losing run never touches the record."""
    from defacer.io import atomic
    from defacer.io.output_guard import owner_record

    scan, labels, out, _ = _scan_output_and_record("dicom", tmp_path, phantom)
    theirs = '{"written_by": "defacer", "files": {"IM00001.dcm": 3}}\n'

    def other_run_lands(rename):  # the other run writes its record, then its folder, at this run's rename
        def call(source, destination, *args, **kwargs):
            if Path(os.fsdecode(destination)) == out and not os.path.lexists(out):
                owner_record(out).write_text(theirs)
                out.mkdir()
                (out / "IM00001.dcm").write_bytes(b"dcm")
            return rename(source, destination, *args, **kwargs)
        return call

    monkeypatch.setattr(atomic, "rename_no_replace", other_run_lands(atomic.rename_no_replace))
    code = main(["deface", str(scan), str(out), "--labels", str(labels)])
    err = capsys.readouterr().err
    assert code == 1 and "appeared while defacer was writing" in err, err
    assert owner_record(out).read_text() == theirs, "the other run's record is kept as it wrote it"
    assert sorted(p.name for p in out.iterdir()) == ["IM00001.dcm"]


def test_a_users_file_under_a_series_ownership_record_name_is_never_replaced(
        tmp_path: Path, phantom: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    """HOSTILE16: the ownership record of a DICOM series folder was written over whatever had its name, without
    --force: a user's file (or a link) named ``.defaced.defacer-output.json`` was replaced, exit 0.  Refused now,
    --force or not, before anything is read; the file kept.  A record of defacer's left there by an earlier output
    (its folder deleted since) is defacer's own and is still replaced."""
    from defacer.io.output_guard import owned_files, owner_record

    scan, labels, out, _ = _scan_output_and_record("dicom", tmp_path, phantom)
    users = owner_record(out)
    users.write_text("the user's notes")
    before = sorted(p.name for p in tmp_path.iterdir())
    for force in ([], ["--force"]):
        code = main(["deface", str(scan), str(out), "--labels", str(labels), *force])
        err = capsys.readouterr().err
        assert code == 1 and "is not an ownership record of defacer's" in err and "Traceback" not in err, err
        assert users.read_text() == "the user's notes" and sorted(p.name for p in tmp_path.iterdir()) == before
    users.write_text('{"written_by": "defacer", "files": {"IM00001.dcm": 1}}\n')  # an earlier output's, deleted
    assert main(["deface", str(scan), str(out), "--labels", str(labels)]) == 0, capsys.readouterr().err
    assert owned_files(out) == {p.name: p.stat().st_size for p in out.iterdir()}


def test_rename_no_replace_refuses_any_taken_name_and_moves_onto_a_free_one(tmp_path: Path) -> None:
    """The call itself: a file, an empty folder or a dangling link under the name is never replaced (os.rename
    replaces the first two, and a link); a free name is taken whole."""
    from defacer.io.no_replace import rename_no_replace

    source = tmp_path / "new"
    source.write_text("new")
    taken = {"file": tmp_path / "file", "folder": tmp_path / "folder", "link": tmp_path / "link"}
    taken["file"].write_text("theirs")
    taken["folder"].mkdir()
    taken["link"].symlink_to(tmp_path / "nowhere")
    for target in taken.values():
        with pytest.raises(FileExistsError):
            rename_no_replace(source, target)
    assert taken["file"].read_text() == "theirs" and taken["folder"].is_dir() and taken["link"].is_symlink()
    assert rename_no_replace(source, tmp_path / "free") is True, "this test's disk takes RENAME_NOREPLACE"
    assert (tmp_path / "free").read_text() == "new" and not source.exists()


def test_a_system_refusing_renameat2_itself_falls_back_to_the_earlier_step(tmp_path: Path, monkeypatch) -> None:
    """A container whose seccomp filter does not know renameat2 answers EPERM (older Docker profiles), as a kernel
    without it answers ENOSYS: the output is still written, through the hard link, and a taken name still refused."""
    import ctypes

    from defacer.io import atomic, no_replace

    for code in (errno.EPERM, errno.ENOSYS, errno.EINVAL):
        def refused(old: bytes, new: bytes, code: int = code) -> int:
            ctypes.set_errno(code)
            return -1

        monkeypatch.setattr(no_replace, "_call", lambda refused=refused: refused)
        final = tmp_path / f"out-{code}.txt"
        with atomic.atomic_outputs([final], replace=False) as (temp,):
            temp.write_text("new")
        assert final.read_text() == "new"
        with pytest.raises(atomic.OutputError, match="appeared while defacer was writing"), \
                atomic.atomic_outputs([final], replace=False) as (temp,):
            temp.write_text("newer")
        assert final.read_text() == "new"


def test_rename_no_replace_through_the_raw_syscall_where_the_c_library_lacks_it(tmp_path: Path, monkeypatch) -> None:
    """glibc before 2.28 (and some musl builds) have no renameat2(): the call goes through syscall() with the
    architecture's number; the same refusal of a taken name, the same rename onto a free one."""
    import ctypes
    import platform

    from defacer.io import no_replace

    if not sys.platform.startswith("linux") or platform.machine() not in no_replace._SYSCALL_NUMBERS:
        pytest.skip("the raw syscall is used on Linux of a known architecture only")
    real = ctypes.CDLL

    class WithoutRenameat2:
        def __init__(self, library: ctypes.CDLL) -> None:
            self._library = library

        def __getattr__(self, name: str) -> object:
            if name == "renameat2":
                raise AttributeError(name)
            return getattr(self._library, name)

    monkeypatch.setattr(ctypes, "CDLL", lambda *args, **kwargs: WithoutRenameat2(real(*args, **kwargs)))
    call = no_replace._load()
    monkeypatch.setattr(ctypes, "CDLL", real)
    monkeypatch.setattr(no_replace, "_cached", [call])
    (tmp_path / "a").write_text("a")
    (tmp_path / "b").write_text("theirs")
    with pytest.raises(FileExistsError):
        no_replace.rename_no_replace(tmp_path / "a", tmp_path / "b")
    assert no_replace.rename_no_replace(tmp_path / "a", tmp_path / "c") is True
    assert (tmp_path / "b").read_text() == "theirs" and (tmp_path / "c").read_text() == "a"
