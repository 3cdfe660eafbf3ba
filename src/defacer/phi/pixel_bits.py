"""The bits of native pixel data that are no part of any pixel value, made plain.

A stored pixel value occupies ``BitsStored`` bits ending at ``HighBit`` inside each ``BitsAllocated`` cell (PS3.5
8.1.1); the other bits of the cell are no part of the image.  Old equipment kept overlay planes there (an embedded
overlay, 60xx,0102 Overlay Bit Position: annotations, sometimes the patient's name, which viewers still draw), and
anything can be hidden there.  Header de-identification keeps the pixel data, so ``defacer anonymize`` copied them.
:func:`clear_unused_bits` sets them as a reader that ignores them expects: zero for unsigned values, the sign's copy
above a signed value (so a reader that does not mask reads the same number).  Every pixel value stays the same.
"""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset

_DTYPES = {8: "u1", 16: "u2", 32: "u4"}


def clear_unused_bits(ds: Dataset) -> bool:
    """Make the bits of ``ds``'s native PixelData outside each stored value plain, in place.

    Parameters
    ----------
    ds : pydicom.Dataset
        A whole instance with ``file_meta`` (its transfer syntax says whether the pixel data is native).

    Returns
    -------
    bool
        Whether any byte changed.  Compressed (encapsulated) pixel data, float pixel data, and cells whose stored
        bits fill them, are left as they are.
    """
    element = ds.get(0x7FE00010)
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if element is None or not isinstance(element.value, bytes) or syntax is None:
        return False
    try:
        if syntax.is_encapsulated:
            return False
        little = syntax.is_little_endian
    except ValueError:  # not a transfer syntax pydicom knows: whether the data is native cannot be told
        return False
    try:
        allocated, stored, high = int(ds.BitsAllocated), int(ds.BitsStored), int(ds.HighBit)
        signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
        count = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1) or 1) \
            * int(ds.get("NumberOfFrames", 1) or 1)
    except (AttributeError, TypeError, ValueError):
        return False
    low = high - stored + 1
    if allocated not in _DTYPES or not 0 < stored < allocated or low < 0 or high >= allocated or count <= 0:
        return False
    dtype = np.dtype(_DTYPES[allocated]).newbyteorder("<" if little else ">")
    data = element.value
    if len(data) < count * dtype.itemsize:
        return False  # shorter than declared: the reading refuses it; nothing to make plain here
    cells = np.frombuffer(data, dtype=dtype, count=count)
    mask = ((1 << stored) - 1) << low
    plain = cells & np.array(mask, dtype=dtype)
    if signed and high < allocated - 1:  # the sign's copy above the value, as sign-extending writers store it
        sign = (plain >> high) & 1
        above = np.array(((1 << allocated) - 1) ^ ((1 << (high + 1)) - 1), dtype=dtype)
        plain = plain | (sign.astype(bool) * above).astype(dtype)
    if np.array_equal(plain, cells):
        return False
    element.value = plain.astype(dtype, copy=False).tobytes() + data[count * dtype.itemsize:]
    return True
