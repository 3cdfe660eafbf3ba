"""defacer.threads: waiting for a thread that Ctrl-C cannot cut short."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import pytest

from defacer.threads import WaitedThread, wait_out


def _waiting_in_wait_out(ident: int) -> bool:
    """Whether the thread ``ident`` is inside :func:`wait_out` now."""
    frame = sys._current_frames().get(ident)
    while frame is not None:
        if frame.f_code is wait_out.__code__:
            return True
        frame = frame.f_back
    return False


def test_an_interrupted_wait_is_raised_only_once_the_thread_is_out_of_its_target() -> None:
    """Ctrl-C (a KeyboardInterrupt in the waiting thread) during ``Thread.join`` returned at once and marked the
    thread as ended though it still ran (Python 3.11); :func:`wait_out` raises it after the target has returned.

    The target itself interrupts the main thread once that one waits inside :func:`wait_out`, then runs on for
    0.2 s: no timer whose lateness on a loaded machine could let the wait end first (the clean-clone CI at load 16
    once saw "DID NOT RAISE" with timers at 0.1 and 0.3 s)."""
    main = threading.get_ident()
    returned: list[float] = []
    interrupted: list[bool] = []

    def target() -> None:
        deadline = time.monotonic() + 30
        while not _waiting_in_wait_out(main) and time.monotonic() < deadline:
            time.sleep(0.005)
        interrupted.append(_waiting_in_wait_out(main))
        # a real SIGINT, as Ctrl-C gives (_thread.interrupt_main sends none: it does not wake a blocked join)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.2)
        returned.append(time.monotonic())

    thread = WaitedThread(target=target, name="defacer-test-waited")
    thread.start()
    with pytest.raises(KeyboardInterrupt):
        wait_out([thread])
    raised = time.monotonic()
    assert interrupted == [True]
    assert returned and returned[0] <= raised
    assert not thread.is_alive()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_threads_never_started_are_skipped_and_errors_stay_in_the_thread() -> None:
    never = WaitedThread(target=lambda: None)
    failing = WaitedThread(target=lambda: 1 / 0)
    failing.start()
    wait_out([never, failing])
    assert failing.finished.is_set() and not failing.is_alive() and not never.finished.is_set()
