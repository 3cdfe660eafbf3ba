"""``defacer serve``: address, loopback default, token for other hosts, clean shutdown."""

from __future__ import annotations

import socket
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
