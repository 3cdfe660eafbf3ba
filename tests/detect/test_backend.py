"""The detector's network run by OpenVINO where installed, else onnxruntime (defacer.detect.backend): the choice, a
forced backend that is missing (one clear line, no traceback), the sidecar's record, and OpenVINO's labels equal to
onnxruntime's on the phantom.  The rest of the suite runs onnxruntime (tests/conftest.py sets the variable)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime
import pytest

from defacer.detect import backend, model
from defacer.detect.ensemble import split_members
from defacer.detect.model import OnnxDetector, default_weights_path
from defacer.errors import DetectorError
from defacer.phantom import make_phantom, save_phantom

SHIPPED = default_weights_path()
needs_weights = pytest.mark.skipif(not SHIPPED.is_file(), reason="shipped weights not built yet")
HAS_OPENVINO = backend.installed("openvino")
needs_openvino = pytest.mark.skipif(not HAS_OPENVINO, reason="openvino is not installed (pip install 'defacer[openvino]')")
#: OpenVINO caps its inference threads at the cores it may run on
needs_two_cores = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 cores")


def _deface(tmp_path: Path, choice: str | None, block_openvino: bool = False) -> subprocess.CompletedProcess[str]:
    """``defacer deface`` on a 2 mm phantom with ``DEFACER_DETECTOR_BACKEND=choice`` (unset: ``None``); with
    ``block_openvino`` the command runs as if openvino were not installed (``sys.modules['openvino'] = None``, the
    import system's own way of refusing a module)."""
    scan = tmp_path / "head.nii.gz"
    if not scan.exists():
        save_phantom(make_phantom(2.0, axcodes="RAS", seed=5), scan)
    env = {k: v for k, v in os.environ.items() if k != backend.ENV}
    if choice is not None:
        env[backend.ENV] = choice
    argv = ["deface", str(scan), str(tmp_path / "out.nii.gz"), "--force"]
    code = ("import sys\n" + ("sys.modules['openvino'] = None\n" if block_openvino else "")
            + f"from defacer.cli.entry import run\nrun({argv!r})\n")
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300,
                          check=False)


def _sidecar(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "out.defacer.json").read_text())


def test_the_automatic_choice_is_openvino_where_installed_else_onnxruntime(monkeypatch) -> None:
    monkeypatch.delenv(backend.ENV, raising=False)
    assert backend.chosen() == ("openvino" if HAS_OPENVINO else "onnxruntime")
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if not installed
    assert backend.chosen() == "onnxruntime"
    monkeypatch.setenv(backend.ENV, "  OnnxRuntime ")
    assert backend.chosen() == "onnxruntime" and backend.forced()
    monkeypatch.setenv(backend.ENV, "auto")
    assert not backend.forced()


def test_a_forced_backend_that_is_missing_or_unknown_is_a_detector_error(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)
    monkeypatch.setenv(backend.ENV, "openvino")
    with pytest.raises(DetectorError, match=r"DEFACER_DETECTOR_BACKEND=openvino asks for OpenVINO .* not installed"):
        OnnxDetector()
    monkeypatch.setenv(backend.ENV, "tensorflow")
    with pytest.raises(DetectorError, match="names no backend"):
        OnnxDetector()


@needs_weights
def test_forced_onnxruntime_runs_the_members_side_by_side_as_before(monkeypatch) -> None:
    monkeypatch.setenv(backend.ENV, "onnxruntime")
    detector = OnnxDetector(threads=2)
    assert detector.backend == "onnxruntime" and detector.backend_version == onnxruntime.__version__
    assert detector.member_sessions == 2  # the split members (defacer.detect.ensemble), unchanged
    assert OnnxDetector(threads=1).member_sessions == 1


@needs_weights
def test_a_forced_missing_backend_stops_the_command_with_one_clear_line(tmp_path) -> None:
    done = _deface(tmp_path, "openvino", block_openvino=True)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert "DEFACER_DETECTOR_BACKEND=openvino asks for OpenVINO" in done.stderr
    assert 'pip install "defacer[openvino]"' in done.stderr and "unset DEFACER_DETECTOR_BACKEND" in done.stderr
    assert not (tmp_path / "out.nii.gz").exists()
    unknown = _deface(tmp_path, "cuda")
    assert unknown.returncode != 0 and "Traceback" not in unknown.stderr
    assert "DEFACER_DETECTOR_BACKEND=cuda names no backend" in unknown.stderr


@needs_weights
def test_the_sidecar_records_the_backend_and_its_version(tmp_path) -> None:
    done = _deface(tmp_path, None, block_openvino=True)  # automatic, openvino absent: onnxruntime
    assert done.returncode == 0, done.stderr
    assert _sidecar(tmp_path)["detector"]["backend"] == {"name": "onnxruntime", "version": onnxruntime.__version__}
    if HAS_OPENVINO:
        import openvino

        done = _deface(tmp_path, None)  # automatic, openvino installed
        assert done.returncode == 0, done.stderr
        assert _sidecar(tmp_path)["detector"]["backend"] == {"name": "openvino", "version": openvino.__version__}


