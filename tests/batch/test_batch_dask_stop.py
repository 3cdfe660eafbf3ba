"""Ctrl-C of a ``batch --scheduler tcp://...`` on a Dask cluster that runs apart from it (a real LocalCluster).

Before (HOSTILE18's leftover, main d5a6fe9): the batch cancelled its futures and exited (130) at once, releasing its
lock on OUT, but Dask cannot stop a task a worker is running: the scan went on and wrote its output, sidecar,
verification report and pictures into OUT and OUT-qc after the batch had ended (27 s later in HOSTILE18's
measurement), where a rerun or the user was already at work.  Now the batch asks its running scans to stop (a Dask
``Event``, looked at by each scan between its steps) and waits for them, holding its lock, before it ends.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from paused import SYNC_ENV, Pause, pause_at, phantom_dataset, wait_for

distributed = pytest.importorskip("distributed")


def _running(client: object) -> int:
    """How many tasks the cluster's worker threads are running now (the scheduler forgets a cancelled task at
    once; its thread goes on)."""
    return sum(client.run(lambda dask_worker: len(dask_worker.active_threads)).values())  # type: ignore[attr-defined]


def _tree(*roots: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for root in roots if root.exists() for p in root.rglob("*") if p.is_file()}


@contextlib.contextmanager
def _batch_on_cluster(tmp_path: Path, monkeypatch, stderr: Any = subprocess.PIPE
                      ) -> Iterator[tuple[subprocess.Popen[str], Pause, Any]]:
    """A real ``defacer batch --verify`` of two phantoms (``tmp_path/out``) on a real LocalCluster started apart from it,
    whose worker process waits in ``deface_path`` (a long scan, stood for) until the test touches ``pause.go``:
    the batch process, the pause and the test's Dask client; the batch is killed on the way out if still running."""
    ds, labels = phantom_dataset(tmp_path)
    # the cluster's worker processes (spawned, reading PYTHONPATH) wait in deface_path
    pause = pause_at(tmp_path, "defacer.route", "deface_path", "deface", limit_s=60.0)
    monkeypatch.setenv(SYNC_ENV, str(pause.sync))
    monkeypatch.setenv("PYTHONPATH", pause.pythonpath)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        env = {**os.environ}
        env.pop(SYNC_ENV)  # the batch itself is not paused, only the cluster's worker
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # not ignored in the child
        try:
            batch = subprocess.Popen([sys.executable, "-m", "defacer", "batch", str(ds),
                                      str(tmp_path / "out"), "--labels-dir", str(labels), "--verify", "--scheduler",
                                      cluster.scheduler_address],
                                     stdout=subprocess.PIPE, stderr=stderr, text=True, env=env)
        finally:
            signal.signal(signal.SIGINT, previous)
        try:
            yield batch, pause, client
        finally:
            if batch.poll() is None:
                batch.kill()
                batch.communicate()


def _idle(client: object, timeout: float = 90.0) -> None:
    """Wait until the cluster's worker runs nothing (or ``timeout`` seconds), and a second more."""
    deadline = time.monotonic() + timeout
    while _running(client) and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)


def test_ctrl_c_of_a_batch_on_a_running_cluster_leaves_no_scan_writing_after_it_ends(tmp_path: Path,
                                                                                     monkeypatch) -> None:
    out, qc = tmp_path / "out", tmp_path / "out-qc"
    with _batch_on_cluster(tmp_path, monkeypatch) as (batch, pause, client):
        assert wait_for(pause.at, batch), batch.communicate()
        batch.send_signal(signal.SIGINT)  # Ctrl-C while the worker defaces sub-01
        time.sleep(1.5)
        pause.go.touch()  # the scan's long step ends
        _, err = batch.communicate(timeout=120)
        at_exit = _tree(out, qc)
        busy_at_exit = _running(client)
        _idle(client)
        later = _tree(out, qc)
    assert batch.returncode == 130, (batch.returncode, err)
    assert "Traceback" not in err, err
    written_after = sorted(set(later) - set(at_exit)) + sorted(k for k in at_exit if later.get(k) != at_exit[k])
    assert not written_after, f"written after the batch had ended: {written_after}\n{err}"
    assert not busy_at_exit, "the batch ended while the cluster still ran its scan"
    # nothing verified: sub-01 was stopped before its verification; sub-02 never started
    assert not list(qc.rglob("verify_report.html")) if qc.exists() else True
    assert not (out / "sub-02/anat/sub-02_T1w.nii.gz").exists()


def _wait_until_stopping(batch: subprocess.Popen[str], log: Path) -> None:
    """Wait (up to 60 s) until the interrupted ``batch`` says in ``log`` (its stderr) that it waits for its scans on
    the cluster; fail when it ended or never said so."""
    deadline = time.monotonic() + 60
    while "Stopping: waiting" not in log.read_text() and batch.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "Stopping: waiting" in log.read_text(), log.read_text()


