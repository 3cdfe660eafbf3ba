"""Two ``deface --verify`` runs into one output at once: two real processes, paused at chosen steps by files.

Before (HOSTILE22, main 3c01852): both passed the output check and wrote into one QC folder.  The first run created
the folder and went on defacing; the second wrote the output, its label map and README and started rendering; the
first then lost the output's name (exit 1, "appeared while defacer was writing it") and removed the QC folder it
had created, with the second run's README, ownership record and label map.  The second run's renders and slices of
the original face then went into a folder made again with the usual permissions (0755), without README or record.
Now the QC folder is locked for a whole run: the second run is refused before it writes anything, in words.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from paused import wait_for

from defacer.phantom import make_phantom, save_phantom

#: The child: ``defacer deface`` with one step made to wait for a file ``go-<step>`` (after touching
#: ``at-<step>``), so that the two runs interleave the same way every time.
CHILD = """
import sys, time
from pathlib import Path
import defacer.cli.main as cli
sync, step = Path(sys.argv[1]), sys.argv[2]

def waiting(real):
    def wrapped(*args, **kwargs):
        (sync / f"at-{step}").touch()
        deadline = time.monotonic() + 60
        while not (sync / f"go-{step}").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        return real(*args, **kwargs)
    return wrapped

if step == "deface":  # the QC folder claimed, nothing written yet
    import defacer.cli.deface as deface
    deface._deface_and_report = waiting(deface._deface_and_report)
elif step == "verify":  # the output, its label map and the QC README written; no picture yet
    import defacer.verify
    defacer.verify.verify_pair = waiting(defacer.verify.verify_pair)
