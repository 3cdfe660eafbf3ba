"""A real DICOM series through the web API: geometry kept, pixels defaced, headers de-identified, logs clean.

Reads ``../shared/data`` (skipped when absent) and the reference label map of the series; nothing is
copied into the repository and the work area is deleted at the end.
"""

from __future__ import annotations

import io
import logging
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from defacer.web.app import create_app
from defacer.web.settings import WebSettings

pytestmark = pytest.mark.realdata

REPO = Path(__file__).resolve().parents[2]
SERIES = "fnndsc-3yo_T1w_dicom"


@pytest.fixture
def quick_verification(monkeypatch: pytest.MonkeyPatch) -> None:
    from defacer.web import workflow

    def fake_verify(session: Any) -> dict[str, Any]:
        return {"available": False, "reason": "replaced in this test"}

    monkeypatch.setattr(workflow, "verify_session", fake_verify)


def test_real_dicom_series_is_defaced_and_deidentified_through_the_api(
        shared_data: Path, tmp_path: Path, quick_verification: None, caplog: pytest.LogCaptureFixture) -> None:
    import pydicom

    folder = shared_data / "heads" / SERIES
    labels = REPO / "reference_labels" / f"{SERIES}.labels.nii.gz"
    if not labels.exists():
        pytest.skip(f"reference label map {labels.name} not available")
    files = sorted(p for p in folder.iterdir() if p.is_file())
    first = pydicom.dcmread(files[0], stop_before_pixels=True)
    secrets_in_header = [str(first.PatientID), str(first.PatientBirthDate), str(first.AccessionNumber)]

    settings = WebSettings(work_dir=tmp_path / "work")
    with caplog.at_level(logging.DEBUG), TestClient(create_app(settings), base_url="http://127.0.0.1") as client:
        session = client.post("/api/sessions").json()["session"]
        for path in files:
            stored = client.put(f"/api/sessions/{session}/files/scan", content=path.read_bytes(),
                                headers={"X-File-Name": path.name})
            assert stored.status_code == 201, stored.text
        client.put(f"/api/sessions/{session}/files/labels", content=labels.read_bytes(),
                   headers={"X-File-Name": labels.name})
        info = client.post(f"/api/sessions/{session}/load").json()
        assert info["format"] == "dicom" and info["shape"] == [256, 256, 192]
        detection = client.post(f"/api/sessions/{session}/detect").json()
        assert detection["features"]["eyes"]["components"] == 2
        assert client.post(f"/api/sessions/{session}/deface", json={"features": ["eyes", "nose", "ears"]}).status_code == 202
        deadline = time.monotonic() + 300
        while (job := client.get(f"/api/sessions/{session}/job").json())["state"] not in ("done", "failed"):
            assert time.monotonic() < deadline
            time.sleep(0.5)
        assert job["state"] == "done", job
        assert sum(job["result"]["voxels_changed"].values()) > 1000
        download = client.get(f"/api/sessions/{session}/download/scan")
        assert client.delete(f"/api/sessions/{session}").json() == {"removed": True}
    assert not [p for p in (tmp_path / "work").rglob("*") if p.is_file()]

    with zipfile.ZipFile(io.BytesIO(download.content)) as archive:
        names = [n for n in archive.namelist() if not n.endswith("/")]
        assert len(names) == len(files)
        changed_slices = 0
        for name in names:
            ds = pydicom.dcmread(io.BytesIO(archive.read(name)))
            header_text = str(ds)
            assert not any(secret in header_text for secret in secrets_in_header)
            assert ds.Rows == first.Rows and ds.Columns == first.Columns
            changed_slices += int(ds.get("RecognizableVisualFeatures", "") == "NO")
        assert changed_slices == len(files)
    assert not any(secret in caplog.text for secret in secrets_in_header)
