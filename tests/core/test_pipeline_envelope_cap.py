"""A head read smaller all round must not lead an edit deep into the head either (session 17, 2026-12-05).

Through gamma 2 (the normalised scan squared: every dim tissue dimmer) the air/tissue threshold lands in the scalp
everywhere; on the phantom the thin scalp then falls apart on the coarse grid and the brain is taken as the head
(0.41x the clean one), so the 10 mm protection and the deep cap, both measured from that head, follow the edits
in: 2 brain voxels and 818 voxels deeper than 16 mm below the clean surface changed before this change.  The
envelope (:func:`defacer.head.envelope_head`: everything standing out of the far air's block means, at a
percentile that a monotone change of contrast does not move) is a second reference of the deep cap.
"""

from __future__ import annotations

import numpy as np
import pytest
from deep_changes import deface_through

from defacer.detect.preprocess import normalise
from defacer.head import analyse_head, block_means, envelope_head
from defacer.phantom import make_phantom
from defacer.volume import Volume, canonical_reorientation


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(2.0, seed=3)


def _gamma(phantom, power: float) -> Volume:
    t = np.clip(normalise(phantom.volume.values(np.float32)), 0, None) ** power
    return Volume(t.astype(np.float32), phantom.volume.affine, 1.0, 0.0, phantom.volume.format)


@pytest.mark.parametrize("power", [2.0, 3.0])
def test_a_darker_scalp_never_leads_an_edit_into_the_brain(phantom, power):
    through = deface_through(phantom, _gamma(phantom, power))
    assert through.changed.sum() > 20000, "the features are still defaced"
    assert not (through.changed & phantom.brain).any()
    assert through.deeper_than_cap == 0, f"changed deeper than {through.cap_mm:g} mm below the clean phantom's surface"
    # the sidecar says how much larger than the protection's head the envelope came out (clean: about 1.0)
    assert through.result.provenance["protection"]["deep_cap_mm"]["envelope"]["vs_protection_head"] > 1.5
    assert through.clean.provenance["protection"]["deep_cap_mm"]["envelope"]["vs_protection_head"] < 1.15


def test_the_envelope_holds_the_clean_head_through_gamma_2(phantom):
    ro = canonical_reorientation(phantom.volume.affine, phantom.volume.shape)
    clean = analyse_head(ro.values_to_ras(phantom.volume, np.float32), ro.ras_spacing)
    image = ro.values_to_ras(_gamma(phantom, 2.0), np.float32)
    small = analyse_head(image, ro.ras_spacing)
    envelope = envelope_head(image, ro.ras_spacing, small)
    assert small.sealed_coarse.sum() < 0.6 * clean.sealed_coarse.sum(), "gamma 2 reads the phantom's head small"
    kept = (envelope.sealed_coarse & clean.sealed_coarse).sum() / clean.sealed_coarse.sum()
    assert kept > 0.99
    assert envelope.sealed_coarse.sum() < 1.15 * clean.sealed_coarse.sum(), "not much larger than the head"
    assert not (small.sealed_coarse & ~envelope.sealed_coarse).any(), "it only adds to the head"


def test_block_means_are_centred_on_the_coarse_samples():
    rng = np.random.default_rng(1)
    image = rng.random((11, 9, 7)).astype(np.float32)
    means = block_means(image, (4, 3, 2))
    assert means.shape == image[::4, ::3, ::2].shape
    # the block of sample (1, 1, 1) is voxels 2-5, 2-4, 1-2 (it starts half a block before the sample)
    assert means[1, 1, 1] == pytest.approx(float(image[2:6, 2:5, 1:3].mean()), rel=1e-5)
    # cut at the field's edges: sample 0's block is voxels 0-1, 0-1, 0 ...
    assert means[0, 0, 0] == pytest.approx(float(image[0:2, 0:2, 0:1].mean()), rel=1e-5)
    # ... and the last one runs to the edge
    assert means[-1, -1, -1] == pytest.approx(float(image[6:, 5:, 5:].mean()), rel=1e-5)
