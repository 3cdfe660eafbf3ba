"""A DICOM RescaleSlope/RescaleIntercept that gives no intensities is refused naming it, not as 'NaN voxels'."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from dicom_factory import write_enhanced, write_series

from defacer.cli.main import main
from defacer.errors import DicomSeriesError
from defacer.io import load_volume


def _raw() -> np.ndarray:
    raw = np.zeros((24, 20, 6), np.int16)
    raw[4:20, 4:16, :] = 300
    return raw


@pytest.mark.parametrize(("slope", "inter"), [(float("nan"), 0.0), (1.0, float("inf")), (float("-inf"), 0.0)])
def test_a_series_whose_rescale_gives_no_intensities_is_refused_naming_the_attribute(tmp_path, capsys, slope, inter):
    """Before: NaN slopes made every slice's scaling differ (NaN != NaN), the series was turned into float NaN and
    refused as "has 2880 NaN or infinite voxel(s) ... replace them first (e.g. numpy.nan_to_num)": the pixels are fine."""
    raw = _raw()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom: 'nan' is no valid DS
        write_series(tmp_path / "series", raw, scaling=[(slope, inter)] * raw.shape[2])
    with pytest.raises(DicomSeriesError, match="RescaleSlope"):
        load_volume(tmp_path / "series")
    code = main(["deface", str(tmp_path / "series"), str(tmp_path / "out"), "--no-deidentify"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert "RescaleSlope" in err and "NaN or infinite voxel" not in err, err
    assert not (tmp_path / "out").exists()


def test_an_enhanced_instance_with_a_zero_slope_is_refused_naming_it(tmp_path):
    raw = _raw()
    path = write_enhanced(tmp_path / "enhanced.dcm", raw, scaling=[(0.0, 0.0)] * raw.shape[2])
    with pytest.raises(DicomSeriesError, match="RescaleSlope 0"):
        load_volume(path.parent)
