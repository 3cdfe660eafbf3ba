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


def test_the_softmax_wrapper_is_the_softmax_and_exports_without_a_softmax_node(tmp_path) -> None:
    onnx = pytest.importorskip("onnx")
    torch.manual_seed(1)
    model = SoftmaxUNet(AttentionUNet3D(SMALL)).eval()
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        assert torch.allclose(model(x), torch.softmax(model.net(x), dim=1), atol=1e-6)
    path = tmp_path / "m.onnx"
    torch.onnx.export(model, (x,), str(path), input_names=["image"], output_names=["probabilities"],
                      opset_version=17, dynamo=False)
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert "Softmax" not in ops and "Exp" in ops


def test_reducing_channels_before_upsampling_computes_what_upsampling_first_computed() -> None:
    torch.manual_seed(2)
    net = AttentionUNet3D(SMALL).eval()
    x = torch.randn(1, 1, 16, 16, 16)

    def upsample_first(x: torch.Tensor) -> torch.Tensor:  # the earlier order of the decoder
        skips = []
        for i, encoder in enumerate(net.encoders):
            x = encoder(x if i == 0 else net.pool(x))
            skips.append(x)
        x = skips.pop()
        for gate, reduce, decoder in zip(net.gates, net.reduce, net.decoders):
            skip = skips.pop()
            x = decoder(torch.cat([gate(skip, x), reduce(net.upsample(x))], dim=1))
        return net.head(x)

    with torch.no_grad():
        assert torch.allclose(net(x), upsample_first(x), atol=1e-5)
