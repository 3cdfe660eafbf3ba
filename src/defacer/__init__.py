"""defacer: de-identify head MRI and CT by distorting the eyes, nose and ears.

The public API re-exported here is small on purpose: load and save volumes, run the
defacing pipeline, and make a synthetic head phantom.
"""

from defacer._version import __version__
from defacer.errors import DefacerError
from defacer.io import load_volume, save_volume
from defacer.labels import FEATURES, Label
from defacer.pipeline import DefaceOptions, DefaceResult, deface
from defacer.volume import Volume

__all__ = [
    "FEATURES",
    "DefaceOptions",
    "DefaceResult",
    "DefacerError",
    "Label",
    "Volume",
    "__version__",
    "deface",
    "load_volume",
    "save_volume",
]
