"""Stopping the local worker processes of a batch (``defacer.batch.engines``) through a second interrupt."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import deque
from pathlib import Path

import pytest

from defacer.batch import engines

#: Seconds the worker takes to end once it is sent SIGTERM: long enough that the second signal, sent 0.3 s after the
#: worker says it got SIGTERM, lands while the batch waits for it even on a loaded host (a late timer would otherwise
#: land after the test's block).
DYING_S = 6.0


def _on_sigterm(number: int, frame: object) -> None:
    marker = Path(os.environ["SAFE28_MARKERS"])
    (marker / "term").write_text(str(os.getpid()))
    time.sleep(DYING_S)  # ending takes a while: a flush to a slow disk or network share
    os._exit(143)


def slow_to_die(folder: Path) -> None:
    """The task a worker runs instead of a scan: it says it started (its pid), then works on; SIGTERM ends it only
    after :data:`DYING_S`."""
    signal.signal(signal.SIGTERM, _on_sigterm)
    os.environ["SAFE28_MARKERS"] = str(folder)
    (folder / "started").write_text(str(os.getpid()))
    time.sleep(120)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead: it only waits to be reaped
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="POSIX signals")
def test_a_second_interrupt_while_the_workers_are_stopped_still_waits_for_them(tmp_path, monkeypatch):
    """SAFE28: Ctrl-C (or SIGTERM) stops a batch's local workers with SIGTERM and waited for each with a plain
    ``join(timeout=10)``; a second Ctrl-C in that wait raised out of it, so the batch went on to remove its
    temporaries and exit while a worker slow to die still ran (and one alive after 10 s was left running).  Real
    signals (``os.kill`` of this process: ``_thread.interrupt_main`` wakes no blocked wait), a real spawned pool;
    the worker's task stands in for a scan only to be slow to die.  Now the workers are waited out, then the first
    interrupt is raised."""
    monkeypatch.setattr(engines, "process_scan", slow_to_die)
    sent: list[tuple[float, bool]] = []

    def interrupt_twice() -> None:
        deadline = time.monotonic() + 120
        while not (tmp_path / "started").exists():
            assert time.monotonic() < deadline, "the worker never started"
            time.sleep(0.05)
        pid = int((tmp_path / "started").read_text())
        os.kill(os.getpid(), signal.SIGINT)  # the first Ctrl-C: the workers are sent SIGTERM
        while not (tmp_path / "term").exists():
            if time.monotonic() > deadline:
                return
            time.sleep(0.02)
        time.sleep(0.3)
        sent.append((time.monotonic(), _alive(pid)))
        os.kill(os.getpid(), signal.SIGINT)  # the second, while the batch waits for the dying worker

    helper = threading.Thread(target=interrupt_twice, daemon=True)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        helper.start()
        with pytest.raises(KeyboardInterrupt):
            engines._run_pools(deque([tmp_path]), lambda record: None, jobs=1, threads=1)  # type: ignore[list-item]
        returned = time.monotonic()
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a signal landing late (a loaded host) stops nothing now
        helper.join(60)
    finally:
        signal.signal(signal.SIGINT, previous)
    pid = int((tmp_path / "started").read_text())
    assert sent and sent[0][1], "the second interrupt was not sent while the worker was dying"
    assert sent[0][0] < returned
    assert not _alive(pid), "the batch returned while its worker process still ran"


def deaf_to_sigterm(folder: Path) -> None:
    """The task a worker runs instead of a scan: it says it started, then ignores SIGTERM."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    (folder / "started").write_text(str(os.getpid()))
    time.sleep(120)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="POSIX signals")
def test_a_worker_still_alive_after_sigterm_is_killed_before_the_batch_ends(tmp_path, monkeypatch):
    """SAFE28: a worker still alive 10 s after SIGTERM was left running when the interrupted batch ended (it could go
    on writing into OUT after the batch had removed its temporaries and released its lock).  It is killed now
    (SIGKILL after :data:`defacer.batch.engines.TERMINATE_WAIT_S`, lowered here to 1 s) and waited for.  A real
    SIGINT to this process, a real spawned pool; the task ignores SIGTERM to stand in for a worker that does not
    end."""
    monkeypatch.setattr(engines, "process_scan", deaf_to_sigterm)
    monkeypatch.setattr(engines, "TERMINATE_WAIT_S", 1.0, raising=False)

    def interrupt() -> None:
        deadline = time.monotonic() + 120
        while not (tmp_path / "started").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # the worker has set its handler
        os.kill(os.getpid(), signal.SIGINT)

    helper = threading.Thread(target=interrupt, daemon=True)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    pid = None
    try:
        helper.start()
        with pytest.raises(KeyboardInterrupt):
            engines._run_pools(deque([tmp_path]), lambda record: None, jobs=1, threads=1)  # type: ignore[list-item]
        pid = int((tmp_path / "started").read_text())
        assert not _alive(pid), "the batch returned while its worker process still ran"
    finally:
        signal.signal(signal.SIGINT, previous)
        if pid is not None and _alive(pid):
            os.kill(pid, signal.SIGKILL)
