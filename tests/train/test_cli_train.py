"""``defacer train`` on the command line: help, clear errors, and the ensemble export."""

from __future__ import annotations

import pytest

from defacer.cli.main import main

pytest.importorskip("torch")
pytest.importorskip("monai")


def test_train_help_lists_the_main_options(capsys) -> None:
    assert main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    for option in ("--labels-dir", "--export", "--holdout", "--ensemble", "--time-limit"):
        assert option in out


def test_train_without_label_provenance_fails_with_a_clear_message(tmp_path, capsys) -> None:
    code = main(["train", "--data", str(tmp_path), "--labels-dir", str(tmp_path), "--out", str(tmp_path / "o")])
    assert code != 0
    assert "provenance.json" in capsys.readouterr().err


def test_ensemble_needs_an_export_path(tmp_path, capsys) -> None:
    code = main(["train", "--ensemble", str(tmp_path / "a.pt"), "--data", str(tmp_path), "--labels-dir",
                 str(tmp_path), "--out", str(tmp_path / "o")])
    assert code != 0
    assert "--export" in capsys.readouterr().err
