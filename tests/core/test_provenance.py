"""defacer.provenance: sidecar names, file and folder hashes, JSON of numpy values, atomic writing."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from defacer.provenance import (
    SIDECAR_SUFFIX,
    environment,
    sha256_of,
    sidecar_path,
    to_jsonable,
    write_provenance,
)


@pytest.mark.parametrize("name, sidecar", [
    ("sub-01_T1w.nii.gz", "sub-01_T1w.defacer.json"),
    ("scan.NII.GZ", "scan.defacer.json"),
    ("scan.nii", "scan.defacer.json"),
    ("head.nrrd", "head.defacer.json"),
    ("head.nhdr", "head.defacer.json"),
    ("brain.mgz", "brain.defacer.json"),
    ("slice.dcm", "slice.defacer.json"),
    ("dicom_out", "dicom_out.defacer.json"),
    ("odd.name.nii.gz", "odd.name.defacer.json"),
])
def test_sidecar_sits_beside_the_output_without_the_image_suffix(tmp_path, name, sidecar):
    assert sidecar_path(tmp_path / name) == tmp_path / sidecar
    assert sidecar.endswith(SIDECAR_SUFFIX)


def test_sha256_of_a_file_is_hashlib_sha256(tmp_path):
    data = np.random.default_rng(0).bytes(3 << 20)  # several read blocks
    (tmp_path / "f.bin").write_bytes(data)
    assert sha256_of(tmp_path / "f.bin") == hashlib.sha256(data).hexdigest()


def test_sha256_of_a_folder_depends_on_names_and_contents(tmp_path):
    folder = tmp_path / "series"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.dcm").write_bytes(b"a")
    (folder / "sub" / "b.dcm").write_bytes(b"b")
    first = sha256_of(folder)
    assert first == sha256_of(folder)
    (folder / "a.dcm").write_bytes(b"A")
    changed = sha256_of(folder)
    assert changed != first
    (folder / "a.dcm").rename(folder / "c.dcm")
    assert sha256_of(folder) not in (first, changed)


def test_environment_names_the_versions():
    env = environment()
    assert {"defacer", "python", "numpy", "scipy", "nibabel", "platform"} <= set(env)
    assert all(isinstance(v, str) and v for v in env.values())


def test_numpy_values_and_paths_become_json():
    assert to_jsonable(np.int16(3)) == 3 and isinstance(to_jsonable(np.float32(0.5)), float)
    assert to_jsonable(np.arange(3)) == [0, 1, 2]
    assert to_jsonable(Path("a/b")) == "a/b"


def test_write_provenance_writes_indented_json_atomically(tmp_path):
    target = tmp_path / "out.defacer.json"
    record = {"voxels": np.int64(12), "spacing": np.array([1.0, 2.0]), "path": Path("x.nii.gz")}
    assert write_provenance(record, target) == target
    assert json.loads(target.read_text()) == {"voxels": 12, "spacing": [1.0, 2.0], "path": "x.nii.gz"}
    assert target.read_text().endswith("\n") and "\n  " in target.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.defacer.json"]  # no temporary left


def test_code_digest_names_every_source_file_of_the_package() -> None:
    """The sidecar's ``defacer_code`` (and the batch fingerprint) is a digest over every ``.py`` of the installed
    package, recomputed here file by file."""
    import defacer
    from defacer.provenance import code_digest

    package = Path(defacer.__file__).resolve().parent
    sources = sorted(package.rglob("*.py"))
    assert len(sources) > 50 and package / "distort_face.py" in sources and package / "detect" / "postprocess.py" in sources

    expected = hashlib.sha256()
    for source in sources:
        expected.update(source.relative_to(package).as_posix().encode() + b"\0")
        expected.update(hashlib.sha256(source.read_bytes()).digest())
    assert code_digest() == expected.hexdigest() == environment()["defacer_code"]
