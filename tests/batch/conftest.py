"""Fixtures for the batch tests: small BIDS datasets of phantoms, with label maps."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from defacer.phantom import make_phantom, save_phantom

#: (subject, session or None, BIDS suffix, phantom contrast) of the standard test dataset.
SCANS = [
    ("01", None, "T1w", "T1"),
    ("01", None, "T2w", "T2"),
    ("02", None, "T1w", "T1"),
    ("02", None, "FLAIR", "FLAIR"),
    ("03", "1", "T1w", "T1"),
    ("03", "1", "PDw", "PD"),
]


def write_bids_phantoms(root: Path, labels: Path, scans: list[tuple[str, str | None, str, str]],
                        voxel_size: float = 3.0) -> list[str]:
    """Write a BIDS dataset of phantoms under ``root`` and their label maps under ``labels``.

    Returns the relative paths of the scans.
    """
    root.mkdir(parents=True)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "phantoms", "BIDSVersion": "1.9.0"}))
    (root / "participants.tsv").write_text("participant_id\n" + "".join(f"sub-{s}\n" for s in
                                                                      sorted({s[0] for s in scans})))
    (root / "README").write_text("synthetic phantoms\n")
    relpaths = []
    for index, (sub, ses, suffix, contrast) in enumerate(scans):
        folder = Path(f"sub-{sub}") / (f"ses-{ses}" if ses else "") / "anat"
        stem = f"sub-{sub}" + (f"_ses-{ses}" if ses else "") + f"_{suffix}"
        (root / folder).mkdir(parents=True, exist_ok=True)
        (labels / folder).mkdir(parents=True, exist_ok=True)
        phantom = make_phantom(voxel_size, contrast=contrast, seed=index, axcodes="RAS" if index % 2 else "LPS")
        save_phantom(phantom, root / folder / f"{stem}.nii.gz", labels / folder / f"{stem}.labels.nii.gz")
        (root / folder / f"{stem}.json").write_text(json.dumps({"RepetitionTime": 2.3, "EchoTime": 0.003}))
        relpaths.append((folder / f"{stem}.nii.gz").as_posix())
    (root / "sub-01" / "func").mkdir()
    (root / "sub-01" / "func" / "sub-01_task-rest_events.tsv").write_text("onset\tduration\n0\t1\n")
    return relpaths


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
