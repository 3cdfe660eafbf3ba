"""The attention U-Net: shapes, real attention gates on every skip, ONNX export agreeing with PyTorch."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("monai")

from defacer.train.unet import AttentionGate, AttentionUNet3D, SoftmaxUNet, UNetConfig

SMALL = UNetConfig(channels=(4, 8, 16))


def test_unet_returns_one_logit_per_class_and_voxel() -> None:
    net = AttentionUNet3D(SMALL)
    out = net(torch.zeros(2, 1, 16, 24, 32))
    assert out.shape == (2, 4, 16, 24, 32)


def test_every_skip_connection_has_an_attention_gate() -> None:
    net = AttentionUNet3D(SMALL)
    gates = [m for m in net.modules() if isinstance(m, AttentionGate)]
    assert len(gates) == len(SMALL.channels) - 1


def test_attention_coefficients_are_per_voxel_and_in_unit_range() -> None:
    net = AttentionUNet3D(SMALL).eval()
    with torch.no_grad():
        net(torch.randn(1, 1, 16, 16, 16))
    gate = [m for m in net.modules() if isinstance(m, AttentionGate)][-1]  # the finest skip
    alpha = gate.last_alpha
    assert alpha is not None and alpha.shape == (1, 1, 16, 16, 16)
    assert float(alpha.min()) >= 0.0 and float(alpha.max()) <= 1.0
    assert float(alpha.std()) > 0.0


def test_gate_multiplies_skip_features_by_its_coefficients() -> None:
    gate = AttentionGate(4, 8, 2)
    x = torch.randn(1, 4, 8, 8, 8)
    g = torch.randn(1, 8, 4, 4, 4)
    out = gate(x, g)
    assert torch.allclose(out, x * gate.last_alpha)


def test_onnx_export_agrees_with_pytorch(tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    torch.manual_seed(0)
    model = SoftmaxUNet(AttentionUNet3D(SMALL)).eval()
    x = torch.randn(1, 1, 16, 16, 16)
    path = tmp_path / "m.onnx"
    torch.onnx.export(model, (x,), str(path), input_names=["image"], output_names=["probabilities"],
                      opset_version=17, dynamo=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (onnx_out,) = session.run(None, {"image": x.numpy()})
    with torch.no_grad():
        torch_out = model(x).numpy()
    assert np.abs(onnx_out - torch_out).max() < 1e-4


def test_config_round_trips_through_a_dict() -> None:
    assert UNetConfig.from_dict(SMALL.to_dict()) == SMALL
