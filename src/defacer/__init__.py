"""defacer: de-identify head MRI and CT by distorting the eyes, nose and ears.

The public API re-exported here is small on purpose: deface an image in memory
(:func:`deface`, :func:`deface_image`; see :mod:`defacer.api` and the README's "Python"
section), load and save volumes, and load the detector.  ``defacer.phantom`` makes a
synthetic head.

The names are imported on first use (PEP 562), so ``import defacer.cli.main`` or
``import defacer.errors`` does not import numpy, nibabel and scipy before the command needs them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from defacer._version import __version__

if TYPE_CHECKING:
    from defacer.api import DefacedImage, deface, deface_image
    from defacer.errors import DefacerError, FeaturesNotFoundError
    from defacer.io import load_volume, save_volume
    from defacer.labels import FEATURES, Label
    from defacer.pipeline import DefaceOptions, DefaceResult, load_detector
    from defacer.volume import Volume

__all__ = [
    "FEATURES",
    "DefaceOptions",
    "DefaceResult",
    "DefacedImage",
    "DefacerError",
    "FeaturesNotFoundError",
    "Label",
    "Volume",
    "__version__",
    "deface",
    "deface_image",
    "load_detector",
    "load_volume",
    "save_volume",
]

#: Where each exported name lives.
_EXPORTS = {
    "DefacedImage": "defacer.api", "deface": "defacer.api", "deface_image": "defacer.api",
    "DefacerError": "defacer.errors", "FeaturesNotFoundError": "defacer.errors",
    "load_volume": "defacer.io", "save_volume": "defacer.io",
    "FEATURES": "defacer.labels", "Label": "defacer.labels",
    "DefaceOptions": "defacer.pipeline", "DefaceResult": "defacer.pipeline", "load_detector": "defacer.pipeline",
    "Volume": "defacer.volume",
}


def __getattr__(name: str) -> Any:
    """Import an exported name's module on first use (PEP 562)."""
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
