"""Issue 13, item 6: ``defacer deface IN`` without OUT, and a short ``--help``."""

from __future__ import annotations

from pathlib import Path

import pytest

from defacer.cli.deface import default_output
from defacer.cli.main import main
from defacer.phantom import make_phantom, save_phantom


def test_deface_without_output_writes_stem_defaced_beside_the_input(tmp_path: Path, capsys) -> None:
    scan, labels = tmp_path / "T1.nii.gz", tmp_path / "labels.nii.gz"
    save_phantom(make_phantom(4.0), scan, labels)
    assert main(["deface", str(scan), "--labels", str(labels)]) == 0
    assert (tmp_path / "T1_defaced.nii.gz").is_file() and (tmp_path / "T1_defaced.defacer.json").is_file()
    assert str(tmp_path / "T1_defaced.nii.gz") in capsys.readouterr().out
    # A second run does not overwrite it without --force.
    assert main(["deface", str(scan), "--labels", str(labels)]) == 1


@pytest.mark.parametrize("name, expected", [("T1.nii.gz", "T1_defaced.nii.gz"), ("head.NRRD", "head_defaced.NRRD"),
                                            ("a.b.mgz", "a.b_defaced.mgz"), ("scan.nii", "scan_defaced.nii"),
                                            ("x.nhdr", "x_defaced.nhdr")])
def test_default_output_names(tmp_path: Path, name: str, expected: str) -> None:
    assert default_output(tmp_path / name) == tmp_path / expected


def test_a_dicom_folder_defaults_to_folder_defaced(tmp_path: Path) -> None:
    (tmp_path / "series").mkdir()
    assert default_output(tmp_path / "series") == tmp_path / "series_defaced"


def test_help_lists_common_options_before_the_dicom_ones(capsys) -> None:
    assert main(["deface", "--help"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: defacer deface [options] input [output]")
    assert text.index("--features") < text.index("--verify") < text.index("DICOM input:") < text.index("--series")
    assert text.index("DICOM input:") < text.index("--retain-uids")


def test_command_line_defaults_are_the_options_defaults():
    """Issue 12, item 3: the defaults come from DefaceOptions / DeidOptions, not repeated (deface and batch)."""
    from defacer.cli.main import get_parser
    from defacer.cli.options import deface_options_from_args, deidentification_from_args
    from defacer.options import DEFAULT_OPTIONS, Deidentification

    for argv in (["deface", "x.nii.gz"], ["batch", "in", "out"]):
        args = get_parser().parse_args(argv)
        assert deface_options_from_args(args) == DEFAULT_OPTIONS
        assert deidentification_from_args(args, warn_random=False) == Deidentification()
