"""The bits of native pixel data outside the stored values leave ``anonymize`` plain.

On main 2401ebd (HOSTILE19, 2026-12-06 00:36 UTC) an embedded overlay (bit 12 of 16-bit cells holding 12-bit
values, 60xx,0102 Overlay Bit Position 12: the plane old equipment drew annotations and names in, which viewers
still show) went through ``defacer anonymize`` as it was.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

from defacer.cli.main import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "dicom"))
from dicom_factory import write_series


def _series(folder: Path, *, signed: bool, stored: int) -> list[Path]:
    values = (np.arange(8 * 8 * 2).reshape(8, 8, 2) % (1 << (stored - 1))) - (1 << (stored - 2) if signed else 0)
    paths = write_series(folder, values.astype(np.int16 if signed else np.uint16))
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.BitsStored, ds.HighBit = stored, stored - 1
        cells = np.frombuffer(ds.PixelData, "<u2") & ((1 << stored) - 1)  # negatives not sign-extended
        cells[:16] |= 1 << stored  # an overlay plane drawn in the first bit above the values
        ds.PixelData = cells.astype("<u2").tobytes()
        ds.add_new(0x60000010, "US", 8)
        ds.add_new(0x60000011, "US", 8)
        ds.add_new(0x60000040, "CS", "G")
        ds.add_new(0x60000050, "SS", [1, 1])
        ds.add_new(0x60000100, "US", 16)
        ds.add_new(0x60000102, "US", stored)
        ds.save_as(path)
    return paths


@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed"])
def test_an_embedded_overlay_leaves_anonymize_and_every_pixel_value_stays(tmp_path, signed):
    paths = _series(tmp_path / "in", signed=signed, stored=12)
    values = {pydicom.dcmread(p).SOPInstanceUID: pydicom.dcmread(p).pixel_array for p in paths}
    assert main(["anonymize", str(tmp_path / "in"), str(tmp_path / "out"), "--key", "k" * 24,
                 "--retain-uids"]) == 0
    written = sorted((tmp_path / "out").rglob("*.dcm"))
    assert len(written) == len(paths)
    for path in written:
        ds = pydicom.dcmread(path)
        cells = np.frombuffer(ds.PixelData, "<u2")
        above = cells >> 12
        if signed:  # the sign's copy above each value, nothing else
            assert set(np.unique(above)) <= {0, 0xF}
            assert np.array_equal(above == 0xF, (cells >> 11) & 1 == 1)
        else:
            assert not above.any()
        assert np.array_equal(ds.pixel_array, values[ds.SOPInstanceUID])


def test_pixel_data_whose_values_fill_their_cells_is_kept_byte_for_byte(tmp_path):
    paths = write_series(tmp_path / "in", np.arange(8 * 8 * 2, dtype=np.uint16).reshape(8, 8, 2) * 1000)
    pixels = {pydicom.dcmread(p).SOPInstanceUID: pydicom.dcmread(p).PixelData for p in paths}
    assert main(["anonymize", str(tmp_path / "in"), str(tmp_path / "out"), "--key", "k" * 24,
                 "--retain-uids"]) == 0
    for path in (tmp_path / "out").rglob("*.dcm"):
        ds = pydicom.dcmread(path)
        assert ds.PixelData == pixels[ds.SOPInstanceUID]
