"""``batch --labels-dir DIR``: a label map linked out of DIR is never read (as ``evaluate``'s, HOSTILE21).

Before (HOSTILE22, main 3c01852): ``labels/sub-01/anat/sub-01_T1w.labels.nii.gz -> ../../../private/...`` (and a
subject folder of DIR linked to a folder elsewhere) was read and hashed, and its scan defaced with it, exit 0: a
hostile label folder made batch read a file outside it (and deface by another scan's map).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from defacer.batch.manifest import DONE, FAILED, Manifest
from defacer.cli.main import main
from defacer.errors import DefacerError
from defacer.phantom import make_phantom, save_phantom


def test_a_label_map_linked_out_of_the_labels_folder_is_not_read_and_fails_only_its_scan(tmp_path: Path,
                                                                                          capsys) -> None:
    ds, labels, private = tmp_path / "ds", tmp_path / "labels", tmp_path / "private"
    for sub in ("01", "02", "03"):
        (ds / f"sub-{sub}" / "anat").mkdir(parents=True)
        save_phantom(make_phantom(4.0), ds / f"sub-{sub}/anat/sub-{sub}_T1w.nii.gz", tmp_path / f"l{sub}.nii.gz")
    (ds / "dataset_description.json").write_text(json.dumps({"Name": "p", "BIDSVersion": "1.8.0"}))
    # sub-01: the map itself links out; sub-02: its map is DIR's own; sub-03: DIR's subject folder links out
    (labels / "sub-01" / "anat").mkdir(parents=True)
    (labels / "sub-02" / "anat").mkdir(parents=True)
    (private / "sub-03" / "anat").mkdir(parents=True)
    (tmp_path / "l01.nii.gz").rename(private / "secret.labels.nii.gz")
    (labels / "sub-01/anat/sub-01_T1w.labels.nii.gz").symlink_to("../../../private/secret.labels.nii.gz")
    (tmp_path / "l02.nii.gz").rename(labels / "sub-02/anat/sub-02_T1w.labels.nii.gz")
    (tmp_path / "l03.nii.gz").rename(private / "sub-03/anat/sub-03_T1w.labels.nii.gz")
    (labels / "sub-03").symlink_to(private / "sub-03")
    # a link inside DIR stays allowed
    (labels / "sub-02/anat/copy.labels.nii.gz").symlink_to("sub-02_T1w.labels.nii.gz")
    before = {p: p.read_bytes() for p in private.rglob("*") if p.is_file()}
    out = tmp_path / "out"
    code = main(["batch", str(ds), str(out), "--labels-dir", str(labels), "-q"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    records = {r.key: r for r in Manifest(out / ".defacer" / "manifest.jsonl", read_only=True)}
    assert records["sub-02/anat/sub-02_T1w.nii.gz"].status == DONE
    for sub in ("01", "03"):
        record = records[f"sub-{sub}/anat/sub-{sub}_T1w.nii.gz"]
        assert record.status == FAILED, record
        assert f"'sub-{sub}/anat/sub-{sub}_T1w.labels.nii.gz' in --labels-dir is a symbolic link" in record.error
        assert "not read" in record.error and "cp -L" in record.error
        assert "private" not in record.error and "secret" not in record.error  # never where the link leads
        assert not (out / f"sub-{sub}/anat/sub-{sub}_T1w.nii.gz").exists()
        assert "labels_sha256" not in json.dumps(record.provenance)
    # the scan defaced with its own map changed its face
    done = nib.load(out / "sub-02/anat/sub-02_T1w.nii.gz")
    assert not np.array_equal(np.asarray(done.dataobj),
                              np.asarray(nib.load(ds / "sub-02/anat/sub-02_T1w.nii.gz").dataobj))
    assert {p: p.read_bytes() for p in private.rglob("*") if p.is_file()} == before
    assert "secret" not in (out / ".defacer" / "summary.html").read_text(encoding="utf-8")
    assert not any("secret" in p.name for p in out.rglob("*"))
    assert os.path.islink(labels / "sub-01/anat/sub-01_T1w.labels.nii.gz")  # the user's link stays


def test_a_linked_out_map_does_not_hide_the_folders_own_map_of_another_ending(tmp_path: Path, capsys) -> None:
    """``sub-01_T1w.labels.nii.gz`` links out of DIR, ``sub-01_T1w.labels.nii`` is DIR's own (HOSTILE25).

    Before: the first ending was taken, found to lead out, and the scan failed ("not read ... cp -L") although the
    folder held the scan's own map; now the in-folder map is used (and the linked one still never read)."""
    import hashlib

    from defacer.evaluate import own_label_map

    ds, labels, private = tmp_path / "ds", tmp_path / "labels", tmp_path / "private"
    (ds / "sub-01" / "anat").mkdir(parents=True)
    private.mkdir()
    save_phantom(make_phantom(4.0), ds / "sub-01/anat/sub-01_T1w.nii.gz", tmp_path / "l01.nii.gz")
    (ds / "dataset_description.json").write_text(json.dumps({"Name": "p", "BIDSVersion": "1.8.0"}))
    (labels / "sub-01" / "anat").mkdir(parents=True)
    own = labels / "sub-01/anat/sub-01_T1w.labels.nii"
    nib.save(nib.load(tmp_path / "l01.nii.gz"), own)  # the real map, uncompressed, in DIR
    empty = nib.load(tmp_path / "l01.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros(empty.shape, np.uint8), empty.affine), private / "other.labels.nii.gz")
    (labels / "sub-01/anat/sub-01_T1w.labels.nii.gz").symlink_to(private / "other.labels.nii.gz")
    assert own_label_map(labels / "sub-01" / "anat", "sub-01_T1w", "--labels-dir") == own
    out = tmp_path / "out"
    code = main(["batch", str(ds), str(out), "--labels-dir", str(labels), "-q"])
    err = capsys.readouterr().err
    assert code == 0, err
    records = {r.key: r for r in Manifest(out / ".defacer" / "manifest.jsonl", read_only=True)}
    record = records["sub-01/anat/sub-01_T1w.nii.gz"]
    assert record.status == DONE, record.error
    assert hashlib.sha256(own.read_bytes()).hexdigest() in json.dumps(record.provenance)
    done = nib.load(out / "sub-01/anat/sub-01_T1w.nii.gz")
    assert not np.array_equal(np.asarray(done.dataobj), np.asarray(nib.load(ds / "sub-01/anat/sub-01_T1w.nii.gz").dataobj))
    # with only the linked-out map left, it is refused in words, as before
    own.unlink()
    with pytest.raises(DefacerError, match="symbolic link to a file outside that folder"):
        own_label_map(labels / "sub-01" / "anat", "sub-01_T1w", "--labels-dir")
