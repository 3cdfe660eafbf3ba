"""The members' working memory touched ahead (defacer.detect.prefault): a first pass without page faults, the same
floats, and the memory handed back after the pass."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from defacer.detect.model import OnnxDetector, default_weights_path
from defacer.side_work import available_cores

SHIPPED = default_weights_path()
needs_weights = pytest.mark.skipif(not SHIPPED.is_file(), reason="shipped weights not built yet")
needs_two_cores = pytest.mark.skipif(available_cores() < 2, reason="the members run side by side on 2 cores or more")


def _faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096 / 2**20


def _wait_for_touching(detector: OnnxDetector) -> None:
    """Wait for the touching where there is one (the checks after it fail where there is none)."""
    ahead = getattr(detector._session, "_prefault", None)
    if ahead is not None:
        ahead._thread.join()
        assert ahead.touched


def _box() -> np.ndarray:
    return np.random.default_rng(7).random((96, 96, 96), dtype=np.float32)


def test_the_touch_graph_is_a_valid_onnx_model_that_writes_its_tensor() -> None:
    from defacer.detect.prefault import touch_model

    onnx = pytest.importorskip("onnx")
    model = onnx.load_from_string(touch_model())
    onnx.checker.check_model(model, full_check=True)
    assert [n.op_type for n in model.graph.node] == ["ConstantOfShape", "Shape"]
    from onnx import numpy_helper

    # not zeros: pages of zeros may go back to the kernel's shared zero page and fault again on the pass's write
    assert numpy_helper.to_array(model.graph.node[0].attribute[0].t).tolist() == [1.0]
    # the faults are counted in a fresh interpreter: in this one, a library an earlier test loaded (OpenVINO's
    # allocator) may hand the 64 MB back from pages it keeps, already faulted (the clean-clone CI saw 6 faults)
    script = (
        "import resource, numpy as np, onnxruntime as ort\n"
        "from defacer.detect.prefault import touch_model\n"
        "session = ort.InferenceSession(touch_model(), providers=['CPUExecutionProvider'])\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "(size,) = session.run(None, {'shape': np.array([16 << 20], np.int64)})  # 64 MB, written\n"
        "print(size.tolist()[0], resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)\n"
    )
    import defacer

    env = dict(os.environ, PYTHONPATH=str(Path(defacer.__file__).resolve().parents[1]))
    done = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    size, faults = (int(word) for word in done.stdout.split())
    assert size == 16 << 20
    assert faults > 0.8 * (64 << 20) / 4096  # its pages were touched, though nothing reads them


@needs_weights
@needs_two_cores
def test_the_first_pass_takes_its_memory_touched_ahead_and_gives_the_graphs_floats(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEFACER_SIDE_WORK", "1")
    whole = OnnxDetector(threads=1)
    box = _box()
    expected = whole.probabilities(box)
    detector = OnnxDetector(threads=2)
    _wait_for_touching(detector)  # as in the command, where the imports and the scan's reading give it time
    before = _faults()
    first = detector.probabilities(box)
    first_faults = _faults() - before
    before = _faults()
    second = detector.probabilities(box)
    second_faults = _faults() - before
    assert np.array_equal(first, expected) and np.array_equal(second, expected)
    # without the touching a pass maps ~280 MB of activations afresh (70,000-90,000 pages), the second one too;
    # with it the first pass faults ~20-30 pages here (2 cores, Linux 6.18, THP madvise), but the clean-clone CI
    # measured 13,844 against 71,468 (its kernel took back part of the touched pages, then written as zeros):
    # a quarter tells the touching from none (about 1 to 1) with room for such a host
    assert second_faults > 20_000
    assert first_faults < second_faults / 4


@needs_weights
@needs_two_cores
def test_the_arena_is_handed_back_after_the_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEFACER_SIDE_WORK", "1")
    detector = OnnxDetector(threads=2)
    _wait_for_touching(detector)
    held = _rss_mb()
    detector.probabilities(_box())
    deadline = time.monotonic() + 10  # handed back in a thread beside what follows the pass
    while _rss_mb() >= held - 150 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _rss_mb() < held - 150  # the ~300 MB touched (less the 14 MB mean it now holds) went back


@needs_weights
def test_without_a_second_thread_nothing_is_touched_ahead(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEFACER_SIDE_WORK", "0")
    detector = OnnxDetector(threads=2)
    assert getattr(detector._session, "_prefault", None) is None
    whole = OnnxDetector(threads=1)
    box = _box()
    assert np.array_equal(detector.probabilities(box), whole.probabilities(box))


@needs_weights
@needs_two_cores
def test_a_box_too_large_to_touch_ahead_runs_as_before(monkeypatch: pytest.MonkeyPatch) -> None:
    from defacer.detect import prefault

    monkeypatch.setenv("DEFACER_SIDE_WORK", "1")
    monkeypatch.setattr(prefault, "MAX_TOUCH_BYTES", 200 << 20)  # below the shipped box's ~297 MiB
    detector = OnnxDetector(threads=2)
    assert detector.member_sessions == 2 and getattr(detector._session, "_prefault", None) is None
    whole = OnnxDetector(threads=1)
    box = _box()
    assert np.array_equal(detector.probabilities(box), whole.probabilities(box))


EXIT_WHILE_TOUCHING = """
import sys, time
from defacer.detect.model import OnnxDetector, default_weights_path
detector = OnnxDetector(default_weights_path())
time.sleep(float(sys.argv[1]))
sys.exit(1)
"""


@needs_weights
@needs_two_cores
def test_a_process_ending_while_the_memory_is_touched_exits_with_its_own_status(tmp_path: Path) -> None:
    """A run refused after its detector was made ends while the touching may still run inside onnxruntime; with the
    touching in a daemon thread the process then aborted ("terminate called without an active exception", SIGABRT)
    in 2 of 8 such exits (HOSTILE25 found it through two ``deface --verify`` runs into one output).  Every exit,
    whatever the moment, gives the status the program asked for."""
    import os
    import subprocess
    import sys

    script = tmp_path / "exit_while_touching.py"
    script.write_text(EXIT_WHILE_TOUCHING)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    codes = []
    for delay in (0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.05, 0.1, 0.2):
        done = subprocess.run([sys.executable, str(script), str(delay)], env=env, capture_output=True, text=True,
                              check=False,
                              timeout=120)
        codes.append((delay, done.returncode, done.stderr.strip()[-200:]))
    assert all(code == 1 for _, code, _ in codes), codes


INTERRUPT_WHILE_TOUCHING = """
import os, signal, sys, threading
from defacer.detect.model import OnnxDetector, default_weights_path
detector = OnnxDetector(default_weights_path())
assert getattr(detector._session, "_prefault", None) is not None, "no memory touched ahead"
timer = threading.Timer(float(sys.argv[1]), lambda: os.kill(os.getpid(), signal.SIGINT))
try:
    timer.start()
    detector.settle()  # waits for the touching, as a run refused before its pass does (defacer.ahead.forget)
    timer.cancel()
