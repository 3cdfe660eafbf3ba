"""Training on phantoms: augmentation keeps image and labels aligned; a tiny run trains and exports."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchio")

from defacer.train.data import (
    AugmentedDataset,
    RandomAxisTranspose,
    RandomFieldCrop,
    make_phantom_samples,
    to_subject,
    training_transform,
)
from defacer.train.loop import TrainConfig, dice_loss, total_loss, train
from defacer.train.unet import UNetConfig


@pytest.fixture(scope="module")
def phantoms():
    return make_phantom_samples(3, seed=1)


def test_phantom_samples_are_on_the_box_with_every_feature(phantoms) -> None:
    for s in phantoms:
        assert s.image.shape == (64, 64, 64)
        assert set(np.unique(s.labels)) == {0, 1, 2, 3}


def test_augmented_draws_keep_labels_on_the_head(phantoms) -> None:
    torch.manual_seed(0)
    np.random.seed(0)
    dataset = AugmentedDataset(phantoms, 4, training_transform())
    for i in range(4):
        image, labels = dataset[i]
        assert image.shape == (1, 64, 64, 64) and labels.shape == (64, 64, 64)
        fg = labels > 0
        if fg.any():
            # labelled voxels sit in the head, not in the (zero) air outside the field
            assert float(image[0][fg].mean()) > 0.05


def test_axis_transpose_moves_image_and_labels_together(phantoms) -> None:
    subject = to_subject(phantoms[0])
    out = RandomAxisTranspose(p=1.0)(subject)
    before = subject["image"].data[0][subject["label"].data[0] > 0].sort().values
    after = out["image"].data[0][out["label"].data[0] > 0].sort().values
    assert torch.equal(before, after)


def test_field_crop_empties_image_and_labels_beyond_the_cut(phantoms) -> None:
    np.random.seed(3)
    out = RandomFieldCrop(p=1.0, max_fraction=0.5)(to_subject(phantoms[0]))
    empty = (out["image"].data == 0) & (out["label"].data == 0)
    assert int(empty.sum()) > 0.05 * empty.numel()


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
    assert probs.shape == (4, 64, 64, 64)
    assert np.allclose(probs.sum(axis=0), 1.0, atol=1e-4)
    # an ensemble of two copies of the same network gives the same probabilities
    from defacer.train.export import export_ensemble

    export_ensemble([best, best], tmp_path / "e.onnx")
    ensemble = OnnxDetector(tmp_path / "e.onnx").probabilities(phantoms[0].image)
    assert np.abs(ensemble - probs).max() < 1e-4
