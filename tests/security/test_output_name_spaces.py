"""An output name with a trailing space or tab, 'o.nii.gz ' (a copy-paste), was refused with a wrong suggestion:
"has no image ending ... (e.g. 'o.nii.nii.gz')"."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from defacer.cli.main import main
from defacer.phantom import make_phantom, save_phantom


@pytest.mark.parametrize("name", ["o.nii.gz ", "o.nii.gz\t"])
def test_an_output_name_with_a_space_at_an_end_is_named_as_such(tmp_path: Path, name: str,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    save_phantom(make_phantom(6.0), tmp_path / "in.nii.gz", tmp_path / "in.labels.nii.gz")
    assert main(["deface", str(tmp_path / "in.nii.gz"), str(tmp_path / name),
                 "--labels", str(tmp_path / "in.labels.nii.gz")]) == 1
    err = capsys.readouterr().err
    assert "starts or ends with a space" in err and "Give 'o.nii.gz'" in err, err
    assert sorted(os.listdir(tmp_path)) == ["in.labels.nii.gz", "in.nii.gz"]
