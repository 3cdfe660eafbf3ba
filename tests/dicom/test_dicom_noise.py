"""A series of random values is no head: nothing found, exit 4, as for noise in a NIfTI file (HOSTILE14).

The detector marked eyes, nose and ears in a 32 x 32 x 8 series of uniform noise at 1 x 1 x 2 mm on 2 of 6 seeds,
and ``deface`` wrote it, exit 0.  The scan is now read as noise (:mod:`defacer.detect.structure`) and the detector
does not look: every feature is "not found", nothing is written unless ``--allow-missing``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_factory import write_series

from defacer.cli.main import main
from defacer.detect.model import default_weights_path


@pytest.fixture(autouse=True)
def _weights() -> None:
    if not default_weights_path().is_file():
        pytest.skip("shipped weights not built")


def _noise_series(folder: Path, seed: int) -> Path:
    if seed < 0:  # noise in a round field framed by zeros (the detector marked eyes in it)
        grid = np.indices((64, 64))
        field = ((grid[0] - 32) ** 2 + (grid[1] - 32) ** 2) < 28**2
        raw = (np.random.default_rng(-seed).integers(0, 1000, (64, 64, 16)) * field[..., None]).astype(np.int16)
        write_series(folder, raw, spacing=(1.0, 1.0), seed=-seed)
        return folder
    raw = np.random.default_rng(seed).integers(0, 1000, (32, 32, 8)).astype(np.int16)
    write_series(folder, raw, spacing=(1.0, 1.0), seed=seed)  # 1 x 1 mm pixels, 2 mm apart
    return folder


@pytest.mark.parametrize("seed", [2, 5, -1])  # 2, 5: the seeds of 0-5 the detector "found" a face in; -1: framed
def test_a_series_of_noise_is_nothing_found_and_nothing_is_written(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                   seed: int) -> None:
    series = _noise_series(tmp_path / "noise", seed)
    before = {p.name: p.read_bytes() for p in series.iterdir()}
    out = tmp_path / "out"
    assert main(["deface", str(series), str(out)]) == 4
    err = capsys.readouterr().err
    assert "looks like noise" in err and "Nothing was written" in err and "--allow-missing" in err
    assert "Traceback" not in err
    assert not out.exists() and not (tmp_path / "out.defacer.json").exists()
    assert {p.name: p.read_bytes() for p in series.iterdir()} == before  # the input untouched
    # accepted explicitly: the series is written unchanged in its pixels, and the sidecar says why
    assert main(["deface", str(series), str(out), "--allow-missing"]) == 0
    sidecar = json.loads((tmp_path / "out.defacer.json").read_text())
    assert all(entry["status"] == "not found" for entry in sidecar["features"].values())
    assert any("looks like noise" in w for w in sidecar["warnings"])
    written = sorted(pydicom.dcmread(p).pixel_array.tobytes() for p in out.iterdir() if p.suffix == ".dcm")
    assert written == sorted(pydicom.dcmread(series / name).pixel_array.tobytes() for name in before)
