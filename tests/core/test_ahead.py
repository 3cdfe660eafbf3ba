"""``defacer deface`` decompresses a ``.nii.gz`` scan in a thread while it imports its libraries
(:mod:`defacer.ahead`): the same array as nibabel's reading, and the file read as before whenever the
bytes read ahead do not fit (changed file, bad gzip, a header over the limit, not NIfTI-1)."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from defacer import ahead
from defacer.cli.main import main
from defacer.detect import backend
from defacer.errors import InputImageError
from defacer.io.nifti import read_nifti_like
from defacer.phantom import make_phantom, save_phantom


@pytest.fixture(autouse=True)
def nothing_left_pending():
    ahead.forget()
    yield
    ahead.forget()


def _nifti(path: Path, dtype: str = "<i2", shape: tuple[int, ...] = (9, 8, 7), seed: int = 0) -> np.ndarray:
    values = (np.random.default_rng(seed).random(shape) * 100).astype(dtype)
    image = nib.Nifti1Image(values, np.diag([2.0, 2.0, 2.0, 1.0]))
    image.header.set_data_dtype(np.dtype(dtype))
    nib.save(image, str(path))
    return values


@pytest.mark.parametrize("dtype", ["<i2", ">i2", ">f4", "<f8", "u1"])
def test_a_scan_read_ahead_reads_as_nibabel_reads_it(tmp_path, dtype):
    path = tmp_path / "a.nii.gz"
    _nifti(path, dtype)
    image = nib.Nifti1Image.from_filename(str(path))
    image.header.extensions.append(nib.nifti1.Nifti1Extension("comment", b"an extension moves vox_offset"))
    nib.save(image, str(path))
    expected = np.asarray(nib.load(str(path)).dataobj.get_unscaled())
    assert ahead.start_reading(path, 512**3)
    ahead._readings[0].thread.join()
    assert ahead._readings[0].data is not None  # decompressed ahead, to be taken by the reading
    raw = read_nifti_like(path, "nifti").raw
    assert ahead._readings[0].data is None  # taken
    assert raw.dtype == expected.dtype and raw.shape == expected.shape
    assert raw.flags.f_contiguous == expected.flags.f_contiguous and raw.flags.writeable
    assert raw.tobytes(order="A") == expected.tobytes(order="A")


def test_a_file_changed_after_the_read_ahead_is_read_again(tmp_path):
    path = tmp_path / "a.nii.gz"
    _nifti(path, seed=1)
    assert ahead.start_reading(path, None)
    ahead._readings[0].thread.join()
    newer = _nifti(tmp_path / "b.nii.gz", seed=2)
    os.replace(tmp_path / "b.nii.gz", path)  # another inode: what was read ahead is not this file
    assert np.array_equal(read_nifti_like(path, "nifti").raw, newer)


def test_what_the_read_ahead_refuses_is_read_as_before(tmp_path):
    big = tmp_path / "big.nii.gz"
    _nifti(big, shape=(20, 20, 20))
    assert ahead.start_reading(big, 1000)  # more voxels than the limit: not decompressed ahead
    assert ahead.take_bytes(big) is None
    ahead.forget()  # one reading ahead per run
    truncated = tmp_path / "truncated.nii.gz"
    _nifti(tmp_path / "whole.nii", shape=(20, 20, 20))
    data = (tmp_path / "whole.nii").read_bytes()
    truncated.write_bytes(gzip.compress(data[: len(data) // 2]))
    assert ahead.start_reading(truncated, None)
    with pytest.raises(InputImageError, match="truncated or corrupt"):  # the reading's own message
        read_nifti_like(truncated, "nifti")
    ahead.forget()
    nifti2 = tmp_path / "two.nii.gz"
    nib.save(nib.Nifti2Image(np.ones((4, 4, 4), np.int16), np.eye(4)), str(nifti2))
    assert ahead.start_reading(nifti2, None) and ahead.take_bytes(nifti2) is None  # NIfTI-2: read as before
    assert np.array_equal(read_nifti_like(nifti2, "nifti").raw, np.ones((4, 4, 4), np.int16))


def test_an_extension_bomb_is_not_decompressed_ahead(tmp_path):
    """HOSTILE13: a .nii.gz of a few megabytes whose header places its voxels after a gigabyte of zero 'extensions'
    was decompressed whole by the read-ahead thread before the reading refused it ('declaring 1,048,576,008 bytes
    of extensions (defacer reads at most 64 MiB)'): 'defacer deface' peaked at 1.17 GB resident against 109 MB
    before the read-ahead.  Past the extension limit the header is left to the reading (which refuses it)."""
    import tracemalloc
    import zlib

    from defacer.io.nifti import MAX_EXTENSION_BYTES

    image = nib.Nifti1Image(np.ones((8, 8, 8), np.int16), np.eye(4))
    header = bytearray(image.header.binaryblock)
    size = 160 << 20  # zero bytes of one extension
    header[108:112] = np.float32(352 + 8 + size).tobytes()
    packer = zlib.compressobj(1, zlib.DEFLATED, 31)
    packed = [packer.compress(bytes(header) + b"\x01\x00\x00\x00" + np.array([size + 8, 6], "<i4").tobytes())]
    zeros = bytes(16 << 20)
    packed += [packer.compress(zeros) for _ in range(size // len(zeros))]
    packed.append(packer.compress(np.ones((8, 8, 8), np.int16).tobytes()))
    bomb = tmp_path / "bomb.nii.gz"
    bomb.write_bytes(b"".join(packed) + packer.flush())
    assert bomb.stat().st_size < 1 << 20
    tracemalloc.start()
    try:
        assert ahead.start_reading(bomb, None)
        assert ahead.take_bytes(bomb) is None  # main: the 160 MiB decompressed (and copied)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, f"reading ahead a {bomb.stat().st_size} byte file took {peak >> 20} MiB"
    with pytest.raises(InputImageError, match="bytes of extensions"):
        read_nifti_like(bomb, "nifti")
    assert ahead.MAX_EXTENSION_BYTES == MAX_EXTENSION_BYTES  # the reading's own limit


def test_a_pipe_put_in_the_scans_place_never_blocks_the_reading(tmp_path):
    """HOSTILE13: the file is looked at (a regular file) before the thread opens it; a named pipe put in its place
    meanwhile blocked the thread's open() for ever (no writer), and the run's end (forget) waits for that thread:
    'defacer deface' hung.  The thread now opens without blocking and finds another file."""
    path = tmp_path / "a.nii.gz"
    _nifti(path)
    status = os.stat(path)
    path.unlink()
    os.mkfifo(path)
    from isal import isal_zlib

    reading = ahead._Reading(str(path), status, None, isal_zlib, None)  # as start_reading makes it, file swapped since
    reading.thread.join(10)
    blocked = reading.thread.is_alive()
    if blocked:  # main: free the thread (a writer opens the pipe), so the test run goes on
        with open(os.open(path, os.O_WRONLY | os.O_NONBLOCK), "wb"):
            pass
        reading.thread.join(10)
    assert not blocked and reading.data is None


def test_only_a_regular_nii_gz_file_is_read_ahead(tmp_path):
    fifo = tmp_path / "pipe.nii.gz"
    os.mkfifo(fifo)
    assert not ahead.start_reading(fifo, None)  # a FIFO would block the thread (and be consumed)
    assert not ahead.start_reading(tmp_path / "missing.nii.gz", None)
    plain = tmp_path / "a.nii"
    _nifti(plain)
    assert not ahead.start_reading(plain, None)
    assert not ahead.start_reading(tmp_path, None)


def test_errors_keep_their_order_with_the_detector_made_ahead(tmp_path, capsys):
    """The scan's error first, then the weights' (as where the route made the detector beside the reading)."""
    weights = tmp_path / "broken.onnx"
    weights.write_bytes(b"not an onnx graph")
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(gzip.compress(b"\0" * 400))
    assert main(["deface", str(broken), str(tmp_path / "a.nii.gz"), "--weights", str(weights)]) == 1
    assert "broken.nii.gz" in capsys.readouterr().err
    scan = tmp_path / "in.nii.gz"
    save_phantom(make_phantom(4.0), scan, tmp_path / "labels.nii.gz")
    assert main(["deface", str(scan), str(tmp_path / "b.nii.gz"), "--weights", str(weights)]) == 1
    assert "could not be loaded" in capsys.readouterr().err
    assert not (tmp_path / "a.nii.gz").exists() and not (tmp_path / "b.nii.gz").exists()
    assert [t for t in threading.enumerate() if t.name.startswith("defacer-")] == []


def test_a_run_refused_before_its_reading_leaves_no_thread(tmp_path, capsys):
    scan = tmp_path / "in.nii.gz"
    save_phantom(make_phantom(4.0), scan, tmp_path / "labels.nii.gz")
    out = tmp_path / "out.nii.gz"
    out.write_bytes(b"an earlier output")
    assert main(["deface", str(scan), str(out)]) == 1  # exists, no --force
    assert "already exists" in capsys.readouterr().err
    assert ahead._readings == [] and ahead._detectors == []
    assert [t for t in threading.enumerate() if t.name.startswith("defacer-")] == []  # reading, detector joined
    assert out.read_bytes() == b"an earlier output"


#: The console script's way in; reports whether the reading began before numpy was imported, the detector before
#: the pipeline, and what the run took from them.
CHILD = """
import atexit, json, sys
import defacer.ahead as ahead
seen = {}
real_start, real_take = ahead.start_reading, ahead.take_bytes
real_detector, real_take_detector = ahead.start_detector, ahead.take_detector
def start(path, max_voxels):
    seen["numpy_imported_at_start"] = "numpy" in sys.modules
    seen["started"] = real_start(path, max_voxels)
    return seen["started"]
def take(path):
    data = real_take(path)
    seen.setdefault("taken", []).append([str(path), data is not None])
    return data
def start_detector(weights, make):
    seen["detector_begun_before"] = [m for m in ("onnxruntime", "openvino", "defacer.route", "defacer.pipeline")
                                     if m in sys.modules]
    return real_detector(weights, make)
def take_detector(weights):
    loading = real_take_detector(weights)
    seen["detector_taken"] = loading is not None
    return loading
ahead.start_reading, ahead.take_bytes, ahead.start_detector, ahead.take_detector = start, take, start_detector, take_detector
atexit.register(lambda: print(json.dumps(seen)))
from defacer.cli.main import run
run(sys.argv[1:])
"""


def test_the_deface_command_reads_its_scan_ahead_before_its_imports(tmp_path):
    scan, labels = tmp_path / "in.nii.gz", tmp_path / "labels.nii.gz"
    save_phantom(make_phantom(4.0), scan, labels)
    out = tmp_path / "out.nii.gz"
    result = subprocess.run([sys.executable, "-c", CHILD, "deface", str(scan), str(out), "--labels", str(labels)],
                            check=False, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    # the scan's bytes taken by its reading; the label map (read later, by the detector) read from its file
    assert seen == {"numpy_imported_at_start": False, "started": True,
                    "taken": [[str(scan), True], [str(labels), False]]}
    sidecar = json.loads((tmp_path / "out.defacer.json").read_text())
    assert sidecar["input"]["sha256"] == hashlib.sha256(scan.read_bytes()).hexdigest()  # digest of the bytes read
    assert out.exists()


def test_the_deface_command_makes_its_detector_while_it_imports_the_pipeline(tmp_path):
    scan = tmp_path / "in.nii.gz"
    save_phantom(make_phantom(4.0), scan, tmp_path / "labels.nii.gz")
    result = subprocess.run([sys.executable, "-c", CHILD, "deface", str(scan), str(tmp_path / "out.nii.gz"),
                             "--allow-missing"], check=False, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    # the network's library imported (onnxruntime, or OpenVINO where the suite runs on it), not yet the pipeline
    assert seen["detector_begun_before"] == [backend.chosen()]
    assert seen["detector_taken"] is True and seen["taken"] == [[str(scan), True]]


def test_a_thread_the_system_refuses_means_no_work_ahead(tmp_path, monkeypatch):
    """Under a memory limit a new thread is refused: nothing is begun ahead, and the run's own threads (the
    detector's beside the reading, the compressed writer's) say so in words (test_symlink_loops)."""
    path = tmp_path / "a.nii.gz"
    _nifti(path)

    def refused(self):
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", refused)
    assert not ahead.start_reading(path, None)
    assert not ahead.start_detector(None, lambda: None)
    assert ahead._readings == [] and ahead._detectors == []


def test_a_scan_over_the_read_ahead_limit_is_read_as_before(tmp_path, monkeypatch):
    path = tmp_path / "a.nii.gz"
    values = _nifti(path, shape=(40, 40, 40))
    assert path.stat().st_size < 100_000
    monkeypatch.setattr(ahead, "MAX_BYTES", 100_000)  # the file is under it, the header and 64,000 int16 voxels over
    assert ahead.start_reading(path, None)
    assert ahead.take_bytes(path) is None
    assert np.array_equal(read_nifti_like(path, "nifti").raw, values)


@pytest.mark.parametrize("waiting", ["take_bytes", "forget"])
def test_an_interrupted_wait_for_the_reading_is_raised_once_its_thread_is_out(tmp_path, monkeypatch, waiting):
    """SAFE27: Ctrl-C while the run waited for the scan's reading (``Thread.join`` in :func:`ahead.take_bytes` and
    :func:`ahead.forget`) returned at once with the thread still running, and on Python 3.11 marked it ended, so
    the exit no longer waited for it; now the wait is waited out (:mod:`defacer.threads`) and the interrupt raised
    after.  The thread's last step (glibc's ``malloc_trim``, called in the thread once the file is decompressed) is
    made to last 0.6 s, so that the interrupt at 0.15 s comes while the thread still runs: the file, its reading and
    ISA-L's decompression are real."""
    import signal
    import time

    path = tmp_path / "a.nii.gz"
    _nifti(path, shape=(40, 40, 40))
    out_of_target: list[float] = []

    def slow_trim(pad: int) -> None:
        time.sleep(0.6)
        out_of_target.append(time.monotonic())

    monkeypatch.setattr(ahead, "_malloc_trim", lambda: slow_trim)
    assert ahead.start_reading(path, None)
    reading = ahead._readings[0]
    # a real SIGINT, as Ctrl-C gives (_thread.interrupt_main sends no signal: it does not wake a blocked join)
    timer = threading.Timer(0.15, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        ahead.take_bytes(path) if waiting == "take_bytes" else ahead.forget()
        time.sleep(30)  # not reached where the signal comes in time; a late one (a loaded machine) lands here
    raised = time.monotonic()
    timer.join()
    assert out_of_target and out_of_target[0] <= raised, "the interrupt was raised while the reading still ran"
    assert not reading.thread.is_alive()
