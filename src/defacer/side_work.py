"""Work done in a thread beside the main one, where the process may use two cores or more.

On the project's 2-core machine the network's two members keep both cores busy, but the stages before and after
it (the box, the clean-up, the face and ear refinements, the distortions) run on one core while the other waits.
Pieces of that work that do not depend on one another run here side by side instead: numpy's and SciPy's array
routines (``scipy.ndimage``'s filters, distance transforms, labelling, interpolation) let go of Python's lock while
they run, so two threads use two cores.  Each piece computes exactly what it computed in turn before (the same
functions on the same arrays): only the order in time changes, never a value.

What runs beside what (:mod:`defacer.pipeline`, :mod:`defacer.detect.model`): the head's depth below its
rolled-off surface and what the ear rule derives from the head alone, beside the detector's box (the ear refinement
takes them); each side's auricle delimited by the ear refinement, one side in a thread of its own; every other
region of the network's map brought onto the scan's grid in a thread of its own; the deep cap's two depth maps
beside the distortions; the network's working memory touched while the detector is made
(:mod:`defacer.detect.prefault`).

:func:`side_by_side` says whether there is a second core to use (the process's CPU affinity; ``DEFACER_SIDE_WORK=0``
keeps everything in the calling thread: the batch workers, which share the machine with each other, run one thread
each).  :class:`Beside` runs one callable in a thread (or at once, in the caller's thread) and hands back its
result, or raises its error, where it is taken; :func:`each` maps a callable over a few items side by side.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from defacer.threads import WaitedThread

T = TypeVar("T")
U = TypeVar("U")

#: Environment variable that turns side-by-side work off (``0``); the batch workers set it
#: (:data:`defacer.batch.engines.SINGLE_THREADED_ENV`).
ENV = "DEFACER_SIDE_WORK"


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the system tells it, else the machine's)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # no affinity call on this system (macOS, Windows)
        return os.cpu_count() or 1


def side_by_side() -> bool:
    """Whether independent pieces of work may run in a second thread: two cores or more, and not turned off."""
    return os.environ.get(ENV, "1") != "0" and available_cores() >= 2


class Beside(Generic[T]):
    """``work()`` begun in a thread of its own (in the calling thread at once, where ``run_beside`` is false).

    Parameters
    ----------
    work : callable
        Takes nothing; its result is kept for :meth:`result`.
    run_beside : bool, optional
        Run it in a thread (default: :func:`side_by_side`).
    name : str
        The thread's name.
    """

    def __init__(self, work: Callable[[], T], run_beside: bool | None = None, name: str = "defacer-side-work") -> None:
        self._work = work
        self._value: T | None = None
        self._error: BaseException | None = None
        self._thread: WaitedThread | None = None
        if side_by_side() if run_beside is None else run_beside:
            self._thread = WaitedThread(target=self._run, name=name, daemon=True)
            self._thread.start()
        else:
            self._run()

    def _run(self) -> None:
        try:
            self._value = self._work()
        except BaseException as err:  # noqa: BLE001 - raised again where the result is taken
            self._error = err

    def result(self) -> T:
        """The work's result, once it is done (waits for its thread).

        Raises
        ------
        BaseException
            Whatever the work raised, in the calling thread; an interrupt of the wait (Ctrl-C) once the work has
        returned.
        """
        if self._thread is not None:
            # waited out through Ctrl-C (defacer.threads): an interrupted join returned at once, the work still
            # running in numpy or SciPy and, on Python 3.11, its thread marked ended, so the exit no longer waited
            self._thread.wait_out()
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]


def each(work: Callable[[U], T], items: Sequence[U], run_beside: bool | None = None) -> list[T]:
    """``[work(item) for item in items]``, every item but the first in a thread of its own beside the calling
    thread's (:class:`Beside`); the results in the items' order.

    Every thread is waited for before an error is raised (the first item's in order).
    """
    if len(items) < 2 or not (side_by_side() if run_beside is None else run_beside):
        return [work(item) for item in items]
    others = [Beside(functools.partial(work, item), True) for item in items[1:]]
    try:
        first = work(items[0])
    except BaseException:
        for other in others:
            with contextlib.suppress(BaseException):
                other.result()
        raise
    rest = []
    for index, other in enumerate(others):
        try:
            rest.append(other.result())
        except BaseException:
            for later in others[index + 1:]:
                with contextlib.suppress(BaseException):
                    later.result()
            raise
    return [first, *rest]
