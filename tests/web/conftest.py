"""Fixtures of the web-interface tests: phantom files, a real server, a browser."""

from __future__ import annotations

import gzip
import zipfile
from collections.abc import Iterator

import nrrd as pynrrd
import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the web extra is not installed (pip install 'defacer[web]')")
pytest.importorskip("httpx", reason="httpx is needed by the web API tests")

from web_helpers import (
    CHROMIUM,
    CHROMIUM_ARGS,
    PhantomFiles,
    Server,
    start_server,
    stop_server,
    write_dicom_phantom,
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "real_verification: run the real (slow) verification instead of a stand-in")
    config.addinivalue_line("markers", "browser: drives headless Chromium against a real server")


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
    nrrd_head = make_phantom(2.0, axcodes="LPS", contrast="T2")
    nrrd_phantom = nrrd_head.volume
    nrrd = folder / "phantom_T2w.nrrd"
    to_lps = np.diag([-1.0, -1.0, 1.0])
    header = {"space": "left-posterior-superior", "space directions": (to_lps @ nrrd_phantom.affine[:3, :3]).T,
              "space origin": to_lps @ nrrd_phantom.affine[:3, 3], "encoding": "gzip", "kinds": ["domain"] * 3}
    pynrrd.write(str(nrrd), nrrd_phantom.raw, header, index_order="F")
    nrrd_labels = folder / "phantom_T2w_labels.nrrd"
    save_label_map(nrrd_head.labels, nrrd_phantom, nrrd_labels)
    import nibabel as nib

    mgz = folder / "phantom_T1w.mgz"
    nib.save(nib.MGHImage(np.asarray(phantom.volume.raw), phantom.volume.affine), str(mgz))
    garbage = folder / "broken.nii.gz"
    garbage.write_bytes(b"this is not a scan at all, just some text pretending to be one\n" * 20)
    truncated = folder / "truncated.nii.gz"
    raw = gzip.decompress(scan.read_bytes())
    truncated.write_bytes(gzip.compress(raw[: len(raw) // 3]))
    dicom_files = write_dicom_phantom(folder / "dicom", phantom.volume)
    dicom_zip = folder / "phantom_dicom.zip"
    with zipfile.ZipFile(dicom_zip, "w") as handle:
        for path in dicom_files:
            handle.write(path, arcname=f"series/{path.name}")
    return PhantomFiles(scan, labels, nrrd, nrrd_labels, mgz, garbage, truncated, dicom_zip, dicom_files)


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
