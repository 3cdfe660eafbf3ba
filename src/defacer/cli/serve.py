"""``defacer serve``: run the local web interface (extra ``web``).

Binds to 127.0.0.1 on a free port unless told otherwise, and prints the address to open.
Any other ``--host`` makes the server reachable from other machines: a warning is printed
and every API request then needs an access token (generated unless one is given), which the
printed address carries.  A token of one's own is best given in a file only its owner can read
(``--token-file``) or in the environment variable ``DEFACER_TOKEN``: ``--token T`` works too, but
the command line is visible to every user of the computer (``ps``, ``/proc/PID/cmdline``), so it
warns.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ipaddress
import math
import os
import secrets
import signal
import socket
import stat
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

from defacer.cli.paths import path_argument
from defacer.errors import DefacerError, MissingExtraError

DEFAULT_HOST = "127.0.0.1"
#: Environment variable that may hold the access token (not shown to other users, unlike the command line).
TOKEN_ENV = "DEFACER_TOKEN"
#: Largest token file read (a token is a line; anything bigger is not a token file).
MAX_TOKEN_FILE_BYTES = 4096


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Register ``serve`` and its options."""
    parser = subparsers.add_parser(
        "serve",
        help="open the local web interface (upload, review, deface, verify, download)",
        description=(
            "Run the local web interface and print its address. By default it listens only on this computer "
            "(127.0.0.1) on a free port; uploaded scans stay in a private temporary folder that is deleted when "
            "you finish, after an hour idle, or when the server stops (Ctrl+C)."
        ),
        epilog="Example: defacer serve --port 8765   (then open http://127.0.0.1:8765/)",
    )
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help="address to listen on (default 127.0.0.1; any other address needs a token and warns)")
    parser.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    tokens = parser.add_mutually_exclusive_group()
    tokens.add_argument("--token", default=None,
                        help="access token required from browsers (default: generated when --host is not loopback). "
                             "Visible to other users of this computer (ps): prefer --token-file or the environment "
                             f"variable {TOKEN_ENV}")
    tokens.add_argument("--token-file", type=path_argument, default=None, metavar="PATH",
                        help="read the access token from this file (its first line); the file must be readable by "
                             "you only (chmod 600)")
    parser.add_argument("--max-upload-mb", type=float, default=1000.0,
                        help="largest upload per scan in megabytes of 10^6 bytes (default 1000, i.e. 1 GB)")
    parser.add_argument("--work-dir", type=path_argument, default=None,
                        help="folder for the private work areas (default: the system temporary folder)")
    parser.add_argument("--idle-minutes", type=float, default=60.0,
                        help="delete a work area untouched for this long (default 60, at least 1)")
    parser.add_argument("--open", action="store_true", help="also open the page in the default web browser")
    parser.set_defaults(func=run)
    return parser


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this computer only (127.0.0.0/8, ::1 or localhost)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_token(token: str, origin: str) -> str:
    """``token`` if it can serve as an access token: at least 16 characters, all printable ASCII other than the space
    (a token goes into addresses and cookies).

    Raises
    ------
    DefacerError
        Naming where the token came from and what to do.
    """
    if not token:
        raise DefacerError(f"The access token from {origin} is empty. Give a token of at least 16 characters "
                           "(for example the output of: python -c 'import secrets; print(secrets.token_urlsafe(24))').")
    if any(not ("!" <= character <= "~") for character in token):
        raise DefacerError(f"The access token from {origin} holds a space, a control character or a non-ASCII "
                           "character; expected one word of at least 16 ASCII letters, digits or punctuation "
                           "(python -c 'import secrets; print(secrets.token_urlsafe(24))' makes one).")
    if len(token) < 16:
        raise DefacerError(f"The access token from {origin} has {len(token)} characters; it needs at least 16 "
                           "(python -c 'import secrets; print(secrets.token_urlsafe(24))' makes one).")
    return token


