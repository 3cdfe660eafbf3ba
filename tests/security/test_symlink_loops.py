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
