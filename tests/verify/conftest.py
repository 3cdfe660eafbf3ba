"""Fixtures for the verification tests: phantoms, a crude "face removed" edit, detector availability."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from defacer.phantom import Phantom, make_phantom
from defacer.verify.render import auto_iso_level
from defacer.volume import Volume, canonical_reorientation


def _have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


@pytest.fixture(scope="session")
def detectors() -> None:
    """Skip the test when the ``verify`` extra's face models are not installed."""
    if not (_have("mediapipe") and _have("dlib") and _have("face_recognition_models")):
        pytest.skip("needs defacer[verify]: mediapipe==0.10.21, dlib-bin, face-recognition-models")
    from defacer.verify.faces import available

    status = available()
    if not all(status.values()):
        pytest.skip(f"face detector back-ends not usable here: {status} (see docs/verification.md, section 7)")


@pytest.fixture(scope="session")
def face_remover():
    """(:func:`remove_face`, :func:`removed_region_labels`): a clearly defaced copy of a real head."""
    return remove_face, removed_region_labels


def remove_face(volume: Volume, behind_mm: float = 70.0, below_mm: float = 50.0, above_mm: float = 55.0) -> Volume:
    """A clearly defaced copy: everything in front of a coronal plane ``behind_mm`` behind the most
    anterior skin point, from ``below_mm`` under it to ``above_mm`` over it, set to air."""
    reo = canonical_reorientation(volume.affine, volume.shape)
    ras = reo.to_ras(volume.raw).copy()
    values = ras.astype(np.float32) * volume.slope + volume.inter
    iso = auto_iso_level(values[::3, ::3, ::3])
    idx = np.argwhere(values[::2, ::2, ::2] > iso) * 2
    tip = idx[np.argmax(idx[:, 1])]
    sp = reo.ras_spacing
    y0 = max(int(tip[1] - behind_mm / sp[1]), 0)
    z0 = max(int(tip[2] - below_mm / sp[2]), 0)
    z1 = max(int(tip[2] + above_mm / sp[2]), 0)
    air = np.percentile(ras[::4, ::4, ::4], 1)
    ras[:, y0:, z0:z1] = np.asarray(air).astype(ras.dtype)
    return volume.with_raw(reo.from_ras(ras))


def removed_region_labels(original: Volume, defaced: Volume) -> np.ndarray:
    """Label map marking the changed voxels as "nose" (the edit region a defacer would report)."""
    return ((original.raw != defaced.raw) * 2).astype(np.uint8)


@pytest.fixture(scope="session")
def phantom() -> Phantom:
    """A 2 mm T1 phantom in RAS."""
    return make_phantom(2.0, contrast="T1")


@pytest.fixture(scope="session")
def defaced_phantom(phantom: Phantom) -> Volume:
    """The phantom with its eyes and nose (and a margin) set to air."""
    from scipy import ndimage

    region = ndimage.binary_dilation(np.isin(phantom.labels, (1, 2)), iterations=3) & ~phantom.brain
    raw = phantom.volume.raw.copy()
    raw[region] = raw.min()
    return phantom.volume.with_raw(raw)
