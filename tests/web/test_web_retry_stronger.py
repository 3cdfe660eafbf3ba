"""The web page's retry (``retry_stronger`` of the deface request): one step stronger while a face is found, the
larger nose removal and eye cover, then the whole face as well (:func:`defacer.options.stronger_options`, as
``defacer deface --retry-stronger``), in process (Starlette TestClient), with the real verification and faked face
detectors.

The face detectors are faked as in ``tests/verify/test_retry_stronger.py`` (the phantom has no face they know): the
retry's control flow, its downloads and its records are what is tested, not what a detector makes of a phantom.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from face_fakes import FakeDetectors
from fastapi.testclient import TestClient

from defacer.options import STRONGER_EYE_BOX_SCALE, STRONGER_NOSE_SCALE
from defacer.web.app import create_app
from defacer.web.settings import WebSettings

pytest.importorskip("PIL", reason="the verify extra is not installed (pip install 'defacer[verify]')")


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 3 mm phantom head and its label map (quicker to render than the 2 mm one of the other web tests)."""
    from defacer.phantom import make_phantom, save_phantom

    folder = tmp_path_factory.mktemp("retry-phantom")
    scan, labels = folder / "phantom_T1w.nii.gz", folder / "phantom_labels.nii.gz"
    save_phantom(make_phantom(3.0), scan, labels)
    return scan, labels


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(WebSettings(work_dir=tmp_path / "work")), base_url="http://127.0.0.1") as test_client:
        yield test_client


def detected_session(client: TestClient, phantom: tuple[Path, Path]) -> str:
    scan, labels = phantom
    session = str(client.post("/api/sessions").json()["session"])
    for path, role in ((scan, "scan"), (labels, "labels")):
        answer = client.put(f"/api/sessions/{session}/files/{role}", content=path.read_bytes(),
                            headers={"X-File-Name": path.name})
        assert answer.status_code == 201, answer.text
    for step in ("load", "detect"):
        answer = client.post(f"/api/sessions/{session}/{step}")
        assert answer.status_code == 200, answer.text
    return session


def deface(client: TestClient, session: str, **options: Any) -> dict[str, Any]:
    started = client.post(f"/api/sessions/{session}/deface", json={"features": ["eyes", "nose", "ears"], **options})
    assert started.status_code == 202, started.text
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        job = client.get(f"/api/sessions/{session}/job").json()
        if job["state"] in ("done", "failed"):
            assert job["state"] == "done", job
            return dict(job["result"])
        time.sleep(0.1)
    raise AssertionError("defacing did not finish within 180 s")


def download(client: TestClient, session: str, kind: str) -> bytes:
    answer = client.get(f"/api/sessions/{session}/download/{kind}")
    assert answer.status_code == 200, answer.text
    return answer.content


def nifti(data: bytes, tmp_path: Path, name: str) -> np.ndarray:
    from defacer.io import load_volume

    path = tmp_path / name
    path.write_bytes(data)
    return np.asarray(load_volume(path, strict=False).raw)


