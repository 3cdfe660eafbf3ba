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
from truth_detector import TruthDetector

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


def _slab_ear_edits(phantom, into_brain_mm: float):
    """A stand-in ear rule that grew as far as any rule might: per side, every voxel from the image's side face to
    ``into_brain_mm`` inside the phantom's brain (under 5 mm of scalp and 6 of skull, 13 mm in at the side), over
    the ears' extent along A and S, set to 0."""
    from defacer.distort import Edit
    from defacer.labels import Label

    ears = phantom.labels == Label.EARS
    brain_x = np.nonzero(phantom.brain.any(axis=(1, 2)))[0]
    steps = round(into_brain_mm / 2.0)  # the phantom's 2 mm voxels
    edits = []
    for x, side in ((slice(0, int(brain_x.min()) + steps), slice(0, ears.shape[0] // 2)),
                    (slice(int(brain_x.max()) + 1 - steps, ears.shape[0]), slice(ears.shape[0] // 2, None))):
        y, z = np.nonzero(ears[side].any(axis=0))
        box = (x, slice(int(y.min()), int(y.max()) + 1), slice(int(z.min()), int(z.max()) + 1))
        shape = tuple(s.stop - s.start for s in box)
        edits.append(Edit("ears", box, np.ones(shape, dtype=bool), np.zeros(shape, dtype=np.float32)))
    assert all(phantom.brain[e.box].sum() > 100 for e in edits), "the stand-in reaches into the brain"
    return edits


def test_an_ear_edit_never_reaches_the_brain_whatever_rule_grew_it(phantom, monkeypatch):
    """Through gamma 3 the protection's head is the phantom's brain (0.39x the envelope), so the 10 mm protected
    below it lie inside the brain, and the deep caps (20 mm below the envelope, 30 below the head closed across
    30 mm gaps) lie deeper than its 13 mm of scalp and skull at the side: an ear edit reaching 6 mm into the brain
    changed 168 of its voxels before the ears were also protected 10 mm below the envelope where it holds a head read
    clearly small (pipeline.ENVELOPE_PROTECTS_EARS_ABOVE; FACES23's flat-ear delimitation, de9c2db, grew an edit
    from the head read as the brain there)."""
    from defacer import pipeline

    monkeypatch.setattr(pipeline, "distort_ears", lambda *a, **k: _slab_ear_edits(phantom, 6.0))
    through = deface_through(phantom, _gamma(phantom, 3.0))
    ears = [e for e in through.result.provenance["edits"] if e["feature"] == "ears"]
    assert through.result.provenance["protection"]["deep_cap_mm"]["envelope"]["vs_protection_head"] > 2.0
    assert not (through.changed & phantom.brain).any(), int((through.changed & phantom.brain).sum())
    assert all(e["voxels_written"] > 2000 for e in ears), "the scalp over the brain still changes"
    assert through.result.provenance["protection"]["deep_cap_mm"]["envelope"]["ears_protected_below_it_mm"] == 10.0
    # on the clean phantom (the envelope 1.0x the protection's head) the ears are protected below that head only:
    # the same voxels are written as without the envelope's protection of the ears
    assert through.clean.provenance["protection"]["deep_cap_mm"]["envelope"]["ears_protected_below_it_mm"] is None
    clean = [e["voxels_written"] for e in through.clean.provenance["edits"] if e["feature"] == "ears"]
    monkeypatch.setattr(pipeline, "ENVELOPE_PROTECTS_EARS_ABOVE", np.inf)
    unguarded = pipeline.deface(phantom.volume, TruthDetector(phantom.labels))
    assert clean == [e["voxels_written"] for e in unguarded.provenance["edits"] if e["feature"] == "ears"]
