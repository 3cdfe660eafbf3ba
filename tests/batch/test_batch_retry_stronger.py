"""``batch --retry-stronger``: a scan whose verification finds a face after defacing is defaced again with the larger
nose removal and eye cover and verified again; a rerun with the option redoes only the scans that failed that way.

The scans run in this process (the worker engine is replaced by a loop over :func:`process_scan`) so the face
detectors can be faked: which verdict real detectors give a synthetic phantom is their business, the retry's
control flow, outputs and records are what is tested.  The last test runs the real engine and detectors on a real
head that keeps a face with its nose left (ixi013 with ``--features eyes,ears``).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from real_data import SHARED_DATA

from defacer.batch import engines
from defacer.batch.runner import BatchConfig, run_batch
from defacer.batch.summary import VERIFY_FAIL_AFTER_RETRY, VERIFY_FAIL_NEXT_STEP
from defacer.batch.task import process_scan
from defacer.cli.main import main
from defacer.io import load_volume
from defacer.options import STRONGER_EYE_BOX_SCALE, STRONGER_NOSE_SCALE

SHARED = SHARED_DATA / "heads"


@pytest.fixture
def in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run the batch's scans in this process, one after the other."""
    def serial(tasks, on_result, **_: object) -> None:
        for task in tasks:
            on_result(process_scan(task))

    monkeypatch.setattr(engines, "run_serial", serial)
    monkeypatch.setattr(engines, "run_processes", serial)