@needs_weights
@needs_openvino
def test_openvino_gives_onnxruntimes_labels_on_the_phantom(monkeypatch) -> None:
    monkeypatch.setenv(backend.ENV, "onnxruntime")
    ort_detector = OnnxDetector(threads=2)
    monkeypatch.setenv(backend.ENV, "openvino")
    ov_detector = OnnxDetector(threads=2)
    assert ov_detector.backend == "openvino" and ov_detector.member_sessions == 1  # the whole graph
    ph = make_phantom(2.0, axcodes="RAS", seed=5)
    image = ph.volume.values().astype(np.float32)
    box = np.random.default_rng(0).random(ov_detector.box_shape, dtype=np.float32)
    # float rounding only: the lead measured up to 3.4e-4 on a random box (2026-12-06); 1e-3 leaves room for
    # another CPU's kernels
    assert np.abs(ov_detector.probabilities(box) - ort_detector.probabilities(box)).max() < 1e-3
    labels = ov_detector.predict(image, ph.volume.affine)
    assert set(np.unique(labels)) == {0, 1, 2, 3}
    assert np.array_equal(labels, ort_detector.predict(image, ph.volume.affine))


@needs_weights
@needs_openvino
@needs_two_cores
def test_openvino_keeps_the_thread_count_it_is_given_but_never_one(monkeypatch) -> None:
    monkeypatch.setenv(backend.ENV, "openvino")
    one = OnnxDetector(threads=1)  # a batch worker's share: compiled for 2 (defacer.detect.openvino_run.MIN_THREADS)
    assert one._session._compiled.get_property("INFERENCE_NUM_THREADS") == 2
    # more threads than cores are capped by OpenVINO at the cores it sees (2 on the project's VM)
    assert OnnxDetector(threads=2)._session._compiled.get_property("INFERENCE_NUM_THREADS") == 2


@needs_weights
@needs_openvino
@needs_two_cores
def test_openvino_gives_the_same_floats_whatever_the_thread_count(monkeypatch) -> None:
    """A batch's workers get one thread each, a serial batch and ``defacer deface`` every core: their outputs are to
    be the same bytes.  OpenVINO compiled for one thread summed its instance normalisations in another order (up to
    5.7e-4 apart on this box, 1-12 label voxels on 6 of 7 real heads, on a 2-core VM)."""
    monkeypatch.setenv(backend.ENV, "openvino")
    one, two = OnnxDetector(threads=1), OnnxDetector(threads=2)
    box = np.random.default_rng(0).random(two.box_shape, dtype=np.float32)
    assert np.array_equal(one.probabilities(box), two.probabilities(box))


@needs_openvino
def test_openvino_is_imported_without_its_converters_telemetry(tmp_path) -> None:
    """``import openvino`` imports its model converter, whose import sends a usage event to Google Analytics and
    writes a client id under ~/intel (openvino-telemetry; on unless the user opted out).  defacer's import leaves the
    converter out: no telemetry module loaded, nothing written in the home folder."""
    code = ("import sys\nfrom defacer.detect import backend\nov = backend.import_runtime('openvino')\n"
            "assert ov.Core is not None\n"
            "print(sorted(m for m in sys.modules if 'telemetry' in m or m.startswith('openvino.tools')))\n")
    env = {**os.environ, "HOME": str(tmp_path)}
    env.pop("CI", None)  # the telemetry stays quiet in CI jobs: this test must see what a user's machine does
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    assert not (tmp_path / "intel").exists()


