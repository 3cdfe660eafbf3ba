"""The hostile-input battery against the web API, and the web defects of issue 11 (1, 9, 12, 13, 14).

Every hostile file of :mod:`hostile_files` is uploaded and loaded through the HTTP API (in
process, Starlette's TestClient): each is refused in words (4xx, never 500), no answer carries
a server path or a traceback, nothing is written outside the work area, and closing the work
area leaves nothing behind.  Tests with a defect number in their docstring fail on the code
before the fix.
"""

from __future__ import annotations

import gzip
import io
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the web extra is not installed (pip install 'defacer[web]')")
pytest.importorskip("httpx", reason="httpx is needed by the web API tests")

from fastapi.testclient import TestClient
from hostile_files import Case, all_cases, nifti_bytes, nrrd_bytes

from defacer.web.app import create_app
from defacer.web.settings import WebSettings

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "web"))

BASE = "http://127.0.0.1"
CASES = all_cases()


def make_client(tmp_path: Path, base_url: str = BASE, **overrides: Any) -> TestClient:
    settings = WebSettings(work_dir=tmp_path / "work", **overrides)
    return TestClient(create_app(settings), base_url=base_url)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, Path]]:
    """One server for the whole battery (a work area per case, closed after it)."""
    root = tmp_path_factory.mktemp("web-battery")
    with make_client(root) as client:
        yield client, root


def files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


def session_of(client: TestClient) -> str:
    response = client.post("/api/sessions")
    assert response.status_code == 201
    return str(response.json()["session"])


def work_root(client: TestClient) -> Path:
    return client.app.state.store.root  # type: ignore[attr-defined]


def assert_clean_answer(response: Any, client: TestClient) -> None:
    """A refusal in words: 4xx JSON, no server path, no traceback."""
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
    message = response.json()["error"]
    assert len(message) > 20
    assert "Traceback" not in message and str(work_root(client)) not in message
    assert "/tmp/" not in message and "input.nii" not in message and "input.nrrd" not in message


# ----------------------------------------------------------------------------- the battery
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_upload_is_refused_in_words_and_leaves_nothing(case: Case, shared: tuple[TestClient, Path]) -> None:
    """Upload, then load: refused with 4xx in words (or loaded when merely odd); nothing outside the work area."""
    client, root = shared
    outside_before = {p for p in files_under(root) if work_root(client) not in p.parents}
    session = session_of(client)
    try:
        upload = client.put(f"/api/sessions/{session}/files/scan", content=case.data,
                            headers={"X-File-Name": case.name})
        if upload.status_code == 201:
            loaded = client.post(f"/api/sessions/{session}/load")
            if loaded.status_code == 200:
                assert case.may_load, f"{case.id} was accepted by the web server; it must be refused"
                assert client.get(f"/api/sessions/{session}/view/scan.nii.gz").status_code == 200
            else:
                assert_clean_answer(loaded, client)
        else:
            assert_clean_answer(upload, client)
    finally:
        assert client.post(f"/api/sessions/{session}/close").json() == {"removed": True}
    assert files_under(work_root(client)) == []
    assert {p for p in files_under(root) if work_root(client) not in p.parents} == outside_before
    assert client.get("/api/config").status_code == 200  # the server still answers


def zip_of(members: dict[str, bytes], links: dict[str, str] | None = None, *, compress: bool = True) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED) as handle:
        for name, data in members.items():
            handle.writestr(name, data)
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = 0o120777 << 16
            handle.writestr(info, target)
    return buffer.getvalue()


ZIPS = {
    "slip": lambda out: zip_of({f"../../../../{out}/slip.dcm": b"x" * 200, f"/{out}/abs.dcm": b"y" * 200}),
    "links": lambda out: zip_of({"a.dcm": b"z" * 200}, {"etc.dcm": "/etc/passwd", "up.dcm": f"../../{out}"}),
    "bomb": lambda out: zip_of({"a.dcm": b"\0" * 30_000_000}),
    "many-files": lambda out: zip_of({f"{i}.dcm": b"" for i in range(60)}),
    "empty": lambda out: zip_of({}),
    "garbage": lambda out: b"PK\x03\x04" + bytes(range(256)) * 8,
    "truncated": lambda out: zip_of({"a.dcm": bytes(range(256)) * 100})[:3000],
    "only-folders-and-forks": lambda out: zip_of({"__MACOSX/._a.dcm": b"fork", ".hidden.dcm": b"h", "dir/": b""}),
}


