"""defacer: de-identify head MRI and CT by distorting the eyes, nose and ears.

The public API re-exported here is small on purpose: deface an image in memory
(:func:`deface`, :func:`deface_image`; see :mod:`defacer.api` and the README's "Python"
section), load and save volumes, and load the detector.  ``defacer.phantom`` makes a
synthetic head.
"""

from defacer._version import __version__
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
