"""The detector's network compiled by OpenVINO ahead (defacer.detect.openvino_run.start_compiling), while ``defacer
deface`` imports nibabel, SciPy and the pipeline: begun with the detector, after those imports, the compilation (0.2-0.3
s on the project's 2-core VM) was waited for at the start of every run (SPEED29, docs/measurements.md).

Only bytes the weights' card vouches for are compiled ahead; the detector takes the compiled network only for the
bytes it read and checked itself (their sha256) and its own thread count, and gets the same probabilities as from a
network it compiles itself; a compilation never taken is waited for at the run's end; OpenVINO is imported ahead
still without its converter (so without its telemetry)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from defacer import ahead
from defacer.detect import backend
from defacer.detect.model import OnnxDetector, default_weights_path
from defacer.detect.openvino_run import start_compiling, take_compiled
from defacer.errors import WeightsError
from defacer.phantom import make_phantom, save_phantom

SHIPPED = default_weights_path()
pytestmark = [
    pytest.mark.skipif(not SHIPPED.is_file(), reason="shipped weights not built yet"),
    pytest.mark.skipif(not backend.installed("openvino"),
                       reason="openvino is not installed (pip install 'defacer[openvino]')"),
]


@pytest.fixture
def openvino(monkeypatch):
    """OpenVINO chosen and imported (without its converter); nothing begun ahead before or after the test."""
    monkeypatch.setenv(backend.ENV, "openvino")
    ahead.forget()
    yield backend.import_runtime("openvino")
    ahead.forget()


def _network_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name == "defacer-network"]


def _weights_with_card(folder: Path, graph: bytes, card: object) -> Path:
    weights = folder / "detector.onnx"
    weights.write_bytes(graph)
    (folder / "detector.json").write_text(json.dumps(card))
    return weights


def test_the_detector_takes_the_network_compiled_ahead_and_gets_the_same_probabilities(openvino):
    assert start_compiling(openvino, SHIPPED, 2)
    assert len(ahead._networks) == 1
    taken = OnnxDetector(threads=2)
    assert ahead._networks == [] and _network_threads() == []  # taken by the detector, its thread done
    own = OnnxDetector(threads=2)  # nothing begun ahead: compiled by the detector itself, as before
    assert taken.backend == own.backend == "openvino"
    box = np.random.default_rng(0).random(own.box_shape, dtype=np.float32)
    assert np.array_equal(taken.probabilities(box), own.probabilities(box))
    assert taken._session._compiled.get_property("INFERENCE_NUM_THREADS") == 2


def test_a_network_compiled_for_other_threads_or_bytes_is_not_taken(openvino, tmp_path):
    assert start_compiling(openvino, SHIPPED, 1)  # a batch worker's one thread, say
    detector = OnnxDetector(threads=2)
    assert detector._session._compiled.get_property("INFERENCE_NUM_THREADS") == 2  # compiled its own
    assert len(ahead._networks) == 1  # the other one left for the run's end
    ahead.forget()
    assert ahead._networks == [] and _network_threads() == []
    assert take_compiled(hashlib.sha256(SHIPPED.read_bytes()).hexdigest(), 1) is None  # given once, then gone


def test_only_bytes_the_card_vouches_for_are_compiled_ahead(openvino, tmp_path):
    graph = SHIPPED.read_bytes()
    card = json.loads(SHIPPED.with_suffix(".json").read_text())
    folder = tmp_path / "no-card"
    folder.mkdir()
    (folder / "detector.onnx").write_bytes(graph)
    assert not start_compiling(openvino, folder / "detector.onnx")
    other = tmp_path / "other-digest"
    other.mkdir()
    assert not start_compiling(openvino, _weights_with_card(other, graph, {**card, "sha256": "0" * 64}))
    no_digest = tmp_path / "no-digest"
    no_digest.mkdir()
    assert not start_compiling(openvino, _weights_with_card(no_digest, graph, {k: v for k, v in card.items()
                                                                               if k != "sha256"}))
    not_json = tmp_path / "not-json"
    not_json.mkdir()
    (not_json / "detector.onnx").write_bytes(graph)
    (not_json / "detector.json").write_text("{not json")
    assert not start_compiling(openvino, not_json / "detector.onnx")
    pipe = tmp_path / "pipe" / "detector.onnx"
    pipe.parent.mkdir()
    os.mkfifo(pipe)
    shutil.copy(SHIPPED.with_suffix(".json"), pipe.with_suffix(".json"))
    assert not start_compiling(openvino, pipe)  # returns at once: a pipe is never read
    assert ahead._networks == [] and _network_threads() == []
    good = tmp_path / "good"
    good.mkdir()
    assert start_compiling(openvino, _weights_with_card(good, graph, card))


def test_a_graph_openvino_refuses_is_reported_where_the_detector_takes_it(openvino, tmp_path):
    graph = b"not an onnx graph"
    weights = _weights_with_card(tmp_path, graph, {"sha256": hashlib.sha256(graph).hexdigest()})
    assert start_compiling(openvino, weights)  # vouched for by its card: compiled ahead, and refused there
    with pytest.raises(WeightsError, match="could not be loaded by OpenVINO"):
        OnnxDetector(weights)
    assert ahead._networks == [] and _network_threads() == []


def test_a_network_compiled_ahead_and_never_taken_is_waited_for_at_the_end(openvino):
    assert start_compiling(openvino, SHIPPED)
    ahead.forget()
    assert ahead._networks == [] and _network_threads() == []


#: The console script's way in: reports which libraries were imported when the network's compilation began, whether
#: the detector took it, and what OpenVINO had imported by the end (its converter, the telemetry).
CHILD = """
import atexit, json, sys
import defacer.ahead as ahead
seen = {}
real_start, real_take = getattr(ahead, "start_network", None), getattr(ahead, "take_network", None)
def start(key, make):
    seen["begun_with"] = [m for m in ("numpy", "openvino", "nibabel", "scipy", "defacer.route", "defacer.pipeline")
                          if m in sys.modules]
    return real_start(key, make)
