"""A batch rerun without ``--verify`` that writes a scan again removes the verification an earlier ``--verify`` run
left for it in ``OUT-qc``. Before (HOSTILE10): 'batch --verify' then 'batch --features eyes' redid the scan (eyes
only) and left OUT-qc/<scan>/verify_report.html and index.html saying PASS, showing the replaced output's distorted
nose (seen on ixi012, main's code)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from defacer.batch.manifest import DONE
from defacer.batch.runner import BatchConfig, _discover, _qc_targets, run_batch
from defacer.options import DefaceOptions
from defacer.verify.qc import claim


def test_a_scan_written_again_without_verify_loses_its_earlier_verification(
        tmp_path: Path, bids_template: tuple[Path, Path, list[str]]) -> None:
    ds, labels, relpaths = bids_template
    out = tmp_path / "out"
    config = BatchConfig(in_root=ds, out_root=out, labels_dir=labels, quiet=True)
    assert run_batch(config).counts.failed == 0
    # the QC folder as an earlier --verify run left it: every report, picture, label map and the gallery
    discovery, layout = _discover(config)
    targets = _qc_targets(discovery, layout)
    claim(layout.qc_dir, targets)
    for target in targets:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("verdict: PASS")
    (layout.qc_dir / "notes.txt").write_text("the user's")
    again = run_batch(replace(config, options=DefaceOptions(features=("eyes",))))
    assert {r.status for r in again.records} == {DONE}, "the new features redo every scan"
    left = sorted(p.relative_to(layout.qc_dir).as_posix() for p in layout.qc_dir.rglob("*") if p.is_file())
    assert left == [".defacer-owned.jsonl", "README.txt", "index.html", "notes.txt"], left
    gallery = (layout.qc_dir / "index.html").read_text()
    assert "verdict: PASS" not in gallery and "not verified" in gallery
    assert all(key in gallery for key in relpaths)
