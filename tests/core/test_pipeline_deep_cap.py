"""A head read too small must not lead an edit deep into the head (BRAINCHK, 2026-12-05).

Through a low-SNR noise floor (complex Gaussian noise of 8 % of the bright tissue level, magnitude taken: a
Rician floor round the head) the air/tissue threshold rises into the scalp's edge; where the scalp falls below it
the dark layers under it open onto the outside, the sealed head has tunnels, and depth measured from it let the eye
cover follow the surface 46-55 mm into five of the 21 labelled heads.  The deep cap
(``defacer.head.deep_sealed_head``: the protection's head closed across 30 mm gaps; no edit deeper than
``protect_depth_mm + DEEP_CAP_MARGIN_MM`` below it) keeps them out; on every unperturbed labelled head it changes
no output voxel (checked with the shipped detector, 2026-12-05)."""

from __future__ import annotations

import numpy as np
import pytest
from deep_changes import deface_through

from defacer.detect.preprocess import normalise
from defacer.head import DEEP_SEAL_RADIUS_MM, analyse_head, deep_sealed_head
from defacer.phantom import make_phantom
from defacer.volume import Volume


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(2.0, seed=3)


def _noise_floor(phantom) -> Volume:
    """The phantom on the detector's normalised scale with an 8 % Rician noise floor (seeded)."""
    t = normalise(phantom.volume.values(np.float32))
    noise = np.random.default_rng(0).normal(0.0, 0.08, (2, *t.shape)).astype(np.float32)
    return Volume(np.hypot(t + noise[0], noise[1]).astype(np.float32), phantom.volume.affine, 1.0, 0.0,
                  phantom.volume.format)


def test_a_noise_floor_never_leads_an_edit_into_the_brain(phantom):
    """Before the cap, 2 of the phantom's brain voxels changed through the noise floor, and 716 voxels deeper
    than 20 mm below the clean phantom's surface; the pipeline's own check reported 0 (it measures against the
    same head read too small).  (Through gamma 2 the phantom's head is read smaller all round, with no tunnel: the envelope's
    cap covers that, test_pipeline_envelope_cap.)"""
    through = deface_through(phantom, _noise_floor(phantom))
    assert through.changed.sum() > 20000, "the features are still defaced"
    assert not (through.changed & phantom.brain).any()
    assert through.deeper_than_cap == 0, f"changed deeper than {through.cap_mm:g} mm below the clean phantom's surface"


def test_the_deep_seal_bridges_a_tunnel_and_only_adds(phantom):
    """A channel 20 mm across cut from the skin towards the centre opens the sealed head (its surface follows the
    channel in); closed across 30 mm gaps it is bridged again, and nothing of the head is lost."""
    image = phantom.volume.values(np.float32).copy()
    spacing = phantom.volume.spacing
    centre = np.array(image.shape) // 2
    grid = np.indices(image.shape).astype(np.float32)
    radial = np.hypot((grid[0] - centre[0]) * spacing[0], (grid[2] - centre[2]) * spacing[2])
    tunnel = (radial < 10.0) & (grid[1] >= centre[1])  # from the centre forwards to the face
    image[tunnel] = 0.0
    head = analyse_head(image, spacing)
    deep = deep_sealed_head(head, spacing)
    c = tuple(centre // np.asarray(head.strides))
    in_front = (c[0], c[1] + int(40.0 // (spacing[1] * head.strides[1])), c[2])
    assert not head.sealed_coarse[in_front], "the tunnel opens the ordinary sealed head"
    assert deep.sealed_coarse[in_front], f"closing across {2 * DEEP_SEAL_RADIUS_MM:g} mm bridges it"
    assert not (head.sealed_coarse & ~deep.sealed_coarse).any()
    assert deep.cache == {} and deep.cache is not head.cache