@pytest.mark.parametrize("kind", list(ZIPS))
def test_hostile_zip_is_refused_and_nothing_lands_outside(kind: str, tmp_path: Path) -> None:
    """Zip slip, absolute names, symlinks, a bomb, too many files, damage: refused in words, nothing outside."""
    outside = tmp_path / "outside"
    outside.mkdir()
    with make_client(tmp_path, max_upload_bytes=2_000_000, max_files=50) as client:
        session = session_of(client)
        upload = client.put(f"/api/sessions/{session}/files/scan", content=ZIPS[kind](str(outside).lstrip("/")),
                            headers={"X-File-Name": "series.zip"})
        if upload.status_code == 201:
            assert_clean_answer(client.post(f"/api/sessions/{session}/load"), client)
        else:
            assert_clean_answer(upload, client)
        unpacked = [p for p in files_under(work_root(client)) if p.parent.name == "dicom"]
        assert all(p.name[:5].isdigit() and not p.is_symlink() for p in unpacked)
        assert sum(p.stat().st_size for p in unpacked) <= 2_000_000
    assert list(outside.iterdir()) == []
    assert not any(p.is_symlink() for p in (tmp_path / "work").rglob("*"))


# ----------------------------------------------------------------------------- defect 1
def stealing_header(secret: Path, comments: int) -> Iterator[bytes]:
    """An attached-looking NRRD whose 'data file' line, after ``comments`` comment lines, names a server file.

    Sent in 64 kB pieces, as a browser's upload arrives, so the first piece holds only comments.
    """
    data = nrrd_bytes({"type": "uchar", "sizes": "8 8 8", "endian": None, "byte skip": "-1",
                       "data file": str(secret)}, comments=comments, data=b"")
    for start in range(0, len(data), 65536):
        yield data[start:start + 65536]


def test_nrrd_naming_a_server_file_after_a_megabyte_of_comments_is_refused(tmp_path: Path, secret: Path) -> None:
    """Defect 1, over real HTTP: the >1 MB-of-comments NRRD is refused at upload; the file it names is never served.

    A real ``defacer serve`` process, because the exploit needs the body to arrive in pieces
    (the in-process test client hands the whole body over at once).
    """
    import httpx
    from web_helpers import start_server, stop_server

    server = start_server(tmp_path / "work")
    try:
        with httpx.Client(base_url=server.url.rstrip("/"), timeout=60) as client:
            session = client.post("/api/sessions").json()["session"]
            upload = client.put(f"/api/sessions/{session}/files/scan", content=stealing_header(secret, 14_000),
                                headers={"X-File-Name": "scan.nrrd"})
            assert upload.status_code == 415 and "data file" in upload.json()["error"]
            client.post(f"/api/sessions/{session}/load")
            view = client.get(f"/api/sessions/{session}/view/scan.nii.gz")
            assert view.status_code == 404 and b"SECRET" not in view.content
    finally:
        stop_server(server)


def bypass_upload_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Switch off both upload-time NRRD checks, so what reaches the reader is what an attacker sent."""
    from defacer.web import workflow

    real_sniff = workflow.sniff
    monkeypatch.setattr(workflow, "sniff", lambda head, name="": "nrrd" if head.startswith(b"NRRD") else
                        real_sniff(head, name))
    monkeypatch.setattr(workflow, "check_nrrd_upload", lambda path: None, raising=False)


def test_reader_refuses_the_server_file_even_when_the_upload_check_is_bypassed(
        tmp_path: Path, secret: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Defect 1, fixed at the reader: with the upload checks switched off, loading still reads no other file."""
    bypass_upload_checks(monkeypatch)
    for comments in (0, 14_000):
        with make_client(tmp_path) as client:
            session = session_of(client)
            upload = client.put(f"/api/sessions/{session}/files/scan", content=stealing_header(secret, comments),
                                headers={"X-File-Name": "scan.nrrd"})
            assert upload.status_code == 201, upload.text
            loaded = client.post(f"/api/sessions/{session}/load")
            assert loaded.status_code == 422 and "detached NRRD header" in loaded.json()["error"]
            assert b"SECRET" not in loaded.content
            view = client.get(f"/api/sessions/{session}/view/scan.nii.gz")
            assert view.status_code == 404 and b"SECRET" not in view.content


