"""Export a trained checkpoint to ONNX (opset 17) with its JSON card (config, metrics, sha256)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from defacer.detect.preprocess import BOX_SHAPE, BOX_SPACING, NORMALISE_PERCENTILES, TOP_TO_CENTRE_MM
from defacer.train.loop import load_checkpoint
from defacer.train.unet import SoftmaxUNet

OPSET = 17


def export_onnx(checkpoint: Path, out_path: Path, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``out_path`` (.onnx) and ``out_path.with_suffix('.json')``; returns the card.

    The graph takes ``image`` (1, 1, 64, 64, 64) float32 (the box from
    :func:`defacer.detect.preprocess.to_box`) and returns ``probabilities`` (1, 4, 64, 64, 64).
    """
    net = load_checkpoint(checkpoint)
    model = SoftmaxUNet(net).eval()
    dummy = torch.zeros((1, 1, *BOX_SHAPE), dtype=torch.float32)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_suffix(".onnx.tmp")
    with torch.no_grad():
        torch.onnx.export(model, (dummy,), str(tmp), input_names=["image"], output_names=["probabilities"],
                          opset_version=OPSET, dynamo=False)
    tmp.replace(out_path)
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    card: dict[str, Any] = {
        "format": "onnx",
        "opset": OPSET,
        "file": out_path.name,
        "sha256": hashlib.sha256(out_path.read_bytes()).hexdigest(),
        "size_bytes": out_path.stat().st_size,
        "box": {"shape": list(BOX_SHAPE), "spacing_mm": BOX_SPACING, "top_to_centre_mm": TOP_TO_CENTRE_MM,
                "normalise_percentiles": list(NORMALISE_PERCENTILES)},
        "classes": ["background", "eyes", "nose", "ears"],
        "unet": state["unet"],
        "train": state["train"],
        "best_epoch": state["epoch"],
        "val_dice": state["val_dice"],
        "history": state["history"],
    }
    if extra:
        card.update(extra)
    out_path.with_suffix(".json").write_text(json.dumps(card, indent=1) + "\n")
    return card
