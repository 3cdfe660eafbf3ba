"""``defacer serve``: run the local web interface (extra ``web``).

Binds to 127.0.0.1 on a free port unless told otherwise, and prints the address to open.
Any other ``--host`` makes the server reachable from other machines: a warning is printed
and every API request then needs an access token (generated unless ``--token`` is given),
which the printed address carries.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ipaddress
import math
import secrets
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from typing import Any

from defacer.cli.paths import path_argument
from defacer.errors import DefacerError, MissingExtraError

DEFAULT_HOST = "127.0.0.1"


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
    parser.add_argument("--token", default=None,
                        help="access token required from browsers (default: generated when --host is not loopback)")
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
    """Start the server and block until Ctrl+C; returns 0 after a clean shutdown."""
    try:
        import uvicorn

        from defacer.web.app import create_app
    except ModuleNotFoundError as err:
        raise MissingExtraError("web", err.name or "fastapi") from err
    from defacer.web.settings import LOOPBACK_HOSTS, WebSettings

    loopback = is_loopback(args.host)
    token = args.token
    if not loopback:
        token = token or secrets.token_urlsafe(24)
        print(
            f"WARNING: listening on {args.host}, so other computers can reach this server. Scans and results travel "
            "unencrypted over the network; use this only on a network you trust. Every browser needs the "
            "access token in the address below.",
            file=sys.stderr,
        )
    check_positive("--max-upload-mb", args.max_upload_mb, "megabytes", "1000")
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
        address += f"?token={token}"
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
