"""Ctrl-C of a ``batch --scheduler tcp://...`` on a Dask cluster that runs apart from it (a real LocalCluster).

Before (HOSTILE18's leftover, main d5a6fe9): the batch cancelled its futures and exited (130) at once, releasing its
lock on OUT, but Dask cannot stop a task a worker is running: the scan went on and wrote its output, sidecar,
verification report and pictures into OUT and OUT-qc after the batch had ended (27 s later in HOSTILE18's
measurement), where a rerun or the user was already at work.  Now the batch asks its running scans to stop (a Dask
``Event``, looked at by each scan between its steps) and waits for them, holding its lock, before it ends.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from defacer.phantom import make_phantom, save_phantom

distributed = pytest.importorskip("distributed")

#: Loaded by the cluster's worker processes (spawned, through PYTHONPATH): ``deface_path`` waits for ``go-deface``
#: in ``$H25_SYNC`` after touching ``at-deface`` (a long scan, stood for).
SITECUSTOMIZE = """
import os
if os.environ.get("H25_SYNC"):
    import time
    from pathlib import Path
    import defacer.route as route
    real = route.deface_path

    def waiting(*args, **kwargs):
        sync = Path(os.environ["H25_SYNC"])
        (sync / "at-deface").touch()
        deadline = time.monotonic() + 60
        while not (sync / "go-deface").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        return real(*args, **kwargs)

    route.deface_path = waiting
"""


def _running(client: object) -> int:
    """How many tasks the cluster's worker threads are running now (the scheduler forgets a cancelled task at
    once; its thread goes on)."""
    return sum(client.run(lambda dask_worker: len(dask_worker.active_threads)).values())  # type: ignore[attr-defined]


def _tree(*roots: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for root in roots if root.exists() for p in root.rglob("*") if p.is_file()}


def test_ctrl_c_of_a_batch_on_a_running_cluster_leaves_no_scan_writing_after_it_ends(tmp_path: Path,
                                                                                     monkeypatch) -> None:
    ds, labels = tmp_path / "ds", tmp_path / "labels"
    for sub in ("01", "02"):
        (ds / f"sub-{sub}" / "anat").mkdir(parents=True)
        (labels / f"sub-{sub}" / "anat").mkdir(parents=True)
        save_phantom(make_phantom(4.0), ds / f"sub-{sub}/anat/sub-{sub}_T1w.nii.gz",
                     labels / f"sub-{sub}/anat/sub-{sub}_T1w.labels.nii.gz")
    site, sync = tmp_path / "site", tmp_path / "sync"
    site.mkdir()
    sync.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    monkeypatch.setenv("H25_SYNC", str(sync))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), *sys.path]))
    out, qc = tmp_path / "out", tmp_path / "out-qc"
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        env = {**os.environ}
        env.pop("H25_SYNC")  # the batch itself is not paused, only the cluster's worker
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # not ignored in the child
        try:
            batch = subprocess.Popen([sys.executable, "-m", "defacer", "batch", str(ds), str(out), "--labels-dir",
                                      str(labels), "--verify", "--scheduler", cluster.scheduler_address],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        finally:
            signal.signal(signal.SIGINT, previous)
        try:
            deadline = time.monotonic() + 120
            while not (sync / "at-deface").exists() and batch.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert (sync / "at-deface").exists(), batch.communicate()
            batch.send_signal(signal.SIGINT)  # Ctrl-C while the worker defaces sub-01
            time.sleep(1.5)
            (sync / "go-deface").touch()  # the scan's long step ends
            _, err = batch.communicate(timeout=120)
            at_exit = _tree(out, qc)
            busy_at_exit = _running(client)
            deadline = time.monotonic() + 90  # until the cluster's worker is idle
            while _running(client) and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(1.0)
            later = _tree(out, qc)
        finally:
            if batch.poll() is None:
                batch.kill()
                batch.communicate()
    assert batch.returncode == 130, (batch.returncode, err)
    assert "Traceback" not in err, err
    written_after = sorted(set(later) - set(at_exit)) + sorted(k for k in at_exit if later.get(k) != at_exit[k])
    assert not written_after, f"written after the batch had ended: {written_after}\n{err}"
    assert not busy_at_exit, "the batch ended while the cluster still ran its scan"
    # nothing verified: sub-01 was stopped before its verification; sub-02 never started
    assert not list(qc.rglob("verify_report.html")) if qc.exists() else True
    assert not (out / "sub-02/anat/sub-02_T1w.nii.gz").exists()