def test_a_second_ctrl_c_names_the_scan_left_running_on_the_cluster(tmp_path: Path, monkeypatch) -> None:
    """HOSTILE25's leftover: Ctrl-C again while the batch waited for its scan on the cluster ended the batch (130) with
    a warning that scans may still run, but its closing line said "1 not defaced (nothing written for them)" and
    ``summary.html`` "nothing written for it", of a scan whose deface step went on and wrote its output into OUT after
    the batch had ended.  Now the line and the page name that scan as still running on the cluster, which may yet
    write its output, not verified and not recorded; the other scan keeps "nothing was written"."""
    out = tmp_path / "out"
    log = tmp_path / "batch.err"
    with log.open("w") as stderr, _batch_on_cluster(tmp_path, monkeypatch, stderr) as (batch, pause, client):
        assert wait_for(pause.at, batch), (batch.communicate(), log.read_text())
        batch.send_signal(signal.SIGINT)  # Ctrl-C while the worker defaces sub-01
        _wait_until_stopping(batch, log)
        batch.send_signal(signal.SIGINT)  # Ctrl-C again: stop waiting
        batch.communicate(timeout=120)
        pause.go.touch()  # the scan's long step ends, after the batch has
        _idle(client)
    err = log.read_text()
    assert batch.returncode == 130 and "Traceback" not in err, (batch.returncode, err)
    closing = err[err.index("defacer batch: interrupted"):]
    assert "not defaced (nothing written for them)" not in closing, closing
    assert "1 of them still running on the Dask cluster" in closing and "sub-01/anat/sub-01_T1w.nii.gz" in closing
    assert "nothing was written for the other 1" in closing and "except those still running" in closing
    page = (out / ".defacer" / "summary.html").read_text()
    assert "still running on the Dask cluster" in page and "nothing written for it" in page  # sub-02's row
    # what the line now says may happen did: the scan wrote its output after the batch had ended
    assert (out / "sub-01/anat/sub-01_T1w.nii.gz").is_file()


def test_a_scheduler_lost_while_the_batch_waits_leaves_no_nothing_written_said_of_a_running_scan(tmp_path: Path,
                                                                                                  monkeypatch) -> None:
    """SAFE27 (REVIEW26's leftover): the Dask scheduler lost (killed) while an interrupted batch waited for its scan on
    the cluster: the batch then knew nothing of the scan, took it as "nothing running", and its closing line said
    "2 not defaced (nothing written for them)", though the worker went on with its step and wrote sub-01's output
    into OUT after the batch had ended.  Now a scan the cluster could no longer be asked about is named as possibly
    still running on it (it may yet write, not verified, not recorded), as after a second Ctrl-C; the warning said
    "0 scan(s) still run on the cluster after 300 s" at once, and closing the client printed distributed's
    traceback of its cancelled reconnection.  A real scheduler and a real worker, each a process of its own; the
    scheduler is killed with SIGKILL."""
    out = tmp_path / "out"
    log = tmp_path / "batch.err"
    ds, labels = phantom_dataset(tmp_path)
    pause = pause_at(tmp_path, "defacer.route", "deface_path", "deface", limit_s=60.0)
    address = tmp_path / "scheduler.json"
    env = {**os.environ, "PYTHONPATH": pause.pythonpath}
    env.pop(SYNC_ENV, None)
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    scheduler = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--scheduler-file",
                                  str(address), "--port", "0", "--no-dashboard"], env=env, **quiet)
    worker = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", "--scheduler-file", str(address),
                               "--nthreads", "1", "--nworkers", "1", "--no-dashboard", "--death-timeout", "120"],
                              env={**env, SYNC_ENV: str(pause.sync)}, **quiet)
    batch = None
    try:
        deadline = time.monotonic() + 60
        while not address.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        with distributed.Client(scheduler_file=str(address), timeout="60s") as client:
            client.wait_for_workers(1, timeout=60)
            scheduler_address = client.scheduler.address
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # not ignored in the child
        try:
            with log.open("w") as stderr:
                batch = subprocess.Popen([sys.executable, "-m", "defacer", "batch", str(ds), str(out), "--labels-dir",
                                          str(labels), "--verify", "--scheduler", scheduler_address],
                                         stdout=subprocess.PIPE, stderr=stderr, text=True, env=env)
        finally:
            signal.signal(signal.SIGINT, previous)
        assert wait_for(pause.at, batch), (batch.communicate(), log.read_text())
        batch.send_signal(signal.SIGINT)  # Ctrl-C while the worker defaces sub-01
        _wait_until_stopping(batch, log)
        scheduler.kill()  # the scheduler lost while the batch waits for its scan
        scheduler.wait(timeout=30)
        batch.communicate(timeout=120)
        pause.go.touch()  # the scan's long step ends, after the batch has
        written = out / "sub-01/anat/sub-01_T1w.nii.gz"
        deadline = time.monotonic() + 90
        while not written.is_file() and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        for process in (batch, worker, scheduler):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait(timeout=30)
    err = log.read_text()
    assert batch.returncode == 130 and "Traceback" not in err, (batch.returncode, err)
    closing = err[err.index("defacer batch: interrupted"):]
    assert "not defaced (nothing written for them)" not in closing, closing
    assert "still running on the Dask cluster" in closing and "sub-01/anat/sub-01_T1w.nii.gz" in closing, closing
    assert "for the other 0" not in closing, closing  # both scans were on the worker
    # what the line now says may happen did: the worker went on and wrote the scan's output after the batch had ended
    assert written.is_file()
