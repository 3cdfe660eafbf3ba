"""Export a trained checkpoint to ONNX (opset 17) with its JSON card (config, metrics, sha256)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from defacer.detect.preprocess import BOX_SHAPE, BOX_SPACING, NORMALISE_PERCENTILES, TOP_TO_CENTRE_MM
from defacer.files import file_sha256
from defacer.train.loop import network_from_state, read_checkpoint
from defacer.train.unet import SoftmaxUNet

OPSET = 17


class MeanOfModels(nn.Module):
    """Average of the class probabilities of several networks (an ensemble in one graph)."""

    def __init__(self, members: list[SoftmaxUNet]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Mean probabilities, shape (N, C, X, Y, Z)."""
        total = self.members[0](x)
        for member in self.members[1:]:
            total = total + member(x)
        return total / len(self.members)


def _write(model: nn.Module, out_path: Path, box: dict[str, Any]) -> None:
    dummy = torch.zeros((1, 1, *box["shape"]), dtype=torch.float32)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    from defacer.io.atomic import atomic_file

    with atomic_file(out_path) as tmp, torch.no_grad():
        torch.onnx.export(model.eval(), (dummy,), str(tmp), input_names=["image"], output_names=["probabilities"],
                          opset_version=OPSET, dynamo=False)


def _write_with_card(model: nn.Module, out_path: Path, box: dict[str, Any],
                     card_of: Callable[[Path], dict[str, Any]], *, replace: bool) -> dict[str, Any]:
    """Write the ONNX graph and its card (``out_path.with_suffix('.json')``) together, atomically; return the card.

    Both go into a temporary folder beside ``out_path`` and are renamed into place at the end (the card was written
    in place, not atomically, after the graph).  ``replace=False`` (no ``--force``): a name taken since the run
    checked it (hours of training earlier: another run exporting there, a copy) is never replaced, and neither file
    is written (:func:`defacer.io.atomic.atomic_outputs`).  ``card_of`` builds the card from the written graph.
    """
    from defacer.io.atomic import atomic_outputs

    dummy = torch.zeros((1, 1, *box["shape"]), dtype=torch.float32)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_outputs([out_path, out_path.with_suffix(".json")], replace=replace) as (graph, card_path), \
            torch.no_grad():
        torch.onnx.export(model.eval(), (dummy,), str(graph), input_names=["image"], output_names=["probabilities"],
                          opset_version=OPSET, dynamo=False)
        card = card_of(graph)
        card_path.write_text(json.dumps(card, indent=1) + "\n")
    return card


#: The card's ``mirror``: whether inference also runs the left-right mirrored box and averages.  Off, as the shipped
#: model runs (a second network pass per member; held out it found every feature without it); a card without the
#: entry turns it on (older cards), so every exported card says it.
EXPORT_MIRROR = False


def _box_card(state: dict[str, Any]) -> dict[str, Any]:
    """The box a checkpoint was trained on (older checkpoints: the package's default box)."""
    box = state.get("box", {})
    return {"shape": [int(n) for n in box.get("shape", BOX_SHAPE)], "spacing_mm": float(box.get("spacing_mm", BOX_SPACING)),
            "top_to_centre_mm": TOP_TO_CENTRE_MM, "normalise_percentiles": list(NORMALISE_PERCENTILES)}


def export_ensemble(checkpoints: list[Path], out_path: Path, extra: dict[str, Any] | None = None, *,
                    replace: bool = True) -> dict[str, Any]:
    """Export the mean of several checkpoints' probabilities as one ONNX graph (+ card).

    Used for the shipped model: the two cross-validation fold models, each trained on half of
    the subjects, averaged.  The card lists each member's training config and history.  ``replace=False``: neither
    file replaces one that exists (:func:`_write_with_card`).
    """
    states = [read_checkpoint(c) for c in checkpoints]
    boxes = [_box_card(state) for state in states]
    if any(b != boxes[0] for b in boxes):
        raise ValueError(f"Ensemble members were trained on different boxes: {boxes}")
    members = []
    for c, state in zip(checkpoints, states):
        members.append({"checkpoint": str(c), "unet": state["unet"], "train": state["train"], "best_epoch": state["epoch"],
                        "val_dice": state["val_dice"], "history": state["history"]})

    def card_of(graph: Path) -> dict[str, Any]:
        card: dict[str, Any] = {
            "format": "onnx", "opset": OPSET, "file": out_path.name,
            "sha256": file_sha256(graph), "size_bytes": graph.stat().st_size,
            "box": boxes[0], "classes": ["background", "eyes", "nose", "ears"], "ensemble": "mean of probabilities",
            "mirror": EXPORT_MIRROR, "members": members,
        }
        card.update(extra or {})
        return card

    return _write_with_card(MeanOfModels([SoftmaxUNet(network_from_state(state)) for state in states]), out_path,
                            boxes[0], card_of, replace=replace)


def export_onnx(checkpoint: Path, out_path: Path, extra: dict[str, Any] | None = None, *,
                replace: bool = True) -> dict[str, Any]:
    """Write ``out_path`` (.onnx) and ``out_path.with_suffix('.json')``; returns the card.

    The graph takes ``image`` (1, 1, X, Y, Z) float32 (the box from
    :func:`defacer.detect.preprocess.to_box`, shape recorded in the card's ``box``) and returns
    ``probabilities`` (1, 4, X, Y, Z).  ``replace=False`` (no ``--force``): neither file replaces one that exists
    (:func:`_write_with_card`).
    """
    state = read_checkpoint(checkpoint)

    def card_of(graph: Path) -> dict[str, Any]:
        card: dict[str, Any] = {
            "format": "onnx",
            "opset": OPSET,
            "file": out_path.name,
            "sha256": file_sha256(graph),
            "size_bytes": graph.stat().st_size,
            "box": _box_card(state),
            "classes": ["background", "eyes", "nose", "ears"],
            "mirror": EXPORT_MIRROR,
            "unet": state["unet"],
            "train": state["train"],
            "best_epoch": state["epoch"],
            "val_dice": state["val_dice"],
            "history": state["history"],
        }
        card.update(extra or {})
        return card

    return _write_with_card(SoftmaxUNet(network_from_state(state)), out_path, _box_card(state), card_of,
                            replace=replace)
