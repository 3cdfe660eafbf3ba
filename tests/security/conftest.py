"""Fixtures of the security batteries."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """A file that is no part of any scan (``tmp_path/private/secret.raw``): its bytes must never be read as
    voxels, served or written anywhere."""
    path = tmp_path / "private" / "secret.raw"
    path.parent.mkdir()
    path.write_bytes(b"SECRET-" * 500)
    return path