except KeyboardInterrupt:
    pass
sys.exit(1)
"""


@needs_weights
@needs_two_cores
def test_a_process_interrupted_while_waiting_for_the_touching_exits_with_its_own_status(tmp_path: Path) -> None:
    """Ctrl-C while the run waits for the memory's touching (``Thread.join``) marked the touching thread as ended
    though it still ran inside onnxruntime (Python 3.11), so the exit did not wait for it: SIGABRT in 5 of 12 such
    exits at 0.05-0.2 s (lead, 10:15 UTC, load 7-8).  The wait is now waited out (:mod:`defacer.threads`)."""
    import os
    import subprocess
    import sys

    script = tmp_path / "interrupt_while_touching.py"
    script.write_text(INTERRUPT_WHILE_TOUCHING)
    env = dict(os.environ, DEFACER_SIDE_WORK="1", PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    codes = []
    for delay in (0.05, 0.08, 0.1, 0.12, 0.15, 0.2, 0.1, 0.15, 0.2, 0.12):
        done = subprocess.run([sys.executable, str(script), str(delay)], env=env, capture_output=True, text=True,
                              check=False, timeout=120)
        codes.append((delay, done.returncode, done.stderr.strip()[-200:]))
    assert all(code == 1 for _, code, _ in codes), codes
