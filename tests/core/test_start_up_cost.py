"""What keeps ``defacer deface`` of a NIfTI fast: libraries it never imports, lazy package exports,
gzip read by ISA-L giving nibabel's own array, the shipped detector made while the scan is read, the
defaced copy kept in the file's memory order, and the end of the command without the interpreter's
teardown (exit handlers and output kept).

Each guarantee saves 0.07-0.3 s of a ~2 s command on the project's 2-core VM (docs/measurements.md).
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import threading
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from defacer.detect.label_file import LabelFileDetector
from defacer.errors import InputImageError, WeightsError
from defacer.io import load_volume
from defacer.io.nifti import read_nifti_like
from defacer.phantom import make_phantom, save_phantom
from defacer.pipeline import deface

#: Libraries a NIfTI deface must not import: DICOM (pydicom, about 0.1 s with its pixel plugins, via
#: nibabel or defacer.phi), training, batch scheduling, verification; defacer's own verification and batch
#: modules (~15 ms: the QC folder's module, asked only whether a verification lies beside the output), and
#: ctypes' library search (``ldconfig -p`` in a child process, ~10 ms, to find the C library already loaded);
#: numpy's f2py and testing (~0.05 s, which SciPy's array-API layer imports only to copy numpy's namespace);
#: scipy.spatial (with SciPy's linalg and sparse) and skimage.morphology (0.05-0.15 s: the protection check searches
#: without a k-d tree, the auricle's side view is filled by defacer.convex_hull); urllib.request with http.client and
#: ssl (0.01-0.03 s, for nibabel's from_url alone); numpy.polynomial (~3 ms, copied by SciPy's layer).
NOT_FOR_A_NIFTI_DEFACE = ("pydicom", "torch", "monai", "onnx", "dask", "distributed", "mediapipe", "cv2", "dlib",
                          "defacer.verify", "defacer.batch", "ctypes.util", "numpy.f2py", "numpy.testing",
                          "scipy.spatial", "scipy.linalg", "scipy.sparse", "skimage.morphology", "skimage.measure",
                          "urllib.request", "http.client", "ssl", "numpy.polynomial")

#: Runs the command as the console script does (``defacer.cli.main.run``); an exit handler lists what it imported.
CHILD = f"""
import atexit, json, sys
atexit.register(lambda: print(json.dumps(sorted(m for m in {NOT_FOR_A_NIFTI_DEFACE!r} if m in sys.modules))))
from defacer.cli.main import run
run(sys.argv[1:])
"""


@pytest.fixture(scope="module")
def phantom_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("start_up")
    scan, labels = folder / "head.nii.gz", folder / "labels.nii.gz"
    save_phantom(make_phantom(3.0, seed=1), scan, labels)
    return scan, labels


@pytest.mark.parametrize("force", [False, True])
def test_the_deface_command_on_a_nifti_imports_no_dicom_training_or_batch_library(phantom_files, tmp_path, force):
    scan, _ = phantom_files
    out = tmp_path / "out.nii.gz"
    if force:  # an output to replace, with its sidecar: the earlier verification is looked for
        out.write_bytes(scan.read_bytes())
    # the shipped detector (onnxruntime) and every stage after it; a phantom may lack a feature for it
    result = subprocess.run([sys.executable, "-c", CHILD, "deface", str(scan), str(out), "--allow-missing",
                             *(["--force"] if force else [])], check=False, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


def test_hiding_pydicom_from_nibabel_leaves_pydicom_importable_later():
    code = ("import sys; from defacer.cli.main import import_nibabel_without_pydicom as f; assert f(); "
            "assert 'pydicom' not in sys.modules; import pydicom; print(pydicom.Dataset.__name__)")
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "Dataset"


def test_nibabels_url_reader_works_with_urllib_request_imported_on_first_use(phantom_files, tmp_path):
    """The command line imports nibabel with urllib.request deferred: nibabel's from_url still reads an image
    (a file:// URL to an uncompressed NIfTI, no network), through the real urllib.request imported then, the
    one everybody gets."""
    scan = tmp_path / "head.nii"
    nib.save(nib.load(phantom_files[0]), scan)
    code = ("import sys; from defacer.cli.main import modules_deferred, import_nibabel_without_pydicom as f\n"
            "with modules_deferred():\n    assert f()\n"
            "assert 'urllib.request' not in sys.modules and 'http.client' not in sys.modules\n"
            "import urllib, nibabel as nib, numpy as np, pathlib\n"
            "assert not hasattr(urllib, 'request')\n"
            f"url = pathlib.Path({str(scan)!r}).as_uri(); image = nib.Nifti1Image.from_url(url)\n"
            f"assert np.array_equal(np.asanyarray(image.dataobj), np.asanyarray(nib.load({str(scan)!r}).dataobj))\n"
            "import urllib.request, nibabel.filebasedimages as fbi\n"
            "assert type(sys.modules['urllib.request']) is type(sys) and fbi.request.urlopen is urllib.request.urlopen\n"
            "print('read', image.shape)")
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("read (")


def test_a_module_imported_inside_the_deferral_is_the_real_one_on_every_path():
    """Imported while the stand-in is placed (another thread, nibabel itself): ``import urllib.request``,
    ``from urllib.request import ...`` and the package's attribute all work, and the real module is left."""
    code = ("import sys\nfrom defacer.cli.main import modules_deferred\n"
            "with modules_deferred():\n"
            "    import urllib.request\n    from urllib.request import Request\n"
            "    assert urllib.request.urlopen.__name__ == 'urlopen' and Request.__name__ == 'Request'\n"
            "import urllib.request as real\n"
            "assert type(sys.modules['urllib.request']) is type(sys) and real.Request is Request\n"
            "import urllib; assert urllib.request is real\nprint('ok')")
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


#: Two threads read the stand-in at once, each held (by a line tracer) where it removes the stand-in from
#: sys.modules until the other has arrived there too, or for a second where the other cannot arrive.
TWO_READERS = '''
import sys, threading
import defacer.cli.main as cli
source = cli.__file__
with open(source, encoding="utf-8") as file:  # the lines that take a stand-in out of sys.modules
    removals = {n for n, line in enumerate(file, start=1) if "del sys.modules[" in line and "pydicom" not in line}
assert removals and "urllib.request" not in sys.modules
stand_in = cli._OnFirstUse("urllib.request")
sys.modules["urllib.request"] = stand_in
both_there = threading.Barrier(2, timeout=1.0)

def held_at_the_removal(frame, event, arg):
    if frame.f_code.co_filename != source:
        return None
    def line(frame, event, arg):
        if event == "line" and frame.f_lineno in removals:
            try:
                both_there.wait()
            except threading.BrokenBarrierError:
                pass
        return line
    return line

errors, found = [], []
def read():
    sys.settrace(held_at_the_removal)
    try:
        found.append(stand_in.urlopen)
    except BaseException as err:
        errors.append(repr(err))
    finally:
        sys.settrace(None)

readers = [threading.Thread(target=read) for _ in range(2)]
for reader in readers:
    reader.start()
for reader in readers:
    reader.join()
import urllib.request as real
print(errors, len(found) == 2 and all(f is real.urlopen for f in found), sys.modules["urllib.request"] is real)
'''


def test_two_threads_reading_the_stand_in_at_once_both_get_the_one_real_module():
    """The stand-in is taken out of sys.modules once, whichever threads read it at once: two readers that both found
    it there each deleted it (the second a KeyError from an attribute read, "unexpected error" for the command, or it
    deleted the real module the first had imported meanwhile, and a second copy of urllib.request was imported)."""
    result = subprocess.run([sys.executable, "-c", TWO_READERS], check=False, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[] True True"


def test_import_defacer_imports_no_numerical_library_until_a_name_is_used():
    code = ("import sys, defacer; assert 'numpy' not in sys.modules and 'nibabel' not in sys.modules; "
            "assert set(defacer.__all__) <= set(dir(defacer)); print(defacer.deface.__module__, "
            "defacer.Volume.__name__, 'numpy' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["defacer.api", "Volume", "True"]


def test_lazy_exports_resolve_and_unknown_names_still_fail():
    import defacer
    import defacer.phi

    for name in defacer.__all__:
        assert getattr(defacer, name) is not None
    assert defacer.phi.Scrubber.__name__ == "Scrubber"
    with pytest.raises(AttributeError):
        _ = defacer.no_such_name  # type: ignore[attr-defined]
    with pytest.raises(AttributeError):
        _ = defacer.phi.no_such_name  # type: ignore[attr-defined]


@pytest.mark.parametrize("dtype", ["<i2", ">i2", ">f4", "<f8", "u1"])
def test_a_gzipped_nifti_reads_as_nibabel_reads_it(tmp_path, dtype):
    rng = np.random.default_rng(3)
    values = (rng.random((7, 6, 5)) * 100).astype(dtype)
    image = nib.Nifti1Image(values, np.diag([2.0, 2.0, 2.0, 1.0]))
    image.header.extensions.append(nib.nifti1.Nifti1Extension("comment", b"an extension moves vox_offset"))
    image.header.set_data_dtype(np.dtype(dtype))
    path = tmp_path / "a.nii.gz"
    nib.save(image, str(path))
    expected = np.asarray(nib.load(str(path)).dataobj.get_unscaled())
    raw = read_nifti_like(path, "nifti").raw
    assert raw.dtype == expected.dtype  # byte order included
    assert raw.shape == expected.shape
    assert raw.flags.f_contiguous == expected.flags.f_contiguous and raw.flags.writeable
    assert raw.tobytes(order="A") == expected.tobytes(order="A")


def test_a_truncated_gzipped_nifti_is_refused_with_a_message(tmp_path):
    image = nib.Nifti1Image(np.ones((20, 20, 20), np.int16), np.eye(4))
    whole = tmp_path / "whole.nii"
    nib.save(image, str(whole))
    data = whole.read_bytes()
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(gzip.compress(data[: len(data) // 2]))
    with pytest.raises(InputImageError, match="truncated or corrupt"):
        read_nifti_like(truncated, "nifti")


def test_the_detector_is_made_in_another_thread_while_the_scan_is_read(phantom_files, tmp_path, monkeypatch):
    import defacer.io
    import defacer.route

    scan, labels = phantom_files
    made: list[threading.Thread] = []
    ready = threading.Event()

    def load_detector(labels_path=None, weights_path=None, threads=0):  # the shipped model's place, the map's labels
        made.append(threading.current_thread())
        ready.set()
        return LabelFileDetector(labels)

    read = defacer.io.load_volume
    waited: list[bool] = []

    def load_volume(*args, **kwargs):
        waited.append(ready.wait(timeout=20))  # made meanwhile: read one after the other, this waits in vain
        return read(*args, **kwargs)

    monkeypatch.setattr(defacer.route, "load_detector", load_detector)
    monkeypatch.setattr(defacer.io, "load_volume", load_volume)
    out = tmp_path / "out.nii.gz"
    defaced = defacer.route.deface_path(scan, out)
    assert waited[0] is True  # the scan's reading (the label map is read later, by the detector: the same function)
    assert len(made) == 1 and made[0] is not threading.main_thread() and not made[0].is_alive()
    assert defaced.provenance["voxels_changed"]["nose"] > 0 and read(out).shape == read(scan).shape


def test_errors_keep_their_order_with_the_detector_made_beside_the_reading(phantom_files, tmp_path):
    from defacer.route import deface_path

    scan, _ = phantom_files
    weights = tmp_path / "broken.onnx"
    weights.write_bytes(b"not an onnx graph")
    with pytest.raises(WeightsError, match="could not be loaded"):  # raised in its thread, handed over
        deface_path(scan, tmp_path / "a.nii.gz", weights_path=weights)
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(gzip.compress(b"\0" * 100))
    with pytest.raises(InputImageError):  # both wrong: the scan's error first, as before
        deface_path(broken, tmp_path / "b.nii.gz", weights_path=weights)
    assert not (tmp_path / "a.nii.gz").exists() and not (tmp_path / "b.nii.gz").exists()
    assert [t.name for t in threading.enumerate() if t.name == "defacer-detector"] == []


def test_the_defaced_copy_keeps_the_files_memory_order(phantom_files):
    scan, labels = phantom_files
    volume = load_volume(scan)
    assert volume.raw.flags.f_contiguous and not volume.raw.flags.c_contiguous  # NIfTI is stored in Fortran order
    result = deface(volume, LabelFileDetector(labels))
    assert result.volume.raw.flags.f_contiguous  # written and compared in order, no transposing copy


#: Runs the command with an exit handler and an object whose finaliser shows the interpreter's teardown.
EXIT_CHILD = r"""
import atexit, sys, threading, time
from pathlib import Path

class Teardown:
    def __del__(self):
        print("teardown ran", flush=True)

KEEP = Teardown()
atexit.register(lambda: print("exit handler ran"))
def busy():  # still running for a second after the command has written its output (argv: mode deface IN OUT)
    while not Path(sys.argv[4]).exists():
        time.sleep(0.05)
    time.sleep(1.0)

if sys.argv[1] == "busy-thread":
    threading.Thread(target=busy).start()
from defacer.cli.main import run
run(sys.argv[2:])
"""


def _exit_run(mode: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", EXIT_CHILD, mode, *args], check=False, capture_output=True,
                          text=True, timeout=300)


def test_the_deface_command_ends_without_teardown_after_exit_handlers_and_output(phantom_files, tmp_path):
    scan, labels = phantom_files
    out = tmp_path / "out.nii.gz"
    done = _exit_run("plain", "deface", str(scan), str(out), "--labels", str(labels))
    assert done.returncode == 0, done.stderr
    assert "Defaced" in done.stdout and "exit handler ran" in done.stdout  # piped output flushed, handlers run
    assert "teardown ran" not in done.stdout
    assert load_volume(out).shape == load_volume(scan).shape
    refused = _exit_run("plain", "deface", str(scan), str(out), "--labels", str(labels))  # exists, no --force
    assert refused.returncode == 1 and "already exists" in refused.stderr
    assert "exit handler ran" in refused.stdout and "teardown ran" not in refused.stdout


def test_the_deface_command_exits_normally_while_another_thread_runs(phantom_files, tmp_path):
    scan, labels = phantom_files
    done = _exit_run("busy-thread", "deface", str(scan), str(tmp_path / "out.nii.gz"), "--labels", str(labels))
    assert done.returncode == 0, done.stderr
    assert "exit handler ran" in done.stdout and "teardown ran" in done.stdout


def test_other_commands_exit_normally(tmp_path):
    done = _exit_run("plain", "--version")
    assert done.returncode == 0 and "teardown ran" in done.stdout


#: Lists the modules of the functions whose docstrings SciPy parses (its ``xp_capabilities`` decorator parses every
#: decorated function's docstring) while the command runs; prints them at exit.
DOCSTRING_CHILD = """
import atexit, json, sys
import scipy._lib._docscrape as docscrape
parsed = set()
real_init = docscrape.FunctionDoc.__init__
def recorded(self, func, *args, **kwargs):
    parsed.add(getattr(func, "__module__", None) or "?")
    real_init(self, func, *args, **kwargs)
docscrape.FunctionDoc.__init__ = recorded
atexit.register(lambda: print(json.dumps(["scipy.ndimage" in sys.modules, sorted(parsed)])))
from defacer.cli.main import run
run(sys.argv[1:])
"""


def test_the_command_line_imports_scipy_ndimage_without_parsing_its_docstrings(phantom_files, tmp_path):
    """SciPy 1.15+ parses each scipy.special and scipy.ndimage function's docstring at import to add a table of the
    array libraries it supports (~0.05 s of every start); the command line never shows those docstrings."""
    scan, labels = phantom_files
    result = subprocess.run([sys.executable, "-c", DOCSTRING_CHILD, "deface", str(scan), str(tmp_path / "o.nii.gz"),
                             "--labels", str(labels)], check=False, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    imported, parsed = json.loads(result.stdout.strip().splitlines()[-1])
    assert imported
    assert [m for m in parsed if m.startswith(("scipy.ndimage", "scipy.special"))] == [], parsed


def test_numpy_tools_left_out_of_scipys_import_come_back_when_used():
    """The command line imports SciPy's array-API layer without numpy.f2py, numpy.testing and numpy.polynomial;
    numpy's own namespace is as before afterwards, and the layer still answers for those names (importing them
    then)."""
    code = ("import sys, numpy; names, listed, lister = list(numpy.__all__), dir(numpy), numpy.__dir__; "
            "from defacer.cli.main import _import_libraries; _import_libraries(); "
            "import scipy._lib.array_api_compat.numpy as layer; "
            "before = sorted(m for m in ('numpy.f2py', 'numpy.testing', 'numpy.polynomial') if m in sys.modules); "
            "print(before, numpy.__all__ == names, dir(numpy) == listed, numpy.__dir__ is lister, "
            "{'f2py', 'testing', 'polynomial'} <= set(layer.__all__), layer.testing is numpy.testing, "
            "layer.f2py is numpy.f2py, layer.polynomial is numpy.polynomial, hasattr(layer, 'no_such_name'))")
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["[]", "True", "True", "True", "True", "True", "True", "True", "False"]


def test_scipy_keeps_its_docstring_tables_outside_the_command_line():
    code = ("import scipy._lib._array_api as a, scipy._lib._docscrape as d; "
            "from defacer.cli.main import import_scipy_ndimage_without_docstring_tables as f; "
            "assert f() and a.FunctionDoc is d.FunctionDoc and not f(); "
            "import scipy.ndimage, scipy.stats; "
            "print('Array API' in (scipy.stats.ttest_ind.__doc__ or ''), 'Array API' in scipy.ndimage.label.__doc__, "
            "scipy.ndimage.label.__doc__.lstrip().startswith('Label features'))")
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "False", "True"]  # imported later: its tables; ndimage's docs kept
    library_code = "import defacer.pipeline, scipy.ndimage; print('Array API' in scipy.ndimage.label.__doc__)"
    library = subprocess.run([sys.executable, "-c", library_code], check=False, capture_output=True, text=True, timeout=120)
    assert library.stdout.strip() == "True", library.stderr  # import defacer: SciPy as it is


@pytest.mark.parametrize("writer", ["isal", "zlib", "plain"])
def test_the_outputs_digest_is_taken_as_it_is_written_not_read_back(phantom_files, tmp_path, monkeypatch, writer):
    """The sidecar's output sha256 is that of the file's bytes; a ``.nii.gz`` written by ISA-L's writer is digested
    on its way to the disk and never read back for it (10-20 ms of a 1 mm head); written by zlib (no ISA-L) or
    uncompressed, it is read back as before."""
    import hashlib

    import defacer.route
    from defacer.cli.main import main

    scan, labels = phantom_files
    if writer == "zlib":
        import isal

        monkeypatch.delattr(isal, "igzip_threaded", raising=False)  # from isal import igzip_threaded -> ImportError
        monkeypatch.setitem(sys.modules, "isal.igzip_threaded", None)  # (nibabel's zlib writes)
    out = tmp_path / ("out.nii" if writer == "plain" else "out.nii.gz")
    read_back: list[Path] = []
    real = defacer.route.sha256_of

    def recorded(path):
        read_back.append(Path(path))
        return real(path)

    monkeypatch.setattr(defacer.route, "sha256_of", recorded)
    assert main(["deface", str(scan), str(out), "--labels", str(labels)]) == 0
    record = json.loads(out.with_name("out.defacer.json").read_text())
    assert record["output"]["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert (out in read_back) is (writer != "isal")
    assert (out.read_bytes()[:2] == b"\x1f\x8b") is (writer != "plain")