@pytest.fixture
def face_on(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Fake detectors: a face in every original render; after defacing, a face exactly when the defacing used a
    nose box smaller than the retry's (``face_on["after_retry"]`` True: also after the retry).  The nose size is
    read from the verified provenance, so the fake answers what was really written."""
    pytest.importorskip("PIL")
    from defacer.verify import check, identity
    from defacer.verify.faces import DetectorResult

    state: dict[str, Any] = {"after_retry": False, "calls": 0}
    real_verify_pair = check.verify_pair
    current: dict[str, float] = {}

    def verify_pair(original, defaced, out_dir, **kwargs):
        current["nose_scale"] = float(((kwargs.get("provenance") or {}).get("options") or {}).get("nose_scale", 0))
        return real_verify_pair(original, defaced, out_dir, **kwargs)

    def fake(renders):
        state["calls"] += 1
        original = state["calls"] % 2 == 1  # each verification detects on the original's renders first
        face = original or current["nose_scale"] < STRONGER_NOSE_SCALE or bool(state["after_retry"])
        return {view: {"stub": DetectorResult("stub", 0.5, 1.0 if face else None, None, face)} for view in renders}

    import defacer.verify as verify_package

    monkeypatch.setattr(check, "detect_renders", fake)
    monkeypatch.setattr(check, "verify_pair", verify_pair)
    monkeypatch.setattr(verify_package, "verify_pair", verify_pair)
    monkeypatch.setattr(identity, "embed", lambda image, box: np.zeros(128))
    return state


def _one_scan(bids_template) -> tuple[Path, Path, str]:
    ds, labels, relpaths = bids_template
    return ds, labels, relpaths[0]


@pytest.mark.usefixtures("in_process")
def test_a_scan_with_a_face_after_defacing_is_retried_larger(tmp_path, bids_template, face_on) -> None:
    ds, labels, relpath = _one_scan(bids_template)
    out = tmp_path / "out"
    stream = io.StringIO()
    summary = run_batch(BatchConfig(in_root=ds, out_root=out, labels_dir=labels, retry_stronger=True,
                                    include=[relpath]), stream=stream)
    record = summary.records[0]
    assert summary.exit_code == 0 and record.verify["verdict"] == "PASS", record.verify
    attempts = record.verify["attempts"]
    assert [(a["nose_scale"], a["eye_box_scale"], a["verdict"]) for a in attempts] == [
        (2.0, 2.0, "FAIL"), (STRONGER_NOSE_SCALE, STRONGER_EYE_BOX_SCALE, "PASS")]
    assert record.provenance["options"]["nose_scale"] == STRONGER_NOSE_SCALE
    assert face_on["calls"] == 4  # two verifications
    # The written scan is the retry's: it changed more than a batch with the defaults changes.
    plain = tmp_path / "plain"
    run_batch(BatchConfig(in_root=ds, out_root=plain, labels_dir=labels, include=[relpath], quiet=True))
    original = load_volume(ds / relpath).raw
    retried, default = load_volume(out / relpath).raw, load_volume(plain / relpath).raw
    assert np.count_nonzero(retried != original) > np.count_nonzero(default != original)
    manifest = [json.loads(line) for line in (out / ".defacer" / "manifest.jsonl").read_text().splitlines()]
    assert manifest[-1]["verify"]["attempts"] == attempts  # the manifest keeps both attempts


@pytest.mark.usefixtures("in_process")
def test_a_rerun_with_retry_stronger_redoes_only_the_scans_that_kept_a_face(tmp_path, bids_template,
                                                                            face_on) -> None:
    ds, labels, relpaths = bids_template
    out = tmp_path / "out"
    stream = io.StringIO()
    first = run_batch(BatchConfig(in_root=ds, out_root=out, labels_dir=labels, verify=True,
                                  include=relpaths[:2]), stream=stream)
    assert first.exit_code == 1 and first.counts.verify_failed == 2
    assert VERIFY_FAIL_NEXT_STEP in " ".join(stream.getvalue().split())  # the step names --retry-stronger
    assert "--retry-stronger" in VERIFY_FAIL_NEXT_STEP
    calls = face_on["calls"]

    again = run_batch(BatchConfig(in_root=ds, out_root=out, labels_dir=labels, retry_stronger=True,
                                  include=relpaths[:2], quiet=True))
    assert again.counts.done == 2 and again.exit_code == 0
    assert face_on["calls"] - calls == 2 * 4  # each scan: the defaults again, then the retry
    assert all(r.verify["attempts"][-1]["verdict"] == "PASS" for r in again.records)

    third = run_batch(BatchConfig(in_root=ds, out_root=out, labels_dir=labels, retry_stronger=True,
                                  include=relpaths[:2], quiet=True))
    assert third.counts.skipped == 2 and third.counts.done == 0  # nothing left to retry


@pytest.mark.usefixtures("in_process")
def test_a_face_after_every_step_gets_the_do_not_share_step(tmp_path, bids_template, face_on) -> None:
    ds, labels, relpath = _one_scan(bids_template)
    face_on["after_retry"] = True
    stream = io.StringIO()
    summary = run_batch(BatchConfig(in_root=ds, out_root=tmp_path / "out", labels_dir=labels, retry_stronger=True,
                                    include=[relpath]), stream=stream)
    assert summary.exit_code == 1 and summary.counts.verify_failed == 1
    attempts = summary.records[0].verify["attempts"]
    assert [(a["whole_face"], a["verdict"]) for a in attempts] == [(False, "FAIL"), (False, "FAIL"), (True, "FAIL")]
    assert summary.records[0].provenance["whole_face"]["done"] is True
    text = " ".join(stream.getvalue().split())
    assert VERIFY_FAIL_AFTER_RETRY in text and VERIFY_FAIL_NEXT_STEP not in text
    # A rerun does not retry again: the scan was retried already.
    calls = face_on["calls"]
    again = run_batch(BatchConfig(in_root=ds, out_root=tmp_path / "out", labels_dir=labels, retry_stronger=True,
                                  include=[relpath], quiet=True))
    assert again.counts.skipped == 1 and face_on["calls"] == calls


def test_batch_retry_stronger_clears_a_real_head_that_keeps_a_face(tmp_path, capsys) -> None:
    """ixi013 (IXI, CC BY-SA 3.0) with its nose left (``--features eyes,ears``; the retry keeps the features chosen)
    through the real worker engine and detectors: FAIL with the defaults (Face Mesh, front view), PASS one step
    stronger (the larger eye cover), without the whole face removed.  Until session 22 the second step failed too
    and only the whole-face step passed; with the MR eyes centred on the vitreous body (99d9435) the larger cover
    sits on the globes and suffices.  The whole-face step of a batch stays covered with faked detectors
    (test_a_face_after_every_step_gets_the_do_not_share_step).  (With every feature ixi013 is clear at the
    defaults since the nose removal takes the eye cover between the eyes, docs/distortion.md, "The nose's root".)"""
    import importlib.util

    if not all(importlib.util.find_spec(m) for m in ("mediapipe", "dlib", "face_recognition_models")):
        pytest.skip("needs defacer[verify]: mediapipe==0.10.21, dlib-bin, face-recognition-models")
    scan = SHARED / "ixi013_T1w_2mm.nii.gz"
    if not scan.is_file():
        pytest.skip(f"needs the real heads of ../shared/data ({scan} is missing)")
    out = tmp_path / "out"
    code = main(["batch", str(SHARED), str(out), "--include", scan.name, "--features", "eyes,ears", "--retry-stronger",
                 "--qc-after-only", "--quiet"])
    manifest = [json.loads(line) for line in (out / ".defacer" / "manifest.jsonl").read_text().splitlines()]
    verify = manifest[-1]["verify"]
    assert code == 0, capsys.readouterr()
    attempts = verify["attempts"]
    assert [(a["verdict"], a["whole_face"]) for a in attempts] == [("FAIL", False), ("PASS", False)], verify
    assert attempts[0]["face_found_after"] and not attempts[1]["face_found_after"], verify
    assert attempts[1]["eye_box_scale"] > attempts[0]["eye_box_scale"], verify  # one step stronger
    assert verify["brain_untouched"] is True, verify
