"""Shared fixtures: the real-data folder (skipped when absent) and synthetic phantoms."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import real_data

# The suite's detector runs its network with onnxruntime unless the caller says otherwise: its figures, stored
# hashes and thread rules were written for it, and an install with the openvino extra (CI's ".[all,test]") would
# otherwise run everything on OpenVINO (defacer.detect.backend).  Set here, in the environment, so that the commands
# the tests start inherit it; the backend's own tests (tests/detect/test_backend.py) set it themselves.  Run the suite
# on OpenVINO with DEFACER_DETECTOR_BACKEND=openvino.
os.environ.setdefault("DEFACER_DETECTOR_BACKEND", "onnxruntime")

#: ``../shared/data`` beside the repository (or a worktree's main checkout): real head scans, never copied into the
#: repo (:mod:`real_data`).
SHARED_DATA = real_data.SHARED_DATA


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of the shared real-data folder; skips the test when it is not there."""
    if not (SHARED_DATA / "heads").is_dir():
        pytest.skip(f"real head scans not available at {SHARED_DATA} (they exist in CI and on developer machines)")
    return SHARED_DATA


@pytest.fixture
def faces_after(monkeypatch: pytest.MonkeyPatch):  # -> face_fakes.FakeDetectors
    """Faked face detectors whose verdict after defacing follows the test's ``plan`` (:mod:`face_fakes`)."""
    pytest.importorskip("PIL", reason="the verify extra is not installed (pip install 'defacer[verify]')")
    from face_fakes import install

    return install(monkeypatch)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """Mount small tmpfs file systems (a full disk, for real): ``small_disk("1m")`` gives a new folder on one of
    that size (``mount -o size=...``: bytes, or k / m); needs root, the test is skipped otherwise.  Unmounted after
    the test."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        folder = tmp_path / f"disk{len(mounted)}"
        folder.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(folder)],
                              capture_output=True, check=False)
        if done.returncode:
            pytest.skip(f"cannot mount a small file system here (needs root): {done.stderr.decode().strip()}")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", str(folder)], check=False)
