"""Warm start: load the weights of an exported ONNX detector back into the PyTorch network.

The shipped model is ONNX only (no checkpoint travels with the package), so ``defacer train
--resume src/defacer/models/detector.onnx`` continues from it.  :func:`defacer.train.export`
writes the network as the ``net`` member of a softmax wrapper, so every ONNX initializer is
named ``net.<state_dict key>``; a file whose initializers do not cover the architecture exactly
(other channels, an ensemble, a graph whose weights were folded) is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from defacer.errors import WeightsError
from defacer.train.unet import AttentionUNet3D, UNetConfig


def unet_config_from_card(card: dict[str, Any]) -> UNetConfig:
    """The architecture recorded in an exported model card (``unet`` entry)."""
    if "unet" not in card:
        message = "Expected a model card with a 'unet' entry (written by defacer train --export), found none."
        raise WeightsError(message)
    return UNetConfig.from_dict(card["unet"])


def load_onnx_weights(net: AttentionUNet3D, onnx_path: Path) -> None:
    """Copy the initializers of ``onnx_path`` into ``net`` (in place).

    Raises
    ------
    WeightsError
        When a parameter of ``net`` has no initializer of the same name and shape in the file.
    """
    import onnx
    from onnx import numpy_helper

    try:
        model = onnx.load(str(onnx_path))
    except Exception as err:  # onnx raises protobuf decode errors and OSError for files it cannot read
        raise WeightsError(f"'{onnx_path}' could not be read as an ONNX model ({type(err).__name__}: {str(err)[:200]}). "
                           "Warm-start from a model exported by 'defacer train' (e.g. the shipped "
                           "src/defacer/models/detector.onnx) or a .pt checkpoint.") from err
    found = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    state = net.state_dict()
    missing = []
    new_state = {}
    for key, tensor in state.items():
        array = found.get(f"net.{key}")
        if array is None or tuple(array.shape) != tuple(tensor.shape):
            missing.append(key)
            continue
        new_state[key] = torch.from_numpy(np.array(array, copy=True)).to(tensor.dtype)
    if missing:
        message = (f"{onnx_path} does not hold this network's weights: {len(missing)} of {len(state)} parameters "
                   f"have no initializer of the same name and shape (first: {missing[0]}). Warm-start only from a "
                   "single model exported by 'defacer train', with the same --channels.")
        raise WeightsError(message)
    net.load_state_dict(new_state)