def read_token_file(path: Path) -> str:
    """The access token in ``path``: its first line, without the line end.

    The file must be a regular file of at most :data:`MAX_TOKEN_FILE_BYTES`, in UTF-8, and (on POSIX) readable and
    writable by its owner only, as ssh asks of a private key: a token others can read protects nothing.

    Raises
    ------
    DefacerError
        If the file is missing, unreadable, not a regular file, too open, too large, not UTF-8, or holds no token.
    """
    origin = f"--token-file '{path}'"
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except FileNotFoundError:
        raise DefacerError(f"The token file '{path}' does not exist. Write the token into it first, readable by "
                           "you only, e.g.: (umask 077; python -c 'import secrets; print(secrets.token_urlsafe(24))' "
                           f"> {path})") from None
    except OSError as err:
        raise DefacerError(f"Cannot read the token file '{path}': {err.strerror or err}. Give a file you can read "
                           "(and only you: chmod 600).") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise DefacerError(f"The token file '{path}' is not a regular file (a folder, pipe or device). Give a "
                           "file that holds the token.")
    with os.fdopen(fd, "rb") as handle:
        if os.name == "posix" and info.st_mode & 0o077:
            raise DefacerError(
                f"The token file '{path}' can be read or written by other users (permissions "
                f"{stat.S_IMODE(info.st_mode):04o}), so the token protects nothing. Make it yours only: "
                f"chmod 600 {path} (and make a new token if others may have read this one).")
        if info.st_size > MAX_TOKEN_FILE_BYTES:
            raise DefacerError(f"The token file '{path}' holds {info.st_size} bytes; a token file holds one line "
                               f"(at most {MAX_TOKEN_FILE_BYTES} bytes). Is it the right file?")
        data = handle.read(MAX_TOKEN_FILE_BYTES + 1)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DefacerError(f"The token file '{path}' is not UTF-8 text; expected one line holding the token.") from None
    lines = text.splitlines()
    return check_token(lines[0].strip() if lines else "", origin)


def chosen_token(option: str | None, token_file: Path | None, environ: Any) -> str | None:
    """The access token: from ``--token-file``, else ``--token`` (with a warning: the command line is visible to other
    users), else the environment variable :data:`TOKEN_ENV`; ``None`` when none is given.

    Raises
    ------
    DefacerError
        For a token file :func:`read_token_file` refuses, or a token :func:`check_token` refuses (an empty
        ``DEFACER_TOKEN`` too: most likely an unset shell variable, not a wish for no token).
    """
    if token_file is not None:
        return read_token_file(token_file)
    if option is not None:
        print("WARNING: --token on the command line is visible to every user of this computer (ps, "
              f"/proc/PID/cmdline). Put it in a file only you can read and pass --token-file PATH, or set the "
              f"environment variable {TOKEN_ENV} instead.", file=sys.stderr)
        return check_token(option, "--token")
    if TOKEN_ENV in environ:
        return check_token(environ[TOKEN_ENV], f"the environment variable {TOKEN_ENV}")
    return None


def check_positive(option: str, value: float, unit: str, example: str) -> None:
    """Refuse a limit that is not a positive, finite number, naming the option.

    Raises
    ------
    DefacerError
        For zero, negative, ``nan`` and ``inf`` (``nan`` passes every comparison, ``inf`` has no byte count).
    """
    if not (math.isfinite(value) and value > 0):
        raise DefacerError(f"{option} must be a positive number of {unit} (for example {example}), not {value}.")


def bind_socket(host: str, port: int) -> socket.socket:
    """Open a listening TCP socket on ``host``:``port`` (port 0 picks a free one).

    Raises
    ------
    DefacerError
        If the address cannot be used (port taken, unknown host), saying what to do.
    """
    if not 0 <= port <= 65535:
        raise DefacerError(f"--port must be between 0 and 65535, not {port}.")
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise DefacerError(f"Cannot listen on host '{host}': {err.strerror}. Use an IP address such as 127.0.0.1.") from err
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as err:
        sock.close()
        raise DefacerError(
            f"Cannot listen on {host}:{port}: {err.strerror}. Choose another --port, or leave it out to use a free one."
        ) from err
    sock.listen(64)
    sock.set_inheritable(True)
    return sock


def uvicorn_log_config(*, debug: bool) -> dict[str, Any]:
    """uvicorn's own logging set-up, with its tracebacks reduced to one line unless ``debug``.

    uvicorn logs a traceback for a request or the application's shutdown that it cancels, which a
    second Ctrl+C during a running step does; the server has no bug to report then.  Starlette hands
    uvicorn some tracebacks as the message text itself: those are cut to their last line too.
    """
    import logging

    from uvicorn.config import LOGGING_CONFIG
    from uvicorn.logging import DefaultFormatter

    hint = "rerun with --debug to see the traceback"
    config = copy.deepcopy(LOGGING_CONFIG)
    if not debug:
        class OneLineFormatter(DefaultFormatter):
            def format(self, record: logging.LogRecord) -> str:
                message = record.getMessage()
                if message.startswith("Traceback (most recent call last)"):
                    last = [line for line in message.splitlines() if line.strip()][-1]
                    record = logging.makeLogRecord({**record.__dict__, "msg": f"{last.strip()} ({hint})", "args": ()})
                return super().format(record)

            def formatException(self, ei: Any) -> str:
                return f"  ({ei[0].__name__ if ei[0] else 'no exception'}; {hint})"

        config["formatters"]["default"]["()"] = OneLineFormatter
    return config


