"""The ASGI application of the local web interface: routes, safety checks and job handling.

Build it with :func:`create_app`; ``defacer serve`` runs it on uvicorn.  The HTTP API
(all JSON unless noted; errors are ``{"error": message}`` with a 4xx/5xx status):

====================================================  ==============================================
``GET  /api/config``                                   limits, features, what is installed
``POST /api/sessions``                                 open a private work area -> ``{"session": id}``
``PUT  /api/sessions/{id}/files/{scan|labels}``        raw file body; header ``X-File-Name`` (a hint)
``POST /api/sessions/{id}/load``                       read the upload -> scan description
``POST /api/sessions/{id}/detect``                     find eyes/nose/ears -> counts (overlay in view)
``POST /api/sessions/{id}/deface``                     ``{"features": [...], "seed": 0,
                                                       "retry_stronger": false}`` -> job
``GET  /api/sessions/{id}/job``                        job state, stage, progress, result
``POST /api/sessions/{id}/verify``                     rerun verification -> verdict
``GET  /api/sessions/{id}/view/{name}``                NIfTI copies for the viewer
``GET  /api/sessions/{id}/download/{kind}``            scan | mask | labels | report | provenance
``DELETE /api/sessions/{id}`` (or ``POST .../close``)  remove the work area now
====================================================  ==============================================
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hmac
import json
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from defacer._version import __version__
from defacer.detect import Detector
from defacer.errors import DefacerError, InputImageError
from defacer.labels import FEATURES
from defacer.web import workflow
from defacer.web.sessions import Job, Session, SessionBusy, SessionNotFound, SessionStore, TooManySessions
from defacer.web.settings import WebSettings
from defacer.web.uploads import UnsupportedUpload, UploadTooLarge

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
TOKEN_COOKIE = "defacer_token"
TOKEN_HEADER = "x-defacer-token"

#: Files the viewer may fetch, by URL name -> server file below ``view/``.
VIEW_FILES = ("scan.nii.gz", "labels.nii.gz", "defaced.nii.gz", "mask.nii.gz")
DOWNLOAD_KINDS = ("scan", "mask", "labels", "report", "provenance")

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; connect-src 'self' data: blob:; worker-src 'self' blob:; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)

#: The verification report is static HTML with embedded pictures: nothing else may load or run.
REPORT_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; frame-ancestors 'none'"

class ServerBusy(DefacerError, RuntimeError):
    """Every worker is busy and the waiting line is full."""


class HeavyStepGate:
    """A small bounded queue for the steps that hold a scan in memory and use the CPU.

    At most ``running`` steps run at once (load, detect, verify requests and defacing jobs
    together); at most ``waiting`` requests wait for a turn, and one more is refused with
    :class:`ServerBusy` at once instead of queueing without bound.  Defacing jobs, already
    queued in their own executor, always wait for a turn.
    """

    def __init__(self, running: int, waiting: int) -> None:
        self._slots = threading.BoundedSemaphore(running)
        self._lock = threading.Lock()
        self._admitted = 0
        self._limit = running + waiting
        self.running = 0
        self.peak = 0

    @contextlib.contextmanager
    def turn(self, *, refuse_when_full: bool = True) -> Iterator[None]:
        """Hold a worker slot for the duration of the block (waiting for one if needed)."""
        with self._lock:
            if refuse_when_full and self._admitted >= self._limit:
                raise ServerBusy("The server is busy with other scans and its waiting line is full. Try again in a "
                                 "minute.")
            self._admitted += 1
        try:
            with self._slots:
                with self._lock:
                    self.running += 1
                    self.peak = max(self.peak, self.running)
                try:
                    yield
                finally:
                    with self._lock:
                        self.running -= 1
        finally:
            with self._lock:
                self._admitted -= 1


_STATUS: list[tuple[type[BaseException], int]] = [
    (SessionNotFound, 404),
    (ServerBusy, 503),
    (UploadTooLarge, 413),
    (UnsupportedUpload, 415),
    (SessionBusy, 409),
    (TooManySessions, 503),
]


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers={"Cache-Control": "no-store"})


def _status_of(err: BaseException) -> int:
    for kind, status in _STATUS:
        if isinstance(err, kind):
            return status
    return 422


def _host_name(host_header: str) -> str:
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[: host.find("]") + 1] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class _Detectors:
    """Builds the default detector once, on first use (loading model weights takes a while)."""

    def __init__(self, factory: Callable[[], Detector]) -> None:
        self._factory = factory
        self._detector: Detector | None = None
        self._lock = threading.Lock()

    def __call__(self) -> Detector:
        with self._lock:
            if self._detector is None:
                self._detector = self._factory()
            return self._detector


def _default_detector() -> Detector:
    from defacer.pipeline import load_detector

    return load_detector()


def create_app(settings: WebSettings | None = None, *, detector_factory: Callable[[], Detector] | None = None) -> FastAPI:
    """Build the web application.

    Parameters
    ----------
    settings : WebSettings, optional
        Limits, work folder, token and accepted host names (defaults: loopback only, 1 GB).
    detector_factory : callable, optional
        Makes the detector used when the user uploads no label map; default
        :func:`defacer.pipeline.load_detector` (the shipped model).

    Returns
    -------
    FastAPI
        Its work areas are removed when the application shuts down (ASGI lifespan).
    """
    settings = settings or WebSettings()
    store = SessionStore(settings.work_dir, max_sessions=settings.max_sessions, ttl_s=settings.session_ttl_s)
    executor = ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="defacer-job")
    detectors = _Detectors(detector_factory or _default_detector)
    gate = HeavyStepGate(settings.workers, settings.max_waiting)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async def sweeper() -> None:
            while True:
                await asyncio.sleep(min(60.0, max(1.0, settings.session_ttl_s / 4)))
                store.sweep()

        task = asyncio.create_task(sweeper())
        try:
            yield
        finally:
            task.cancel()
            executor.shutdown(wait=False, cancel_futures=True)  # a running job stops at its next stage
            if await asyncio.to_thread(store.close_all):
                log.info("all work areas removed")

    app = FastAPI(title="defacer", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.settings = settings
    app.state.store = store
    app.state.gate = gate

    @app.middleware("http")
    async def guard(request: Request, call_next: Callable[[Request], Any]) -> Response:
        host = _host_name(request.headers.get("host", ""))
        if not settings.accepts_host(host):
            return _error(403, "This server only answers requests addressed to its own loopback address.")
        origin = request.headers.get("origin")
        # A sandboxed frame or a file:// page sends "Origin: null": it is not this page, so it is refused too.
        if (request.method not in ("GET", "HEAD", "OPTIONS") and origin is not None
                and (origin.strip().lower() == "null"
                     or urlsplit(origin).netloc.lower() != request.headers.get("host", "").lower())):
            return _error(403, "Requests from other web sites (or from pages without an origin) are refused.")
        if settings.token and request.url.path.startswith("/api/"):
            given = request.headers.get(TOKEN_HEADER) or request.cookies.get(TOKEN_COOKIE) or ""
            if not hmac.compare_digest(given.encode(), settings.token.encode()):
                return _error(401, "This server needs its access token: open the address that 'defacer serve' "
                                   "printed (it ends with ?token=...).")
        try:
            response: Response = await call_next(request)
        except ClientDisconnect:  # the browser went away mid-upload (tab closed, upload cancelled): not a fault
            route = request.scope.get("route")
            log.info("the client left before its %s %s was received; its partial upload was removed", request.method,
                     getattr(route, "path", "?"))
            response = _error(400, "The request ended before its body was received. Upload the file again.")
        except Exception as err:  # noqa: BLE001 - one request's failure never takes the server down
            full = work_folder_full(err)
            route = request.scope.get("route")
            log.error("%s while answering %s %s", "no space left in the work folder" if full else
                      f"unexpected {type(err).__name__}", request.method,
                      getattr(route, "path", "?"))
            response = _error(507, full) if full else _error(
                500, f"Unexpected error ({type(err).__name__}). The server is still running; start over, and report "
                     "this if it happens again.")
        response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("X-Frame-Options", "DENY")
        if request.url.path.startswith("/api/"):
            response.headers["Cache-Control"] = "no-store"
        return response

    @app.exception_handler(DefacerError)
    async def on_defacer_error(request: Request, err: DefacerError) -> JSONResponse:
        session: Session | None = getattr(request.state, "session", None)
        message = session.hide_paths(str(err)) if session else str(err)
        return _error(_status_of(err), message)

    @app.exception_handler(ValueError)
    async def on_value_error(request: Request, err: ValueError) -> JSONResponse:
        session: Session | None = getattr(request.state, "session", None)
        message = session.hide_paths(str(err)) if session else str(err)
        return _error(422, message)

    def lookup(request: Request, session_id: str) -> Session:
        session = store.get(session_id)
        request.state.session = session
        return session

    @app.get("/", response_class=HTMLResponse)
    async def index(request: Request, token: str | None = None) -> Response:
        if settings.token:
            if token is not None:
                if not hmac.compare_digest(token.encode(), settings.token.encode()):
                    return HTMLResponse("<p>Wrong access token. Open the address that 'defacer serve' printed.</p>",
                                        status_code=401)
                response = RedirectResponse("/", status_code=303)
                response.set_cookie(TOKEN_COOKIE, settings.token, httponly=True, samesite="strict")
                return response
            cookie = request.cookies.get(TOKEN_COOKIE) or ""
            if not hmac.compare_digest(cookie.encode(), settings.token.encode()):
                return HTMLResponse("<p>This server needs its access token: open the address that "
                                    "'defacer serve' printed (it ends with ?token=...).</p>", status_code=401)
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html",
                            headers={"Cache-Control": "no-store"})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/api/config")
    async def config() -> dict[str, Any]:
        return {
            "version": __version__,
            "features": list(FEATURES),
            "max_upload_bytes": settings.max_upload_bytes,
            "max_files": settings.max_files,
            "verify": _verify_status(),
        }

    @app.post("/api/sessions", status_code=201)
    async def open_session() -> dict[str, str]:
        session = store.create()
        return {"session": session.id}

    @app.put("/api/sessions/{session_id}/files/{role}", status_code=201)
    async def upload(request: Request, session_id: str, role: str) -> dict[str, Any]:
        session = lookup(request, session_id)
        if role not in ("scan", "labels"):
            raise SessionNotFound("Unknown upload role: use 'scan' or 'labels'.")
        length = request.headers.get("content-length")
        announced = int(length) if length and length.isdigit() else None
        workflow.check_announced_size(session, announced, settings)
        display = request.headers.get("x-file-name", "")
        with contextlib.suppress(UnicodeError):
            display = bytes(display, "latin-1").decode("utf-8")
        stored = await workflow.receive_upload(session, role, unquote(display), request.stream(), settings)
        return {"kind": stored.kind, "size": stored.size, "name": stored.display_name,
                "uploaded_bytes": session.uploaded_bytes}

    @app.post("/api/sessions/{session_id}/load")
    async def load(request: Request, session_id: str) -> dict[str, Any]:
        session = lookup(request, session_id)
        info = await run_in_threadpool(_step, gate, workflow.load_scan, session, settings)
        return {**info, "view": f"/api/sessions/{session.id}/view/scan.nii.gz"}

    @app.post("/api/sessions/{session_id}/detect")
    async def detect(request: Request, session_id: str) -> dict[str, Any]:
        session = lookup(request, session_id)
        detection = await run_in_threadpool(_step, gate, workflow.detect, session, detectors)
        return {**detection, "overlay": f"/api/sessions/{session.id}/view/labels.nii.gz"}

    @app.post("/api/sessions/{session_id}/deface", status_code=202)
    async def deface(request: Request, session_id: str) -> dict[str, Any]:
        session = lookup(request, session_id)
        body = await _small_json(request)
        unknown_keys = sorted(set(body) - set(DEFACE_KEYS))
        if unknown_keys:
            raise ValueError(f"Unknown deface option(s) {', '.join(repr(k[:40]) for k in unknown_keys[:5])}; the "
                             f"options are {', '.join(DEFACE_KEYS)}.")
        features = body.get("features", list(FEATURES))
        if not isinstance(features, list) or not all(isinstance(f, str) for f in features):
            raise ValueError(f"'features' must be a list of names from {list(FEATURES)}.")
        unknown = [f for f in features if f not in FEATURES]
        if unknown or not features:
            raise ValueError(f"Choose at least one feature to distort among {', '.join(FEATURES)}"
                             + (f"; unknown: {unknown}" if unknown else "") + ".")
        seed = body.get("seed", 0)
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**32:
            raise ValueError("'seed' must be an integer between 0 and 4294967295.")
        retry_stronger = body.get("retry_stronger", False)
        if not isinstance(retry_stronger, bool):  # a ValueError, as for the others: answered 422 in words
            raise ValueError(  # noqa: TRY004
                "'retry_stronger' must be true or false (JSON booleans, not strings or numbers): true defaces "
                "again while a face is still found: with a larger nose and eye removal, then the whole face.")
        if "labels_ras" not in session.state:
            raise InputImageError("Detect the features before defacing (load, then detect).")
        with session.job_lock:  # never the step lock: this runs on the event loop and must not wait
            if session.job.state in ("queued", "running"):
                raise SessionBusy("This scan is already being defaced; wait for it to finish.")
            session.job = new_job = Job(state="queued", stage="Waiting for a free worker")
        chosen = tuple(f for f in FEATURES if f in features)
        executor.submit(_run_job, gate, session, new_job, chosen, seed, retry_stronger)
        return new_job.as_dict()

    @app.get("/api/sessions/{session_id}/job")
    async def job(request: Request, session_id: str) -> dict[str, Any]:
        session = lookup(request, session_id)
        return session.job.as_dict()

    @app.post("/api/sessions/{session_id}/verify")
    async def verify(request: Request, session_id: str) -> dict[str, Any]:
        session = lookup(request, session_id)
        if session.job.state in ("queued", "running"):
            raise SessionBusy("Wait until defacing has finished.")
        return await run_in_threadpool(_step, gate, workflow.verify_session, session)

    @app.get("/api/sessions/{session_id}/view/{name}")
    async def view(request: Request, session_id: str, name: str) -> Response:
        session = lookup(request, session_id)
        if name not in VIEW_FILES:
            raise SessionNotFound("No such view file.")
        path = session.path("view", name)
        if not path.is_file():
            raise SessionNotFound("This view is not ready yet (load, detect or deface first).")
        return FileResponse(path, media_type="application/octet-stream")

    @app.get("/api/sessions/{session_id}/download/{kind}")
    async def download(request: Request, session_id: str, kind: str) -> Response:
        session = lookup(request, session_id)
        if kind not in DOWNLOAD_KINDS:
            raise SessionNotFound(f"Unknown download '{kind[:40]}': choose one of {', '.join(DOWNLOAD_KINDS)}.")
        downloads = session.state.get("downloads")
        if not downloads or kind not in downloads:
            raise SessionNotFound("Nothing to download yet: deface the scan first.")
        path, filename = downloads[kind]
        media = "application/json" if filename.endswith(".json") else "application/octet-stream"
        return FileResponse(path, media_type=media, filename=filename)

    @app.get("/api/sessions/{session_id}/report")
    async def report(request: Request, session_id: str) -> Response:
        session = lookup(request, session_id)
        downloads = session.state.get("downloads") or {}
        if "report" not in downloads or downloads["report"][0].suffix != ".html":
            raise SessionNotFound("No verification report yet: deface the scan with the verify extra installed.")
        return FileResponse(downloads["report"][0], media_type="text/html",
                            headers={"Content-Security-Policy": REPORT_CSP, "Cache-Control": "no-store"})

    @app.delete("/api/sessions/{session_id}")
    async def close(session_id: str) -> dict[str, bool]:
        return {"removed": await run_in_threadpool(store.close, session_id)}

    @app.post("/api/sessions/{session_id}/close")
    async def close_beacon(session_id: str) -> dict[str, bool]:
        return {"removed": await run_in_threadpool(store.close, session_id)}

    return app


#: The keys of the deface request's JSON body (any other is refused, so a misspelt option is never ignored).
DEFACE_KEYS = ("features", "seed", "retry_stronger")

#: Largest JSON body the API reads (the deface options are a few dozen bytes).
MAX_JSON_BYTES = 64 * 1024


async def _small_json(request: Request) -> dict[str, Any]:
    """The request's JSON object, read up to :data:`MAX_JSON_BYTES`; ``{}`` when the body is empty or no object.

    Raises
    ------
    UploadTooLarge
        For a longer body (announced or streamed), before more of it is held in memory.
    """
    too_long = UploadTooLarge(f"The request body is larger than {MAX_JSON_BYTES:,} bytes; options are a small JSON "
                              "object such as {\"features\": [\"eyes\", \"nose\"], \"seed\": 0}.")
    length = request.headers.get("content-length", "")
    if length.isdecimal() and len(length) < 20 and int(length) > MAX_JSON_BYTES:
        raise too_long
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > MAX_JSON_BYTES:
            raise too_long
    try:
        body = json.loads(data) if data else {}
    except (ValueError, RecursionError):
        body = {}
    return body if isinstance(body, dict) else {}


def _step(gate: HeavyStepGate, function: Callable[..., Any], session: Session, *args: Any) -> Any:
    """Run one workflow step on a worker thread when the gate gives it a turn.

    A session closed meanwhile is removed when the step ends.
    """
    try:
        with gate.turn():
            if session.closed:
                raise SessionNotFound()
            return function(session, *args)
    finally:
        SessionStore.release_if_closed(session)


def _run_job(gate: HeavyStepGate, session: Session, job: Job, features: tuple[str, ...], seed: int,
             retry_stronger: bool = False) -> None:
    """Body of a defacing job on a worker thread (waits for a turn); records the outcome in ``job``, never raises."""
    with gate.turn(refuse_when_full=False):
        _run_job_now(session, job, features, seed, retry_stronger)


def _run_job_now(session: Session, job: Job, features: tuple[str, ...], seed: int,
                 retry_stronger: bool = False) -> None:
    if session.closed:
        return

    def progress(stage: str, fraction: float) -> None:
        if session.closed:  # finished, expired or the server is stopping: nothing more is written
            raise SessionNotFound("This scan's work area was closed while it was being defaced.")
        job.stage, job.progress = stage, fraction

    job.state, job.stage, job.progress = "running", "Starting", 0.02
    try:
        result = workflow.deface_session(session, features, seed, progress, retry_stronger=retry_stronger)
    except DefacerError as err:
        job.state, job.error = "failed", session.hide_paths(str(err))
    except MemoryError:
        job.state, job.error = "failed", "The server ran out of memory on this scan. Close other programs and retry."
    except Exception as err:  # noqa: BLE001 - a job's failure must not take the server down
        full = work_folder_full(err)
        log.error("defacing job of work area %s… failed: %s", session.id[:6],
                  "no space left in the work folder" if full else type(err).__name__)
        job.state = "failed"
        job.error = full or (f"Unexpected error while defacing ({type(err).__name__}). This is a bug in defacer, "
                             "not in your scan; please report it.")
    else:
        job.result, job.state, job.stage, job.progress = result, "done", "Done", 1.0
    finally:
        SessionStore.release_if_closed(session)
    log.info("defacing job of work area %s… %s", session.id[:6], job.state)


def work_folder_full(err: BaseException) -> str | None:
    """The words for a write refused because the server's disk (or the user's quota) is full; else ``None``.

    Such a failure is the machine's, not a bug in defacer or in the scan, and the user can act on it.
    """
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return ("The server's work folder is full (no space left on its disk, or the disk quota is used up). Finish "
                "the other scans on this server, free some space, or restart defacer serve with --work-dir on a "
                "larger disk; then upload the scan again.")
    return None


def _verify_status() -> dict[str, Any]:
    try:
        from defacer.verify import verify_pair  # noqa: F401
    except ImportError as err:
        return {"available": False, "reason": str(err) if "defacer[" in str(err) else
                "The verification module is not installed (pip install 'defacer[verify]')."}
    return {"available": True, "reason": None}
