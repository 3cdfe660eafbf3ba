"""A file whose name starts with '-' (``-x.nii.gz``) is read by argparse as an option: the usage error said only
"unrecognized arguments: -x.nii.gz". Now it also says what to do (write ``./-x.nii.gz``); ``./-x.nii.gz`` works."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from defacer.cli.main import main


@pytest.mark.parametrize("argv", [["deface", "-x.nii.gz", "out.nii.gz"], ["verify", "-x.nii.gz", "d.nii.gz"],
                                  ["deface", "in.nii.gz", "-out.nii.gz"], ["anonymize", "-series", "out"]])
def test_a_name_starting_with_a_dash_gets_a_hint(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch, argv: list[str]) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "-x.nii.gz").write_bytes(b"not read")
    (tmp_path / "-series").mkdir()
    assert main(argv) == 2
    err = capsys.readouterr().err
    name = next(arg for arg in argv[1:] if arg.startswith("-"))
    assert f"'{name}' starts with '-', so it was read as an option" in err and f"'./{name}'" in err, err
    assert (tmp_path / "-x.nii.gz").read_bytes() == b"not read"
    assert sorted(os.listdir(tmp_path)) == ["-series", "-x.nii.gz"], "nothing written"


def test_a_plain_usage_error_gets_no_such_hint(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["deface", "--no-such-option", "a.nii.gz", "b.nii.gz"]) == 2
    assert "read as an option" not in capsys.readouterr().err