def take(key):
    loading = real_take(key)
    seen["taken"] = loading is not None
    return loading
if real_start is not None:
    ahead.start_network, ahead.take_network = start, take
atexit.register(lambda: print(json.dumps({**seen, "after": sorted(
    m for m in sys.modules if "telemetry" in m or m.startswith("openvino.tools"))})))
from defacer.cli.entry import run
run(sys.argv[1:])
"""


def test_the_deface_command_compiles_its_network_before_its_heavy_imports(tmp_path):
    scan = tmp_path / "in.nii.gz"
    save_phantom(make_phantom(4.0), scan, tmp_path / "labels.nii.gz")
    env = {**os.environ, backend.ENV: "openvino", "HOME": str(tmp_path / "home")}
    env.pop("CI", None)  # the telemetry stays quiet in CI jobs: this test must see what a user's machine does
    result = subprocess.run([sys.executable, "-c", CHILD, "deface", str(scan), str(tmp_path / "out.nii.gz"),
                             "--allow-missing"], env=env, check=False, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    # begun once numpy and OpenVINO were imported, before nibabel, SciPy and the pipeline; taken by the detector
    assert seen.get("begun_with") == ["numpy", "openvino"], seen
    assert seen["taken"] is True
    assert seen["after"] == []  # OpenVINO's converter (and its telemetry) still kept out
    assert not (tmp_path / "home" / "intel").exists()
    sidecar = json.loads((tmp_path / "out.defacer.json").read_text())
    assert sidecar["detector"]["backend"]["name"] == "openvino"


def test_with_onnxruntime_nothing_is_compiled_ahead(tmp_path):
    scan = tmp_path / "in.nii.gz"
    save_phantom(make_phantom(4.0), scan, tmp_path / "labels.nii.gz")
    env = {**os.environ, backend.ENV: "onnxruntime"}
    result = subprocess.run([sys.executable, "-c", CHILD, "deface", str(scan), str(tmp_path / "out.nii.gz"),
                             "--allow-missing"], env=env, check=False, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert "begun_with" not in seen and "taken" not in seen and seen["after"] == []


#: The command, signalled (SIGINT, as Ctrl-C) when OpenVINO starts to be imported: now at the command's start.
INTERRUPTED_AT_OPENVINO = """
import os, signal, sys
class SignalAt:
    def find_spec(self, name, path=None, target=None):
        if name == "openvino":
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGINT)
        return None
sys.meta_path.insert(0, SignalAt())
from defacer.cli.entry import run
run(sys.argv[1:])
"""


def test_ctrl_c_while_openvino_is_imported_at_the_start_is_one_line(tmp_path):
    scan = tmp_path / "in.nii.gz"
    save_phantom(make_phantom(4.0), scan, tmp_path / "labels.nii.gz")
    out = tmp_path / "out" / "d.nii.gz"
    result = subprocess.run([sys.executable, "-c", INTERRUPTED_AT_OPENVINO, "deface", str(scan), str(out)],
                            env={**os.environ, backend.ENV: "openvino"}, check=False, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 130, result.stderr
    assert result.stderr.strip() == "defacer: interrupted while starting; nothing was written."
    assert not out.parent.exists()
