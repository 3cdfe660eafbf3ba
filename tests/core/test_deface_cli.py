"""The command line: help, version, demo, and errors as messages."""

from __future__ import annotations

import json

import numpy as np
import pytest

from defacer.cli.main import main
from defacer.io import load_volume


def test_help_lists_the_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("deface", "demo"):
        assert command in out


def test_version_is_printed(capsys):
    assert main(["--version"]) == 0
    assert "defacer" in capsys.readouterr().out


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "usage" in capsys.readouterr().out


def test_deface_help_explains_the_options(capsys):
    assert main(["deface", "--help"]) == 0
    out = capsys.readouterr().out
    for option in ("--features", "--seed", "--labels", "--save-mask", "--force", "--verify"):
        assert option in out


def test_demo_writes_a_defaced_phantom_and_says_where(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--voxel-size", "3", "--use-true-labels"]) == 0
    printed = capsys.readouterr().out
    defaced = out / "phantom_T1w_defaced.nii.gz"
    assert str(defaced) in printed
    before, after = load_volume(out / "phantom_T1w.nii.gz"), load_volume(defaced)
    assert (before.raw != after.raw).any()
    sidecar = json.loads((out / "phantom_T1w_defaced.defacer.json").read_text())
    assert sidecar["protection"]["changed_inside_protected"] == 0
    assert "brain voxels changed: 0" in printed


def test_unexpected_errors_are_reported_without_a_traceback(monkeypatch, tmp_path, capsys):
    import defacer.pipeline

    def broken(*args, **kwargs):
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(defacer.pipeline, "deface_file", broken)
    assert main(["deface", str(tmp_path / "a.nii.gz"), str(tmp_path / "b.nii.gz")]) == 1
    err = capsys.readouterr().err
    assert "simulated bug" in err and "--debug" in err and "Traceback" not in err


@pytest.mark.parametrize("features", ["eyes", "nose", "ears", "eyes,ears"])
def test_features_option_selects_what_changes(tmp_path, features):
    from defacer.phantom import make_phantom, save_phantom

    phantom = make_phantom(3.0)
    scan, labels = tmp_path / "h.nii.gz", tmp_path / "l.nii.gz"
    save_phantom(phantom, scan, labels)
    out = tmp_path / "o.nii.gz"
    assert main(["deface", str(scan), str(out), "--labels", str(labels), "--features", features]) == 0
    sidecar = json.loads((tmp_path / "o.defacer.json").read_text())
    for name, count in sidecar["voxels_changed"].items():
        assert (count > 0) == (name in features.split(","))
    assert np.array_equal(load_volume(scan).raw.shape, load_volume(out).raw.shape)


def test_eye_band_options_reach_the_distortion_and_the_sidecar(tmp_path):
    from defacer.phantom import make_phantom, save_phantom

    phantom = make_phantom(2.0)
    scan, labels = tmp_path / "h.nii.gz", tmp_path / "l.nii.gz"
    save_phantom(phantom, scan, labels)
    changed = {}
    for name, extra in {"default": [], "paper": ["--eye-band", "2", "--eye-box-scale", "1.5"]}.items():
        out = tmp_path / f"{name}.nii.gz"
        assert main(["deface", str(scan), str(out), "--labels", str(labels), "--features", "eyes", *extra]) == 0
        sidecar = json.loads((tmp_path / f"{name}.defacer.json").read_text())
        changed[name] = sidecar["voxels_changed"]["eyes"]
        if name == "paper":
            assert sidecar["options"]["eye_band_mm"] == 2.0 and sidecar["options"]["eye_box_scale"] == 1.5
    assert 0 < changed["paper"] < changed["default"]


def test_a_bad_eye_band_is_a_clear_error(tmp_path, capsys):
    from defacer.phantom import make_phantom, save_phantom

    scan, labels = tmp_path / "h.nii.gz", tmp_path / "l.nii.gz"
    save_phantom(make_phantom(4.0), scan, labels)
    assert main(["deface", str(scan), str(tmp_path / "o.nii.gz"), "--labels", str(labels), "--eye-band", "0"]) == 1
    err = capsys.readouterr().err
    assert "eye band > 0 mm" in err and "Traceback" not in err


@pytest.mark.parametrize("passed, expected", [(True, 0), (False, 3)])
def test_deface_verify_exits_like_defacer_verify(tmp_path, monkeypatch, capsys, passed, expected):
    """Issue 11, defect 8: ``deface --verify`` exited 0 when the verification failed (``defacer verify``: 3)."""
    from types import SimpleNamespace

    import defacer.verify
    from defacer.phantom import make_phantom, save_phantom

    def verdict(original, defaced, out_dir, **kwargs):
        out_dir.mkdir(parents=True, exist_ok=True)
        return SimpleNamespace(passed=passed, report_path=out_dir / "verify_report.html")

    monkeypatch.setattr(defacer.verify, "verify_pair", verdict)
    save_phantom(make_phantom(3.0), tmp_path / "h.nii.gz", tmp_path / "l.nii.gz")
    code = main(["deface", str(tmp_path / "h.nii.gz"), str(tmp_path / "o.nii.gz"), "--labels",
                 str(tmp_path / "l.nii.gz"), "--verify"])
    assert code == expected
    captured = capsys.readouterr()
    assert ("FAIL" in captured.out and "verification FAILED" in captured.err) is (not passed)
