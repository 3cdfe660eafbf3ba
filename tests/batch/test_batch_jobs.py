"""``--jobs`` out of bounds: 0, negative or not a number is a usage error; more than the cores is capped."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from defacer.batch.runner import BatchConfig, run_batch
from defacer.batch.workers import usable_cores
from defacer.cli.main import main


@pytest.mark.parametrize("command", ["batch", "anonymize"])
@pytest.mark.parametrize("jobs", ["0", "-3", "two", "1.5"])
def test_a_jobs_count_below_one_is_a_usage_error_saying_what_to_give(
        tmp_path: Path, bids_template: tuple[Path, Path, list[str]], command: str, jobs: str, capsys) -> None:
    """Before: '--jobs 0' and '--jobs -3' ended with exit 1 and '--jobs must be 1 or more, not 0.' (no usage error,
    nothing on what to give)."""
    ds, _, _ = bids_template
    assert main([command, str(ds), str(tmp_path / "out"), f"--jobs={jobs}"]) == 2
    err = capsys.readouterr().err
    assert f"expected a whole number of worker processes, 1 or more; found '{jobs}'" in err
    assert f"up to --jobs {usable_cores()} to use every CPU core" in err
    assert not (tmp_path / "out").exists()


def test_more_jobs_than_cores_start_no_more_workers_than_cores(
        tmp_path: Path, bids_template: tuple[Path, Path, list[str]], caplog: pytest.LogCaptureFixture) -> None:
    """Before: --jobs 100000 started one worker process per scan (here 6, each loading its own detector in a real
    run; a large dataset would start thousands), without a word."""
    ds, labels, _ = bids_template
    with caplog.at_level(logging.WARNING, logger="defacer"):
        summary = run_batch(BatchConfig(in_root=ds, out_root=tmp_path / "out", labels_dir=labels, jobs=100000,
                                        quiet=True))
    assert summary.counts.done == 6
    workers = {record.worker for record in summary.records}
    assert 1 <= len(workers) <= usable_cores()
    assert any(f"--jobs 100000 asks for more worker processes than the {usable_cores()} CPU core(s)" in m
               for m in caplog.messages)
