"""JSON nested thousands deep, in any file of the user's that defacer parses, is refused or skipped in words.

Found by HOSTILE4: Python's json module raises RecursionError (no ValueError) for arrays or objects nested deeper
than the interpreter's recursion limit; a scan's sidecar or a carried JSON file of 200 kB so nested stopped the whole
batch with "unexpected error: RecursionError ... This is a bug in defacer", and so did a manifest or ownership
record line, a folder's ownership record, or a model card.
"""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath

import pytest

from defacer.errors import DefacerError, WeightsError

DEEP = '{"a": ' + "[" * 100_000 + "]" * 100_000 + "}"


def test_a_small_json_file_nested_too_deep_is_an_error_in_words(tmp_path: Path) -> None:
    from defacer.files import read_json_object

    (tmp_path / "sub-01_T1w.json").write_text(DEEP)
    with pytest.raises(DefacerError, match="is not valid JSON"):
        read_json_object(tmp_path / "sub-01_T1w.json", what="JSON sidecar", redo="Fix it.")


def test_a_carried_json_file_nested_too_deep_is_not_carried_and_the_batch_goes_on(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from defacer.batch.layout import OutputLayout, carry_over
    from defacer.phi.options import DeidOptions

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "task-rest_bold.json").write_text(DEEP)
    (tmp_path / "in" / "task-rest_events.json").write_text('{"TaskName": "rest"}')
    layout = OutputLayout(tmp_path / "in", tmp_path / "out", "mirror", True)
    rel = [PurePosixPath("task-rest_bold.json"), PurePosixPath("task-rest_events.json")]
    assert carry_over(layout, rel, "copy", clean_tables=True, profile=DeidOptions()) == (1, 0)
    assert not (tmp_path / "out" / "task-rest_bold.json").exists()
    assert "is not valid JSON" in caplog.text


def test_bookkeeping_lines_nested_too_deep_are_damaged_lines(tmp_path: Path) -> None:
    from defacer.batch.manifest import Manifest
    from defacer.batch.ownership import OwnershipRecord

    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text(DEEP + "\n" + '{"key": "b", "status": "done"}\n')
    assert [r.key for r in Manifest(manifest, read_only=True)] == ["b"]
    owned = tmp_path / ".defacer" / "owned.jsonl"
    owned.parent.mkdir()
    owned.write_text(DEEP + '\n{"path": "a.nii.gz"}\n')
    assert OwnershipRecord(owned, tmp_path).names == {"a.nii.gz"}


def test_a_folder_ownership_record_nested_too_deep_owns_nothing(tmp_path: Path) -> None:
    from defacer.io.output_guard import owned_files, owner_record

    (tmp_path / "out").mkdir()
    owner_record(tmp_path / "out").write_text(DEEP)
    assert owned_files(tmp_path / "out") is None


def test_a_model_card_nested_too_deep_is_refused_in_words(tmp_path: Path) -> None:
    from defacer.detect.model import CARD_NAME, WEIGHTS_NAME, OnnxDetector

    (tmp_path / WEIGHTS_NAME).write_bytes(b"onnx")
    (tmp_path / CARD_NAME).write_text(DEEP)
    with pytest.raises(WeightsError, match="not valid JSON"):
        OnnxDetector(tmp_path / WEIGHTS_NAME)


def test_a_batch_whose_scan_sidecar_is_nested_too_deep_runs_to_the_end(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """The sidecar is not read (the defaced scan's sidecar gets defacer's record only), the scan is defaced."""
    import nibabel as nib
    import numpy as np

    from defacer.cli.main import main
    from defacer.phantom import make_phantom

    ds = tmp_path / "ds"
    (ds / "sub-01" / "anat").mkdir(parents=True)
    (ds / "dataset_description.json").write_text(json.dumps({"Name": "x", "BIDSVersion": "1.8.0"}))
    phantom = make_phantom(4.0)
    nib.save(nib.Nifti1Image(np.asarray(phantom.volume.raw), phantom.volume.affine),
             str(ds / "sub-01" / "anat" / "sub-01_T1w.nii.gz"))
    (ds / "sub-01" / "anat" / "sub-01_T1w.json").write_text(DEEP)
    assert main(["batch", str(ds), str(tmp_path / "out"), "-q"]) == 0
    assert "bug" not in capsys.readouterr().err
    sidecar = json.loads((tmp_path / "out" / "sub-01" / "anat" / "sub-01_T1w.json").read_text())
    assert sidecar["Defaced"] is True and "a" not in sidecar


def test_a_huge_model_card_is_refused_without_being_read_whole(tmp_path: Path) -> None:
    """The card beside --weights was read whole (``read_text``) before anything looked at its size: a 256 MiB card
    (a sparse file: nothing on disk) took over 256 MiB, a bigger one all memory (HOSTILE12).  Now it is read as every
    small JSON file of the user's is, bounded at 16 MiB, and refused in words."""
    import tracemalloc

    from defacer.detect.model import CARD_NAME, WEIGHTS_NAME, OnnxDetector

    (tmp_path / WEIGHTS_NAME).write_bytes(b"onnx")
    with (tmp_path / CARD_NAME).open("wb") as handle:
        handle.truncate(256 * 2**20)
    tracemalloc.start()
    try:
        with pytest.raises(WeightsError, match="larger than 16 MiB"):  # main: 'not valid JSON', after reading it
            OnnxDetector(tmp_path / WEIGHTS_NAME)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 40 * 2**20, peak


@pytest.mark.parametrize("content", ["deep", "huge"])
def test_a_record_so_named_nested_too_deep_or_huge_is_left_alone_by_the_library(tmp_path: Path, content: str) -> None:
    """HOSTILE12: 'deface_path(..., sidecar=False, force=True)' over an earlier output reads the record beside it to
    see whether it describes that output; a file so named holding JSON nested 200,000 deep raised RecursionError to
    the caller (nothing written), and a huge one was read whole.  Now it is no record of defacer's: the output is
    written, the file left as it is."""
    import shutil
    import tracemalloc

    from defacer.phantom import make_phantom, save_phantom
    from defacer.route import deface_path

    save_phantom(make_phantom(4.0), tmp_path / "in.nii.gz", tmp_path / "lab.nii.gz")
    shutil.copy(tmp_path / "in.nii.gz", tmp_path / "out.nii.gz")
    record = tmp_path / "out.defacer.json"
    if content == "deep":
        record.write_text("[" * 200_000 + "]" * 200_000)
    else:
        with record.open("wb") as handle:
            handle.truncate(256 * 2**20)
    size = record.stat().st_size
    tracemalloc.start()
    try:
        deface_path(tmp_path / "in.nii.gz", tmp_path / "out.nii.gz", labels_path=tmp_path / "lab.nii.gz",
                    sidecar=False, force=True)  # main: RecursionError (deep)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert record.stat().st_size == size
    assert (tmp_path / "out.nii.gz").read_bytes() != (tmp_path / "in.nii.gz").read_bytes()
    assert peak < 200 * 2**20, peak  # main: the 256 MiB file read whole