def _connects(tmp_path: Path, choice: str) -> list[str]:
    """The network calls (strace: connect, sendto, sendmsg to an address) of ``defacer deface`` on a phantom with
    ``choice``, the process kept alive 8 s after the command so that a delayed upload shows."""
    scan = tmp_path / "head.nii.gz"
    if not scan.exists():
        save_phantom(make_phantom(2.0, axcodes="RAS", seed=5), scan)
    trace = tmp_path / f"trace-{choice}.txt"
    argv = ["deface", str(scan), str(tmp_path / "out.nii.gz"), "--force"]
    code = f"import time\nfrom defacer.cli.entry import run\ntry:\n    run({argv!r})\nfinally:\n    time.sleep(8)\n"
    env = {k: v for k, v in os.environ.items() if k not in ("ORT_DISABLE_TELEMETRY", "CI")}
    env[backend.ENV] = choice
    done = subprocess.run(["strace", "-f", "-qq", "-e", "trace=connect,sendto,sendmsg", "-o", str(trace),
                           sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300,
                          check=False)
    if not trace.exists() or "PTRACE" in done.stderr or "Operation not permitted" in done.stderr:
        pytest.skip(f"strace cannot trace here: {done.stderr.strip()[:200]}")
    assert done.returncode == 0, done.stderr
    return [line for line in trace.read_text().splitlines()
            if "AF_INET" in line or "nscd" in line or "htons(53)" in line or "htons(443)" in line]


@needs_weights
@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")
@pytest.mark.parametrize("choice", ["onnxruntime", pytest.param("openvino", marks=needs_openvino)])
def test_the_command_makes_no_network_call(tmp_path, choice) -> None:
    """onnxruntime 1.32 looked up mobile.events.data.microsoft.com (its telemetry upload) a few seconds into every
    command; OpenVINO's converter sends its own events at import.  Neither may leave the machine."""
    assert _connects(tmp_path, choice) == []


@needs_weights
@pytest.mark.parametrize(("choice", "threads"), [("onnxruntime", 1), ("onnxruntime", 2),
                                                 pytest.param("openvino", 2, marks=needs_openvino)])
def test_weights_replaced_after_their_check_are_not_the_ones_run(tmp_path, monkeypatch, choice, threads) -> None:
    """The weights' bytes are read once: the sha256 checked against the card is that of the bytes the library
    runs.  Before, the file was hashed, then read again (OpenVINO, onnxruntime's members) or loaded by its path
    (onnxruntime on one thread): a file replaced in between ran unchecked.  Here it is replaced, right after the
    check, by another graph of the same shapes (the shipped ensemble's first member) that would pass every other
    check."""
    weights = tmp_path / "detector.onnx"
    shutil.copyfile(SHIPPED, weights)
    shutil.copyfile(SHIPPED.with_suffix(".json"), weights.with_suffix(".json"))
    members = split_members(SHIPPED.read_bytes())
    assert members is not None  # the shipped graph is an ensemble: its member gives other probabilities
    monkeypatch.setenv(backend.ENV, choice)
    checked = OnnxDetector(weights, threads=threads)
    read_card = model._read_card

    def replace_then_read_card(path):  # the card is read once the weights are hashed (on main as now)
        swap = tmp_path / "swap.onnx"
        swap.write_bytes(members[0])
        os.replace(swap, weights)
        return read_card(path)

    monkeypatch.setattr(model, "_read_card", replace_then_read_card)
    detector = OnnxDetector(weights, threads=threads)
    assert weights.read_bytes() == members[0]  # the file was replaced after the check
    assert detector.weights_sha256 == json.loads(weights.with_suffix(".json").read_text())["sha256"]
    box = np.random.default_rng(1).random(detector.box_shape, dtype=np.float32)
    expected = checked.probabilities(box)
    assert np.abs(detector.probabilities(box) - expected).max() < 1e-6, "the replaced file's graph was run"


def _sigint_at(module: str) -> str:
    """Child-process code: a finder placed first on ``sys.meta_path`` sends this process a real SIGINT (``os.kill``)
    when ``module`` is looked for inside ``import openvino`` while defacer's guard (the converter's name marked
    missing) is in place: a Ctrl-C inside the guarded import, at a known moment."""
    return f"""
import os, signal, sys
fired = []
class CtrlC:
    def find_spec(self, name, path=None, target=None):
        if not fired and name == {module!r} and sys.modules.get('openvino.tools.ovc', 0) is None:
            fired.append(name)
            os.kill(os.getpid(), signal.SIGINT)
        return None
sys.meta_path.insert(0, CtrlC())
"""


#: Moments of ``import openvino`` (2026.4.1): its first submodule, a module its compiled extension imports, its
#: Python API (imported after the compiled extension), its last submodule.
INSIDE_THE_IMPORT = ["openvino.package_utils", "traceback", "openvino._ov_api", "openvino.opset17.ops"]


@needs_openvino
@pytest.mark.parametrize("module", INSIDE_THE_IMPORT)
def test_ctrl_c_inside_the_guarded_openvino_import_leaves_the_import_system_sane(module) -> None:
    code = _sigint_at(module) + """
from defacer.detect import backend
try:
    backend.import_runtime('openvino')
except KeyboardInterrupt:
    print('interrupted')
print(fired, 'openvino.tools.ovc' in sys.modules, 'openvino' in sys.modules)
ov = backend.import_runtime('openvino')  # the next try imports it whole
print(callable(ov.Core), 'openvino.tools.ovc' in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    # a KeyboardInterrupt (not an error blaming the install), the guard gone, no half-imported openvino left
    assert done.stdout.splitlines() == ["interrupted", f"[{module!r}] False False", "True False"], done.stdout


@needs_weights
@needs_openvino
@pytest.mark.parametrize("module", ["openvino._ov_api"])  # the command imported 'traceback' before
def test_ctrl_c_inside_the_guarded_openvino_import_stops_the_command_cleanly(tmp_path, module) -> None:
    scan = tmp_path / "head.nii.gz"
    save_phantom(make_phantom(2.0, axcodes="RAS", seed=5), scan)
    argv = ["deface", str(scan), str(tmp_path / "out.nii.gz")]
    code = _sigint_at(module) + ("import atexit\natexit.register(lambda: print(fired))\n"
                                 f"from defacer.cli.entry import run\nrun({argv!r})\n")
    env = {**os.environ, backend.ENV: "openvino"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 130, done.stderr
    assert done.stdout.strip() == f"[{module!r}]"  # the Ctrl-C came inside the guarded import
    # one of the usual lines: where the command imports OpenVINO early (while it starts) or in deface's own handling
    assert done.stderr in ("defacer: interrupted while starting; nothing was written.\n",
                           "defacer deface: interrupted; no partial output was left behind.\n"), done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["head.nii.gz"]  # nothing written
