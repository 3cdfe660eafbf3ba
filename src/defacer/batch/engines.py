"""Run scan tasks: serially, on a local process pool, or on a Dask distributed cluster.

Every engine calls the same :func:`defacer.batch.task.process_scan` and hands each
:class:`~defacer.batch.manifest.ScanRecord` to ``on_result`` in the main process as soon as
it arrives (the runner writes it to the manifest there).  Outputs do not depend on the
engine: each task carries its own seed.

A worker that dies (killed, out of memory) never stops the batch: the scans it may have
been running are tried once more in a fresh worker, then recorded as failed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import multiprocessing
import os
import signal
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from defacer.batch.manifest import ScanRecord
from defacer.batch.task import ScanStopped, ScanTask, failed_record, init_worker, process_scan
from defacer.errors import DefacerError, MissingExtraError

log = logging.getLogger(__name__)

OnResult = Callable[[ScanRecord], None]

#: How many times a scan is tried when its worker dies under it.
MAX_ATTEMPTS = 2

WORKER_DIED = (
    "The worker process died while defacing this scan (killed, or out of memory). It was tried {n} times; "
    "rerun the batch to try again, or run this scan alone with 'defacer deface' to see what happens."
)


#: Environment that makes the math libraries single-threaded in worker processes.  Every
#: engine runs scans with one BLAS/OpenMP thread per worker (as Dask's nannies do by
#: default): multi-threaded BLAS may sum in another order and change a few voxels, and
#: outputs must not depend on the engine.
#: ``DEFACER_SIDE_WORK=0``: no stage runs in a thread beside the worker's own (:mod:`defacer.side_work`; the
#: workers share the cores already, and the outputs are the same either way).
SINGLE_THREADED_ENV: dict[str, str] = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
                                       "DEFACER_SIDE_WORK": "0"}


@contextlib.contextmanager
def _worker_environment() -> Iterator[None]:
    """Set :data:`SINGLE_THREADED_ENV` while worker processes are spawned (they inherit it)."""
    saved = {name: os.environ.get(name) for name in SINGLE_THREADED_ENV}
    os.environ.update(SINGLE_THREADED_ENV)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def run_serial(tasks: Sequence[ScanTask], on_result: OnResult) -> None:
    """Run the tasks one after another in one worker process.

    A separate process (rather than this one) gives the same single-threaded math as the
    other engines, so the same bytes, and a crash in one scan cannot end the batch.
    """
    run_processes(tasks, on_result, jobs=1, threads=1)


def run_processes(tasks: Sequence[ScanTask], on_result: OnResult, *, jobs: int, threads: int) -> None:
    """Run the tasks on ``jobs`` local worker processes (spawned; detector loaded once each).

    At most ``jobs`` tasks are in flight, so when a worker dies the scans it may have held
    are known: they are retried once in a fresh pool, then recorded as failed.
    """
    with _worker_environment():
        _run_pools(deque(tasks), on_result, jobs=jobs, threads=threads)


def _run_pools(queue: deque[ScanTask], on_result: OnResult, *, jobs: int, threads: int) -> None:
    context = multiprocessing.get_context("spawn")
    while queue:
        in_flight: dict[Future[ScanRecord], ScanTask] = {}
        broken = False
        pool = ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=init_worker, initargs=(threads,))
        try:
            while (queue or in_flight) and not broken:
                while queue and len(in_flight) < jobs and not broken:
                    task = queue.popleft()
                    try:
                        in_flight[pool.submit(process_scan, task)] = task
                    except BrokenProcessPool:  # a worker died between scans: this one never started
                        queue.appendleft(task)
                        broken = True
                if not in_flight:
                    continue
                finished, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in finished:
                    task = in_flight.pop(future)
                    try:
                        on_result(future.result())
                    except BrokenProcessPool:
                        broken = True
                        _retry_or_fail(task, queue, on_result)
            if broken:
                for task in in_flight.values():
                    _retry_or_fail(task, queue, on_result)
                log.warning("a worker process died; starting a fresh pool for the remaining %d scans", len(queue))
        except BaseException:
            # Ctrl-C (workers ignore SIGINT) or an error here: stop the workers now.  Their
            # half-written temporaries are removed by the runner; final names are untouched.
            for future in in_flight:
                future.cancel()
            try:
                _terminate_workers(pool)
            except KeyboardInterrupt:
                pass  # a further Ctrl-C or SIGTERM while the workers were stopped: the first one is raised
            finally:
                pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown(wait=not broken, cancel_futures=True)


#: Seconds a stopped worker process is given to end after SIGTERM, then again after SIGKILL.
TERMINATE_WAIT_S = 10.0


def _terminate_workers(pool: ProcessPoolExecutor) -> None:
    """Stop the pool's worker processes (SIGTERM, then SIGKILL after :data:`TERMINATE_WAIT_S`) and wait until each
    has ended, through further interrupts; the first interrupt that came meanwhile is raised once they have.

    The waits were plain ``join(timeout=10)``: a second Ctrl-C (or a SIGTERM the command turned into one) raised out
    of the first wait, so the other workers were not waited for and the batch went on to remove the temporaries
    and exit while a worker slow to die still ran; and a worker still alive after the 10 s was left running.
    """
    processes = list((getattr(pool, "_processes", None) or {}).values())
    for process in processes:
        if process.is_alive():
            process.terminate()
    interrupt: BaseException | None = None
    for process in processes:
        for stop in (None, process.kill):
            if stop is not None and process.is_alive():
                log.warning("worker process %s did not end %.0f s after SIGTERM; killing it", process.pid,
                            TERMINATE_WAIT_S)
                stop()
            deadline = time.monotonic() + TERMINATE_WAIT_S
            while True:
                try:
                    process.join(timeout=max(0.0, deadline - time.monotonic()))
                    break
                except BaseException as err:  # noqa: BLE001 - raised below, once the workers have ended
                    interrupt = interrupt if interrupt is not None else err
            if not process.is_alive():
                break
    if interrupt is not None:
        raise interrupt


def _retry_or_fail(task: ScanTask, queue: deque[ScanTask], on_result: OnResult) -> None:
    if task.attempts < MAX_ATTEMPTS:
        queue.appendleft(dataclasses.replace(task, attempts=task.attempts + 1))
    else:
        on_result(failed_record(task, WORKER_DIED.format(n=task.attempts), "WorkerDied"))


def _import_distributed() -> object:
    try:
        import distributed
    except ImportError as err:
        raise MissingExtraError("batch", "distributed") from err
    return distributed


def run_dask(
    tasks: Sequence[ScanTask], on_result: OnResult, *, scheduler: str, jobs: int, threads: int
) -> None:
    """Run the tasks on a Dask distributed cluster.

    Parameters
    ----------
    scheduler : str
        ``"local"`` starts a :class:`distributed.LocalCluster` of ``jobs`` single-threaded
        worker processes on this machine; anything else is a scheduler address
        (``tcp://host:8786``) or a scheduler file (``*.json``) of a running cluster whose
        workers have defacer installed and can read IN and write OUT at the same paths.

    Raises
    ------
    DefacerError
        If the scheduler cannot be reached.
    """
    distributed = _import_distributed()
    # distributed logs every connection at INFO and routine shutdown steps at WARNING: show
    # them only with -v.
    root_level = logging.getLogger().getEffectiveLevel()
    logging.getLogger("distributed").setLevel(root_level if root_level < logging.WARNING else logging.ERROR)
    cluster = None
    try:
        if scheduler == "local":
            # Worker processes inherit an ignored SIGINT, so Ctrl-C reaches only this process,
            # which cancels the tasks and closes the cluster (no tracebacks from every worker).
            # The statistical profiler samples every worker's stack every 10 ms: costly for
            # long CPU-bound tasks, and not needed here.
            import dask

            previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
            try:
                with dask.config.set({"distributed.worker.profile.enabled": False}):
                    cluster = distributed.LocalCluster(  # type: ignore[attr-defined]
                        n_workers=max(1, min(jobs, len(tasks))), threads_per_worker=1, processes=True,
                        # CRITICAL: a worker whose heartbeat meets the closing scheduler after Ctrl-C logs that
                        # at ERROR with a traceback; task errors come back through the futures anyway
                        silence_logs=logging.CRITICAL,
                    )
            finally:
                signal.signal(signal.SIGINT, previous)
            log.info("Dask LocalCluster with %d workers; dashboard at %s", jobs, cluster.dashboard_link)
            client = distributed.Client(cluster)  # type: ignore[attr-defined]
        elif scheduler.endswith(".json"):
            client = distributed.Client(scheduler_file=scheduler, timeout="30s")  # type: ignore[attr-defined]
        else:
            client = distributed.Client(scheduler, timeout="30s")  # type: ignore[attr-defined]
    except (OSError, TimeoutError) as err:
        if cluster is not None:
            cluster.close()
        raise DefacerError(
            f"Could not connect to the Dask scheduler '{scheduler}': {err}. Check the address (tcp://HOST:8786) "
            "and that 'dask scheduler' is running, or use --scheduler local."
        ) from err
    try:
        if scheduler == "local":  # its own workers: closing the cluster stops them
            _submit_all(client, distributed, tasks, on_result)
        else:  # a cluster it does not own: its running scans are asked to stop, and waited for
            stop_event = f"defacer-batch-stop-{uuid.uuid4().hex}"
            _submit_all(client, distributed, [dataclasses.replace(task, stop_event=stop_event) for task in tasks],
                        on_result, stop_event=stop_event)
    finally:
        with _quiet_client():
            client.close()
        if cluster is not None:
            cluster.close()


@contextlib.contextmanager
def _quiet_client() -> Iterator[None]:
    """``distributed.client``'s own errors left unsaid: closing a client whose scheduler was lost logs its cancelled
    reconnection at ERROR with a traceback (after the batch had said in words what the lost scheduler means)."""
    logger = logging.getLogger("distributed.client")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


class LeftRunning(KeyboardInterrupt):
    """An interrupt of a batch on a Dask cluster it does not own that stopped waiting for its running scans to stop
    (Ctrl-C again, :data:`STOP_WAIT_S` passed, the scheduler lost): those scans may still write into OUT and its QC
    folder after the batch has ended.

    Attributes
    ----------
    keys : list of str
        The scans (their keys) still running on the cluster when the batch stopped waiting.
    """

    def __init__(self, interrupt: KeyboardInterrupt, keys: Sequence[str]) -> None:
        super().__init__(*interrupt.args)  # the same words ("stopped by signal SIGTERM"), the same notes
        for note in getattr(interrupt, "__notes__", ()):
            self.add_note(note)
        self.keys = list(keys)


#: How long an interrupted batch waits for the scans a cluster it does not own is running to stop at their next
#: step (a step of a large head: a minute or two), holding its lock on OUT; Ctrl-C again stops waiting.
STOP_WAIT_S = 300.0


def _submit_all(client: object, distributed: object, tasks: Sequence[ScanTask], on_result: OnResult, *,
                stop_event: str | None = None) -> None:
    futures = {}
    for task in tasks:
        future = client.submit(process_scan, task, pure=False, retries=MAX_ATTEMPTS - 1)  # type: ignore[attr-defined]
        futures[future] = task
    try:
        for future in distributed.as_completed(list(futures)):  # type: ignore[attr-defined]
            task = futures[future]
            try:
                record = future.result()
            except KeyboardInterrupt:
                raise
            except Exception as err:  # noqa: BLE001 - KilledWorker, lost connection...
                record = failed_record(task, f"{WORKER_DIED.format(n=MAX_ATTEMPTS)} ({type(err).__name__}: {err})",
                                       "WorkerDied")
            on_result(record)
    except BaseException as err:
        left = [] if stop_event is None else _stop_running(client, distributed, futures, on_result, stop_event)
        with contextlib.suppress(Exception):  # the scheduler lost: nothing to cancel there any more
            client.cancel(list(futures))  # type: ignore[attr-defined]
        if left and isinstance(err, KeyboardInterrupt):
            raise LeftRunning(err, [futures[future].scan.key for future in left]) from err
        raise


def _stop_running(client: Any, distributed: Any, futures: dict[Any, ScanTask], on_result: OnResult,
                  stop_event: str) -> list[Any]:
    """After an interruption, stop the batch's scans on a cluster it does not own before the batch ends.

    Dask cannot stop a task a worker runs (``cancel`` only forgets it): a scan went on and wrote its output, report
    and pictures into OUT and OUT-qc after the batch had ended and released its lock.  The Event ``stop_event`` is
    set (each scan looks at it between its steps, :func:`defacer.batch.task._stop_if_asked`), the scans not yet
    on a worker are cancelled, and those on one are waited for, up to :data:`STOP_WAIT_S` (Ctrl-C again: not
    longer).  A scan that finished meanwhile is recorded (``on_result``); one that stopped is not (done again by
    the next run).

    Returns
    -------
    list
        The futures of the scans a worker's thread still ran when the wait ended (Ctrl-C again, the limit;
        :func:`_executing`): they may yet write into OUT and its QC folder.  Where the scheduler was lost (before the
        wait or during it), every scan that had not finished: nothing more can be known of them, and a worker goes
        on with the step it runs (it wrote a scan's output after the batch had ended, which said "nothing written").
    """
    try:
        distributed.Event(stop_event, client=client).set()
        on_workers = {key for keys in client.processing().values() for key in keys}
    except Exception as err:  # noqa: BLE001 - the scheduler lost: what its workers run can no longer be known
        unknown = [future for future in futures if future.status not in _ENDED]
        log.warning("The Dask scheduler could not be asked to stop the batch's scans (%s): %d scan(s) sent to its "
                    "workers may still run there and write into OUT and its QC folder; wait until its workers are idle "
                    "before using OUT or running the batch again.", type(err).__name__, len(unknown))
        return unknown
    client.cancel([future for future in futures if future.key not in on_workers and not future.done()])
    running = [future for future in futures if future.key in on_workers and not future.done()]
    if running:
        log.warning("Stopping: waiting up to %d s for the %d scan(s) sent to the cluster's workers to stop at "
                    "their next step, so that nothing is written into OUT after this batch has ended (Ctrl-C again: "
                    "stop waiting; they may then still write there).", STOP_WAIT_S, len(running))
        try:
            distributed.wait(running, timeout=STOP_WAIT_S)
        except KeyboardInterrupt:
            log.warning("Not waiting: %d scan(s) may still be running on the cluster and write into OUT and its QC "
                        "folder; wait until its workers are idle (its dashboard) before using OUT or running the "
                        "batch again.", sum(not future.done() for future in running))
        except TimeoutError:
            log.warning("%d scan(s) still run on the cluster after %d s and may write into OUT and its QC folder; "
                        "wait until its workers are idle (its dashboard) before using OUT or running the batch "
                        "again.", sum(not future.done() for future in running), STOP_WAIT_S)
        except Exception as err:  # noqa: BLE001 - the scheduler lost: its futures end "cancelled", the scans go on
            log.warning("The Dask scheduler was lost while the batch waited for its scans (%s): %d scan(s) sent to "
                        "its workers may still run there and write into OUT and its QC folder; wait until its workers "
                        "are idle before using OUT or running the batch again.", type(err).__name__,
                        sum(future.status not in _ENDED for future in running))
    for future in running:
        if future.status == "finished":
            try:
                record = future.result(timeout=30)
            except Exception as err:  # noqa: BLE001 - the result lies on a worker the lost scheduler cannot reach
                log.debug("could not fetch the record of a finished scan: %s", err)
                continue  # not recorded: its output, already written, is said so from the disk (runner)
            if record.error_type != ScanStopped.__name__:
                on_result(record)
    # a future "cancelled" by a lost scheduler is done, but nothing stopped its scan: it counts as unknown
    return _executing(client, [future for future in running if future.status not in _ENDED])


#: Statuses of a Dask future whose task has ended on its worker (its result or its error came back).
_ENDED = frozenset({"finished", "error"})


def _executing(client: Any, futures: list[Any]) -> list[Any]:
    """Those of ``futures`` a cluster's worker thread runs now; all of them where the workers cannot be asked.

    A scan the scheduler sent to a worker may wait there behind another (with one thread per worker the batch's
    second scan did): it looks at the stop Event before its first step and writes nothing.
    """
    if not futures:
        return futures
    try:
        keys = {key for keys in client.run(lambda dask_worker: list(dask_worker.active_threads.values())).values()
                for key in keys}
    except Exception as err:  # noqa: BLE001 - a worker or the scheduler lost: say all of them may still run
        log.debug("could not ask the cluster's workers what they run: %s", err)
        return futures
    return [future for future in futures if future.key in keys]
