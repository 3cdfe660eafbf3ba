"""Scans in which a requested feature is not found: their own status, nothing written, shown in the summary.

Issue 11, defect 7: such scans were written unchanged and recorded as done.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from defacer.batch.manifest import DONE, INCOMPLETE, NOTHING_FOUND, Manifest
from defacer.batch.runner import BatchConfig, run_batch
from defacer.batch.summary import print_table
from defacer.cli.main import main
from defacer.options import Deidentification
from defacer.phantom import make_phantom, save_phantom


@pytest.fixture
def mixed(tmp_path: Path) -> tuple[Path, Path]:
    """A folder of three phantoms and a labels folder: all features, no feature, eyes only."""
    ds, labels = tmp_path / "in", tmp_path / "labels"
    ds.mkdir()
    labels.mkdir()
    for name in ("full", "none", "eyes"):
        save_phantom(make_phantom(3.0, seed=1), ds / f"{name}.nii.gz", labels / f"{name}.labels.nii.gz")
    for name, keep in (("none", ()), ("eyes", (1,))):
        image = nib.load(str(labels / f"{name}.labels.nii.gz"))
        data = np.asarray(image.dataobj)
        nib.save(nib.Nifti1Image(np.where(np.isin(data, keep), data, 0).astype(np.uint8), image.affine),
                 str(labels / f"{name}.labels.nii.gz"))
    return ds, labels


def test_scans_with_features_not_found_get_their_own_status_and_no_output(tmp_path, mixed):
    ds, labels = mixed
    out = tmp_path / "out"
    summary = run_batch(BatchConfig(in_root=ds, out_root=out, labels_dir=labels, quiet=True))
    status = {r.key: r.status for r in summary.records}
    assert status == {"full.nii.gz": DONE, "none.nii.gz": NOTHING_FOUND, "eyes.nii.gz": INCOMPLETE}
    assert summary.exit_code == 4
    assert (summary.counts.done, summary.counts.nothing_found, summary.counts.incomplete, summary.counts.failed) == (
        1, 1, 1, 0)
    assert (out / "full.nii.gz").is_file()
    for name in ("none", "eyes"):
        assert not (out / f"{name}.nii.gz").exists() and not (out / f"{name}.defacer.json").exists()
    records = {r.key: r for r in Manifest(out / ".defacer" / "manifest.jsonl")}
    assert records["eyes.nii.gz"].provenance["features"]["eyes"]["status"] == "distorted"
    assert records["eyes.nii.gz"].provenance["features"]["nose"]["status"] == "not found"
    page = (out / ".defacer" / "summary.html").read_text()
    assert '<tr class="nothing-found"><td>none.nii.gz' in page and '<tr class="incomplete"><td>eyes.nii.gz' in page
    assert "1 nothing found, 1 incomplete" in page
    text = io.StringIO()
    print_table(summary.records, wall_s=summary.wall_s, stream=text)
    assert "none.nii.gz" in text.getvalue() and "nothing-found" in text.getvalue()
    assert "eyes.nii.gz" in text.getvalue() and "nose: not found" in text.getvalue()
    # A rerun tries them again (they are not done); --allow-missing writes them and exits 0.
    again = run_batch(BatchConfig(in_root=ds, out_root=out, labels_dir=labels, quiet=True, allow_missing=True))
    assert {r.key: r.status for r in again.records} == {"full.nii.gz": "skipped", "none.nii.gz": DONE,
                                                         "eyes.nii.gz": DONE}
    assert again.exit_code == 0 and (out / "none.nii.gz").is_file()


def test_batch_command_exits_4_when_a_feature_was_not_found(tmp_path, mixed, capsys):
    ds, labels = mixed
    assert main(["batch", str(ds), str(tmp_path / "out"), "--labels-dir", str(labels)]) == 4
    assert "nothing-found" in capsys.readouterr().err


def test_the_already_defaced_negative_case_is_not_recorded_as_defaced(shared_data, tmp_path):
    """The studyforrest head was defaced by pydeface before: no nose to find, so no copy passes as defaced."""
    from defacer.detect.model import default_weights_path

    archive_path = shared_data / "negative" / "studyforrest-defaced_T1w_dicom.tgz"
    if not archive_path.is_file():
        pytest.skip(f"{archive_path} not available")
    if not default_weights_path().is_file():
        pytest.skip("shipped weights not built")
    ds = tmp_path / "in"
    ds.mkdir()
    with tarfile.open(archive_path) as archive:
        archive.extractall(ds, filter="data")
    out = tmp_path / "out"
    summary = run_batch(BatchConfig(in_root=ds, out_root=out, deidentify=Deidentification(key=b"negative-case-test-key-0123456789"),
                                    quiet=True))
    assert len(summary.records) == 1
    record = summary.records[0]
    assert record.status in (NOTHING_FOUND, INCOMPLETE), (record.status, record.error)
    assert record.provenance["features"]["nose"]["status"] != "distorted"
    assert summary.exit_code == 4
    written = [p for p in out.rglob("*") if p.is_file() and ".defacer" not in p.relative_to(out).parts]
    assert not [p for p in written if p.suffix == ".dcm" or p.name.endswith(".defacer.json")], written
