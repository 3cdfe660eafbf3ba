"""Interrupted batches: a killed worker, a killed run, Ctrl-C; nothing lost, nothing half-written."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from defacer.batch.manifest import DONE, Manifest
from defacer.batch.runner import BatchConfig, run_batch

psutil = pytest.importorskip("psutil")  # installed with defacer[batch] (distributed)


CLI = "import sys; from defacer.cli.main import main; sys.exit(main(sys.argv[1:]))"
#: The console script itself (``defacer``, ``python -m defacer``): it turns SIGTERM and SIGHUP into an interrupt.
ENTRY_POINT = "import sys; from defacer.cli.main import run; run(sys.argv[1:])"


def _start(ds: Path, out: Path, labels: Path, *extra: str, cli: str = CLI) -> subprocess.Popen[bytes]:
    # A shell starts background commands (``cmd &``) with SIGINT ignored, and an ignored signal is
    # inherited across exec: the batch would then never see Ctrl-C.  A handled signal is reset to
    # the default at exec, so the child gets Ctrl-C as on a terminal, however this run was started.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return subprocess.Popen([sys.executable, "-c", cli, "batch", str(ds), str(out), "--labels-dir", str(labels),
                                 "--quiet", *extra], start_new_session=True, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
    finally:
        signal.signal(signal.SIGINT, previous)


def _done_count(out: Path) -> int:
    path = out / ".defacer" / "manifest.jsonl"
    if not path.is_file():
        return 0
    return sum(1 for line in path.read_text().splitlines() if '"status": "done"' in line)


def _wait_for(condition: object, proc: subprocess.Popen[bytes], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if proc.poll() is not None:
            pytest.fail(f"the batch ended (rc {proc.returncode}) before it could be interrupted: "
                        f"{proc.stderr.read().decode() if proc.stderr else ''}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("timed out waiting for the batch")
        time.sleep(0.01)


def _worker_processes(proc: subprocess.Popen[bytes]) -> list[psutil.Process]:
    workers = []
    for child in psutil.Process(proc.pid).children(recursive=True):
        try:
            command = " ".join(child.cmdline())
        except psutil.Error:
            continue
        if "spawn_main" in command and "resource_tracker" not in command:
            workers.append(child)
    return workers


def _assert_outputs_whole(out: Path, reference: Path) -> int:
    """Every image under OUT is byte-identical to the reference; returns how many there are."""
    images = sorted(out.rglob("sub-*.nii.gz"))
    for image in images:
        if ".defacer-tmp-" in str(image):
            continue
        expected = reference / image.relative_to(out)
        assert image.read_bytes() == expected.read_bytes(), f"{image} is not a whole output"
    return len([i for i in images if ".defacer-tmp-" not in str(i)])


def _resume_and_check(ds: Path, out: Path, labels: Path, reference: Path) -> None:
    summary = run_batch(BatchConfig(in_root=ds, out_root=out, labels_dir=labels, quiet=True))
    assert summary.counts.failed == 0 and summary.counts.total == 6
    assert summary.counts.skipped >= 1, "scans finished before the interruption are not redone"
    assert _assert_outputs_whole(out, reference) == 6
    assert not list(out.rglob(".defacer-tmp-*")), "no temporary files are left after the resumed run"
    assert all(r.status == DONE for r in Manifest(out / ".defacer" / "manifest.jsonl"))


@pytest.mark.parametrize("engine", [["--jobs", "2"], ["--jobs", "2", "--scheduler", "local"]],
                         ids=["processes", "dask"])
def test_killing_a_worker_mid_batch_loses_no_scan(tmp_path: Path, serial_reference: Path, engine: list[str],
                                                  bids_template: tuple[Path, Path, list[str]]) -> None:
    ds, labels, _ = bids_template
    out = tmp_path / "out"
    proc = _start(ds, out, labels, *engine)
    _wait_for(lambda: _done_count(out) >= 1 and _worker_processes(proc), proc)
    victim = _worker_processes(proc)[0]
    victim.send_signal(signal.SIGKILL)
    _, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 0, stderr.decode()
    records = list(Manifest(out / ".defacer" / "manifest.jsonl"))
    assert len(records) == 6 and all(r.status == DONE for r in records)
    if "--scheduler" not in engine:  # Dask reschedules lost tasks itself
        assert any(r.attempts == 2 for r in records), "the scans in flight were retried in a fresh worker"
    assert _assert_outputs_whole(out, serial_reference) == 6


def test_a_killed_run_leaves_only_whole_outputs_and_resumes(tmp_path: Path, serial_reference: Path,
                                                            bids_template: tuple[Path, Path, list[str]]) -> None:
    ds, labels, _ = bids_template
    out = tmp_path / "out"
    proc = _start(ds, out, labels)
    _wait_for(lambda: _done_count(out) >= 2, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    assert _done_count(out) < 6, "the run was killed before the end"
    _assert_outputs_whole(out, serial_reference)
    _resume_and_check(ds, out, labels, serial_reference)


@pytest.mark.parametrize("engine", [["--jobs", "2"], ["--jobs", "2", "--scheduler", "local"]],
                         ids=["processes", "dask"])
def test_ctrl_c_stops_cleanly_and_the_rerun_finishes(tmp_path: Path, serial_reference: Path, engine: list[str],
                                                     bids_template: tuple[Path, Path, list[str]]) -> None:
    ds, labels, _ = bids_template
    for attempt in range(4):  # on a fast machine the small batch can finish before Ctrl-C lands: try again
        out = tmp_path / f"out{attempt}"
        proc = _start(ds, out, labels, *engine)
        _wait_for(lambda out=out: _done_count(out) >= 1, proc)
        os.killpg(proc.pid, signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
        if proc.returncode != 0:
            break
    else:
        pytest.skip("the batch finished before Ctrl-C arrived, four times")
    assert proc.returncode == 130, stderr.decode()
    assert "interrupted" in stderr.decode()
    assert "run the same command again to resume" in stderr.decode(), "the user is told how to go on"
    assert "Traceback" not in stderr.decode()
    _assert_outputs_whole(out, serial_reference)
    assert not list(out.rglob(".defacer-tmp-*")), "Ctrl-C removes in-flight temporaries"
    _resume_and_check(ds, out, labels, serial_reference)


@pytest.mark.parametrize("engine", [[], ["--jobs", "2"]], ids=["serial", "processes"])
def test_sigterm_mid_batch_the_summary_says_which_scans_finished(tmp_path: Path, serial_reference: Path,
                                                                 engine: list[str],
                                                                 bids_template: tuple[Path, Path, list[str]]) -> None:
    """SIGTERM (``scancel``, ``docker stop``) to the batch process alone, mid-run. Before: OUT's summary.html counted
    only the finished scans ("4 defaced, 0 failed, 4 scans"), as if they were the whole batch, and the console did
    not say how many were left."""
    import html
    import re

    ds, labels, relpaths = bids_template
    for attempt in range(4):  # on a fast machine the small batch can finish before the signal lands: try again
        out = tmp_path / f"out{attempt}"
        proc = _start(ds, out, labels, *engine, cli=ENTRY_POINT)
        _wait_for(lambda out=out: _done_count(out) >= 1, proc)
        children = psutil.Process(proc.pid).children(recursive=True)
        proc.send_signal(signal.SIGTERM)  # the main process only, not its group
        try:
            _, stderr_bytes = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        if proc.returncode != 0:
            break
    else:
        pytest.skip("the batch finished before SIGTERM arrived, four times")
    stderr = stderr_bytes.decode()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    done = {r.key for r in Manifest(out / ".defacer" / "manifest.jsonl") if r.status == DONE}
    assert 1 <= len(done) < 6
    # "not defaced (nothing written for them)", or "not finished: ..." when a scan in flight had written its output
    assert f"{len(done)} of the 6 scans to do finished; {6 - len(done)} not " in stderr, stderr
    page = html.unescape(re.sub(r"<[^>]+>", " ", (out / ".defacer" / "summary.html").read_text()))
    assert f"Interrupted: {6 - len(done)} scan(s) not done" in page
    for key in relpaths:
        state = "done" if key in done else "not done"
        assert re.search(re.escape(key) + r"\s+" + state + r"\s", page), (key, state)
    _assert_outputs_whole(out, serial_reference)
    assert not list(out.rglob(".defacer-tmp-*"))
    _, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, "no worker outlives the batch"


def _images(out: Path) -> list[str]:
    """The defaced images in place in OUT (a temporary, ``.defacer-tmp-...``, is not one yet).  Looked at while the
    batch runs: a temporary folder the glob is inside may be removed under it (the clean-clone CI saw
    FileNotFoundError from the glob's scandir), and the look is then made again."""
    for _ in range(100):
        try:
            return [p.relative_to(out).as_posix() for p in out.glob("sub-*/**/*_T1w.nii.gz")
                    if not p.name.startswith(".")]
        except FileNotFoundError:
            time.sleep(0.01)
    raise AssertionError(f"{out} kept changing under 100 looks")


def test_a_scan_stopped_while_it_was_verified_is_not_said_to_have_nothing_written(
        tmp_path: Path, bids_template: tuple[Path, Path, list[str]]) -> None:
    """SIGTERM to ``batch --verify`` while the first scan's output, written, was being verified: the worker is stopped,
    the output stays in OUT unverified and unrecorded, and the console said "2 not defaced (nothing written for them)"
    and summary.html "the run was interrupted before this scan was defaced: nothing written for it" beside it
    (HOSTILE18, two 3 mm phantoms, main 2a83d38). Now it says which scans were stopped after their output was
    written, that those files are not checked and not to share them."""
    import html
    import re

    ds, labels, relpaths = bids_template
    for attempt in range(4):  # the signal must land while a written scan is verified: seconds, but try again
        out = tmp_path / f"out{attempt}"
        proc = _start(ds, out, labels, "--verify", cli=ENTRY_POINT)
        # the image and its provenance record in place (the write's end), then into the verification (seconds)
        _wait_for(lambda out=out: any(Path(out, key.replace(".nii.gz", ".defacer.json")).is_file()
                                      for key in _images(out)), proc)
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        try:
            _, stderr_bytes = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        written = _images(out)
        done = {r.key for r in Manifest(out / ".defacer" / "manifest.jsonl") if r.status == DONE}
        stopped = [key for key in written if key not in done]
        if proc.returncode == 130 and stopped:
            break
    else:
        pytest.skip("no scan was stopped between its output and its record, four times")
    stderr = stderr_bytes.decode()
    assert "Traceback" not in stderr, stderr
    assert "nothing written for them)" not in stderr, stderr
    assert f"{len(stopped)} of them stopped after their output was written, before it was verified and recorded" \
        in stderr, stderr
    assert all(f"'{key}'" in stderr for key in stopped) and "do not share them" in stderr, stderr
    page = html.unescape(re.sub(r"<[^>]+>", " ", (out / ".defacer" / "summary.html").read_text()))
    for key in relpaths:
        if key in stopped:
            assert re.search(re.escape(key) + r"\s+not done\s.*?output was written, before it was verified", page), key
        elif key not in done:
            assert re.search(re.escape(key) + r"\s+not done\s.*?nothing written for it", page), key


def test_a_scan_stopped_while_verified_leaves_no_label_map_in_an_after_only_qc_folder(
        tmp_path: Path, bids_template: tuple[Path, Path, list[str]]) -> None:
    """``batch --verify --qc-after-only`` keeps nothing of the original in ``OUT-qc``: each scan's label map (the
    original's nose and ear shapes) is removed once its report is written, in the worker. A SIGTERM stops the workers
    without that step: the label map of the scan being verified stayed beside a README saying "no picture of an
    original face" (HOSTILE18, main 2a83d38, ``OUT-qc/sub-01__anat__sub-01_T1w/labels.nii.gz``). The run's end now
    removes every such label map and the stopped workers' temporaries in OUT-qc."""
    ds, labels, _ = bids_template
    for attempt in range(4):
        out = tmp_path / f"out{attempt}"
        proc = _start(ds, out, labels, "--verify", "--qc-after-only", cli=ENTRY_POINT)
        qc = out.with_name(out.name + "-qc")
        _wait_for(lambda qc=qc: any(p.name.startswith("labels.") for p in qc.glob("*/*")), proc)
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        done = {r.key for r in Manifest(out / ".defacer" / "manifest.jsonl") if r.status == DONE}
        if proc.returncode == 130 and len(done) < 6:
            break
    else:
        pytest.skip("the batch finished before SIGTERM arrived, four times")
    left = sorted(p.relative_to(qc).as_posix() for p in qc.rglob("*") if p.is_file())
    assert not [name for name in left if name.split("/")[-1].startswith(("labels.", ".defacer-tmp"))], left
    assert not [name for name in left if "before" in name], left
    assert "no picture of an original face" in (qc / "README.txt").read_text()