def test_a_face_found_after_defacing_is_defaced_again_larger_and_everything_is_the_retrys(
        client: TestClient, phantom: tuple[Path, Path], faces_after: FakeDetectors, tmp_path: Path) -> None:
    from defacer.options import DefaceOptions
    from defacer.route import deface_path

    faces_after.plan += [True, False]
    session = detected_session(client, phantom)
    result = deface(client, session, retry_stronger=True)
    assert faces_after.verifications == 2
    attempts = result["attempts"]
    assert [(a["nose_scale"], a["eye_box_scale"], a["whole_face"], a["verdict"]) for a in attempts] == [
        (2.0, 2.0, False, "FAIL"), (STRONGER_NOSE_SCALE, STRONGER_EYE_BOX_SCALE, False, "PASS")]
    assert "front:stub" in attempts[0]["face_found_after"] and attempts[1]["face_found_after"] == []
    verification = result["verification"]
    assert verification["verdict"] == "PASS" and verification["next_step"] is None
    assert verification["attempts"] == attempts
    assert verification["summary"]["deface_options"]["nose_scale"] == STRONGER_NOSE_SCALE  # the retry's report

    # The downloads are exactly what the larger sizes give on their own, and remove more than the defaults did.
    scan, labels = phantom
    direct = deface_path(scan, tmp_path / "direct.nii.gz", options=DefaceOptions(
        nose_scale=STRONGER_NOSE_SCALE, eye_box_scale=STRONGER_EYE_BOX_SCALE), labels_path=labels, sidecar=False)
    defaced_bytes = download(client, session, "scan")
    defaced = nifti(defaced_bytes, tmp_path, "defaced.nii.gz")
    assert np.array_equal(defaced, np.asarray(direct.result.volume.raw))
    mask = nifti(download(client, session, "mask"), tmp_path, "mask.nii.gz")
    assert np.array_equal(mask, np.asarray(direct.result.edit_mask))
    view = nifti(client.get(f"/api/sessions/{session}/view/defaced.nii.gz").content, tmp_path, "view.nii.gz")
    assert np.array_equal(view, defaced)  # the page's viewer shows the retry's result
    provenance = json.loads(download(client, session, "provenance"))
    assert provenance["options"]["nose_scale"] == STRONGER_NOSE_SCALE
    assert provenance["options"]["eye_box_scale"] == STRONGER_EYE_BOX_SCALE
    assert provenance["output"]["sha256"] == hashlib.sha256(defaced_bytes).hexdigest()
    assert provenance["verification"] == {"verdict": "PASS", "attempts": attempts}
    assert result["voxels_changed"] == provenance["voxels_changed"]
    assert "phantom_T1w" not in json.dumps(provenance)  # still no file names in the record
    report = client.get(f"/api/sessions/{session}/report")
    assert report.status_code == 200 and 'class="verdict PASS">PASS<' in report.text  # the retry's report

    # Rerunning the verification keeps saying it verifies the retry.
    faces_after.plan += [False]
    again = client.post(f"/api/sessions/{session}/verify").json()
    assert again["verdict"] == "PASS" and again["attempts"] == attempts

    # Defacing the same scan again without the retry forgets the earlier attempts.
    faces_after.plan += [True]
    plain = deface(client, session)
    assert "attempts" not in plain and "attempts" not in plain["verification"]
    plain_mask = nifti(download(client, session, "mask"), tmp_path, "plain_mask.nii.gz")
    assert np.count_nonzero(mask) > np.count_nonzero(plain_mask)
    assert "verification" not in json.loads(download(client, session, "provenance"))


