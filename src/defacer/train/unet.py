"""A small 3D U-Net with additive attention gates on its skip connections.

The attention gate follows Oktay et al. 2018 ("Attention U-Net: learning where to look for
the pancreas") and Schlemper et al. 2019 ("Attention gated networks"): the coarser decoder
features ``g`` gate the encoder skip features ``x`` through

    q = ReLU(W_x * x_down + W_g * g + b),   alpha = sigmoid(psi * q + b_psi),

where ``x_down`` is ``x`` brought to ``g``'s grid by a strided 1x1x1 convolution, and ``alpha``
(one coefficient per voxel) is upsampled trilinearly and multiplies ``x`` before concatenation.

The network is written for ONNX export (opset 17): only Conv3d, InstanceNorm3d, LeakyReLU,
MaxPool3d, trilinear Upsample, Sigmoid and Concat.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn


@dataclass(frozen=True)
class UNetConfig:
    """Architecture settings stored with every checkpoint.

    Attributes
    ----------
    in_channels : int
        Image channels (1).
    num_classes : int
        Output classes including background (4: background, eyes, nose, ears).
    channels : tuple of int
        Feature channels per resolution level, finest first; ``len(channels) - 1`` poolings, so
        input sizes must be divisible by ``2 ** (len(channels) - 1)``.
    attention : bool
        Gate the skip connections (``False`` gives a plain U-Net, for ablations only).
    """

    in_channels: int = 1
    num_classes: int = 4
    channels: tuple[int, ...] = field(default=(12, 24, 48, 96))
    attention: bool = True

    def to_dict(self) -> dict:
        """JSON-ready dictionary."""
        d = asdict(self)
        d["channels"] = list(self.channels)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> UNetConfig:
        """Inverse of :meth:`to_dict`."""
        d = dict(d)
        d["channels"] = tuple(d["channels"])
        return cls(**d)


class ConvBlock(nn.Sequential):
    """Two 3x3x3 convolutions, each followed by instance normalisation and LeakyReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv3d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.InstanceNorm3d(out_channels, affine=True),
            nn.LeakyReLU(0.1, inplace=True),
            nn.Conv3d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.InstanceNorm3d(out_channels, affine=True),
            nn.LeakyReLU(0.1, inplace=True),
        )


class AttentionGate(nn.Module):
    """Additive attention gate (Oktay et al. 2018) on a skip connection.

    Parameters
    ----------
    skip_channels : int
        Channels of the encoder features ``x``.
    gate_channels : int
        Channels of the coarser gating features ``g`` (half the spatial size of ``x``).
    inter_channels : int
        Channels of the intermediate space where ``x`` and ``g`` are added.
    """

    def __init__(self, skip_channels: int, gate_channels: int, inter_channels: int) -> None:
        super().__init__()
        self.theta_x = nn.Conv3d(skip_channels, inter_channels, kernel_size=2, stride=2, bias=False)
        self.phi_g = nn.Conv3d(gate_channels, inter_channels, kernel_size=1, bias=True)
        self.psi = nn.Conv3d(inter_channels, 1, kernel_size=1, bias=True)
        self.relu = nn.ReLU(inplace=True)
        self.sigmoid = nn.Sigmoid()
        self.upsample = nn.Upsample(scale_factor=2, mode="trilinear", align_corners=False)
        self.last_alpha: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """Gate ``x``.

        Parameters
        ----------
        x : Tensor, shape (N, C_x, D, H, W)
            Skip features.
        g : Tensor, shape (N, C_g, D/2, H/2, W/2)
            Gating features from the coarser level.

        Returns
        -------
        Tensor, shape (N, C_x, D, H, W)
            ``x`` multiplied voxel-wise by the attention coefficients in [0, 1] (kept in
            :attr:`last_alpha`, shape (N, 1, D, H, W), for inspection).
        """
        q = self.relu(self.theta_x(x) + self.phi_g(g))
        alpha = self.upsample(self.sigmoid(self.psi(q)))
        self.last_alpha = alpha.detach()
        return x * alpha


class AttentionUNet3D(nn.Module):
    """3D U-Net whose skip connections pass through :class:`AttentionGate` modules.

    Parameters
    ----------
    config : UNetConfig
        Architecture settings.

    Notes
    -----
    ``forward`` takes ``(N, in_channels, X, Y, Z)`` with every spatial size divisible by
    ``2 ** (len(config.channels) - 1)`` and returns logits ``(N, num_classes, X, Y, Z)``
    (no softmax: apply it outside, as the ONNX export does).
    """

    def __init__(self, config: UNetConfig = UNetConfig()) -> None:
        super().__init__()
        self.config = config
        ch = config.channels
        self.encoders = nn.ModuleList()
        previous = config.in_channels
        for c in ch:
            self.encoders.append(ConvBlock(previous, c))
            previous = c
        self.pool = nn.MaxPool3d(2)
        self.upsample = nn.Upsample(scale_factor=2, mode="trilinear", align_corners=False)
        self.gates = nn.ModuleList()
        self.reduce = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for level in range(len(ch) - 2, -1, -1):
            skip, coarse = ch[level], ch[level + 1]
            self.gates.append(AttentionGate(skip, coarse, max(skip // 2, 4)) if config.attention else nn.Identity())
            self.reduce.append(nn.Conv3d(coarse, skip, kernel_size=1, bias=False))
            self.decoders.append(ConvBlock(2 * skip, skip))
        self.head = nn.Conv3d(ch[0], config.num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for every voxel; see the class notes for shapes."""
        skips = []
        for i, encoder in enumerate(self.encoders):
            x = encoder(x if i == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()
        for gate, reduce, decoder in zip(self.gates, self.reduce, self.decoders):
            skip = skips.pop()
            gated = gate(skip, x) if self.config.attention else skip
            # the 1x1 channel reduction (no bias) commutes with the per-channel trilinear upsampling:
            # reducing first upsamples half the channels (same function, ~20% less CPU in the ONNX graph)
            x = decoder(torch.cat([gated, self.upsample(reduce(x))], dim=1))
        return self.head(x)


class SoftmaxUNet(nn.Module):
    """The exported graph: network plus softmax, returning class probabilities (N, C, X, Y, Z)."""

    def __init__(self, net: AttentionUNet3D) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities over ``dim=1``.

        Written out (max, exp, sum, divide) rather than ``torch.softmax``: onnxruntime's Softmax
        over the channel axis of a 3D volume transposes it twice and cost 15% of the network's
        time; the element-wise form is the same function.
        """
        logits = self.net(x)
        exp = torch.exp(logits - logits.amax(dim=1, keepdim=True))
        return exp / exp.sum(dim=1, keepdim=True)
