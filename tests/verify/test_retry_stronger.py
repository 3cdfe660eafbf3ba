"""``deface --retry-stronger``: when a face is still found after defacing, deface the original again with the larger
nose removal and eye cover, verify that, and record both attempts.

The face detectors are faked in most tests (the phantom has no face they know; which verdict they give it is their
business): the retry's control flow, its output and its records are what is tested.  Two tests run the real
detectors on real heads: one that kept a face with the defaults and is clear now (fernando_T2w_thick), and one
that keeps it through the larger sizes with its nose left (decubitus-HFS, ``--features eyes,ears``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from real_data import SHARED_DATA

from defacer.cli.main import main
from defacer.io import load_volume
from defacer.options import (
    STRONGER_EYE_BOX_SCALE,
    STRONGER_NOSE_SCALE,
    DefaceOptions,
    is_stronger,
    stronger_options,
)
from defacer.phantom import make_phantom, save_phantom
from defacer.verify.verdict import REMEDY_FACE, REMEDY_NOT_SHAREABLE, REMEDY_WHOLE_FACE, remedy

SHARED = SHARED_DATA / "heads"


@pytest.fixture
def phantom_pair(tmp_path: Path) -> tuple[Path, Path]:
    scan, labels = tmp_path / "in" / "head.nii.gz", tmp_path / "in" / "labels.nii.gz"
    scan.parent.mkdir()
    save_phantom(make_phantom(3.0), scan, labels)
    return scan, labels


def _sidecar(out: Path) -> dict:
    return json.loads(out.with_name(out.name.replace(".nii.gz", ".defacer.json")).read_text())


def test_the_sizes_of_the_retry() -> None:
    assert stronger_options(DefaceOptions()) == DefaceOptions(nose_scale=STRONGER_NOSE_SCALE,
                                                               eye_box_scale=STRONGER_EYE_BOX_SCALE)
    # only what is smaller is raised; the other choices stay
    raised = stronger_options(DefaceOptions(nose_scale=4.0, seed=7, features=("eyes", "nose")))
    assert raised == DefaceOptions(nose_scale=4.0, eye_box_scale=STRONGER_EYE_BOX_SCALE, seed=7,
                                   features=("eyes", "nose"))
    # with the larger sizes, the next step is the whole face; after it there is none
    assert stronger_options(DefaceOptions(nose_scale=3.0, eye_box_scale=2.5)) == DefaceOptions(
        nose_scale=3.0, eye_box_scale=2.5, whole_face=True)
    assert stronger_options(DefaceOptions(nose_scale=3.0, eye_box_scale=2.5, whole_face=True)) is None
    assert stronger_options(DefaceOptions(features=("ears",))) is None  # neither nose nor eyes: nothing to raise
    assert is_stronger(3, 2.5) and is_stronger(5.0, 3.0)
    assert not is_stronger(3.0, 2.0) and not is_stronger(None, 2.5) and not is_stronger(True, True)
    assert not is_stronger("3", "2.5")


def test_the_next_step_after_the_larger_sizes_is_to_remove_the_whole_face() -> None:
    face = {"verdict": "FAIL", "face_found_after": ["front:facemesh"], "brain_untouched": True}
    assert remedy(face) == REMEDY_FACE
    assert remedy({**face, "deface_options": {"nose_scale": 2.0, "eye_box_scale": 2.0}}) == REMEDY_FACE
    assert remedy({**face, "deface_options": {"nose_scale": 3.0, "eye_box_scale": 2.5}}) == REMEDY_WHOLE_FACE
    assert remedy({**face, "deface_options": {"nose_scale": 3.0, "eye_box_scale": 2.5,
                                              "whole_face": True}}) == REMEDY_NOT_SHAREABLE
    assert "--retry-stronger" in REMEDY_FACE and "--whole-face" in REMEDY_WHOLE_FACE
    assert "do not share" in REMEDY_NOT_SHAREABLE


def test_a_face_found_after_defacing_is_defaced_again_larger_and_verified(phantom_pair, faces_after, tmp_path,
                                                                          capsys) -> None:
    scan, labels = phantom_pair
    faces_after.plan += [True, False]
    out = tmp_path / "out" / "head_defaced.nii.gz"
    out.parent.mkdir()
    code = main(["deface", str(scan), str(out), "--labels", str(labels), "--retry-stronger"])
    captured = capsys.readouterr()
    assert code == 0, captured
    assert faces_after.verifications == 2
    assert "--retry-stronger: a face was still found" in captured.out
    assert REMEDY_FACE not in captured.out and "verification FAIL" not in captured.err  # the retry answers it
    assert captured.out.rstrip().count("verification: PASS") == 1

    sidecar = _sidecar(out)
    assert sidecar["options"]["nose_scale"] == STRONGER_NOSE_SCALE
    assert sidecar["options"]["eye_box_scale"] == STRONGER_EYE_BOX_SCALE
    attempts = sidecar["verification"]["attempts"]
    assert [(a["nose_scale"], a["eye_box_scale"], a["verdict"]) for a in attempts] == [
        (2.0, 2.0, "FAIL"), (STRONGER_NOSE_SCALE, STRONGER_EYE_BOX_SCALE, "PASS")]
    assert attempts[0]["face_found_after"] and not attempts[1]["face_found_after"]
    assert sidecar["verification"]["verdict"] == "PASS"
    summary = json.loads((tmp_path / "out" / "head_defaced-qc" / "verify_summary.json").read_text())
    assert summary["deface_options"]["nose_scale"] == STRONGER_NOSE_SCALE  # the report is the retry's

    # The output is exactly what the larger sizes give on their own.
    direct = tmp_path / "direct.nii.gz"
    assert main(["deface", str(scan), str(direct), "--labels", str(labels), "--nose-scale", "3",
                 "--eye-box-scale", "2.5"]) == 0
    retried = load_volume(out).raw
    assert np.array_equal(retried, load_volume(direct).raw)
    # and it removes more than the defaults did
    default = tmp_path / "default.nii.gz"
    assert main(["deface", str(scan), str(default), "--labels", str(labels)]) == 0
    original = load_volume(scan).raw
    assert np.count_nonzero(retried != original) > np.count_nonzero(load_volume(default).raw != original)


def test_a_face_found_after_the_larger_sizes_is_defaced_with_the_whole_face_removed(phantom_pair, faces_after,
                                                                                     tmp_path, capsys) -> None:
    scan, labels = phantom_pair
    faces_after.plan += [True, True, False]
    out = tmp_path / "head_defaced.nii.gz"
    code = main(["deface", str(scan), str(out), "--labels", str(labels), "--retry-stronger"])
    captured = capsys.readouterr()
    assert code == 0, captured
    assert "--whole-face" in captured.out and REMEDY_WHOLE_FACE not in captured.out
    sidecar = _sidecar(out)
    assert [(a["whole_face"], a["verdict"]) for a in sidecar["verification"]["attempts"]] == [
        (False, "FAIL"), (False, "FAIL"), (True, "PASS")]
    assert sidecar["options"]["whole_face"] is True and sidecar["whole_face"]["done"] is True
    # the output is what --whole-face with the larger sizes gives on its own
    direct = tmp_path / "direct.nii.gz"
    assert main(["deface", str(scan), str(direct), "--labels", str(labels), "--nose-scale", "3",
                 "--eye-box-scale", "2.5", "--whole-face"]) == 0
    assert np.array_equal(load_volume(out).raw, load_volume(direct).raw)


def test_a_face_found_after_every_step_fails_with_the_do_not_share_advice(phantom_pair, faces_after, tmp_path,
                                                                          capsys) -> None:
    scan, labels = phantom_pair
    faces_after.plan += [True, True, True]
    out = tmp_path / "head_defaced.nii.gz"
    code = main(["deface", str(scan), str(out), "--labels", str(labels), "--retry-stronger"])
    captured = capsys.readouterr()
    assert code == 3, captured
    assert REMEDY_NOT_SHAREABLE in captured.out and REMEDY_FACE not in captured.out
    assert REMEDY_WHOLE_FACE not in captured.out
    assert captured.err.count("verification FAIL") == 1  # once, for the final verdict
    attempts = _sidecar(out)["verification"]["attempts"]
    assert [a["verdict"] for a in attempts] == ["FAIL", "FAIL", "FAIL"]


def test_an_interrupt_during_the_stronger_attempt_says_the_output_failed_verification(
        phantom_pair, faces_after, tmp_path, monkeypatch, capsys) -> None:
    """Ctrl-C (or SIGTERM) while the stronger attempt was defaced, after the first attempt FAILED verification (a face
    found): the output in place is that first attempt, yet the last line said "'r1.nii.gz' was written whole with
    its provenance record, but not verified: verify it ..." (HOSTILE18: ixi013 with --features eyes,ears, a real
    SIGINT 1.5 s after "a face was still found", main 2a83d38, exit 130). It says now that it FAILED and is not
    safe to share."""
    import defacer.route

    scan, labels = phantom_pair
    faces_after.plan += [True, False]
    real = defacer.route.deface_path
    calls = []

    def interrupted_on_the_retry(*args, **kwargs):
        calls.append(kwargs.get("options"))
        if len(calls) == 2:
            raise KeyboardInterrupt  # what a SIGINT (or SIGTERM, through the entry point) raises here
        return real(*args, **kwargs)

    monkeypatch.setattr(defacer.route, "deface_path", interrupted_on_the_retry)
    out = tmp_path / "head_defaced.nii.gz"
    code = main(["deface", str(scan), str(out), "--labels", str(labels), "--retry-stronger"])
    err = capsys.readouterr().err
    assert code == 130 and len(calls) == 2, err
    last = err.strip().splitlines()[-1]
    assert "not verified" not in last.split("(")[0] and "was written whole" not in last, last
    assert "not safe to share" in last and "attempt 1 FAILED verification" in last, last
    assert "--force --retry-stronger" in last
    assert _sidecar(out)["verification"]["verdict"] == "FAIL"  # the file in place is the failed first attempt


def test_no_retry_without_the_option_or_when_the_sizes_are_already_large(phantom_pair, faces_after, tmp_path,
                                                                          capsys) -> None:
    scan, labels = phantom_pair
    faces_after.plan += [True, True]
    plain = tmp_path / "plain.nii.gz"
    assert main(["deface", str(scan), str(plain), "--labels", str(labels), "--verify"]) == 3
    out = capsys.readouterr().out
    assert REMEDY_FACE in out and "--retry-stronger:" not in out
    assert _sidecar(plain)["options"]["nose_scale"] == 2.0 and "attempts" not in _sidecar(plain)["verification"]
    assert faces_after.verifications == 1

    large = tmp_path / "large.nii.gz"
    assert main(["deface", str(scan), str(large), "--labels", str(labels), "--retry-stronger",
                 "--nose-scale", "3", "--eye-box-scale", "2.5", "--whole-face"]) == 3
    out = capsys.readouterr().out
    assert "not retried" in out and REMEDY_NOT_SHAREABLE in out
    assert faces_after.verifications == 2  # one more, no retry


def test_retry_stronger_verifies_and_passes_once_without_a_retry(phantom_pair, faces_after, tmp_path,
                                                                 capsys) -> None:
    scan, labels = phantom_pair
    faces_after.plan += [False]
    out = tmp_path / "head_defaced.nii.gz"
    assert main(["deface", str(scan), str(out), "--labels", str(labels), "--retry-stronger"]) == 0
    assert (tmp_path / "head_defaced-qc" / "verify_summary.json").is_file()  # --retry-stronger implies --verify
    assert "--retry-stronger:" not in capsys.readouterr().out
    sidecar = _sidecar(out)
    assert sidecar["options"]["nose_scale"] == 2.0 and "attempts" not in sidecar["verification"]


@pytest.mark.usefixtures("detectors")
def test_a_real_head_that_kept_a_face_is_clear_at_the_defaults(tmp_path, capsys) -> None:
    """fernando_T2w_thick (TorchIO sample data, MIT; an oblique acquisition, its grid pitched 8 degrees, its field
    of view cut at the nose) kept a Face Mesh face in its right 45-degree render with the shipped detector and the
    defaults (docs/distortion.md, "The nose's root") until the detector took its grid's pitch, confirmed by its
    ears, as the head's (docs/model-card.md, "A nodded head"): its nose is re-shaped in its own frame (reference
    nose changed 0.72 -> 0.95) and the first attempt passes, so ``--retry-stronger`` has nothing to retry.  The
    retry's first step (FAIL, then PASS) and the whole-face step are tested above with faked detectors (the real
    detectors' retry through to the whole face on decubitus-HFS below held until its eye labels were redrawn)."""
    scan = SHARED / "fernando_T2w_thick.nii.gz"
    if not scan.is_file():
        pytest.skip(f"needs the real heads of ../shared/data ({scan} is missing)")
    out = tmp_path / "fernando_defaced.nii.gz"
    code = main(["deface", str(scan), str(out), "--retry-stronger", "--qc-after-only"])
    captured = capsys.readouterr()
    sidecar = _sidecar(out)
    verification = sidecar["verification"]
    assert code == 0, captured.out + captured.err
    assert verification["verdict"] == "PASS" and "attempts" not in verification, verification
    assert sidecar["detector"]["head_pose"]["pitch_applied"] is True
    assert not list((tmp_path / "fernando_defaced-qc").glob("*before*"))  # --qc-after-only: no original face


