"""``defacer serve``: address, loopback default, token for other hosts, clean shutdown."""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from web_helpers import PhantomFiles, start_server, stop_server

from defacer.cli.main import main
from defacer.cli.serve import is_loopback


@pytest.mark.parametrize(("host", "expected"), [
    ("127.0.0.1", True), ("127.0.0.2", True), ("localhost", True), ("::1", True), ("[::1]", True),
    ("0.0.0.0", False), ("192.168.1.10", False), ("::", False), ("example.org", False),
])
def test_only_loopback_addresses_count_as_local(host: str, expected: bool) -> None:
    assert is_loopback(host) is expected


def test_serve_is_listed_in_the_command_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--port" in out and "127.0.0.1" in out and "--host" in out


def test_serve_prints_a_loopback_address_and_deletes_uploads_when_stopped(tmp_path: Path,
                                                                          phantom_files: PhantomFiles) -> None:
    server = start_server(tmp_path / "work")
    try:
        assert server.url.startswith("http://127.0.0.1:") and "token" not in server.url
        with httpx.Client(base_url=server.url, timeout=30) as client:
            assert client.get("/api/config").status_code == 200
            session = client.post("/api/sessions").json()["session"]
            stored = client.put(f"/api/sessions/{session}/files/scan", content=phantom_files.scan.read_bytes(),
                                headers={"X-File-Name": "scan.nii.gz"})
            assert stored.status_code == 201
        assert [p for p in (tmp_path / "work").rglob("*") if p.is_file()]
    finally:
        stderr = stop_server(server)
    assert server.process.returncode == 0
    assert "Traceback" not in stderr
    assert [p for p in (tmp_path / "work").rglob("*") if p.is_file()] == []


def test_other_hosts_warn_and_need_the_printed_token(tmp_path: Path) -> None:
    server = start_server(tmp_path / "work", "--host", "0.0.0.0")
    try:
        assert "?token=" in server.url
        port = int(server.url.split(":")[2].split("/")[0])
        token = server.url.split("?token=")[1]
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            assert client.get("/api/config").status_code == 401
            assert client.get("/api/config", headers={"X-Defacer-Token": token}).status_code == 200
    finally:
        stderr = stop_server(server)
    assert "WARNING" in stderr and "other computers can reach this server" in stderr