def test_label_map_naming_a_server_file_is_refused_too(tmp_path: Path, secret: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Defect 1: the label-map upload goes through the same reader rule."""
    bypass_upload_checks(monkeypatch)
    with make_client(tmp_path) as client:
        session = session_of(client)
        scan = client.put(f"/api/sessions/{session}/files/scan", content=nifti_bytes(),
                          headers={"X-File-Name": "scan.nii"})
        assert scan.status_code == 201
        labels = client.put(f"/api/sessions/{session}/files/labels", content=stealing_header(secret, 14_000),
                            headers={"X-File-Name": "labels.nrrd"})
        assert labels.status_code == 201, labels.text
        loaded = client.post(f"/api/sessions/{session}/load")
        assert loaded.status_code == 422 and "detached NRRD header" in loaded.json()["error"]


# ----------------------------------------------------------------------------- defect 9: bounded queue
class SlowDetector:
    """Counts how many predictions run at once; each waits until released."""

    name = "slow test detector"
    weights_sha256 = None

    def __init__(self) -> None:
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.running = 0
        self.peak = 0

    def predict(self, image_ras: np.ndarray, ras_affine: np.ndarray) -> np.ndarray:
        with self.lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
        try:
            self.release.wait(20)
            return np.zeros(image_ras.shape, np.uint8)
        finally:
            with self.lock:
                self.running -= 1


def test_heavy_steps_run_one_at_a_time_and_a_full_queue_answers_busy(tmp_path: Path) -> None:
    """Defect 9: with 1 worker and 1 waiting place, 3 detects at once: 1 runs, 1 waits, 1 gets 503."""
    detector = SlowDetector()
    settings = WebSettings(work_dir=tmp_path / "work", workers=1, max_waiting=1)
    with TestClient(create_app(settings, detector_factory=lambda: detector), base_url=BASE) as client:
        sessions = []
        for _ in range(3):
            session = session_of(client)
            assert client.put(f"/api/sessions/{session}/files/scan", content=nifti_bytes(),
                              headers={"X-File-Name": "scan.nii"}).status_code == 201
            assert client.post(f"/api/sessions/{session}/load").status_code == 200
            sessions.append(session)
        answers: dict[str, int] = {}

        def detect(session: str) -> None:
            answers[session] = client.post(f"/api/sessions/{session}/detect").status_code

        threads = [threading.Thread(target=detect, args=(s,)) for s in sessions]
        for thread in threads:
            thread.start()
            time.sleep(0.3)  # in order: the first runs, the second waits, the third finds the line full
        deadline = time.monotonic() + 10
        while len(answers) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert list(answers.values()) == [503], answers
        busy = client.post(f"/api/sessions/{sessions[2]}/detect")  # still full
        assert busy.status_code == 503 and "busy" in busy.json()["error"]
        detector.release.set()
        for thread in threads:
            thread.join(30)
        assert sorted(answers.values()) == [200, 200, 503]
        assert detector.peak == 1
        assert client.app.state.gate.peak == 1  # type: ignore[attr-defined]


# ----------------------------------------------------------------------------- defect 12: leftovers
KILLED_SERVER = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from defacer.web.sessions import SessionStore
    store = SessionStore(Path(sys.argv[1]), max_sessions=4, ttl_s=3600)
    session = store.create()
    (session.folder / "input.nii.gz").write_bytes(b"uploaded scan of a patient")
    print(store.root, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
""")


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")
def test_work_area_of_a_killed_server_is_removed_on_next_start(tmp_path: Path) -> None:
    """Defect 12: a SIGKILLed server's uploads are swept when the next server starts, and only those."""
    from defacer.web.sessions import SessionStore

    work = tmp_path / "work"
    result = subprocess.run([sys.executable, "-c", KILLED_SERVER, str(work)], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == -signal.SIGKILL
    left = Path(result.stdout.strip())
    assert (left.exists() and files_under(left)), "the killed server should have left its folder"
    killed_at = time.time() - 120  # two minutes ago: past the grace period of a server that is starting
    os.utime(left, (killed_at, killed_at))
    unrelated = work / "defacer-web-notes"  # looks like ours, but is a link to the user's data: never followed
    user_data = tmp_path / "user-data"
    user_data.mkdir()
    (user_data / "thesis.tex").write_text("keep me")
    unrelated.symlink_to(user_data)
    other = work / "my-own-folder"
    other.mkdir()
    (other / "file.txt").write_text("keep me too")
    live = SessionStore(work, max_sessions=4, ttl_s=3600)  # a running server: its folder must survive
    live_session = live.create()
    (live_session.folder / "input.nii").write_bytes(b"in use")
    try:
        assert not left.exists(), "the killed server's work area is still there"
        fresh = SessionStore(work, max_sessions=4, ttl_s=3600)
        try:
            assert live.root.exists() and files_under(live.root)
            assert (user_data / "thesis.tex").read_text() == "keep me" and unrelated.is_symlink()
            assert (other / "file.txt").exists()
        finally:
            fresh.close_all()
    finally:
        live.close_all()
    assert not live.root.exists()


@pytest.mark.parametrize("name", ["defacer-web-notes", "defacer-web-abcd1234"])
def test_a_users_own_folder_named_like_a_work_area_survives_the_start_of_a_server(tmp_path: Path, name: str) -> None:
    """Audit 2026-12-03: ``defacer serve --work-dir DIR`` deleted the user's real folder ``DIR/defacer-web-notes``
    (every folder named ``defacer-web-*``, older than a minute and unlocked, was taken for a killed server's)."""
    from defacer.web.sessions import SessionStore

    work = tmp_path / "work"
    mine = work / name / "todo.md"
    mine.parent.mkdir(parents=True)
    mine.write_text("keep me")
    two_hours_ago = time.time() - 7200
    os.utime(mine.parent, (two_hours_ago, two_hours_ago))
    store = SessionStore(work, max_sessions=4, ttl_s=3600)
    store.close_all()
    assert mine.read_text() == "keep me"


# ----------------------------------------------------------------------------- defect 13: who may connect
def test_post_with_a_null_origin_is_refused(tmp_path: Path) -> None:
    """Defect 13: a sandboxed page (Origin: null) may not open work areas, nor upload, nor close them."""
    with make_client(tmp_path) as client:
        response = client.post("/api/sessions", headers={"Origin": "null"})
        assert response.status_code == 403
        session = session_of(client)
        put = client.put(f"/api/sessions/{session}/files/scan", content=nifti_bytes(),
                         headers={"Origin": "null", "X-File-Name": "scan.nii"})
        assert put.status_code == 403
        assert client.post(f"/api/sessions/{session}/close", headers={"Origin": "null"}).status_code == 403
        assert client.request("DELETE", f"/api/sessions/{session}", headers={"Origin": "null"}).status_code == 403
        assert client.post("/api/sessions", headers={"Origin": BASE}).status_code == 201


@pytest.mark.parametrize("host", ["127.0.0.2", "127.1.2.3", "[::1]"])
def test_any_loopback_address_answers_its_own_host_header(tmp_path: Path, host: str) -> None:
    """Defect 13: ``--host 127.0.0.2`` is loopback (no token) and its own Host header is answered."""
    from defacer.cli.serve import is_loopback

    assert is_loopback(host)
    with make_client(tmp_path, base_url=f"http://{host}:8765") as client:
        assert client.get("/api/config").status_code == 200
        assert client.post("/api/sessions", headers={"Origin": f"http://{host}:8765"}).status_code == 201


@pytest.mark.parametrize("host", ["attacker.example", "127.0.0.1.attacker.example", "localhost.attacker.example",
                                  "10.0.0.1", "0x7f.1", ""])
def test_other_host_names_are_still_refused(tmp_path: Path, host: str) -> None:
    """DNS rebinding stays blocked: names other than the loopback ones, and non-loopback addresses."""
    with make_client(tmp_path) as client:
        assert client.get("/api/config", headers={"Host": host}).status_code == 403


# ----------------------------------------------------------------------------- defect 14: exact limits
def test_limit_message_gives_exact_numbers_that_differ(tmp_path: Path) -> None:
    """Defect 14: one byte over 1 GB no longer reads '1.0 GB received ... limit 1.0 GB'."""
    from defacer.web.workflow import _limit_message

    message = _limit_message(1_000_000_001, 1_000_000_000)
    assert "1,000,000,001 bytes" in message and "1,000,000,000 bytes" in message and "1 bytes more" in message
    with make_client(tmp_path, max_upload_bytes=1000) as client:
        session = session_of(client)
        response = client.put(f"/api/sessions/{session}/files/scan", content=b"\x1f\x8b" + b"0" * 999,
                              headers={"X-File-Name": "big.nii.gz"})
        assert response.status_code == 413
        assert "1,001 bytes" in response.json()["error"] and "limit of 1,000 bytes" in response.json()["error"]


def test_invented_geometry_is_shown_on_the_page_and_recorded(tmp_path: Path) -> None:
    """Defect 14 (web): a zero pixdim is reported at load and detect, without the server's file name."""
    data = gzip.compress(nifti_bytes({"pixdim[3]": 0.0, "qform_code": 0, "sform_code": 0}))
    with make_client(tmp_path) as client:
        session = session_of(client)
        assert client.put(f"/api/sessions/{session}/files/scan", content=data,
                          headers={"X-File-Name": "odd.nii.gz"}).status_code == 201
        info = client.post(f"/api/sessions/{session}/load").json()
        assert any("invented" in w for w in info["warnings"])
        assert not any("input.nii" in w for w in info["warnings"])