def test_a_dicom_series_is_retried_with_its_mapping_rewritten(faces_after, tmp_path, capsys) -> None:
    """A DICOM series defaced twice: the output folder, the sidecar and the --mapping-file are the retry's (a
    random key gives each attempt other UIDs, so a mapping left from the first would not fit the output)."""
    import sys

    import pydicom

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "dicom"))
    from dicom_factory import write_phantom_series

    write_phantom_series(tmp_path / "in", tmp_path / "labels.nii.gz")
    faces_after.plan += [True, False]
    out, mapping = tmp_path / "defaced", tmp_path / "mapping.json"
    code = main(["deface", str(tmp_path / "in"), str(out), "--labels", str(tmp_path / "labels.nii.gz"),
                 "--retry-stronger", "--mapping-file", str(mapping)])
    captured = capsys.readouterr()
    assert code == 0, captured.out + captured.err
    assert faces_after.verifications == 2
    sidecar = json.loads((tmp_path / "defaced.defacer.json").read_text())
    assert [a["verdict"] for a in sidecar["verification"]["attempts"]] == ["FAIL", "PASS"]
    assert sidecar["options"]["nose_scale"] == STRONGER_NOSE_SCALE
    written = sorted(p for p in out.iterdir() if p.is_file())
    assert written
    text = mapping.read_text()
    for path in written[:3]:
        assert pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID in text


