"""The distortion sizes have upper bounds: ``deface --protect-depth 1e9`` grew to 4 GB and 10 CPU minutes on a 4 mm
phantom (killed; SIGTERM from ``timeout`` did not end it), as the scales and the eye band could. Now refused in words
before anything is read; the bounds themselves still run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from defacer.cli.main import main
from defacer.options import DefaceOptions
from defacer.phantom import make_phantom, save_phantom


@pytest.mark.parametrize("field", [{"protect_depth_mm": 1e9}, {"eye_band_mm": 1e9}, {"eye_box_scale": 1e6},
                                   {"nose_scale": 1e6}, {"protect_depth_mm": 100.5}])
def test_sizes_beyond_their_bounds_are_refused(field: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="protect depth 0-100 mm, eye band > 0 mm and at most 50 mm"):
        DefaceOptions(**field)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("bounds")
    save_phantom(make_phantom(6.0), base / "in.nii.gz", base / "in.labels.nii.gz")
    return base / "in.nii.gz", base / "in.labels.nii.gz"


# Values old code ran quickly on the 6 mm phantom (so this fails there, rather than running away).
@pytest.mark.parametrize("option", [["--protect-depth", "150"], ["--eye-band", "60"], ["--eye-box-scale", "11"],
                                    ["--nose-scale", "11"]])
def test_the_cli_refuses_them_and_writes_nothing(tmp_path: Path, phantom: tuple[Path, Path], option: list[str],
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    scan, labels = phantom
    assert main(["deface", str(scan), str(tmp_path / "o.nii.gz"), "--labels", str(labels), *option]) == 1
    assert "protect depth 0-100 mm" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_the_bounds_themselves_run(tmp_path: Path, phantom: tuple[Path, Path]) -> None:
    scan, labels = phantom
    assert main(["deface", str(scan), str(tmp_path / "o.nii.gz"), "--labels", str(labels), "--protect-depth", "100",
                 "--eye-band", "50", "--eye-box-scale", "10", "--nose-scale", "10", "--allow-missing"]) in (0, 4)
