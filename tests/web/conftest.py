"""Fixtures of the web-interface tests: phantom files, an in-process client, a real server, a browser."""

from __future__ import annotations

import gzip
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the web extra is not installed (pip install 'defacer[web]')")
pytest.importorskip("httpx", reason="httpx is needed by the web API tests")

REPO = Path(__file__).resolve().parents[2]
#: Screenshots of the browser tests (synthetic phantom only; build/ is git-ignored).
ARTEFACTS = REPO / "build" / "web-artefacts"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]


@dataclass(frozen=True)
class PhantomFiles:
    """Files written from the synthetic 2 mm head phantom."""

    scan: Path
    labels: Path
    nrrd: Path
    garbage: Path
    truncated: Path


@pytest.fixture(scope="session")
def phantom_files(tmp_path_factory: pytest.TempPathFactory) -> PhantomFiles:
    from defacer.io import save_label_map, save_volume
    from defacer.phantom import make_phantom

    folder = tmp_path_factory.mktemp("web-phantom")
    phantom = make_phantom(2.0)
    scan = folder / "phantom_T1w.nii.gz"
    save_volume(phantom.volume, scan)
    labels = folder / "phantom_labels.nii.gz"
    save_label_map(phantom.labels, phantom.volume, labels)
    nrrd_phantom = make_phantom(2.0, axcodes="LPS", contrast="T2")
    from defacer.volume import Volume

    nrrd = folder / "phantom_T2w.nrrd"
    save_volume(Volume(nrrd_phantom.volume.raw, nrrd_phantom.volume.affine, format="nrrd",
                       header={"space": "left-posterior-superior"}), nrrd)
    garbage = folder / "broken.nii.gz"
    garbage.write_bytes(b"this is not a scan at all, just some text pretending to be one\n" * 20)
    truncated = folder / "truncated.nii.gz"
    raw = gzip.decompress(scan.read_bytes())
    truncated.write_bytes(gzip.compress(raw[: len(raw) // 3]))
    return PhantomFiles(scan, labels, nrrd, garbage, truncated)


@dataclass
class Server:
    """A ``defacer serve`` process on 127.0.0.1."""

    url: str
    work_dir: Path
    process: subprocess.Popen[str]


def start_server(work_dir: Path, *extra: str) -> Server:
    """Run ``defacer serve`` in a subprocess and wait for the address it prints."""
    command = [sys.executable, "-c", "import sys; from defacer.cli.main import main; sys.exit(main(sys.argv[1:]))",
               "serve", "--work-dir", str(work_dir), *extra]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert process.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line and process.poll() is not None:
            raise RuntimeError(f"defacer serve exited early: {process.stderr.read() if process.stderr else ''}")
        match = re.search(r"serving on (http://\S+)", line)
        if match:
            return Server(match.group(1), work_dir, process)
    process.kill()
    raise RuntimeError("defacer serve did not print its address within 60 s")


def stop_server(server: Server) -> str:
    """Stop with Ctrl+C (SIGINT) as a user would; return stderr."""
    import signal

    server.process.send_signal(signal.SIGINT)
    try:
        _, err = server.process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        server.process.kill()
        _, err = server.process.communicate()
    return err or ""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = start_server(tmp_path_factory.mktemp("web-work"))
    yield running
    stop_server(running)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    playwright_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")
    if not CHROMIUM.exists():
        pytest.skip("Chromium is not installed at /usr/bin/chromium (apt-get install chromium chromium-driver)")
    with playwright_api.sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield instance
        instance.close()
