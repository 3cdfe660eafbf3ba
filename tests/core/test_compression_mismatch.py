"""A file whose ending and compression disagree (an uncompressed NIfTI named ``.nii.gz``, a gzipped one named ``.nii``;
the same for ``.mgz``/``.mgh``) is refused with what to do: rename it.  Before: "not a gzip file ... The file may be
truncated, corrupt or of another format; ... re-export it", or "has a NIfTI header that cannot be used: Cannot work
out file type", which send the user to re-export a sound file."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from defacer.cli.main import main
from defacer.phantom import make_phantom


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("mismatch")
    volume = make_phantom(6.0).volume
    nifti = nib.Nifti1Image(volume.raw, volume.affine)
    nib.save(nifti, base / "plain.nii")
    (base / "raw_named.nii.gz").write_bytes((base / "plain.nii").read_bytes())
    (base / "gz_named.nii").write_bytes(gzip.compress((base / "plain.nii").read_bytes()))
    mgh = nib.MGHImage(volume.raw.astype(np.float32), volume.affine)
    nib.save(mgh, base / "plain.mgh")
    (base / "raw_named.mgz").write_bytes((base / "plain.mgh").read_bytes())
    (base / "gz_named.mgh").write_bytes(gzip.compress((base / "plain.mgh").read_bytes()))
    return base


@pytest.mark.parametrize(("name", "expected"), [
    ("raw_named.nii.gz", "is named '.nii.gz' but is not gzip-compressed"),
    ("gz_named.nii", "is gzip-compressed but named '.nii'. Rename it to 'gz_named.nii.gz'"),
    ("raw_named.mgz", "is named '.mgz' but is not gzip-compressed"),
    ("gz_named.mgh", "is gzip-compressed but named '.mgh'. Rename it to 'gz_named.mgz'"),
])
def test_a_file_whose_ending_and_compression_disagree_is_told_to_rename(
        files: Path, tmp_path: Path, name: str, expected: str, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / f"out{name[name.index('.'):]}"
    assert main(["deface", str(files / name), str(out)]) == 1
    err = capsys.readouterr().err
    assert expected in err, err
    assert "re-export" not in err and "corrupt" not in err
    assert os.listdir(tmp_path) == []


def test_the_renamed_files_read(files: Path) -> None:
    from defacer.io import load_volume

    for name in ("plain.nii", "plain.mgh"):
        assert load_volume(files / name).raw.shape == make_phantom(6.0).volume.raw.shape
