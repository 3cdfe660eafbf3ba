"""The pipeline analyses each head once and hands that analysis to the detector's ear fallback."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import defacer.detect.ear_fallback
import defacer.pipeline
from defacer.detect import HeadModelDetector
from defacer.detect.model import CARD_NAME, WEIGHTS_NAME, OnnxDetector, default_weights_path
from defacer.head import analyse_head
from defacer.phantom import make_phantom
from defacer.pipeline import deface
from defacer.volume import canonical_reorientation

needs_weights = pytest.mark.skipif(not default_weights_path().is_file(), reason="shipped weights not built yet")


@pytest.fixture(scope="module")
def earless_detector(tmp_path_factory) -> OnnxDetector:
    """The shipped network with the ear class weighted to zero: it never finds an ear, so the fallback always runs."""
    folder = tmp_path_factory.mktemp("earless")
    shutil.copy(default_weights_path(), folder / WEIGHTS_NAME)
    card = json.loads(default_weights_path().with_suffix(".json").read_text())
    (folder / CARD_NAME).write_text(json.dumps({**card, "class_weights": [*card["class_weights"][:3], 0.0]}))
    return OnnxDetector(folder / WEIGHTS_NAME, threads=1)


@needs_weights
def test_deface_analyses_the_head_once_when_the_ear_fallback_runs(earless_detector, monkeypatch) -> None:
    calls: list[tuple[int, ...]] = []

    def counted(image, spacing):
        calls.append(image.shape)
        return analyse_head(image, spacing)

    monkeypatch.setattr(defacer.pipeline, "analyse_head", counted)
    monkeypatch.setattr(defacer.detect.ear_fallback, "analyse_head", counted)
    made = make_phantom(2.0)
    result = deface(made.volume, earless_detector)
    sources = result.provenance["detector"]["sources"]["ears"]
    assert set(sources.values()) <= {"image", "none"} and "image" in sources.values(), "the fallback ran"
    assert len(calls) == 1
    assert isinstance(earless_detector, HeadModelDetector)
    assert set(result.provenance["detector"]["stage_timings"]) >= {"network", "ear_fallback"}
    assert "head_s" in result.provenance["timings"]


@needs_weights
def test_a_handed_over_head_gives_the_labels_the_fallback_finds_on_its_own(earless_detector) -> None:
    made = make_phantom(2.0)
    reo = canonical_reorientation(made.volume.affine, made.volume.shape)
    image = reo.to_ras(made.volume.values(np.float32))
    alone = earless_detector.predict(image, reo.ras_affine)
    handed = earless_detector.predict_with_head(image, reo.ras_affine, analyse_head(image, reo.ras_spacing))
    assert (alone == 3).any()
    assert np.array_equal(handed, alone)


def test_voxels_per_feature_counts_each_label_once() -> None:
    """The count gives each feature's voxel count, in FEATURES order, 0 for an absent one."""
    from defacer.pipeline import _voxels_per_feature

    label_map = np.zeros((9, 8, 7), np.uint8)
    label_map[1:3, 1:3, 1:3] = 1
    label_map[5, 5, 1:6] = 3
    counts = _voxels_per_feature(label_map)
    assert list(counts) == ["eyes", "nose", "ears"]
    assert counts == {"eyes": 8, "nose": 0, "ears": 5}


@pytest.mark.parametrize("slab", [512 * 1024, 1000, 7])
def test_voxels_per_feature_slab_by_slab_equals_whole_map_counts(slab: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Counted a slab at a time in memory order (C, Fortran, or a strided view counted whole): the same counts."""
    import defacer.pipeline
    from defacer.pipeline import _voxels_per_feature

    monkeypatch.setattr(defacer.pipeline, "COUNT_SLAB_VOXELS", slab)
    rng = np.random.default_rng(slab)
    label_map = rng.choice(np.array([0, 0, 0, 1, 2, 3, 4], np.uint8), size=(23, 19, 17))
    for view in (label_map, np.asfortranarray(label_map), label_map[:, ::2], label_map[:0]):
        expected = {name: int(np.count_nonzero(view == value)) for name, value in (("eyes", 1), ("nose", 2), ("ears", 3))}
        assert _voxels_per_feature(view) == expected
