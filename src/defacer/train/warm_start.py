"""Warm start: load the weights of an exported ONNX detector back into the PyTorch network.

The shipped model is ONNX only (no checkpoint travels with the package) and is an ensemble of two
networks (the mean of foldA and foldB), which one network cannot take whole:
``python scripts/split_detector_members.py --out build/folds`` writes each member as a model of its
own, and ``defacer train --resume build/folds/foldA.onnx`` continues from one.
:func:`defacer.train.export` writes the network as the ``net`` member of a softmax wrapper, so every
ONNX initializer is named ``net.<state_dict key>``; a file whose initializers do not cover the
architecture exactly (other channels, a graph whose weights were folded) is refused, and an ensemble
(initializers ``members.<i>.net.*``) is refused with the command that splits it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from defacer.errors import WeightsError
from defacer.train.unet import AttentionUNet3D, UNetConfig

#: The command that writes each member of the shipped ensemble as a single model (repository root).
SPLIT_COMMAND = "python scripts/split_detector_members.py --out build/folds"


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
                           "Warm-start from a single model exported by 'defacer train' (e.g. a member of the shipped "
                           f"ensemble: {SPLIT_COMMAND}) or a .pt checkpoint.") from err
    found = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    members = sorted({name.split(".")[1] for name in found if name.startswith("members.")})
    if members and not any(name.startswith("net.") for name in found):
        raise WeightsError(f"{onnx_path} is an ensemble of {len(members)} networks (initializers 'members.<i>.*', "
                           "as the shipped detector); one network cannot start from all of them. Write each member "
                           f"as a model of its own and resume from one: {SPLIT_COMMAND}, then --resume "
                           "build/folds/foldA.onnx --channels 8,16,32,64.")
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