sys.exit(cli.main(sys.argv[3:]))
"""


def _start(sync: Path, step: str, *argv: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.Popen([sys.executable, "-c", CHILD, str(sync), step, *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


@pytest.mark.parametrize("after_only", [False, True], ids=["with-original", "after-only"])
def test_two_verifying_runs_into_one_output_never_leave_renders_of_the_face_outside_a_locked_owned_folder(
        tmp_path: Path, after_only: bool) -> None:
    save_phantom(make_phantom(4.0), tmp_path / "h.nii.gz", tmp_path / "l.nii.gz")
    sync = tmp_path / "sync"
    sync.mkdir()
    out = tmp_path / "o.nii.gz"
    qc = tmp_path / "o-qc"
    argv = ["deface", str(tmp_path / "h.nii.gz"), str(out), "--verify", *(["--qc-after-only"] if after_only else [])]
    first = _start(sync, "deface", *argv)
    second = None
    try:
        assert wait_for(sync / "at-deface", first), first.communicate()
        assert qc.is_dir()  # the first run claimed the QC folder and waits before defacing
        second = _start(sync, "verify", *argv)
        reached = wait_for(sync / "at-verify", second)  # the old code: the second run is verifying
        (sync / "go-deface").touch()
        _, first_err = first.communicate(timeout=180)
        (sync / "go-verify").touch()
        _, second_err = second.communicate(timeout=180)
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.kill()
                process.communicate()
    codes = (first.returncode, second.returncode)
    # one run wrote the output and verified it (5: inconclusive on the phantom); the other was refused, in words
    assert min(codes) == 1 and max(codes) in (0, 3, 5), (codes, first_err, second_err)
    # what is left: one output, its sidecar, a QC folder readable by its owner only with README and a record
    # listing every file in it
    assert out.is_file() and (tmp_path / "o.defacer.json").is_file()
    assert stat.S_IMODE(os.stat(qc).st_mode) == 0o700
    names = {p.name for p in qc.iterdir()}
    assert {"README.txt", ".defacer-owned.jsonl", "verify_report.html"} <= names, names
    listed = {json.loads(line)["path"] for line in (qc / ".defacer-owned.jsonl").read_text().splitlines()}
    assert names - {".defacer-owned.jsonl"} <= listed, (names, listed)
    assert any(name.endswith("_before.png") for name in names) is not after_only
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".defacer-tmp")]
    loser_err = first_err if first.returncode == 1 else second_err
    assert "Traceback" not in first_err + second_err
    assert "Another defacer run is writing into the QC folder" in loser_err, loser_err
    assert "Wait for that run to finish" in loser_err
    assert not reached, "the second run went on to verify while the first held the QC folder"
    assert "appeared while defacer was writing" not in loser_err


def test_verify_into_a_qc_folder_another_run_holds_is_refused_and_writes_nothing(tmp_path: Path, capsys) -> None:
    from defacer.cli.main import main
    from defacer.verify import qc

    save_phantom(make_phantom(4.0), tmp_path / "h.nii.gz", tmp_path / "l.nii.gz")
    assert main(["deface", str(tmp_path / "h.nii.gz"), str(tmp_path / "o.nii.gz"), "--labels",
                 str(tmp_path / "l.nii.gz")]) == 0
    capsys.readouterr()
    with qc.held(tmp_path / "o-qc", what="choose another output") as created:  # as another run would
        assert created
        code = main(["verify", str(tmp_path / "h.nii.gz"), str(tmp_path / "o.nii.gz")])
        err = capsys.readouterr().err
        assert code == 1 and "Another defacer run is writing into the QC folder" in err and "Traceback" not in err
        assert list((tmp_path / "o-qc").iterdir()) == []


def test_force_without_verify_is_refused_while_another_run_verifies_that_output(tmp_path: Path, capsys) -> None:
    """``deface --force`` (no --verify) over an output another run is verifying replaced that output under it and
    removed the QC folder's files that run had written (README, record), main 3c01852: its renders then went into
    a folder made again.  The other run is stood for by a lock on the QC folder, as it holds it."""
    import fcntl

    from defacer.cli.main import main

    save_phantom(make_phantom(4.0), tmp_path / "h.nii.gz", tmp_path / "l.nii.gz")
    out = tmp_path / "o.nii.gz"
    assert main(["deface", str(tmp_path / "h.nii.gz"), str(out), "--labels", str(tmp_path / "l.nii.gz")]) == 0
    qc = tmp_path / "o-qc"
    qc.mkdir(mode=0o700)
    (qc / "README.txt").write_text("the verifying run's")
    (qc / ".defacer-owned.jsonl").write_text('{"path": "README.txt"}\n')
    before = out.read_bytes()
    capsys.readouterr()
    handle = os.open(qc, os.O_RDONLY)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        code = main(["deface", str(tmp_path / "h.nii.gz"), str(out), "--labels", str(tmp_path / "l.nii.gz"),
                     "--features", "eyes", "--force"])
    finally:
        os.close(handle)
    err = capsys.readouterr().err
    assert code == 1 and "Another defacer run is writing into the QC folder" in err and "Traceback" not in err
    assert out.read_bytes() == before
    assert sorted(p.name for p in qc.iterdir()) == [".defacer-owned.jsonl", "README.txt"]


def test_a_disk_that_takes_no_locks_still_verifies(tmp_path: Path, capsys, monkeypatch) -> None:
    """Some network shares answer flock with ENOLCK or EOPNOTSUPP: that is no other run holding the QC folder, and
    the run goes on without the lock (the first version of the lock refused every run there)."""
    import errno
    import fcntl

    from defacer.cli.main import main

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    save_phantom(make_phantom(4.0), tmp_path / "h.nii.gz", tmp_path / "l.nii.gz")
    code = main(["deface", str(tmp_path / "h.nii.gz"), str(tmp_path / "o.nii.gz"), "--labels",
                 str(tmp_path / "l.nii.gz"), "--verify"])
    err = capsys.readouterr().err
    assert code in (0, 3, 5), err
    assert "Another defacer run" not in err and (tmp_path / "o-qc" / "verify_report.html").is_file()
