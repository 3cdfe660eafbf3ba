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


def test_train_from_a_box_cache_exports_a_model_on_the_cached_box(tmp_path, capsys) -> None:
    import json

    from defacer.detect.model import OnnxDetector
    from defacer.train.data import make_phantom_samples, save_samples

    cache = tmp_path / "boxes.npz"
    save_samples(make_phantom_samples(2, seed=3, shape=(32, 32, 32), spacing=8.0), cache)
    out = tmp_path / "model.onnx"
    code = main(["train", "--cache", str(cache), "--phantoms", "0", "--validate-on-train", "--epochs", "1",
                 "--samples-per-epoch", "2", "--batch-size", "1", "--channels", "4,8,16", "--out", str(tmp_path / "run"),
                 "--export", str(out)])
    assert code == 0, capsys.readouterr().err
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["box"]["shape"] == [32, 32, 32] and card["box"]["spacing_mm"] == 8.0
    assert OnnxDetector(out).box_shape == (32, 32, 32)
    assert card["class_weights"] == [1.0, 1.0, 1.0, 3.0]


def test_train_without_data_or_cache_says_what_is_missing(tmp_path, capsys) -> None:
    code = main(["train", "--out", str(tmp_path / "o")])
    assert code != 0
    err = capsys.readouterr().err
    assert "--data" in err and "--cache" in err


def test_bad_class_weights_are_refused_before_training(tmp_path, capsys) -> None:
    code = main(["train", "--out", str(tmp_path / "o"), "--class-weights", "1,1,3"])
    assert code != 0
    assert "four positive numbers" in capsys.readouterr().err
