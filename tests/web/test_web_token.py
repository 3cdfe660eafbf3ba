"""``defacer serve``'s access token without putting it on the command line: ``--token-file`` (a file only its owner can
read, like an ssh key) or the environment variable ``DEFACER_TOKEN``.  ``--token T`` still works but warns: the command
line of a process is visible to every user of the computer (``ps``, ``/proc/PID/cmdline``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from web_helpers import start_server, stop_server

from defacer.cli.main import main

TOKEN = "Zq3+v/9xK2=mW7&a#b%c"  # base64-like characters and ones an address must escape


def _token_file(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "token"
    path.write_text(text)
    path.chmod(mode)
    return path


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def _check_server_needs(url: str, token: str) -> None:
    """The printed address opens the page (cookie set), and /api needs the token."""
    base = url.split("?")[0]
    with httpx.Client(base_url=base, timeout=30) as client:
        assert client.get("/api/config").status_code == 401
        assert client.get("/api/config", headers={"X-Defacer-Token": token}).status_code == 200
    with httpx.Client(timeout=30, follow_redirects=True) as browser:
        assert browser.get(url).status_code == 200, "the printed address carries the token as the server reads it"
        assert browser.get(base + "api/config").status_code == 200, "the cookie it set works"


def _serve_with_the_token_unseen(tmp_path: Path, *args: str) -> None:
    """Start ``serve`` with ``args``: the token is not in its command line, the server asks for it, it stops cleanly
    and does not warn that the token is visible."""
    server = start_server(tmp_path / "work", *args)
    try:
        assert TOKEN not in _cmdline(server.process.pid)
        _check_server_needs(server.url, TOKEN)
    finally:
        stderr = stop_server(server)
    assert server.process.returncode == 0 and "Traceback" not in stderr
    assert "visible to every user" not in stderr


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/PID/cmdline")
def test_a_token_file_keeps_the_token_off_the_command_line(tmp_path: Path) -> None:
    path = _token_file(tmp_path, TOKEN + "\n")
    _serve_with_the_token_unseen(tmp_path, "--token-file", str(path))


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/PID/cmdline")
def test_the_environment_variable_keeps_the_token_off_the_command_line(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEFACER_TOKEN", TOKEN)
    _serve_with_the_token_unseen(tmp_path)


def test_a_token_on_the_command_line_still_works_and_warns(tmp_path: Path) -> None:
    server = start_server(tmp_path / "work", "--token", TOKEN)
    try:
        _check_server_needs(server.url, TOKEN)
    finally:
        stderr = stop_server(server)
    assert "--token on the command line is visible to every user of this computer" in stderr
    assert "--token-file" in stderr and "DEFACER_TOKEN" in stderr


@pytest.mark.parametrize(("make", "expected"), [
    (lambda d: d / "missing", "does not exist"),
    (lambda d: _token_file(d, ""), "is empty"),
    (lambda d: _token_file(d, "\n\n"), "is empty"),
    (lambda d: _token_file(d, "short\n"), "has 5 characters; it needs at least 16"),
    (lambda d: _token_file(d, "two words in a token line\n"), "holds a space"),
    (lambda d: _token_file(d, TOKEN, 0o644), "can be read or written by other users (permissions 0644)"),
    (lambda d: _token_file(d, TOKEN, 0o640), "permissions 0640"),
    (lambda d: _token_file(d, TOKEN, 0o602), "permissions 0602"),
    (lambda d: d, "is not a regular file"),
    (lambda d: _token_file(d, TOKEN) / "below", "Cannot read the token file"),
    (lambda d: _token_file(d, "x" * 5000), "holds 5000 bytes"),
], ids=["missing", "empty", "blank-lines", "short", "space", "world-readable", "group-readable", "world-writable",
        "folder", "under-a-file", "large"])
def test_a_bad_token_file_is_refused_in_words(tmp_path: Path, capsys: pytest.CaptureFixture[str], make,
                                              expected: str) -> None:
    path = make(tmp_path)
    assert main(["serve", "--work-dir", str(tmp_path / "work"), "--token-file", str(path)]) == 1
    err = capsys.readouterr().err
    assert expected in err, err
    assert "Traceback" not in err and not (tmp_path / "work").exists(), "refused before anything is made"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_a_named_pipe_as_the_token_file_is_refused_not_waited_on(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    pipe = tmp_path / "token"
    os.mkfifo(pipe, 0o600)
    assert main(["serve", "--work-dir", str(tmp_path / "work"), "--token-file", str(pipe)]) == 1
    assert "is not a regular file" in capsys.readouterr().err


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_token_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _token_file(tmp_path, TOKEN, 0o000)
    assert main(["serve", "--work-dir", str(tmp_path / "work"), "--token-file", str(path)]) == 1
    assert "Cannot read the token file" in capsys.readouterr().err


def test_an_empty_environment_variable_is_refused_not_taken_for_no_token(tmp_path: Path) -> None:
    """``export DEFACER_TOKEN=$T`` with T unset: the user meant a token, and got none on loopback without a word (run in
    a subprocess with a time limit: a server that starts would block)."""
    command = [sys.executable, "-c", "import sys; from defacer.cli.main import main; sys.exit(main(sys.argv[1:]))",
               "serve", "--work-dir", str(tmp_path / "work")]
    try:
        done = subprocess.run(command, env={**os.environ, "DEFACER_TOKEN": ""}, capture_output=True, text=True,
                              timeout=60, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail("defacer serve started without a token though DEFACER_TOKEN was set (empty)")
    assert done.returncode == 1, done.stderr
    assert "environment variable DEFACER_TOKEN is empty" in done.stderr


def test_token_and_token_file_together_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _token_file(tmp_path, TOKEN)
    assert main(["serve", "--token", TOKEN, "--token-file", str(path)]) == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_the_first_line_of_the_file_is_the_token(tmp_path: Path) -> None:
    from defacer.cli.serve import read_token_file

    assert read_token_file(_token_file(tmp_path, f"\ufeff{TOKEN}\r\nsecond line\n")) == TOKEN

