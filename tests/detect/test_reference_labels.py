"""The committed reference labels: one per real head, on the scan's own grid, with provenance."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from defacer.io import load_volume

LABELS = Path(__file__).resolve().parents[2] / "reference_labels"
RECORDS = json.loads((LABELS / "provenance.json").read_text()) if (LABELS / "provenance.json").is_file() else {}


def test_every_real_head_has_a_label_map_and_a_provenance_line() -> None:
    readme = (LABELS / "README.md").read_text()
    assert len(RECORDS) >= 10
    for name in RECORDS:
        assert (LABELS / f"{name}.labels.nii.gz").is_file()
        assert name in readme


def test_label_maps_use_only_the_label_convention() -> None:
    for name in RECORDS:
        values = set(np.unique(np.asarray(nib.load(str(LABELS / f"{name}.labels.nii.gz")).dataobj)))
        assert values <= {0, 1, 2, 3}
        assert 1 in values, f"{name}: every head here shows its eyes"


@pytest.mark.realdata
def test_label_maps_sit_on_the_grid_load_volume_gives(shared_data) -> None:
    for name, record in RECORDS.items():
        volume = load_volume(shared_data / record["source"])
        image = nib.load(str(LABELS / f"{name}.labels.nii.gz"))
        assert image.shape == volume.shape, name
        assert np.allclose(image.affine, volume.affine, atol=1e-3), name
