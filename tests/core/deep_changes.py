"""Defacing the phantom through a contrast change, measured against the clean phantom's own head (shared by the
deep-cap tests)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from truth_detector import TruthDetector

from defacer.phantom import Phantom
from defacer.pipeline import DEEP_CAP_MARGIN_MM, DefaceOptions, DefaceResult, deface
from defacer.protection_check import changed_indices, changed_mask, check_protection_at
from defacer.volume import Volume


@dataclass
class ThroughVariant:
    """``variant`` defaced with the phantom's true labels, and the clean phantom defaced the same way."""

    result: DefaceResult
    clean: DefaceResult
    changed: np.ndarray  # bool, the input grid: voxels whose stored value changed
    deeper_than_cap: int  # of those, how many lie deeper than protect_depth + DEEP_CAP_MARGIN_MM below the clean surface
    cap_mm: float


def deface_through(phantom: Phantom, variant: Volume) -> ThroughVariant:
    """Deface ``variant`` (the phantom's grid, another contrast) and count its changes deeper than the deep cap
    below the CLEAN phantom's surface (the exact depth of :func:`check_protection_at`)."""
    detector = TruthDetector(phantom.labels)
    result = deface(variant, detector)
    clean = deface(phantom.volume, detector)
    depth, head, reorientation, _ = clean._protection
    changed_at = reorientation.indices_to_ras(changed_indices(variant.raw, result.volume.raw))
    cap = DefaceOptions().protect_depth_mm + DEEP_CAP_MARGIN_MM
    deep = check_protection_at(changed_at, head, depth, reorientation.ras_spacing, cap)
    return ThroughVariant(result, clean, changed_mask(variant.raw, result.volume.raw), deep.changed_inside_protected,
                          cap)
