"""Fixtures for the batch tests: small BIDS datasets of phantoms, with label maps."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from batch_fixtures import write_bids_phantoms

#: (subject, session or None, BIDS suffix, phantom contrast) of the standard test dataset.
SCANS = [
    ("01", None, "T1w", "T1"),
    ("01", None, "T2w", "T2"),
    ("02", None, "T1w", "T1"),
    ("02", None, "FLAIR", "FLAIR"),
    ("03", "1", "T1w", "T1"),
    ("03", "1", "PDw", "PD"),
]


@pytest.fixture(scope="session")
def bids_template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[str]]:
    """A read-only BIDS dataset of six 3 mm phantoms and its labels folder (built once)."""
    base = tmp_path_factory.mktemp("bids_template")
    relpaths = write_bids_phantoms(base / "ds", base / "labels", SCANS)
    return base / "ds", base / "labels", relpaths


@pytest.fixture
def bids(tmp_path: Path, bids_template: tuple[Path, Path, list[str]]) -> tuple[Path, Path, list[str]]:
    """A private copy of the phantom BIDS dataset (tests may damage it)."""
    ds, labels, relpaths = bids_template
    shutil.copytree(ds, tmp_path / "ds")
    return tmp_path / "ds", labels, relpaths


@pytest.fixture(scope="session")
def serial_reference(tmp_path_factory: pytest.TempPathFactory,
                     bids_template: tuple[Path, Path, list[str]]) -> Path:
    """The serial batch output of the phantom dataset, for byte comparisons."""
    from defacer.batch.runner import BatchConfig, run_batch

    ds, labels, _ = bids_template
    out = tmp_path_factory.mktemp("serial") / "out"
    summary = run_batch(BatchConfig(in_root=ds, out_root=out, labels_dir=labels, quiet=True))
    assert summary.counts.failed == 0
    return out
