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
    import defacer.route

    def broken(*args, **kwargs):
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(defacer.route, "deface_path", broken)
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


@pytest.mark.parametrize("verdict, expected", [("PASS", 0), ("FAIL", 3), ("INCONCLUSIVE", 5)])
def test_deface_verify_exits_like_defacer_verify(tmp_path, monkeypatch, capsys, verdict, expected):
    """Issue 11, defect 8: ``deface --verify`` exited 0 when the verification failed (``defacer verify``: 3);
    issue 13: an inconclusive check (no face in the original) has its own status, 5."""
    from types import SimpleNamespace

    import defacer.verify
    from defacer.phantom import make_phantom, save_phantom

    def fake(original, defaced, out_dir, **kwargs):
        out_dir.mkdir(parents=True, exist_ok=True)
        summary = {"verdict": verdict, "face_found_after": ["front:facemesh"] if verdict == "FAIL" else [],
                   "brain_untouched": True}
        return SimpleNamespace(passed=verdict == "PASS", verdict=verdict, renders={}, summary=summary,
                               report_path=out_dir / "verify_report.html")

    monkeypatch.setattr(defacer.verify, "verify_pair", fake)
    save_phantom(make_phantom(3.0), tmp_path / "h.nii.gz", tmp_path / "l.nii.gz")
    code = main(["deface", str(tmp_path / "h.nii.gz"), str(tmp_path / "o.nii.gz"), "--labels",
                 str(tmp_path / "l.nii.gz"), "--verify"])
    assert code == expected
    captured = capsys.readouterr()
    assert f"verification: {verdict}" in captured.out
    assert (f"verification {verdict}" in captured.err) is (verdict != "PASS")
    # a face found after defacing: the next step is said (a larger nose removal, then verify again)
    assert ("--nose-scale 3" in captured.out) is (verdict == "FAIL")


def _write_nifti(path, data, voxel=3.0):
    import nibabel as nib

    image = nib.Nifti1Image(data, np.diag([voxel, voxel, voxel, 1.0]))
    image.header.set_xyzt_units("mm")
    nib.save(image, str(path))
    return path


def _faceless_scans(tmp_path):
    """Noise and a sphere: nothing a detector may call a face."""
    rng = np.random.default_rng(0)
    noise = _write_nifti(tmp_path / "noise.nii.gz", rng.integers(0, 1000, (64, 64, 64)).astype(np.int16))
    grid = np.indices((64, 64, 64)) - 32
    sphere = ((grid**2).sum(axis=0) < 25**2).astype(np.int16) * 800
    return {"noise": noise, "sphere": _write_nifti(tmp_path / "sphere.nii.gz", sphere)}


@pytest.mark.parametrize("kind", ["noise", "sphere"])
def test_nothing_found_exits_4_and_writes_nothing(tmp_path, capsys, kind):
    """Issue 11, defect 7: noise or a sphere exited 0 with an unchanged copy that passes for a defaced scan."""
    from defacer.detect.model import default_weights_path

    if not default_weights_path().is_file():
        pytest.skip("shipped weights not built")
    scan = _faceless_scans(tmp_path)[kind]
    out = tmp_path / "out.nii.gz"
    assert main(["deface", str(scan), str(out)]) == 4
    err = capsys.readouterr().err
    assert "Nothing was written" in err and "--allow-missing" in err
    assert not out.exists() and not (tmp_path / "out.defacer.json").exists()
    # Accepted explicitly: written, exit 0, and the sidecar says what was not found.
    assert main(["deface", str(scan), str(out), "--allow-missing"]) == 0
    sidecar = json.loads((tmp_path / "out.defacer.json").read_text())
    assert {name: entry["requested"] for name, entry in sidecar["features"].items()} == dict.fromkeys(
        ("eyes", "nose", "ears"), True)
    assert all(entry["status"] != "distorted" for entry in sidecar["features"].values())


def test_fewer_features_than_requested_exits_4_naming_the_missing_ones(tmp_path, capsys):
    from defacer.phantom import make_phantom, save_phantom

    save_phantom(make_phantom(3.0), tmp_path / "h.nii.gz", tmp_path / "l.nii.gz")
    import nibabel as nib

    labels = nib.load(str(tmp_path / "l.nii.gz"))
    only_eyes = np.where(np.asarray(labels.dataobj) == 1, 1, 0).astype(np.uint8)
    nib.save(nib.Nifti1Image(only_eyes, labels.affine), str(tmp_path / "eyes.nii.gz"))
    out = tmp_path / "o.nii.gz"
    args = ["deface", str(tmp_path / "h.nii.gz"), str(out), "--labels", str(tmp_path / "eyes.nii.gz")]
    assert main(args) == 4
    err = capsys.readouterr().err
    assert "nose: not found" in err and "ears: not found" in err and "eyes: distorted" in err
    assert not out.exists()
    assert main([*args, "--features", "eyes"]) == 0
    sidecar = json.loads((tmp_path / "o.defacer.json").read_text())
    assert sidecar["features"]["eyes"]["status"] == "distorted"
    assert sidecar["features"]["nose"] == {"requested": False, "found_voxels": 0, "changed_voxels": 0,
                                           "status": "not requested"}


def test_deface_help_documents_the_exit_statuses(capsys):
    assert main(["deface", "--help"]) == 0
    out = capsys.readouterr().out
    assert "Exit status" in out and "--allow-missing" in out
    for code in ("0", "1", "3", "4"):
        assert f"\n  {code}  " in out


def test_a_head_cropped_to_no_face_exits_4(tmp_path, capsys):
    """Issue 11, defect 7: a head cropped behind the face exited 0 with an unchanged copy."""
    from defacer.detect.model import default_weights_path
    from defacer.phantom import make_phantom

    if not default_weights_path().is_file():
        pytest.skip("shipped weights not built")
    phantom = make_phantom(3.0, axcodes="RAS")
    raw = np.asarray(phantom.volume.raw)
    back = raw[:, : raw.shape[1] * 2 // 5, :]  # the posterior 40 %: no eyes, no nose
    scan = _write_nifti(tmp_path / "back.nii.gz", np.ascontiguousarray(back))
    out = tmp_path / "out.nii.gz"
    assert main(["deface", str(scan), str(out)]) == 4
    err = capsys.readouterr().err
    assert "eyes: not found" in err and "nose: not found" in err
    assert not out.exists()
