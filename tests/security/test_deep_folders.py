"""A folder tree nested deeper than Python's recursion limit in an input (or a user's output folder).

Python 3.11's ``Path.rglob`` and ``os.walk`` call themselves once per folder level: a DICOM folder, a batch input
or a folder given to ``--force`` holding a chain of 1,100 folders (a hostile or broken copy makes one in a second)
stopped ``deface``, ``anonymize`` and the whole ``batch`` with "unexpected error: RecursionError ... This is a bug in
defacer" (HOSTILE18, main 2401ebd).  Every walk of a user's folder is now :func:`defacer.files.walk`, which keeps its
pending folders in a list.  Real files through the real command line; the deep chains are made and removed without
recursion (``shutil.rmtree`` recurses too).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import nibabel as nib
import pytest

from defacer.cli.main import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "batch"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "dicom"))
from batch_fixtures import write_bids_phantoms
from dicom_factory import write_phantom_series

#: Deeper than the recursion limit (1,000 frames) allows a recursive walk to go.
DEPTH = 1100


def deep_chain(folder: Path, depth: int = DEPTH) -> Path:
    """Make ``folder/a/a/.../a`` (``depth`` levels) one folder at a time; return the deepest folder."""
    here = str(folder)
    os.makedirs(here, exist_ok=True)
    for _ in range(depth):
        here = os.path.join(here, "a")
        os.mkdir(here)
    return Path(here)


def remove_deep(folder: Path) -> None:
    """Remove ``folder`` and everything under it, deepest first, without recursion (links are not followed)."""
    folders, pending = [], [str(folder)]
    while pending:
        here = pending.pop()
        folders.append(here)
        with os.scandir(here) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    pending.append(entry.path)
                else:
                    os.unlink(entry.path)
    for here in reversed(folders):
        os.rmdir(here)


def tree_files(folder: Path) -> dict[Path, bytes]:
    """Every file under ``folder`` and its bytes (no recursion)."""
    found, pending = {}, [str(folder)]
    while pending:
        with os.scandir(pending.pop()) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    pending.append(entry.path)
                else:
                    found[Path(entry.path)] = Path(entry.path).read_bytes()
    return found


@pytest.fixture(scope="module")
def series_template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("deep_series")
    write_phantom_series(root / "series", root / "labels.nii.gz", 4.0)
    return root / "series", root / "labels.nii.gz"


@pytest.fixture
def scratch(tmp_path: Path):
    yield tmp_path
    for child in tmp_path.iterdir():  # pytest's own clean-up recurses: the deep chains go here
        if child.is_dir() and not child.is_symlink():
            remove_deep(child)


def test_the_walk_reaches_any_depth_and_keeps_the_walks_it_replaces(scratch: Path) -> None:
    from defacer.files import files_under, walk

    bottom = deep_chain(scratch / "tree")
    (bottom / "slice.dcm").write_bytes(b"x")
    (scratch / "tree" / "top.txt").write_text("t")
    (scratch / "tree" / "link").symlink_to(scratch / "tree" / "a")  # a link to a folder: listed, not entered
    assert files_under(scratch / "tree") == [scratch / "tree" / "top.txt", bottom / "slice.dcm"]
    small = scratch / "small"
    for rel in ("b/c/f1", "b/f2", "d/f3", "f4"):
        (small / rel).parent.mkdir(parents=True, exist_ok=True)
        (small / rel).write_text(rel)
    (small / "b" / "up").symlink_to(small / "d")
    assert list(walk(small)) == list(os.walk(small))
    assert sorted(files_under(small)) == sorted(p for p in small.rglob("*") if p.is_file())


@pytest.mark.parametrize("command", ["deface", "anonymize"])
def test_a_dicom_folder_holding_a_deep_folder_tree_is_read_whole(scratch: Path, series_template: tuple[Path, Path],
                                                                  command: str, capsys: pytest.CaptureFixture[str]
                                                                  ) -> None:
    template, labels = series_template
    series = scratch / "series"
    shutil.copytree(template, series)
    bottom = deep_chain(series)
    last = max(series.glob("*.dcm"))
    last.rename(bottom / last.name)  # one slice at the bottom of the chain: still part of the series
    before = tree_files(series)
    out = scratch / "out"
    argv = [command, str(series), str(out)] + (["--labels", str(labels)] if command == "deface" else [])
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 0, err
    assert "RecursionError" not in err and "bug" not in err, err
    written = [p for p in tree_files(out) if p.suffix == ".dcm"]
    assert len(written) == 60, "every slice, the deep one included, is written"
    assert tree_files(series) == before, "the input is untouched"


def test_a_batch_input_holding_a_deep_folder_tree_runs_to_the_end(scratch: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    ds, labels = scratch / "ds", scratch / "labels"
    write_bids_phantoms(ds, labels, [("01", None, "T1w", "T1"), ("02", None, "T1w", "T1")], 4.0)
    deep_chain(ds / "sub-01" / "func")
    out = scratch / "out"
    code = main(["batch", str(ds), str(out), "--labels-dir", str(labels), "--quiet"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "RecursionError" not in err and "bug" not in err, err
    for sub in ("01", "02"):
        image = nib.load(out / f"sub-{sub}" / "anat" / f"sub-{sub}_T1w.nii.gz")
        assert image.shape == nib.load(ds / f"sub-{sub}" / "anat" / f"sub-{sub}_T1w.nii.gz").shape


def test_force_over_a_users_folder_holding_a_deep_tree_refuses_in_words(
        scratch: Path, series_template: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    template, labels = series_template
    user = scratch / "work"
    bottom = deep_chain(user)
    (bottom / "notes.txt").write_text("years of work\n")
    code = main(["deface", str(template), str(user), "--labels", str(labels), "--force"])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "did not write" in err and "RecursionError" not in err and "bug" not in err, err
    assert (bottom / "notes.txt").read_text() == "years of work\n"
    assert sorted(p.name for p in user.iterdir()) == ["a"]


def test_a_batch_scan_lying_deeper_than_the_recursion_limit_is_defaced(scratch: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """The walk reached it, but mirroring it into OUT made its folders with ``Path.mkdir(parents=True)``, which calls
    itself once per missing level: the scan failed with "RecursionError: maximum recursion depth exceeded while
    calling a Python object (at pathlib.py:526)" (HOSTILE18, main 0deda10).  Now made in a loop
    (:func:`defacer.files.make_folders`): defaced like any other."""
    ds, labels = scratch / "ds", scratch / "labels"
    write_bids_phantoms(ds, labels, [("01", None, "T1w", "T1")], 4.0)
    bottom = deep_chain(ds / "sub-01" / "anat")
    label_bottom = deep_chain(labels / "sub-01" / "anat")
    shutil.copy(ds / "sub-01" / "anat" / "sub-01_T1w.nii.gz", bottom / "sub-01_T1w.nii.gz")
    shutil.copy(labels / "sub-01" / "anat" / "sub-01_T1w.labels.nii.gz", label_bottom / "sub-01_T1w.labels.nii.gz")
    out = scratch / "out"
    code = main(["batch", str(ds), str(out), "--labels-dir", str(labels), "--quiet"])
    err = capsys.readouterr().err
    assert code == 0, err
    deep_out = out / bottom.relative_to(ds) / "sub-01_T1w.nii.gz"
    assert deep_out.is_file(), "the deep scan is defaced into the same place in OUT"
    assert nib.load(deep_out).shape == nib.load(bottom / "sub-01_T1w.nii.gz").shape
    manifest = (out / ".defacer" / "manifest.jsonl").read_text()
    assert "RecursionError" not in manifest and '"failed"' not in manifest, manifest[-400:]
