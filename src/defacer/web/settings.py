"""Settings of the local web app: limits, where work areas live, who may connect."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

#: Host names a browser uses for a server bound to the loopback interface.  Any other IP
#: literal of the loopback range (127.0.0.0/8, ``[::1]``) is accepted too: see :meth:`WebSettings.accepts_host`.
LOOPBACK_HOSTS: tuple[str, ...] = ("127.0.0.1", "localhost", "::1", "[::1]")


def is_loopback_literal(host: str) -> bool:
    """Whether ``host`` (a Host header name without port) is an IP address of the loopback range.

    An IP literal cannot be re-pointed by DNS, so accepting it opens no DNS-rebinding hole.
    """
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class WebSettings:
    """Everything :func:`defacer.web.app.create_app` needs to know.

    Attributes
    ----------
    max_upload_bytes : int
        Largest total upload (all files of one session together), in bytes.  Checked
        against ``Content-Length`` before reading and again while streaming.
    max_files : int
        Most files one session may upload (a DICOM series is one file per slice).
    max_sessions : int
        Most work areas open at once; a new upload beyond that is refused (HTTP 503).
    session_ttl_s : float
        An untouched work area is deleted after this many seconds.
    work_dir : Path or None
        Folder under which the private work areas are made; ``None`` means a new private
        folder in the system temporary folder, removed on shutdown.
    token : str or None
        When set, every ``/api`` request must carry it (``X-Defacer-Token`` header or the
        cookie the page sets after being opened with ``?token=...``).  Required for a
        server reachable from other machines.
    allowed_hosts : tuple of str or None
        Accepted ``Host`` header names (port ignored), which stops DNS-rebinding pages from
        reaching a loopback server.  ``None`` accepts any host.
    workers : int
        Heavy steps (load, detect, deface, verify) run at once (CPU- and memory-bound; the
        rest wait in a queue).
    max_waiting : int
        Most load/detect/verify requests waiting for a free worker; one more is answered
        "busy, try again" (HTTP 503) instead of holding more scans in memory.
    """

    max_upload_bytes: int = 1_000_000_000
    max_files: int = 5000
    max_sessions: int = 16
    session_ttl_s: float = 3600.0
    work_dir: Path | None = None
    token: str | None = None
    allowed_hosts: tuple[str, ...] | None = LOOPBACK_HOSTS
    workers: int = 1
    max_waiting: int = 4

    def __post_init__(self) -> None:
        if self.max_upload_bytes <= 0 or self.max_files <= 0 or self.max_sessions <= 0 or self.workers <= 0:
            raise ValueError("max_upload_bytes, max_files, max_sessions and workers must be positive.")
        if self.max_waiting < 0:
            raise ValueError("max_waiting must be zero or positive.")
        if self.token is not None and len(self.token) < 16:
            raise ValueError("The access token must have at least 16 characters; use secrets.token_urlsafe().")

    def accepts_host(self, host: str) -> bool:
        """Whether a request addressed to ``host`` (Host header without port, lower case) is answered.

        With ``allowed_hosts`` set (a loopback server), the listed names and every loopback IP
        literal are accepted, so ``--host 127.0.0.2`` answers its own address.
        """
        if self.allowed_hosts is None:
            return True
        return host in self.allowed_hosts or is_loopback_literal(host)
