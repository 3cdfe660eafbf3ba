"""defacer: de-identify head MRI and CT by distorting the eyes, nose and ears.

The public API re-exported here is small on purpose: deface an image in memory
(:func:`deface`, :func:`deface_image`; see :mod:`defacer.api` and the README's "Python"
section), load and save volumes, and load the detector.  ``defacer.phantom`` makes a
synthetic head.

The names are imported on first use (PEP 562), so ``import defacer.cli.main`` or
``import defacer.errors`` does not import numpy, nibabel and scipy before the command needs them; this module
imports nothing but :mod:`defacer._lazy` and :mod:`defacer._version` (not even ``typing``), so the console
script's entry point (:mod:`defacer.cli.entry`) handles Ctrl-C a few milliseconds after Python starts.
"""

from __future__ import annotations

from defacer._lazy import lazy_exports
from defacer._version import __version__

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing: see defacer.cli.entry (mypy reads it as true)
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


__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