@contextlib.contextmanager
def hang_up_stops_like_ctrl_c(server: Any) -> Iterator[None]:
    """While the block runs, a hang-up (SIGHUP: the terminal window was closed) stops ``server`` like Ctrl+C.

    uvicorn handles only SIGINT and SIGTERM; a hang-up otherwise killed the server (leaving the uploads
    until the next start) or, under ``defacer``'s own handler, broke its event loop with a traceback.  A
    hang-up the process was started ignoring (``nohup``) stays ignored.
    """
    hang_up = getattr(signal, "SIGHUP", None)
    if hang_up is None or signal.getsignal(hang_up) == signal.SIG_IGN \
            or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(hang_up, lambda number, frame: server.handle_exit(signal.SIGINT, frame))
    try:
        yield
    finally:
        signal.signal(hang_up, previous)


def run(args: argparse.Namespace) -> int:
    """Start the server and block until Ctrl+C; returns 0 after a clean shutdown.

    Raises
    ------
    DefacerError
        For options that cannot be used (a token, a limit, the work folder, the address), before the server starts.
    DetectorError
        ``DEFACER_DETECTOR_BACKEND`` names no backend or one not installed (:func:`defacer.detect.backend.chosen`):
        the detector finds the features of every scan uploaded without a label map, so the server does not start.
    """
    try:
        import uvicorn

        from defacer.web.app import create_app
    except ModuleNotFoundError as err:
        raise MissingExtraError("web", err.name or "fastapi") from err
    from defacer.detect import backend
    from defacer.web.settings import LOOPBACK_HOSTS, WebSettings

    # DEFACER_DETECTOR_BACKEND naming no backend, or one not installed here: said once, before anything is made or
    # bound (the server started and each scan's "Find features" failed with these words), as batch and deface say it
    backend.chosen()
    loopback = is_loopback(args.host)
    token = chosen_token(args.token, args.token_file, os.environ)
    if not loopback:
        token = token or secrets.token_urlsafe(24)
        print(
            f"WARNING: listening on {args.host}, so other computers can reach this server. Scans and results travel "
            "unencrypted over the network; use this only on a network you trust. Every browser needs the "
            "access token in the address below.",
            file=sys.stderr,
        )
    check_positive("--max-upload-mb", args.max_upload_mb, "megabytes", "1000")
    if args.work_dir is not None and os.path.lexists(args.work_dir) and not os.path.isdir(args.work_dir):
        raise DefacerError(f"Cannot make the private work folder in '{args.work_dir}': it is a file, not a folder. "
                           "Give a folder with --work-dir (it is made if missing), or leave --work-dir out to use the "
                           "system temporary folder.")
    check_positive("--idle-minutes", args.idle_minutes, "minutes", "60")
    try:
        settings = WebSettings(
            max_upload_bytes=int(args.max_upload_mb * 1_000_000),
            session_ttl_s=max(60.0, args.idle_minutes * 60.0),
            work_dir=args.work_dir,
            token=token,
            allowed_hosts=LOOPBACK_HOSTS if loopback else None,
        )
    except ValueError as err:
        raise DefacerError(str(err)) from err
    sock = bind_socket(args.host, args.port)
    port = sock.getsockname()[1]
    shown_host = f"[{args.host.strip('[]')}]" if ":" in args.host else args.host
    address = f"http://{shown_host}:{port}/"
    if token:
        address += f"?token={quote(token, safe='')}"
    try:
        app = create_app(settings)
    except OSError as err:  # the work folder: a file, unwritable, on a missing drive
        sock.close()
        raise DefacerError(
            f"Cannot make the private work folder in {args.work_dir or 'the system temporary folder'}: "
            f"{err.strerror or err}. Choose a folder you can write to with --work-dir."
        ) from err
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on", server_header=False,
                            log_config=uvicorn_log_config(debug=getattr(args, "debug", False)))
    server = uvicorn.Server(config)
    print(f"defacer is serving on {address}", flush=True)
    print("Open that address in a browser on this computer. Press Ctrl+C to stop; uploaded files are then deleted.",
          flush=True)
    if args.open:
        import webbrowser

        threading.Timer(1.0, webbrowser.open, args=(address,)).start()
    try:
        with hang_up_stops_like_ctrl_c(server):
            server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass  # uvicorn has already shut down gracefully (work areas removed) before re-raising Ctrl+C
    finally:
        sock.close()
    # Again here: a second Ctrl+C while a request was running makes uvicorn skip the app's own shutdown.
    store = app.state.store
    if not store.close_all():
        print(f"defacer serve stopped, but its work folder {store.root} could not be deleted completely. Delete it, "
              "or start defacer serve again with the same --work-dir: it removes the folder.", file=sys.stderr,
              flush=True)
        return 1
    print("defacer serve stopped; all uploaded files and results were deleted.", flush=True)
    return 0
