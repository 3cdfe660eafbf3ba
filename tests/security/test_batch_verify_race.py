"""``batch --verify`` and a ``defacer verify --out OUT-qc/<scan>`` run by hand at once: two real processes.

Before (HOSTILE22's leftover, main d5a6fe9): the batch held its lock on OUT only, and its worker wrote each scan's
label map, report and pictures into ``OUT-qc/<scan>/`` without the QC folder lock that ``deface --verify`` and
``defacer verify`` take (:func:`defacer.verify.qc.held`).  A ``defacer verify ... --out OUT-qc/<scan>`` started
while the worker verified passed every check (no report there yet) and wrote its README, record and report into
the folder the worker was writing, one's report over the other's.  Now the worker holds that folder's lock from
the scan's defacing to its last picture, and the hand-run is refused in words, writing nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from paused import SYNC_ENV, pause_at, phantom_dataset, wait_for


def test_a_hand_run_verify_into_the_qc_folder_of_a_scan_the_batch_verifies_is_refused(tmp_path: Path,
                                                                                      capsys) -> None:
    from defacer.cli.main import main

    ds, labels = phantom_dataset(tmp_path, ("01",))
    # the batch's spawned worker waits in verify_pair (after defacing the scan) until the test lets it go
    pause = pause_at(tmp_path, "defacer.verify", "verify_pair", "verify", limit_s=90.0)
    out = tmp_path / "out"
    scan_qc = tmp_path / "out-qc" / "sub-01__anat__sub-01_T1w"
    env = {**os.environ, SYNC_ENV: str(pause.sync), "PYTHONPATH": pause.pythonpath}
    batch = subprocess.Popen([sys.executable, "-m", "defacer", "batch", str(ds), str(out), "--labels-dir",
                              str(labels), "--verify", "-q"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=env)
    try:
        assert wait_for(pause.at, batch, timeout=180.0), batch.communicate()
        # the worker has defaced the scan and is verifying it, its label map in the scan's QC folder
        assert (out / "sub-01/anat/sub-01_T1w.nii.gz").is_file() and (scan_qc / "labels.nii.gz").is_file()
        before = sorted(p.name for p in scan_qc.iterdir())
        code = main(["verify", str(ds / "sub-01/anat/sub-01_T1w.nii.gz"), str(out / "sub-01/anat/sub-01_T1w.nii.gz"),
                     "--out", str(scan_qc)])
        err = capsys.readouterr().err
        after = sorted(p.name for p in scan_qc.iterdir())
        pause.go.touch()
        _, batch_err = batch.communicate(timeout=240)
    finally:
        if batch.poll() is None:
            batch.kill()
            batch.communicate()
    assert code == 1, (code, err)
    assert "Another defacer run is writing into the QC folder" in err and "Traceback" not in err
    assert after == before, (before, after)  # the hand-run wrote nothing there (no README, record or report)
    # the batch went on and verified its scan (0, or 3/5: a phantom's verdict)
    assert batch.returncode in (0, 3, 5), (batch.returncode, batch_err)
    assert "Traceback" not in batch_err
    names = {p.name for p in scan_qc.iterdir()}
    assert "verify_report.html" in names and "README.txt" not in names and ".defacer-owned.jsonl" not in names


def test_a_batch_scan_whose_qc_folder_another_run_holds_fails_in_words_and_the_others_are_defaced(
        tmp_path: Path, capsys) -> None:
    """The other order: the folder held (as a ``defacer verify --out`` run holds it) when the batch reaches the
    scan: that scan fails in words, nothing written for it; the other scan is defaced and verified."""
    import json

    from defacer.batch.manifest import DONE, FAILED, Manifest
    from defacer.cli.main import main
    from defacer.verify import qc

    ds, labels = phantom_dataset(tmp_path)
    (ds / "dataset_description.json").write_text(json.dumps({"Name": "p", "BIDSVersion": "1.8.0"}))
    out = tmp_path / "out"
    held_qc = tmp_path / "out-qc" / "sub-01__anat__sub-01_T1w"
    held_qc.parent.mkdir(mode=0o700)  # as a batch makes it (no warning about its permissions)
    with qc.held(held_qc, what="choose another --out"):
        code = main(["batch", str(ds), str(out), "--labels-dir", str(labels), "--verify", "-q"])
        left = sorted(p.name for p in held_qc.iterdir())
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err, err
    records = {r.key: r for r in Manifest(out / ".defacer" / "manifest.jsonl", read_only=True)}
    failed = records["sub-01/anat/sub-01_T1w.nii.gz"]
    assert failed.status == FAILED and "Another defacer run is writing into the QC folder" in failed.error
    assert "Nothing was written for this scan" in failed.error
    assert left == [] and not (out / "sub-01/anat/sub-01_T1w.nii.gz").exists()
    assert records["sub-02/anat/sub-02_T1w.nii.gz"].status == DONE
    assert (tmp_path / "out-qc" / "sub-02__anat__sub-02_T1w" / "verify_report.html").is_file()


def test_a_batch_without_verify_leaves_the_qc_folder_another_run_holds(tmp_path: Path, caplog) -> None:
    """A batch rerun without ``--verify`` removes the earlier verification of each scan it writes again; it did so
    in a folder a ``defacer verify --out OUT-qc/<scan>`` run was writing (files of the same names, lost under it).
    Now a held folder is left, with a warning; the other scan's earlier verification is removed as before."""
    import logging

    from defacer.cli.main import main
    from defacer.verify import qc

    ds, labels = phantom_dataset(tmp_path)
    out = tmp_path / "out"
    assert main(["batch", str(ds), str(out), "--labels-dir", str(labels), "--verify", "-q"]) in (0, 3, 5)
    one, two = (tmp_path / "out-qc" / f"sub-{sub}__anat__sub-{sub}_T1w" for sub in ("01", "02"))
    assert (one / "verify_report.html").is_file() and (two / "verify_report.html").is_file()
    caplog.set_level(logging.WARNING)
    with qc.held(one, what="choose another --out"):  # as a 'defacer verify --out' writing there holds it
        assert main(["batch", str(ds), str(out), "--labels-dir", str(labels), "--redo", "-q"]) == 0
        assert (one / "verify_report.html").is_file()
    assert not (two / "verify_report.html").exists()
    assert any("another defacer run is writing into that folder" in r.getMessage() for r in caplog.records)
