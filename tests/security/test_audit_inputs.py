"""Inputs are made of every file the reader reads, and only the scan's own files are read (audit of
2026-12-03, ``/work/team/NOTE-from-AUDIT.md``).

Each test failed on the code before its fix.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from run_checks import digest, plant_user_file, run_cli

from defacer.batch.discover import discover
from defacer.cli.main import main


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> tuple[Path, Path]:
    """A 3 mm phantom head (NIfTI) and its label map; read only."""
    from defacer.phantom import make_phantom, save_phantom

    root = tmp_path_factory.mktemp("phantom")
    save_phantom(make_phantom(3.0), root / "head.nii.gz", root / "labels.nii.gz")
    return root / "head.nii.gz", root / "labels.nii.gz"


def detached_nrrd(phantom: Path, header: Path, data_name: str, *, comment_bytes: int = 0) -> Path:
    """Write the phantom as a NRRD header ``header`` (any ending) naming the gzip data file ``data_name``
    beside it, after ``comment_bytes`` of comment lines; return the data file."""
    import nrrd

    from defacer.io import load_volume

    volume = load_volume(phantom)
    nrrd.write(str(header.with_name("tmp.nhdr")), np.asarray(volume.raw), {
        "space": "right-anterior-superior", "space directions": volume.affine[:3, :3].T,
        "space origin": volume.affine[:3, 3], "encoding": "gzip",
    }, detached_header=True)
    header.with_name("tmp.raw.gz").rename(header.with_name(data_name))
    lines = header.with_name("tmp.nhdr").read_text().splitlines()
    header.with_name("tmp.nhdr").unlink()
    comments = ["# " + "x" * 998] * (comment_bytes // 1001)
    fields = [line for line in lines[1:] if line and not line.startswith(("data file", "#"))]
    header.write_text("\n".join([lines[0], *comments, *fields, f"data file: {data_name}"]) + "\n")
    return header.with_name(data_name)


@pytest.mark.parametrize("case", ["nrrd-ending", "field-after-a-megabyte", "field-name-spaced"])
def test_an_output_never_overwrites_the_data_file_any_nrrd_header_names(phantom, tmp_path, case, capsys):
    """A ``.nrrd`` header naming a detached data file, or a ``.nhdr`` naming it after 1 MiB of comments
    (the reader reads 4 MiB) or as ``Data  File``: the data file was not counted as an input, and
    ``deface IN victim.nrrd --force`` overwrote it."""
    work = tmp_path / "work"
    work.mkdir()
    header = work / ("head.nrrd" if case == "nrrd-ending" else "head.nhdr")
    data = detached_nrrd(phantom[0], header, "victim.nrrd", comment_bytes=1_200_000 if case.endswith("megabyte") else 0)
    if case == "field-name-spaced":
        header.write_text(header.read_text().replace("data file:", "Data  File:"))
    assert main(["deface", str(header), str(tmp_path / "check.nrrd"), "--labels", str(phantom[1])]) == 0, \
        "the reader does not read this header: the case tests nothing"
    before = digest(work)
    code = main(["deface", str(header), str(data), "--labels", str(phantom[1]), "--force"])
    assert code == 1
    assert "it is the input file" in capsys.readouterr().err
    assert digest(work) == before


def test_batch_never_copies_the_data_file_of_a_nrrd_scan_into_its_output(phantom, tmp_path):
    """A ``.nrrd`` scan whose header names a detached data file: the data file (the face, undefaced) was
    listed among the dataset's other files, which batch copies into OUT."""
    root = tmp_path / "files"
    root.mkdir()
    detached_nrrd(phantom[0], root / "head.nrrd", "head_voxels.raw.gz")
    found = discover(root, layout="files")
    assert [scan.relpath.as_posix() for scan in found.scans] == ["head.nrrd"]
    assert "head_voxels.raw.gz" not in [rel.as_posix() for rel in found.others]


def test_demo_never_writes_through_a_link_nor_over_a_file_without_force(tmp_path, capsys):
    """``defacer demo --out DIR`` wrote its phantom through a symbolic link in DIR (the user's file it
    pointed at became a NIfTI) and replaced existing files without ``--force``."""
    out = tmp_path / "demo"
    out.mkdir()
    precious = plant_user_file(tmp_path, "precious.txt")
    (out / "phantom_labels.nii.gz").symlink_to(precious)
    argv = ["demo", "--out", str(out), "--voxel-size", "4", "--use-true-labels"]
    code, text = run_cli(argv, capsys)
    assert code == 1 and "phantom_labels.nii.gz" in text and "--force" in text
    assert precious.read_text() == "years of work\n"
    assert sorted(p.name for p in out.iterdir()) == ["phantom_labels.nii.gz"], "a refused demo wrote files"
    assert run_cli([*argv, "--force"], capsys)[0] == 0
    assert precious.read_text() == "years of work\n"
    assert not (out / "phantom_labels.nii.gz").is_symlink()
