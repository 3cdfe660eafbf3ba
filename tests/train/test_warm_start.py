"""Warm start from an exported ONNX detector, and patch training for the CPU."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("monai")
pytest.importorskip("onnx")

from defacer.errors import WeightsError
from defacer.train.data import AugmentedBatches, make_phantom_samples
from defacer.train.unet import AttentionUNet3D, UNetConfig
from defacer.train.warm_start import load_onnx_weights


def _shipped() -> tuple:
    from defacer.detect.model import OnnxDetector, default_weights_path

    path = default_weights_path()
    if not path.is_file():
        pytest.skip("no shipped weights")
    return path, OnnxDetector(path)


def test_a_network_loaded_from_an_exported_onnx_computes_what_the_onnx_computes(tmp_path) -> None:
    from defacer.detect.model import OnnxDetector
    from defacer.train.export import export_onnx

    config = UNetConfig(channels=(4, 8, 16))
    trained = AttentionUNet3D(config)
    with torch.no_grad():  # distinct values, as after training (the exporter merges identical initializers)
        for parameter in trained.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    checkpoint = tmp_path / "best.pt"
    torch.save({"model": trained.state_dict(), "unet": config.to_dict(), "train": {}, "history": [],
                "box": {"shape": [32, 32, 32], "spacing_mm": 8.0}, "epoch": 0, "val_dice": 0.0}, checkpoint)
    onnx_path = tmp_path / "detector.onnx"
    export_onnx(checkpoint, onnx_path, {})
    detector = OnnxDetector(onnx_path)
    net = AttentionUNet3D(config)
    load_onnx_weights(net, onnx_path)
    net.eval()
    box = np.random.default_rng(1).random((32, 32, 32), dtype=np.float32)
    with torch.no_grad():
        ours = torch.softmax(net(torch.from_numpy(box[None, None])), 1)[0].numpy()
    assert np.allclose(ours, detector.probabilities(box), atol=1e-4)


def test_warm_start_refuses_a_network_of_another_shape(tmp_path) -> None:
    from defacer.train.export import export_onnx

    config = UNetConfig(channels=(4, 8, 16))
    checkpoint = tmp_path / "best.pt"
    torch.save({"model": AttentionUNet3D(config).state_dict(), "unet": config.to_dict(), "train": {}, "history": [],
                "box": {"shape": [32, 32, 32], "spacing_mm": 8.0}, "epoch": 0, "val_dice": 0.0}, checkpoint)
    export_onnx(checkpoint, tmp_path / "small.onnx", {})
    with pytest.raises(WeightsError, match="--channels"):
        load_onnx_weights(AttentionUNet3D(UNetConfig(channels=(8, 16, 32))), tmp_path / "small.onnx")


def test_warm_start_from_the_shipped_ensemble_is_refused_with_the_command_that_splits_it() -> None:
    # the shipped model is an ensemble of two networks (initializers named members.N.net.*)
    path, _ = _shipped()
    net = AttentionUNet3D(UNetConfig(channels=(4, 8, 16)))
    with pytest.raises(WeightsError, match=r"ensemble of 2 networks.*scripts/split_detector_members\.py --out build/folds"):
        load_onnx_weights(net, path)


def test_patches_have_the_asked_size_and_are_mostly_centred_on_features() -> None:
    samples = make_phantom_samples(1, seed=2, shape=(48, 48, 48), spacing=5.0)
    batches = AugmentedBatches(samples, None, device=torch.device("cpu"), seed=0, patch=16, foreground_probability=1.0)
    for _ in range(6):
        image, labels = batches.draw()
        assert tuple(image.shape) == (1, 16, 16, 16) and tuple(labels.shape) == (16, 16, 16)
        assert bool((labels > 0).any()), "a foreground patch holds a feature"
    whole = AugmentedBatches(samples, None, device=torch.device("cpu"), seed=0)
    assert tuple(whole.draw()[1].shape) == (48, 48, 48)


def test_patch_size_must_suit_the_network(tmp_path, capsys) -> None:
    from defacer.cli.main import main

    code = main(["train", "--out", str(tmp_path / "o"), "--patch", "60"])
    assert code != 0
    assert "multiple of 8" in capsys.readouterr().err