def test_a_busy_port_is_reported_in_words(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert main(["serve", "--port", str(port)]) == 1
    err = capsys.readouterr().err
    assert f"Cannot listen on 127.0.0.1:{port}" in err and "another --port" in err


def start_defacing(client: httpx.Client, files: PhantomFiles) -> str:
    """Upload the phantom with its label map, find the features and start defacing; return the work area id."""
    if not client.get("/api/config").json()["verify"]["available"]:
        pytest.skip("needs the verify extra: its verification is the step that is still running")
    return upload_and_start_defacing(client, files)


def upload_and_start_defacing(client: httpx.Client, files: PhantomFiles) -> str:
    """:func:`start_defacing` without the verify extra's check (for a job that need not reach verification)."""
    session = client.post("/api/sessions").json()["session"]
    for role, path in (("scan", files.scan), ("labels", files.labels)):
        stored = client.put(f"/api/sessions/{session}/files/{role}", content=path.read_bytes(),
                            headers={"X-File-Name": path.name})
        assert stored.status_code == 201, stored.text
    for step in ("load", "detect"):
        assert client.post(f"/api/sessions/{session}/{step}").status_code == 200
    assert client.post(f"/api/sessions/{session}/deface", json={}).status_code == 202
    return str(session)


def wait_for_stage(client: httpx.Client, session: str, stage: str) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        job = client.get(f"/api/sessions/{session}/job").json()
        if job["stage"].startswith(stage) and job["state"] == "running":
            return
        assert job["state"] in ("queued", "running"), job
        time.sleep(0.05)
    raise AssertionError(f"the job never reached '{stage}'")


def test_stopping_while_a_scan_is_being_verified_leaves_nothing_in_the_work_folder(
        tmp_path: Path, phantom_files: PhantomFiles) -> None:
    """Ctrl+C while a job writes its verification renders: once the server has exited, nothing of it is left.

    The work areas used to be removed while the job was still writing into its own: the root work folder was
    left behind, without the marker that lets the next server remove it (and the renders of the original face
    could stay in it), while the server said that everything had been deleted.
    """
    work = tmp_path / "work"
    server = start_server(work)
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            session = start_defacing(client, phantom_files)
            wait_for_stage(client, session, "Verifying")
    finally:
        stderr = stop_server(server)
    assert server.process.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert sorted(p.name for p in work.rglob("*")) == []


def test_a_second_ctrl_c_during_a_request_still_deletes_everything_and_prints_no_traceback(
        tmp_path: Path, phantom_files: PhantomFiles) -> None:
    """Two Ctrl+C while a verification request runs: uvicorn then skips the app's shutdown and cancels the request.

    The work folder was left behind (without its marker: no later server removes it) and uvicorn printed two
    tracebacks, while the server said that everything had been deleted.
    """
    work = tmp_path / "work"
    server = start_server(work)
    answers: list[object] = []
    try:
        with httpx.Client(base_url=server.url, timeout=120) as client:
            session = start_defacing(client, phantom_files)
            deadline = time.monotonic() + 120
            while client.get(f"/api/sessions/{session}/job").json()["state"] != "done":
                assert time.monotonic() < deadline, "defacing did not finish"
                time.sleep(0.1)

        def verify_again() -> None:
            try:
                answers.append(httpx.post(f"{server.url}api/sessions/{session}/verify", timeout=120).status_code)
            except httpx.HTTPError as err:  # the server may close the connection: that is the point
                answers.append(type(err).__name__)

        request = threading.Thread(target=verify_again)
        request.start()
        time.sleep(1.0)  # the verification (several seconds) is running on the server
        server.process.send_signal(signal.SIGINT)
        time.sleep(0.5)
        server.process.send_signal(signal.SIGINT)
        out, err = server.process.communicate(timeout=180)
        request.join(60)
    finally:
        if server.process.poll() is None:
            server.process.kill()
    assert "Traceback" not in err, err
    assert "all uploaded files and results were deleted" in out
    assert sorted(p.name for p in work.rglob("*")) == []


@pytest.mark.parametrize("option", [
    ["--max-upload-mb", "inf"], ["--max-upload-mb", "nan"], ["--max-upload-mb", "0"],
    ["--idle-minutes", "nan"], ["--idle-minutes", "0"], ["--idle-minutes", "-5"],
], ids=" ".join)
def test_limits_that_are_no_positive_number_are_refused_in_words(option: list[str],
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """``inf`` was reported as a bug in defacer (OverflowError), ``nan`` MB as 'cannot convert float NaN to integer',
    and ``--idle-minutes nan``, ``0`` or ``-5`` silently deleted work areas after one idle minute."""
    assert main(["serve", *option]) == 1
    err = capsys.readouterr().err
    assert f"{option[0]} must be a positive number" in err and "bug" not in err


@pytest.mark.parametrize("where", ["a-file", "a-file/below"])
def test_a_work_dir_that_cannot_be_made_is_refused_in_words(where: str, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """A ``--work-dir`` that is a file (or lies below one) was reported as a bug in defacer (FileExistsError)."""
    (tmp_path / "a-file").write_text("notes\n")
    assert main(["serve", "--work-dir", str(tmp_path / where)]) == 1
    err = capsys.readouterr().err
    assert "Cannot make the private work folder" in err and "--work-dir" in err and "bug" not in err
    assert (tmp_path / "a-file").read_text() == "notes\n"


def test_a_full_work_disk_is_reported_in_words_not_as_a_bug(small_disk: Callable[[str], Path],
                                                            phantom_files: PhantomFiles) -> None:
    """An upload, a load and a defacing job that meet a full disk say so and what to do.

    They answered 'Unexpected error (OSError) ... report this' and 'This is a bug in defacer' (tmpfs /tmp is
    often a few GB: one large series fills it).
    """
    tiny = start_server(small_disk("1m"))  # the 1.5 MB phantom does not fit
    try:
        with httpx.Client(base_url=tiny.url, timeout=60) as client:
            session = client.post("/api/sessions").json()["session"]
            upload = client.put(f"/api/sessions/{session}/files/scan", content=phantom_files.scan.read_bytes(),
                                headers={"X-File-Name": "head.nii.gz"})
            still = client.get("/api/config").status_code
    finally:
        stop_server(tiny)
    assert upload.status_code == 507, upload.text
    assert "work folder is full" in upload.json()["error"] and "--work-dir" in upload.json()["error"]
    assert still == 200

    small = start_server(small_disk("4m"))  # the upload, its viewer copy and the labels fit; the outputs do not
    try:
        with httpx.Client(base_url=small.url, timeout=60) as client:
            session = upload_and_start_defacing(client, phantom_files)
            deadline = time.monotonic() + 120
            while (job := client.get(f"/api/sessions/{session}/job").json())["state"] in ("queued", "running"):
                assert time.monotonic() < deadline
                time.sleep(0.1)
    finally:
        stop_server(small)
    assert job["state"] == "failed", job
    assert "work folder is full" in job["error"] and "bug" not in job["error"]


def test_closing_the_terminal_stops_the_server_like_ctrl_c(tmp_path: Path, phantom_files: PhantomFiles) -> None:
    """A hang-up (SIGHUP: the terminal window was closed) deletes the uploads and ends cleanly.

    uvicorn handles only SIGINT and SIGTERM: the hang-up killed the server and left the uploaded scan in the work
    folder until another server started there (started as ``defacer serve``, whose own handler turns a hang-up
    into an interrupt, it broke the event loop with a traceback instead).
    """
    work = tmp_path / "work"
    server = start_server(work)
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            session = client.post("/api/sessions").json()["session"]
            stored = client.put(f"/api/sessions/{session}/files/scan", content=phantom_files.scan.read_bytes(),
                                headers={"X-File-Name": "head.nii.gz"})
            assert stored.status_code == 201
        server.process.send_signal(signal.SIGHUP)
        out, err = server.process.communicate(timeout=60)
    finally:
        if server.process.poll() is None:
            server.process.kill()
    assert server.process.returncode == 0, err
    assert "all uploaded files and results were deleted" in out
    assert "Traceback" not in err and "ERROR" not in err
    assert sorted(p.name for p in work.rglob("*")) == []


def test_a_server_started_under_nohup_keeps_serving_through_a_hang_up(tmp_path: Path) -> None:
    """Started ignoring SIGHUP (``nohup defacer serve &``), the server is meant to outlive its terminal: a hang-up
    leaves it serving; Ctrl-C still stops it and deletes the work folder."""
    work = tmp_path / "work"
    server = start_server(work, hang_up_ignored=True)
    try:
        server.process.send_signal(signal.SIGHUP)
        time.sleep(1.0)
        assert server.process.poll() is None, "a hang-up stopped a server started under nohup"
        with httpx.Client(base_url=server.url, timeout=30) as client:
            assert client.post("/api/sessions").status_code in (200, 201)
    finally:
        err = stop_server(server)
    assert server.process.returncode == 0, err
    assert "Traceback" not in err
    assert not any(work.rglob("*"))


def test_a_work_dir_that_is_a_file_is_named_as_such(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """HOSTILE3's open item 6: "Cannot make the private work folder in notes.txt: File exists"."""
    (tmp_path / "notes.txt").write_text("the user's")
    assert main(["serve", "--work-dir", str(tmp_path / "notes.txt")]) == 1
    assert "is a file, not a folder" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").read_text() == "the user's"


@pytest.mark.parametrize("case", ["no-backend", "not-installed"])
def test_a_detector_backend_that_cannot_be_used_stops_serve_before_it_starts(
        case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """SAFE30: ``DEFACER_DETECTOR_BACKEND`` naming no backend (a typo), or forcing one not installed, let the server
    start and print its address; every scan uploaded without a label map then failed at "Find features" with the
    words ``deface`` says at once.  Now said once, before the work folder is made or a port bound: exit 1, as
    ``batch`` (SAFE29, a99ade6).  The server's run is replaced by a recorder, so that the code before this change
    returns instead of serving for ever; here it is never reached."""
    import uvicorn

    from defacer.detect import backend

    served: list[bool] = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: served.append(True))
    if case == "no-backend":
        monkeypatch.setenv(backend.ENV, "onnxruntime\u200b")  # a zero-width space pasted with the name
    else:
        monkeypatch.setenv(backend.ENV, backend.OPENVINO)
        monkeypatch.setattr(backend, "installed", lambda name: False)
    work = tmp_path / "work"
    assert main(["serve", "--work-dir", str(work)]) == 1
    captured = capsys.readouterr()
    text = captured.out + captured.err
    words = "names no backend" if case == "no-backend" else "package is not installed"
    assert text.count(words) == 1 and backend.ENV in text and "unset" in text, text
    assert "serving on" not in text and "Traceback" not in text and "bug" not in text, text
    assert not served and not work.exists()


def test_serve_starts_with_each_usable_detector_backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The start-up check refuses only what cannot be used: ``auto`` and a forced, installed backend (in any case,
    with spaces) start the server as before."""
    import uvicorn

    from defacer.detect import backend

    served: list[bool] = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: served.append(True))
    values = [" Auto ", "ONNXRUNTIME"] + (["openvino"] if backend.installed(backend.OPENVINO) else [])
    for value in values:
        monkeypatch.setenv(backend.ENV, value)
        assert main(["serve", "--work-dir", str(tmp_path / "work")]) == 0, value
    assert len(served) == len(values)
