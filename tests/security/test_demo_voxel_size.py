"""``defacer demo --voxel-size``: nan, inf, 0 and negative sizes were "unexpected error ... a bug in defacer", 0.01 ran out
of memory, 1e9 wrote an empty phantom and then failed. Now a usage error naming the range, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest

from defacer.cli.main import main


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "0", "0.01", "1e9", "abc"])
def test_a_voxel_size_no_phantom_can_have_is_a_usage_error(tmp_path: Path, value: str,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--out", str(tmp_path / "demo"), "--voxel-size", value, "--use-true-labels"]) == 2
    err = capsys.readouterr().err
    assert "expected a voxel size in mm from 0.5 to 10" in err and "bug" not in err, err
    assert not (tmp_path / "demo").exists()


def test_the_coarsest_allowed_voxel_size_still_makes_a_demo(tmp_path: Path) -> None:
    assert main(["demo", "--out", str(tmp_path / "demo"), "--voxel-size", "10", "--use-true-labels"]) == 0
    assert (tmp_path / "demo" / "phantom_T1w_defaced.nii.gz").is_file()
