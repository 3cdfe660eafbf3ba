"""defacer.threads: waiting for a thread that Ctrl-C cannot cut short."""

from __future__ import annotations

import _thread
import threading
import time

import pytest

from defacer.threads import WaitedThread, wait_out


def test_an_interrupted_wait_is_raised_only_once_the_thread_is_out_of_its_target() -> None:
    """Ctrl-C (a KeyboardInterrupt in the waiting thread) during ``Thread.join`` returned at once and marked the
    thread as ended though it still ran (Python 3.11); :func:`wait_out` raises it after the target has returned."""
    release = threading.Event()
    returned: list[float] = []

    def target() -> None:
        release.wait(5)
        time.sleep(0.2)
        returned.append(time.monotonic())

    thread = WaitedThread(target=target, name="defacer-test-waited")
    thread.start()
    threading.Timer(0.1, _thread.interrupt_main).start()  # a KeyboardInterrupt in this thread, as Ctrl-C gives
    threading.Timer(0.3, release.set).start()
    with pytest.raises(KeyboardInterrupt):
        wait_out([thread])
    raised = time.monotonic()
    assert returned and returned[0] <= raised
    assert not thread.is_alive()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_threads_never_started_are_skipped_and_errors_stay_in_the_thread() -> None:
    never = WaitedThread(target=lambda: None)
    failing = WaitedThread(target=lambda: 1 / 0)
    failing.start()
    wait_out([never, failing])
    assert failing.finished.is_set() and not failing.is_alive() and not never.finished.is_set()
