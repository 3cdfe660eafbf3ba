"""SIGTERM (``timeout``, ``scancel``, ``docker stop``) or Ctrl-C while a run computes or after its output is in place:
a real child process, a real signal. Nothing half-written is left, the message is one line and says what is there.

Before (HOSTILE10): a run stopped while verifying printed "interrupted; no partial output was left behind." with
the defaced output and its sidecar in place (read as: nothing was written); a run stopped at the sidecar under
``--force`` printed the same although the replaced output had lost its record (the note saying so was dropped).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from defacer.phantom import make_phantom, save_phantom

#: The child: the console entry point (it turns SIGTERM into an interrupt), with one step replaced by a stand-in that
#: signals its own process and then goes on computing in numpy (the signal lands inside a long C call).
CHILD = """
import os, signal, sys, time
import numpy as np
import defacer.cli.main as cli
where, name = sys.argv[1], sys.argv[2]

def signalled_then_busy(real):
    def step(*args, **kwargs):
        os.kill(os.getpid(), getattr(signal, name))
        a = np.random.default_rng(0).random((700, 700))
        for _ in range(3):
            a = a @ a / 700.0  # numpy in C: the handler runs once it returns
        time.sleep(5)  # never reached whole: the interrupt comes at the next bytecode
        return real(*args, **kwargs)
    return step

if where == "detect":
    from defacer.detect.label_file import LabelFileDetector
    LabelFileDetector.predict = signalled_then_busy(LabelFileDetector.predict)
elif where == "verify":
    import defacer.cli.deface as deface
    deface.verify_outputs = signalled_then_busy(deface.verify_outputs)
elif where == "sidecar":
    import defacer.route as route
    route.write_provenance = signalled_then_busy(route.write_provenance)
elif where == "startup":  # the imports before the command (nibabel, numpy, the command modules): 0.5-1 s
    cli.import_nibabel_without_pydicom = signalled_then_busy(cli.import_nibabel_without_pydicom)
elif where == "load":  # the scan's reading, while the shipped detector is made in a thread beside it
    import defacer.io
    defacer.io.load_volume = signalled_then_busy(defacer.io.load_volume)
cli.run(sys.argv[3:])
"""


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("interrupt")
    save_phantom(make_phantom(4.0), base / "in.nii.gz", base / "in.labels.nii.gz")
    return base / "in.nii.gz", base / "in.labels.nii.gz"


def _run(where: str, signal_name: str, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run([sys.executable, "-c", CHILD, where, signal_name, *argv], capture_output=True, text=True,
                          timeout=120, check=False, env=env)


def _error_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stderr.splitlines() if not line.startswith("WARNING ")]


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGINT"])
def test_a_signal_during_detection_leaves_nothing_and_says_so_in_one_line(tmp_path: Path, phantom: tuple[Path, Path],
                                                                         signal_name: str) -> None:
    scan, labels = phantom
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("the user's")
    result = _run("detect", signal_name, "deface", str(scan), str(out / "d.nii.gz"), "--labels", str(labels))
    assert result.returncode == 130, result.stderr
    lines = _error_lines(result)
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("defacer deface: interrupted") and "no partial output was left behind" in lines[0]
    if signal_name == "SIGTERM":
        assert "by SIGTERM" in lines[0]
    assert sorted(os.listdir(out)) == ["notes.txt"], "no output, no sidecar, no temporary"


def test_a_signal_while_verifying_says_the_output_is_there_unverified(tmp_path: Path,
                                                                      phantom: tuple[Path, Path]) -> None:
    scan, labels = phantom
    out = tmp_path / "d.nii.gz"
    result = _run("verify", "SIGTERM", "deface", str(scan), str(out), "--labels", str(labels), "--verify")
    assert result.returncode == 130, result.stderr
    lines = _error_lines(result)
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "no partial output" not in lines[0], "the output is there: the message said nothing was written"
    assert "was written whole" in lines[0] and "not verified" in lines[0], lines[0]
    assert out.is_file() and (tmp_path / "d.defacer.json").is_file()
    assert not [p for p in tmp_path.rglob(".defacer-tmp-*")]


def test_a_signal_at_the_sidecar_under_force_says_the_record_is_gone(tmp_path: Path,
                                                                     phantom: tuple[Path, Path]) -> None:
    scan, labels = phantom
    out = tmp_path / "d.nii.gz"
    record = tmp_path / "d.defacer.json"
    first = _run("none", "SIGTERM", "deface", str(scan), str(out), "--labels", str(labels))
    assert first.returncode == 0 and record.is_file(), first.stderr
    result = _run("sidecar", "SIGTERM", "deface", str(scan), str(out), "--labels", str(labels), "--force")
    assert result.returncode == 130, result.stderr
    lines = _error_lines(result)
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "no partial output" not in lines[0]
    assert "left without a provenance record" in lines[0], lines[0]
    assert out.is_file() and not record.exists()
    assert sorted(os.listdir(tmp_path)) == ["d.nii.gz"]


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGINT"])
def test_a_signal_while_the_command_starts_says_so_in_one_line(tmp_path: Path, phantom: tuple[Path, Path],
                                                              signal_name: str) -> None:
    """Ctrl-C in the first second (the imports, before the command's own handler) printed a 30-line traceback
    ending in ``KeyboardInterrupt`` (HOSTILE11, a real SIGINT 0.2-0.5 s after ``defacer deface`` started)."""
    scan, _ = phantom
    result = _run("startup", signal_name, "deface", str(scan), str(tmp_path / "d.nii.gz"))
    assert result.returncode == 130, result.stderr
    lines = _error_lines(result)
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("defacer: interrupted") and "nothing was written" in lines[0], lines[0]
    if signal_name == "SIGTERM":
        assert "by SIGTERM" in lines[0]
    assert os.listdir(tmp_path) == []


def test_a_signal_while_the_scan_is_read_beside_the_detectors_thread_leaves_nothing(tmp_path: Path,
                                                                                    phantom: tuple[Path, Path]) -> None:
    """The shipped detector is made in a thread while the scan is read (route._DetectorLoading): an interrupt
    there waits for that thread, ends in one line and leaves nothing."""
    scan, _ = phantom
    result = _run("load", "SIGINT", "deface", str(scan), str(tmp_path / "d.nii.gz"))
    assert result.returncode == 130, result.stderr
    lines = _error_lines(result)
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("defacer deface: interrupted") and "no partial output was left behind" in lines[0]
    assert os.listdir(tmp_path) == []
