"""Issue 15, end to end: a scan whose air is lifted towards its skin (a bright halo, simulated by gamma 0.5) is
defaced with the head found at the level where its outline is sharpest for the detector and the distortions, and
the protection measured from a head at a lower level (head.protection_head: never smaller than the real head on the
21 labelled heads), so nothing changes in the protected region of the untouched scan."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from truth_detector import TruthDetector

from defacer.head import CLEAR_OUTLINE, analyse_head, protection_head, sharpest_outline_level
from defacer.labels import Label
from defacer.phantom import make_phantom
from defacer.pipeline import DefaceOptions, deface
from defacer.protection_check import changed_indices, changed_mask, check_protection_at
from defacer.volume import Volume


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(2.0, seed=3)


def _through_gamma_half(phantom) -> Volume:
    """The phantom scaled to 0-1000 through gamma 0.5: its air noise lifted towards the skin (a halo)."""
    image = phantom.volume.values(np.float32)
    lo, hi = np.percentile(image, [0.5, 99.5])
    halo = (np.sqrt(np.clip((image - lo) / (hi - lo), 0.0, 1.5)) * 1000.0).astype(np.float32)
    return Volume(halo, phantom.volume.affine, 1.0, 0.0, phantom.volume.format)


def _changed_fraction(before: Volume, after: Volume, labels: np.ndarray, label: Label) -> float:
    return float(changed_mask(before.raw, after.raw)[labels == label].mean())


def test_a_halo_scan_is_defaced_like_the_clean_one_and_the_clean_protected_region_is_kept(phantom):
    """The features are changed about as much as on the untouched phantom (before: the halo was taken for head,
    the surface lay in the air and the protection kept 99 % of the nose and ears), and no changed voxel lies in
    the protected region of the UNTOUCHED phantom (its own head model and depth), nor in its brain."""
    halo = _through_gamma_half(phantom)
    clean = deface(phantom.volume, TruthDetector(phantom.labels))
    result = deface(halo, TruthDetector(phantom.labels))
    for label in (Label.EYES, Label.NOSE, Label.EARS):
        assert _changed_fraction(halo, result.volume, phantom.labels, label) >= 0.8 * _changed_fraction(
            phantom.volume, clean.volume, phantom.labels, label), label.name
    assert _changed_fraction(halo, result.volume, phantom.labels, Label.EARS) >= 0.9
    depth, head, reorientation, _ = clean._protection
    changed_at = reorientation.indices_to_ras(changed_indices(halo.raw, result.volume.raw))
    check = check_protection_at(changed_at, head, depth, reorientation.ras_spacing, DefaceOptions().protect_depth_mm)
    assert check.changed_voxels > 0 and check.changed_inside_protected == 0
    assert not (changed_mask(halo.raw, result.volume.raw) & phantom.brain).any()
    assert result.provenance["protection"]["changed_inside_protected"] == 0


def test_the_detector_and_the_distortions_share_the_head_at_the_sharpest_level(phantom):
    """One analysis: the detector is handed the pipeline's head (the one at the sharpest level) and the image
    with the air raised to that level; the protection's head is head.protection_head's (on the phantom, whose halo
    ends in a cliff, both levels below the sharpest lie in the halo: the sharpest head itself); the sidecar names
    the levels and the first analysis, and still warns."""
    halo = _through_gamma_half(phantom)
    image = halo.values(np.float32)  # the phantom is made in RAS
    level, expected = sharpest_outline_level(image, (2.0, 2.0, 2.0), analyse_head(image, (2.0, 2.0, 2.0)))
    seen = []

    class Recording(TruthDetector):
        def predict_with_head(self, image_ras, ras_affine, head):
            seen.append((float(np.min(image_ras)), head))
            return self.labels

    result = deface(halo, Recording(phantom.labels))
    (floor, head), = seen
    assert floor == pytest.approx(level) and head.threshold == pytest.approx(level)
    assert head.outline_contrast >= CLEAR_OUTLINE
    assert np.array_equal(head.sealed_coarse, expected.sealed_coarse)
    guard = result._protection[1]
    assert guard is head
    bright = result.provenance["head"]["bright_air"]
    assert bright["level"] == pytest.approx(level) and bright["first_outline_contrast"] < CLEAR_OUTLINE
    assert bright["protection_threshold"] == pytest.approx(guard.threshold)
    assert bright["protection_head_vs_first"] == bright["head_vs_first"] < 0.5
    assert any("halo" in w and "sharpest" in w for w in result.provenance["warnings"])


def test_a_clear_scan_has_no_bright_air_record(phantom):
    result = deface(phantom.volume, TruthDetector(phantom.labels), DefaceOptions(features=("nose",)))
    assert "bright_air" not in result.provenance["head"]


REFERENCE_LABELS = Path(__file__).resolve().parents[2] / "reference_labels"


def _real_through_gamma(shared_data, name: str, gamma: float):
    """A labelled real head, its version through ``gamma`` (as benchmarks/halo_deface.py) and its RAS labels."""
    from defacer.detect.preprocess import normalise
    from defacer.io import load_volume
    from defacer.volume import canonical_reorientation

    source = json.loads((REFERENCE_LABELS / "provenance.json").read_text())[name]["source"]
    volume = load_volume(shared_data / source)
    reference = load_volume(REFERENCE_LABELS / f"{name}.labels.nii.gz")
    halo_values = (np.clip(normalise(volume.values(np.float32)), 0, None) ** gamma).astype(np.float32)
    halo = Volume(halo_values, volume.affine, 1.0, 0.0, volume.format)
    reorientation = canonical_reorientation(volume.affine, volume.shape)
    return volume, halo, reorientation.to_ras(np.asarray(reference.values(), np.uint8))


@pytest.mark.realdata
@pytest.mark.parametrize("gamma", [0.4, 0.5])
def test_the_protection_round_a_halo_holds_the_whole_untouched_head_where_the_sharpest_level_cuts_into_it(
        shared_data, gamma):
    """slicer-mrhead: its sharpest level lies within its skin's edge (1.08-1.19x the height of the untouched
    scan's own threshold), so the head there seals 0.96-0.98x the untouched one, and taken for the protection
    (d266309, reverted) it let 319 voxels of the untouched head's protected region change.  The protection's
    head holds every voxel of the untouched head, and no changed voxel lies in the untouched protected region."""
    volume, halo, labels = _real_through_gamma(shared_data, "slicer-mrhead_2mm", gamma)
    clean = deface(volume, TruthDetector(labels))
    result = deface(halo, TruthDetector(labels))
    depth, head, reorientation, _ = clean._protection
    guard = result._protection[1]
    image = reorientation.values_to_ras(halo, np.float32)
    first = analyse_head(image, reorientation.ras_spacing)
    level, sharp = sharpest_outline_level(image, reorientation.ras_spacing, first)
    assert result.provenance["head"]["bright_air"]["level"] == pytest.approx(level)  # the rule fired
    assert (head.sealed_coarse & ~sharp.sealed_coarse).any()  # the sharpest head is too small here
    assert not (head.sealed_coarse & ~guard.sealed_coarse).any()
    assert not (sharp.sealed_coarse & ~guard.sealed_coarse).any() and not (guard.sealed_coarse & ~first.sealed_coarse).any()
    changed_at = reorientation.indices_to_ras(changed_indices(halo.raw, result.volume.raw))
    check = check_protection_at(changed_at, head, depth, reorientation.ras_spacing, DefaceOptions().protect_depth_mm)
    assert check.changed_voxels > 0 and check.changed_inside_protected == 0
    ears = labels == Label.EARS
    assert changed_mask(halo.raw, result.volume.raw)[reorientation.from_ras(ears)].mean() >= 0.5


def test_the_protection_head_steps_past_levels_in_the_halo(phantom):
    """On the phantom through gamma 0.5 the two levels below the sharpest still hold the halo (their heads 3.7x and
    1.9x the sharpest one's): the protection takes the sharpest head itself rather than one swallowing the halo."""
    image = _through_gamma_half(phantom).values(np.float32)
    first = analyse_head(image, (2.0, 2.0, 2.0))
    level, sharp = sharpest_outline_level(image, (2.0, 2.0, 2.0), first)
    assert protection_head(image, (2.0, 2.0, 2.0), first, level, sharp) is sharp
