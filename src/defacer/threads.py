"""Threads whose waiting an interrupt cannot cut short.

``Thread.join`` interrupted by Ctrl-C (a ``KeyboardInterrupt`` raised in the waiting thread) marks the joined thread
as ended though it still runs: Python 3.11's ``Thread._wait_for_tstate_lock`` (after bpo-45274) releases the lock the
running thread holds and calls ``_stop``.  The interpreter's exit then no longer waits for that thread, and a process
that ends while the thread runs inside onnxruntime aborts ("terminate called without an active exception",
SIGABRT, exit 134) instead of exiting with the status it asked for.  A :class:`WaitedThread` sets an event when its
target has returned, and :func:`wait_out` waits on those events, which an interrupt leaves intact, and raises the
interrupt once every thread is out of its target.

Imports nothing but :mod:`threading`: :mod:`defacer.ahead` uses it before the command's other imports.
"""

from __future__ import annotations

import threading

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (as defacer.ahead)
if TYPE_CHECKING:
    from collections.abc import Iterable


class WaitedThread(threading.Thread):
    """A thread that sets :attr:`finished` once its target has returned or raised (see :func:`wait_out`)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.finished = threading.Event()

    def run(self) -> None:
        try:
            super().run()
        finally:
            self.finished.set()

    def wait_out(self) -> None:
        """Wait until this thread is out of its target, through interrupts (:func:`wait_out`)."""
        wait_out([self])


def wait_out(threads: Iterable[WaitedThread]) -> None:
    """Wait until every started thread of ``threads`` is out of its target, then join it; an interrupt raised in the
    calling thread meanwhile (Ctrl-C, or a SIGTERM the command turned into one) is raised again after that.

    The wait lasts as long as the longest target still running (for the detector: one network pass at most).
    Threads never started are skipped.
    """
    interrupt: BaseException | None = None
    for thread in threads:
        if thread.ident is None:  # never started: nothing runs
            continue
        while True:
            try:
                thread.finished.wait()
                thread.join()  # the target has returned: only the thread's own ending is left
                break
            except BaseException as err:  # noqa: BLE001 - raised below, once the threads are out of their targets
                interrupt = interrupt if interrupt is not None else err
    if interrupt is not None:
        raise interrupt
