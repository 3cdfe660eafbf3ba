"""Independent work run beside the main thread (defacer.side_work): the same values as in one thread, errors where
the result is taken, no thread left running, and a head's derived values computed once when two threads ask."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from defacer.head import analyse_head, depth_below_surface
from defacer.phantom import make_phantom
from defacer.side_work import Beside, each, side_by_side
from defacer.volume import canonical_reorientation


def test_beside_runs_its_work_in_another_thread_and_hands_back_its_result() -> None:
    where: list[str] = []

    def work() -> int:
        where.append(threading.current_thread().name)
        return 42

    assert Beside(work, True, name="side-test").result() == 42
    assert Beside(work, False).result() == 42
    assert where == ["side-test", threading.current_thread().name]


def test_an_error_in_the_side_thread_is_raised_where_the_result_is_taken() -> None:
    def work() -> int:
        raise ValueError("bad input")

    pending = Beside(work, True)
    with pytest.raises(ValueError, match="bad input"):
        pending.result()


def test_each_gives_the_results_in_order_and_runs_the_other_items_beside() -> None:
    names: dict[int, str] = {}

    def work(item: int) -> int:
        names[item] = threading.current_thread().name
        time.sleep(0.01)
        return item * item

    assert each(work, [1, 2, 3], True) == [1, 4, 9]
    assert names[1] == threading.current_thread().name
    assert names[2] != names[1] and names[3] != names[1]
    assert each(work, [4, 5], False) == [16, 25]
    assert names[5] == threading.current_thread().name
    assert each(work, [], True) == []


def test_each_waits_for_every_thread_before_raising_the_first_items_error() -> None:
    finished: list[int] = []

    def work(item: int) -> int:
        if item == 0:
            raise RuntimeError("first failed")
        time.sleep(0.05)
        finished.append(item)
        return item

    before = threading.active_count()
    with pytest.raises(RuntimeError, match="first failed"):
        each(work, [0, 1, 2], True)
    assert sorted(finished) == [1, 2], "the other items ran to their end before the error came back"
    assert threading.active_count() == before


def test_side_work_is_off_with_the_environment_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEFACER_SIDE_WORK", "0")
    assert side_by_side() is False
    assert Beside(lambda: threading.current_thread().name).result() == threading.current_thread().name


def _phantom_head():
    ph = make_phantom(3.0)
    reo = canonical_reorientation(ph.volume.affine, ph.volume.shape)
    image = reo.to_ras(ph.volume.values()).astype(np.float32)
    return image, reo.ras_spacing


def test_two_threads_asking_for_a_heads_depth_compute_it_once_and_get_the_same_array() -> None:
    image, spacing = _phantom_head()
    head = analyse_head(image, spacing)
    calls: list[str] = []
    started = threading.Event()
    release = threading.Event()

    def slow() -> np.ndarray:
        calls.append(threading.current_thread().name)
        started.set()
        release.wait(5)
        return np.arange(4, dtype=np.float32)

    got: dict[str, np.ndarray] = {}
    first = threading.Thread(target=lambda: got.__setitem__("first", head.derived("key", slow)), name="first")
    first.start()
    assert started.wait(5)
    second = threading.Thread(target=lambda: got.__setitem__("second", head.derived("key", slow)), name="second")
    second.start()
    time.sleep(0.05)
    assert "second" not in got, "the second thread waits for the first's value"
    release.set()
    first.join(5)
    second.join(5)
    assert calls == ["first"]
    assert got["first"] is got["second"]
    assert not got["first"].flags.writeable
    # the real one: computed in a side thread, the same floats as computed here on a fresh head
    pending = Beside(lambda: depth_below_surface(head, spacing), True)
    assert np.array_equal(pending.result(), depth_below_surface(analyse_head(image, spacing), spacing))


def test_a_thread_waiting_on_a_failed_computation_computes_it_itself() -> None:
    image, spacing = _phantom_head()
    head = analyse_head(image, spacing)
    started = threading.Event()
    release = threading.Event()

    def failing() -> np.ndarray:
        started.set()
        release.wait(5)
        raise MemoryError("no room")

    errors: list[BaseException] = []

    def first() -> None:
        try:
            head.derived("key", failing)
        except MemoryError as err:
            errors.append(err)

    thread = threading.Thread(target=first)
    thread.start()
    assert started.wait(5)
    waiting = Beside(lambda: head.derived("key", lambda: np.ones(3, np.float32)), True)
    time.sleep(0.05)
    release.set()
    thread.join(5)
    assert len(errors) == 1
    assert np.array_equal(waiting.result(), np.ones(3, np.float32))
    assert np.array_equal(head.cache["key"], np.ones(3, np.float32))


def test_an_interrupted_wait_for_the_side_work_is_raised_once_its_thread_is_out() -> None:
    """SAFE27: Ctrl-C while the calling thread waited for the work beside it (``Thread.join`` in
    :meth:`Beside.result`) returned at once with the work still running in numpy or SciPy (and, on Python 3.11,
    marked its thread ended, so the exit no longer waited for it).  Now the wait is waited out
    (:mod:`defacer.threads`) and the interrupt raised after the work has returned.  A real SIGINT at 0.15 s into a
    0.6 s piece of work (a real array computed, then a sleep standing for a long SciPy step)."""
    import os
    import signal

    out_of_work: list[float] = []

    def work() -> int:
        total = int(np.arange(1000).sum())
        time.sleep(0.6)
        out_of_work.append(time.monotonic())
        return total

    side = Beside(work, run_beside=True, name="defacer-test-side")
    timer = threading.Timer(0.15, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        side.result()
        time.sleep(30)  # not reached where the signal comes in time; a late one (a loaded machine) lands here
    raised = time.monotonic()
    timer.join()
    assert out_of_work and out_of_work[0] <= raised, "the interrupt was raised while the side work still ran"
    assert side._thread is not None and not side._thread.is_alive()
