"""The label convention shared by the detector, label files, masks and the distortions.

A label map is a 3D integer array on the scan's own voxel grid:

====  =========  ===========================================================
value  name       what it covers
====  =========  ===========================================================
0     background  everything else
1     eyes        each eye: a sphere around the eyeball and the skin in front of it (both eyes)
2     nose        a region around the nose's centre covering the whole external nose
3     ears        each auricle (outer ear only, never the head behind it; both ears)
====  =========  ===========================================================

Left and right are not separate labels: the two eyes (and two ears) are told apart as
connected components, so flips during training need no label swapping.
"""

from __future__ import annotations

from enum import IntEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt


class Label(IntEnum):
    """Integer values of the label map."""

    BACKGROUND = 0
    EYES = 1
    NOSE = 2
    EARS = 3


#: Feature names in label order; these are the values accepted by ``--features``.
FEATURES: tuple[str, ...] = ("eyes", "nose", "ears")

#: Map from feature name to its label value.
FEATURE_LABELS: dict[str, Label] = {"eyes": Label.EYES, "nose": Label.NOSE, "ears": Label.EARS}

#: One colour per feature (RGB), the same in the web viewer (``app.js``), the report and the slices.
FEATURE_COLOURS: dict[str, tuple[int, int, int]] = {"eyes": (230, 40, 40), "nose": (40, 200, 60),
                                                    "ears": (40, 120, 255)}

#: Number of classes the detector predicts, background included.
NUM_CLASSES = 4

#: How many components of each feature a head can have at most.
MAX_COMPONENTS: dict[str, int] = {"eyes": 2, "nose": 1, "ears": 2}


def parse_features(text: str | None) -> tuple[str, ...]:
    """Parse a comma-separated feature list such as ``"eyes,nose"``.

    Parameters
    ----------
    text : str or None
        Comma-separated names from :data:`FEATURES`; ``None`` or ``"all"`` selects all.

    Returns
    -------
    tuple of str
        The selected features in canonical order.

    Raises
    ------
    ValueError
        If a name is not one of :data:`FEATURES`.
    """
    if text is None or text.strip().lower() == "all":
        return FEATURES
    names = [part.strip().lower() for part in text.split(",") if part.strip()]
    unknown = [name for name in names if name not in FEATURES]
    if unknown or not names:
        message = (
            f"Unknown feature(s) {unknown or [text]!r}: expected a comma-separated list of "
            f"{', '.join(FEATURES)} (for example --features eyes,nose)."
        )
        raise ValueError(message)
    return tuple(name for name in FEATURES if name in names)


def feature_label_values(values: npt.NDArray[Any], source: str = "") -> npt.NDArray[np.uint8]:
    """A feature label map's values as uint8, refused in words unless they are the integers 0 to 3.

    Parameters
    ----------
    values : ndarray
        The map's values (any shape; a bool mask is read as label 1 where set).
    source : str
        Names the map in messages (e.g. ``"'labels.nii.gz'"``); may be empty.

    Raises
    ------
    LabelMapError
        For values that are not numbers, not whole, not finite, or outside 0 to ``NUM_CLASSES - 1``.
    """
    import numpy as np  # here, not at the top: the command line reads this module before it needs numpy

    from defacer.errors import LabelMapError

    name = f"The label map {source}" if source else "The label map"
    values = np.asarray(values)
    if values.dtype == np.bool_:
        return values.astype(np.uint8)
    if not np.issubdtype(values.dtype, np.number) or np.iscomplexobj(values):
        raise LabelMapError(f"{name} holds {values.dtype} values; expected integers 0-{NUM_CLASSES - 1}.")
    if not values.size:
        return values.astype(np.uint8)
    if not np.all(np.isfinite(values)) or np.any(values != np.round(values)):
        raise LabelMapError(f"{name} holds non-integer values; expected integers 0-{NUM_CLASSES - 1}.")
    if values.min() < 0 or values.max() >= NUM_CLASSES:
        raise LabelMapError(
            f"{name} holds values from {values.min():g} to {values.max():g}; expected 0 (background), 1 (eyes), "
            "2 (nose), 3 (ears): the feature labels 'deface --save-mask' writes."
        )
    return values.astype(np.uint8)
