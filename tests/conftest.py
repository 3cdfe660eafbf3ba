"""Shared fixtures: the real-data folder (skipped when absent) and synthetic phantoms."""

from __future__ import annotations

from pathlib import Path

import pytest

#: ``../shared/data`` beside the repository: real head scans, never copied into the repo.
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


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