@pytest.mark.usefixtures("detectors")
def test_a_real_head_whose_eye_labels_sit_on_the_globes_is_clear_at_the_defaults(tmp_path, capsys) -> None:
    """decubitus-HFS (a DICOM series) with its reference labels as detection and its nose left (``--features
    eyes,ears``) kept a Face Mesh face even with the larger eye cover, and only the whole-face step cleared it
    (FAIL, FAIL, PASS), while its reference eye capsules sat off the globes (the left 7.4 mm, too high and too far
    forward: docs/model-card.md, "Reference eye labels checked by eye and redrawn on the globe").  With the eye
    labels redrawn on the globes (issue 15, session 21) the first attempt passes (the eye cover follows the
    labels' eye centroids, now 2-5 mm lower and further back), so ``--retry-stronger`` has nothing to retry."""
    scan = SHARED / "decubitus-HFS_T1w_dicom"
    labels = Path(__file__).resolve().parents[2] / "reference_labels" / "decubitus-HFS_T1w_dicom.labels.nii.gz"
    if not scan.is_dir():
        pytest.skip(f"needs the real heads of ../shared/data ({scan} is missing)")
    out = tmp_path / "decubitus_defaced"
    code = main(["deface", str(scan), str(out), "--labels", str(labels), "--features", "eyes,ears", "--retry-stronger",
                 "--qc-after-only", "--key", "retry-test-key-0123456789"])
    captured = capsys.readouterr()
    verification = json.loads((tmp_path / "decubitus_defaced.defacer.json").read_text())["verification"]
    assert code == 0, captured.out + captured.err
    assert verification["verdict"] == "PASS" and "attempts" not in verification, verification