@pytest.fixture
def stages(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The progress messages of the defacing jobs (the job's stage, which the page shows while it runs)."""
    from defacer.web import workflow

    seen: list[str] = []
    real = workflow.deface_session

    def recording(session: Any, features: Any, seed: int, progress: Any, **kwargs: Any) -> Any:
        def record(stage: str, fraction: float) -> None:
            seen.append(stage)
            progress(stage, fraction)

        return real(session, features, seed, record, **kwargs)

    monkeypatch.setattr(workflow, "deface_session", recording)
    return seen


def test_a_face_still_found_with_the_larger_sizes_goes_on_to_the_whole_face(
        client: TestClient, phantom: tuple[Path, Path], faces_after: FakeDetectors, stages: list[str],
        tmp_path: Path) -> None:
    """FAIL, FAIL, PASS: the third attempt removes the whole face as well, and everything offered is its result."""
    from defacer.options import DefaceOptions
    from defacer.route import deface_path

    faces_after.plan += [True, True, False]
    session = detected_session(client, phantom)
    result = deface(client, session, retry_stronger=True)
    assert faces_after.verifications == 3
    attempts = result["attempts"]
    assert [(a["nose_scale"], a["eye_box_scale"], a["whole_face"], a["verdict"]) for a in attempts] == [
        (2.0, 2.0, False, "FAIL"), (STRONGER_NOSE_SCALE, STRONGER_EYE_BOX_SCALE, False, "FAIL"),
        (STRONGER_NOSE_SCALE, STRONGER_EYE_BOX_SCALE, True, "PASS")]
    assert all("front:stub" in a["face_found_after"] for a in attempts[:2]) and attempts[2]["face_found_after"] == []
    verification = result["verification"]
    assert verification["verdict"] == "PASS" and verification["next_step"] is None
    assert verification["attempts"] == attempts
    assert verification["summary"]["deface_options"]["whole_face"] is True  # the last attempt's report

    # The downloads are exactly what the whole-face step gives on its own, and remove more than the larger sizes.
    scan, labels = phantom
    whole = DefaceOptions(nose_scale=STRONGER_NOSE_SCALE, eye_box_scale=STRONGER_EYE_BOX_SCALE, whole_face=True)
    direct = deface_path(scan, tmp_path / "direct.nii.gz", options=whole, labels_path=labels, sidecar=False)
    assert direct.result.provenance["whole_face"]["done"] is True  # the phantom has two eyes: the face is removed
    defaced_bytes = download(client, session, "scan")
    defaced = nifti(defaced_bytes, tmp_path, "defaced.nii.gz")
    assert np.array_equal(defaced, np.asarray(direct.result.volume.raw))
    mask = nifti(download(client, session, "mask"), tmp_path, "mask.nii.gz")
    assert np.array_equal(mask, np.asarray(direct.result.edit_mask))
    larger = deface_path(scan, tmp_path / "larger.nii.gz", options=DefaceOptions(
        nose_scale=STRONGER_NOSE_SCALE, eye_box_scale=STRONGER_EYE_BOX_SCALE), labels_path=labels, sidecar=False)
    assert np.count_nonzero(mask) > np.count_nonzero(larger.result.edit_mask)
    view = nifti(client.get(f"/api/sessions/{session}/view/defaced.nii.gz").content, tmp_path, "view.nii.gz")
    assert np.array_equal(view, defaced)  # the page's viewer shows the last attempt's result
    provenance = json.loads(download(client, session, "provenance"))
    assert provenance["options"]["whole_face"] is True
    assert provenance["options"]["nose_scale"] == STRONGER_NOSE_SCALE
    assert provenance["whole_face"]["done"] is True
    assert provenance["output"]["sha256"] == hashlib.sha256(defaced_bytes).hexdigest()
    assert provenance["verification"] == {"verdict": "PASS", "attempts": attempts}
    assert len(provenance["verification"]["attempts"]) == 3
    report = client.get(f"/api/sessions/{session}/report")
    assert report.status_code == 200 and 'class="verdict PASS">PASS<' in report.text  # the last attempt's report

    # The job said which step it was taking.
    assert any("attempt 2, the larger nose and eye removal" in stage for stage in stages), stages
    assert any("attempt 3, the whole face removal" in stage for stage in stages), stages
    assert stages.index(next(s for s in stages if "attempt 2" in s)) < stages.index(
        next(s for s in stages if "attempt 3" in s))

    # Rerunning the verification still lists all three attempts.
    faces_after.plan += [False]
    again = client.post(f"/api/sessions/{session}/verify").json()
    assert again["verdict"] == "PASS" and again["attempts"] == attempts


def test_a_face_found_after_every_step_says_not_to_share_the_scan(
        client: TestClient, phantom: tuple[Path, Path], faces_after: FakeDetectors) -> None:
    from defacer.web.workflow import WEB_REMEDY_NOT_SHAREABLE

    faces_after.plan += [True, True, True]
    session = detected_session(client, phantom)
    result = deface(client, session, retry_stronger=True)
    assert faces_after.verifications == 3  # no step is left after the whole face
    assert [(a["whole_face"], a["verdict"]) for a in result["attempts"]] == [
        (False, "FAIL"), (False, "FAIL"), (True, "FAIL")]
    verification = result["verification"]
    assert verification["verdict"] == "FAIL" and verification["next_step"] == WEB_REMEDY_NOT_SHAREABLE
    assert "do not share this scan as it is" in WEB_REMEDY_NOT_SHAREABLE
    assert "pictures" in WEB_REMEDY_NOT_SHAREABLE and "command line" not in WEB_REMEDY_NOT_SHAREABLE
    provenance = json.loads(download(client, session, "provenance"))
    assert provenance["options"]["whole_face"] is True
    assert provenance["verification"]["verdict"] == "FAIL" and len(provenance["verification"]["attempts"]) == 3


def test_the_web_next_steps_follow_the_chain_in_the_pages_words() -> None:
    """Each command-line next step of a face still found has the page's wording, which names the page's box."""
    from defacer.verify.verdict import REMEDY_BRAIN, remedy
    from defacer.web.workflow import (
        RETRY_BOX_LABEL,
        WEB_REMEDY_FACE,
        WEB_REMEDY_NOT_SHAREABLE,
        WEB_REMEDY_WHOLE_FACE,
        web_next_step,
    )

    def fail(**options: Any) -> dict[str, Any]:
        return {"verdict": "FAIL", "face_found_after": ["front:stub"], "brain_untouched": True,
                "deface_options": {"nose_scale": 2.0, "eye_box_scale": 2.0, "whole_face": False, **options}}

    larger = {"nose_scale": STRONGER_NOSE_SCALE, "eye_box_scale": STRONGER_EYE_BOX_SCALE}
    assert web_next_step(fail()) == WEB_REMEDY_FACE
    assert web_next_step(fail(**larger)) == WEB_REMEDY_WHOLE_FACE
    assert web_next_step(fail(**larger, whole_face=True)) == WEB_REMEDY_NOT_SHAREABLE
    assert web_next_step({"verdict": "PASS", "face_found_after": []}) is None
    brain = {**fail(), "brain_untouched": False}
    assert web_next_step(brain) == remedy(brain) == REMEDY_BRAIN  # no command-line option named: passed through
    for step in (WEB_REMEDY_FACE, WEB_REMEDY_WHOLE_FACE):  # deface again with the box ticked, as it is labelled
        assert f"'{RETRY_BOX_LABEL}' ticked" in step and "whole face" in step
    assert "goes on to remove the whole face" in WEB_REMEDY_WHOLE_FACE
    index = (Path(__file__).parents[2] / "src/defacer/web/static/index.html").read_text()
    assert " ".join(RETRY_BOX_LABEL.split()) in " ".join(index.split())  # the page's box says the same


@pytest.mark.parametrize("options", [{}, {"retry_stronger": False}], ids=["absent", "false"])
def test_no_retry_unless_asked(client: TestClient, phantom: tuple[Path, Path], faces_after: FakeDetectors,
                               options: dict[str, Any]) -> None:
    from defacer.web.workflow import WEB_REMEDY_FACE

    faces_after.plan += [True]
    session = detected_session(client, phantom)
    result = deface(client, session, **options)
    assert faces_after.verifications == 1
    assert "attempts" not in result and "attempts" not in result["verification"]
    assert result["verification"]["verdict"] == "FAIL"
    assert result["verification"]["next_step"] == WEB_REMEDY_FACE  # defacing again with the box ticked is the way
    provenance = json.loads(download(client, session, "provenance"))
    assert provenance["options"]["nose_scale"] == 2.0 and "verification" not in provenance


def test_no_retry_when_the_brain_region_changed(client: TestClient, phantom: tuple[Path, Path],
                                                faces_after: FakeDetectors, monkeypatch: pytest.MonkeyPatch) -> None:
    """A changed brain region is no matter of distortion size: a FAIL for it is never retried (face found or not)."""
    from defacer.verify import check
    from defacer.verify.verdict import REMEDY_BRAIN

    real = check.voxel_changes

    def brain_changed(*args: Any, **kwargs: Any) -> Any:
        changes, changed = real(*args, **kwargs)
        changes["brain"] = {**changes["brain"], "changed": 1000, "changed_fraction": 1.0}
        return changes, changed

    monkeypatch.setattr(check, "voxel_changes", brain_changed)
    faces_after.plan += [True]
    session = detected_session(client, phantom)
    result = deface(client, session, retry_stronger=True)
    assert faces_after.verifications == 1
    verification = result["verification"]
    assert verification["verdict"] == "FAIL" and verification["summary"]["brain_untouched"] is False
    assert verification["next_step"] == REMEDY_BRAIN and "attempts" not in result
    assert json.loads(download(client, session, "provenance"))["options"]["nose_scale"] == 2.0


def test_a_pass_is_not_retried(client: TestClient, phantom: tuple[Path, Path], faces_after: FakeDetectors) -> None:
    faces_after.plan += [False]
    session = detected_session(client, phantom)
    result = deface(client, session, retry_stronger=True)
    assert faces_after.verifications == 1
    assert result["verification"]["verdict"] == "PASS" and "attempts" not in result


@pytest.mark.parametrize("value", ["yes", 1, 0, None, "true", [True]])
def test_a_retry_stronger_that_is_no_boolean_is_refused_in_words(client: TestClient, phantom: tuple[Path, Path],
                                                                  value: Any) -> None:
    session = detected_session(client, phantom)
    answer = client.post(f"/api/sessions/{session}/deface", json={"features": ["eyes"], "retry_stronger": value})
    assert answer.status_code == 422, answer.text
    assert "'retry_stronger' must be true or false" in answer.json()["error"]
    assert client.get(f"/api/sessions/{session}/job").json()["state"] == "idle"  # nothing was started


def test_an_unknown_deface_option_is_refused_in_words(client: TestClient, phantom: tuple[Path, Path]) -> None:
    """A misspelt option (``retry_stonger``) must not be ignored: the scan would be defaced without the retry."""
    session = detected_session(client, phantom)
    answer = client.post(f"/api/sessions/{session}/deface", json={"features": ["eyes"], "retry_stonger": True})
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert "Unknown deface option(s) 'retry_stonger'" in error and "retry_stronger" in error
