"""Where the shipped detector's weights lie: a module of the standard library alone, so that the command line can
name them before it imports numpy (:func:`defacer.detect.openvino_run.start_compiling`)."""

from __future__ import annotations

from pathlib import Path

#: The shipped graph and its card, in ``defacer/models/``.
WEIGHTS_NAME = "detector.onnx"
CARD_NAME = "detector.json"


def default_weights_path() -> Path:
    """Path of the shipped ONNX weights inside the installed package."""
    return Path(__file__).resolve().parents[1] / "models" / WEIGHTS_NAME
