"""A head histogram whose tallest peak is the tissue's, not the air's: the air/tissue threshold must not be taken at
the foot of the tissue's peak (inside the tissue), which seals a head smaller than the real one and moves the
protected region inwards.

A CT's soft tissue is a narrow peak (0-80 HU); through a gamma below 1 the air's peak spreads out and the tissue's
outgrows it.  Before: the invesalius CT through gamma 0.4 took -80 HU (fat outside the head, which sealed 0.80x the
unperturbed one; 2,602 voxels of the unperturbed head's protected region changed end to end,
benchmarks/halo_deface.py), and the CT phantom through gamma 0.3 sealed 0.82x.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from truth_detector import TruthDetector

from defacer.detect.preprocess import normalise
from defacer.head import analyse_head, estimate_threshold, threshold_estimate
from defacer.phantom import make_phantom
from defacer.pipeline import DefaceOptions, deface
from defacer.protection_check import changed_indices, check_protection_at
from defacer.volume import Volume

REFERENCE_LABELS = Path(__file__).resolve().parents[2] / "reference_labels"


@pytest.fixture(scope="module")
def ct():
    return make_phantom(2.0, contrast="CT", seed=3)


def _through_gamma(volume: Volume, gamma: float) -> Volume:
    """As benchmarks/halo_deface.py: the normalised scan to the power ``gamma``."""
    values = (np.clip(normalise(volume.values(np.float32)), 0, None) ** gamma).astype(np.float32)
    return Volume(values, volume.affine, 1.0, 0.0, volume.format)


def test_a_tall_narrow_tissue_peak_does_not_pull_the_threshold_into_the_tissue():
    """Air spread round 0.15 (40 % of the voxels), fat at 0.67, a narrow soft-tissue peak at 0.70 (35 %): the
    threshold lies between the air and the fat, not at the foot of the tissue's peak between fat and tissue."""
    rng = np.random.default_rng(0)
    sample = np.concatenate([rng.normal(0.15, 0.02, 40_000), rng.normal(0.67, 0.004, 10_000),
                             rng.normal(0.70, 0.002, 35_000), rng.uniform(0.72, 1.0, 15_000)])
    threshold, set_aside = threshold_estimate(sample)
    assert 0.15 < threshold < 0.6
    assert set_aside is not None and set_aside > 0.6
    assert estimate_threshold(sample) == threshold


def test_the_ct_phantom_through_a_low_gamma_keeps_its_whole_head_and_protected_region(ct):
    clean = deface(ct.volume, TruthDetector(ct.labels))
    assert "tissue_peak" not in clean.provenance["head"]
    bright = _through_gamma(ct.volume, 0.3)
    result = deface(bright, TruthDetector(ct.labels))
    depth, head, reorientation, _ = clean._protection
    guard = result._protection[1]
    assert not (head.sealed_coarse & ~guard.sealed_coarse).any()  # main: 8,076 coarse voxels missing (0.82x)
    changed_at = reorientation.indices_to_ras(changed_indices(bright.raw, result.volume.raw))
    check = check_protection_at(changed_at, head, depth, reorientation.ras_spacing, DefaceOptions().protect_depth_mm)
    assert check.changed_voxels > 0 and check.changed_inside_protected == 0
    record = result.provenance["head"]["tissue_peak"]
    assert record["set_aside_threshold"] > record["threshold"]
    assert any("tallest peak is the tissue's" in w for w in result.provenance["warnings"])


@pytest.mark.realdata
@pytest.mark.parametrize("gamma", [0.3, 0.4])
def test_the_invesalius_ct_through_a_low_gamma_keeps_its_whole_head(shared_data, gamma):
    """Head analysis only (the pipeline's protection head, as in pipeline.deface): every coarse voxel of the
    unperturbed head lies in it (main: 0.80x, 18,693 coarse voxels missing at gamma 0.4)."""
    from defacer.head import protection_head, sharpest_outline_level
    from defacer.io import load_volume
    from defacer.volume import canonical_reorientation

    source = json.loads((REFERENCE_LABELS / "provenance.json").read_text())["invesalius-ct0051_CT"]["source"]
    volume = load_volume(shared_data / source)
    reorientation = canonical_reorientation(volume.affine, volume.shape)
    spacing = reorientation.ras_spacing
    unperturbed = analyse_head(reorientation.values_to_ras(volume, np.float32), spacing)
    assert unperturbed.tissue_peak_threshold is None
    image = reorientation.values_to_ras(_through_gamma(volume, gamma), np.float32)
    first = analyse_head(image, spacing)
    bright_air = sharpest_outline_level(image, spacing, first)
    guard = first if bright_air is None else protection_head(image, spacing, first, *bright_air)
    assert not (unperturbed.sealed_coarse & ~guard.sealed_coarse).any()
    assert first.tissue_peak_threshold is not None  # the rule fired


def test_a_noise_floor_round_the_head_is_not_taken_for_head_nor_the_threshold_put_in_the_tissue():
    """The T2 phantom with a 20 % Rician noise floor: its tallest peak is the tissue's too, but the air's foot there
    lies in the noise (its head would fill the whole field: no face left to deface), so the Otsu split is taken.
    Before: the tissue's foot, a head 0.62x the one sealed at 12 % noise."""
    spacing = (2.0, 2.0, 2.0)
    reference = analyse_head(make_phantom(2.0, contrast="T2", noise=0.12, seed=0).volume.values(np.float32), spacing)
    head = analyse_head(make_phantom(2.0, contrast="T2", noise=0.2, seed=0).volume.values(np.float32), spacing)
    assert head.sealed_coarse.sum() >= 0.97 * reference.sealed_coarse.sum()
    assert head.sealed_coarse.mean() < 0.5
    assert head.tissue_peak_threshold is not None and head.threshold < head.tissue_peak_threshold
