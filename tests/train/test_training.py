"""Training on phantoms: augmentation keeps image and labels aligned; a tiny run trains and exports."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("monai")

from defacer.detect.preprocess import BOX_SHAPE
from defacer.train.data import (
    AugmentedBatches,
    RandAxisTransposed,
    RandBackgroundFloord,
    RandContrastCurved,
    RandFieldCropd,
    RandThickSlicesd,
    Renormalised,
    load_samples,
    make_phantom_samples,
    save_samples,
    training_transform,
)
from defacer.train.loop import TrainConfig, dice_loss, total_loss, train
from defacer.train.unet import UNetConfig

SMALL_BOX = (32, 32, 32)


@pytest.fixture(scope="module")
def phantoms():
    # an 8 mm box keeps the tests fast; the code is the same at the shipped box size
    return make_phantom_samples(3, seed=1, shape=SMALL_BOX, spacing=8.0)


def _item(sample) -> dict:
    return {"image": torch.from_numpy(sample.image[None].copy()), "label": torch.from_numpy(sample.labels[None].astype(np.float32))}


def test_phantom_samples_are_on_the_box_with_every_feature() -> None:
    sample = make_phantom_samples(1, seed=2)[0]
    assert sample.image.shape == BOX_SHAPE
    assert set(np.unique(sample.labels)) == {0, 1, 2, 3}


def test_augmented_draws_keep_labels_on_the_head(phantoms) -> None:
    batches = AugmentedBatches(phantoms, training_transform(shape=SMALL_BOX), seed=0)
    for _ in range(6):
        image, labels = batches.draw()
        assert image.shape == (1, *SMALL_BOX) and labels.shape == SMALL_BOX
        assert image.dtype == torch.float32 and labels.dtype == torch.int64
        assert set(labels.unique().tolist()) <= {0, 1, 2, 3}
        fg = labels > 0
        if fg.any():
            # labelled voxels sit in the head, not in the (zero) air outside the field
            assert float(image[0][fg].mean()) > 0.05


def test_augmentation_is_reproducible_with_a_seed(phantoms) -> None:
    a = AugmentedBatches(phantoms, training_transform(shape=SMALL_BOX), seed=5).batch(2)
    b = AugmentedBatches(phantoms, training_transform(shape=SMALL_BOX), seed=5).batch(2)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_axis_transpose_moves_image_and_labels_together(phantoms) -> None:
    item = _item(phantoms[0])
    transform = RandAxisTransposed(prob=1.0)
    transform.set_random_state(seed=4)
    out = transform(item)
    before = item["image"][0][item["label"][0] > 0].sort().values
    after = out["image"][0][out["label"][0] > 0].sort().values
    assert torch.equal(before, after)


def test_field_crop_empties_image_and_labels_beyond_the_cut(phantoms) -> None:
    transform = RandFieldCropd(prob=1.0, max_fraction=0.5)
    transform.set_random_state(seed=3)
    out = transform(_item(phantoms[0]))
    empty = (out["image"] == 0) & (out["label"] == 0)
    assert int(empty.sum()) > 0.05 * empty.numel()


def test_thick_slices_blur_one_axis_and_keep_the_shape(phantoms) -> None:
    transform = RandThickSlicesd(prob=1.0, factors=(2.5, 2.5))
    transform.set_random_state(seed=1)
    item = _item(phantoms[0])
    out = transform(item)
    assert out["image"].shape == item["image"].shape
    assert torch.equal(out["label"], item["label"])  # labels keep the anatomy
    assert not torch.allclose(out["image"], item["image"])


def test_contrast_curve_keeps_air_dark_and_renormalise_maps_percentiles(phantoms) -> None:
    transform = RandContrastCurved(prob=1.0)
    transform.set_random_state(seed=2)
    item = _item(phantoms[0])
    out = transform(item)["image"]
    assert float(out[item["image"] == 0].abs().max()) == 0.0
    scaled = Renormalised()({"image": out * 7.0 + 3.0})["image"]
    assert float(scaled.min()) >= 0.0 and float(scaled.max()) <= 1.5
    assert abs(float(torch.quantile(scaled.reshape(-1), 0.995)) - 1.0) < 0.05


def test_background_floor_lifts_the_air_towards_the_skin_and_keeps_the_labels(phantoms) -> None:
    item = _item(phantoms[0])
    air = item["image"] == 0
    head = item["image"] > 0.5
    transform = RandBackgroundFloord(prob=1.0, sigma_range=(0.08, 0.08), gamma_range=(0.5, 0.5))
    transform.set_random_state(seed=7)
    out = transform(item)
    assert torch.equal(out["label"], item["label"])
    lifted = out["image"][air]
    # a Rician floor of ~0.1 through gamma 0.5 on the 0-1.5 scale: the air sits at ~0.3, a fifth of the way to bright tissue
    assert float(lifted.median()) > 0.2 and float(lifted.min()) >= 0.0
    assert float(out["image"][head].median()) > float(lifted.median()) + 0.3  # the head stays brighter than the air
    again = RandBackgroundFloord(prob=1.0, sigma_range=(0.08, 0.08), gamma_range=(0.5, 0.5))
    again.set_random_state(seed=7)
    assert torch.equal(again(_item(phantoms[0]))["image"], out["image"])


def test_bright_background_is_an_option_off_by_default() -> None:
    def parts(transform):
        names = [type(t).__name__ for t in transform.transforms]
        gamma = next(t for t in transform.transforms if type(t).__name__ == "RandAdjustContrastd").adjuster.gamma
        return names, gamma

    names, gamma = parts(training_transform(shape=SMALL_BOX))
    assert "RandBackgroundFloord" not in names and tuple(gamma) == (0.67, 1.5)  # the shipped (v3) recipe
    names, gamma = parts(training_transform(shape=SMALL_BOX, bright_background=True))
    assert "RandBackgroundFloord" in names and gamma[0] <= 0.5 and gamma[1] >= 2.0


def test_box_samples_round_trip_through_the_cache(phantoms, tmp_path) -> None:
    save_samples(phantoms, tmp_path / "boxes.npz")
    back = load_samples(tmp_path / "boxes.npz")
    assert [s.name for s in back] == [s.name for s in phantoms]
    for a, b in zip(phantoms, back):
        assert np.array_equal(a.labels, b.labels) and np.allclose(a.affine, b.affine)
        assert np.abs(a.image - b.image).max() < 2e-3  # float16 storage


def test_perfect_prediction_has_zero_dice_loss() -> None:
    target = torch.randint(0, 4, (1, 8, 8, 8))
    logits = torch.nn.functional.one_hot(target, 4).permute(0, 4, 1, 2, 3).float() * 50
    assert float(dice_loss(logits, target)) < 1e-3
    assert float(total_loss(logits, target, 0.1)) < 1e-2


def test_tiny_training_run_writes_checkpoints_with_config_and_exports_onnx(phantoms, tmp_path) -> None:
    pytest.importorskip("onnx")
    from defacer.detect.model import OnnxDetector
    from defacer.train.export import export_onnx

    config = TrainConfig(epochs=2, samples_per_epoch=2, batch_size=1, threads=2,
                         unet=UNetConfig(channels=(4, 8, 16)).to_dict())
    best = train(phantoms[:2], phantoms[2:], tmp_path / "ckpt", config)
    state = torch.load(best, map_location="cpu", weights_only=False)
    assert state["unet"]["channels"] == [4, 8, 16]
    assert state["train"]["ce_weight"] == 0.1
    history = json.loads((tmp_path / "ckpt" / "history.json").read_text())
    assert len(history) == 2 and "val_dice" in history[0]
    card = export_onnx(best, tmp_path / "m.onnx")
    detector = OnnxDetector(tmp_path / "m.onnx")
    assert detector.weights_sha256 == card["sha256"]
    probs = detector.probabilities(phantoms[0].image)
    assert probs.shape == (4, *SMALL_BOX)
    assert np.allclose(probs.sum(axis=0), 1.0, atol=1e-4)
    # an ensemble of two copies of the same network gives the same probabilities
    from defacer.train.export import export_ensemble

    export_ensemble([best, best], tmp_path / "e.onnx")
    ensemble = OnnxDetector(tmp_path / "e.onnx").probabilities(phantoms[0].image)
    assert np.abs(ensemble - probs).max() < 1e-4
    assert OnnxDetector(tmp_path / "e.onnx").mirror is False  # as the shipped ensemble runs
