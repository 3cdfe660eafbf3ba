"""Defaced pixels written back into a copy of every DICOM instance of the series they came from.

Writing never modifies an input: every input instance is read again, its pixels replaced
(same bits and signedness, clipped), optionally de-identified, and written into a new folder
that appears atomically.  Compressed input is written as Explicit VR Little Endian.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from defacer._typing import PathLike
from defacer.errors import DicomSeriesError
from defacer.io.atomic import atomic_outputs
from defacer.io.dicom_files import check_output_folder, collect_identifying, dcmread_any, write_instance
from defacer.io.dicom_geometry import stored_range
from defacer.io.dicom_grouping import FrameRef
from defacer.volume import Volume

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from defacer.phi.scrub import Scrubber

#: Transfer syntaxes written back unchanged (native, little endian).
NATIVE_LITTLE_ENDIAN = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"}
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"


def _stored_slice(volume: Volume, k: int, ref: FrameRef, dtype: np.dtype[Any], ds: Dataset) -> npt.NDArray[Any]:
    """Stored values of slice ``k`` as (Rows, Columns), clipped to the instance's bit range."""
    values = volume.raw[:, :, k].T
    per_slice = volume.extra.get("per_slice_scaling")
    if per_slice is not None:
        values = np.rint((values.astype(np.float64) - ref.inter) / (ref.slope or 1.0))
    elif not np.issubdtype(values.dtype, np.integer) and np.issubdtype(dtype, np.integer):
        values = np.rint(values)
    if np.issubdtype(dtype, np.integer):
        turned = volume.extra.get("monochrome1_range")
        if turned is not None:  # read as displayed (defacer.io.dicom_geometry.as_displayed): back to MONOCHROME1
            values = np.int64(turned[0] + turned[1]) - values.astype(np.int64)
        low, high = stored_range(ds)
        values = np.clip(values, low, high)
    return np.ascontiguousarray(values.astype(dtype))


def _replace_pixels(ds: Dataset, frames: npt.NDArray[Any], n_frames: int) -> None:
    """Put new native pixels into ``ds``; compressed or big-endian input becomes Explicit VR Little Endian."""
    from pydicom.uid import UID

    data = frames if n_frames > 1 else frames[0]
    bits_allocated = int(ds.BitsAllocated)
    if bits_allocated == 1:
        raise DicomSeriesError("Single-bit pixel data cannot be defaced (it is not an MR or CT image).")
    syntax = str(ds.file_meta.TransferSyntaxUID) if "TransferSyntaxUID" in ds.get("file_meta", {}) else ""
    if syntax not in NATIVE_LITTLE_ENDIAN:
        # LossyImageCompression is kept: the history of an earlier lossy compression stays true.
        ds.file_meta.TransferSyntaxUID = UID(EXPLICIT_VR_LITTLE_ENDIAN)
        for tag in (0x7FE00001, 0x7FE00002):  # (Extended) offset tables only exist for encapsulated data
            if tag in ds:
                del ds[tag]
    little = data.astype(data.dtype.newbyteorder("<"), copy=False)
    ds.PixelData = little.tobytes()
    ds["PixelData"].VR = "OB" if bits_allocated <= 8 else "OW"
    ds["PixelData"].is_undefined_length = False
    for keyword in ("SmallestImagePixelValue", "LargestImagePixelValue"):
        if keyword in ds:
            value = int(data.min() if keyword.startswith("Smallest") else data.max())
            ds[keyword].value = value



#: Icon Image Sequence: a thumbnail of the instance's pixels (PS3.3 C.7.6.1.1.6).
_ICON_IMAGE_SEQUENCE = 0x00880200


def _drop_icons(ds: Dataset) -> int:
    """Remove every Icon Image Sequence from ``ds``, at any depth; return how many.

    An icon is a picture of the original pixels: a defaced instance that kept it (``--no-deidentify`` keeps every
    header attribute, and the thumbnail is one) carried its face beside the defaced pixels.
    """
    from pydicom.dataset import Dataset as ItemDataset

    dropped = 0
    if _ICON_IMAGE_SEQUENCE in ds:
        del ds[_ICON_IMAGE_SEQUENCE]
        dropped += 1
    for element in ds.values():
        if getattr(element, "VR", None) == "SQ" and element.value:
            for item in element.value:
                if isinstance(item, ItemDataset):
                    dropped += _drop_icons(item)
    return dropped


def _output_names(paths: Sequence[Path], root: Path | None, deidentified: bool) -> list[Path]:
    """Relative output names: ``IM00001.dcm``... when de-identified (file names can hold PHI), else the input's."""
    if deidentified or root is None:
        return [Path(f"IM{n + 1:05d}.dcm") for n in range(len(paths))]
    names = []
    for p in paths:
        try:
            names.append(p.resolve().relative_to(root.resolve()))
        except ValueError:
            names.append(Path(p.name))
    if len(set(names)) != len(names):
        return [Path(f"IM{n + 1:05d}.dcm") for n in range(len(paths))]
    return names


def write_dicom_volume(volume: Volume, out_dir: PathLike, *, force: bool = False, deid: Scrubber | None = None) -> list[Path]:
    """Write ``volume`` as a DICOM series: every input instance with its pixels replaced.

    Parameters
    ----------
    volume : Volume
        Read by :func:`read_dicom_volume` (same grid; typically ``with_raw`` of the defaced
        stored values).
    out_dir : path-like
        New folder for the series; it must not exist (unless ``force``) and must not
        overlap the input folder.
    force : bool
        Replace an existing output folder.
    deid : Scrubber, optional
        De-identify each instance's header (PS3.15 Annex E) on the way out.  Without it all
        attributes other than the pixels are left untouched.

    Returns
    -------
    list of Path
        The files written, in slice order of their first frame.

    Raises
    ------
    OutputError
        Output exists without ``force`` or overlaps the input.
    DicomSeriesError
        The volume is not a DICOM volume read by defacer, or an input file changed.
    """
    from pydicom.errors import InvalidDicomError

    frames: tuple[FrameRef, ...] | None = volume.extra.get("frames")
    if volume.format != "dicom" or not frames:
        raise DicomSeriesError(
            "Only volumes read from a DICOM series can be written as DICOM (they carry the instances to copy). "
            "Save this volume as NIfTI or NRRD instead."
        )
    if volume.raw.shape[2] != len(frames):
        raise DicomSeriesError(f"The volume has {volume.raw.shape[2]} slices but its series has {len(frames)}.")
    out = Path(out_dir)
    root = volume.extra.get("source_root")
    by_file: dict[Path, list[tuple[int, FrameRef]]] = defaultdict(list)
    for k, ref in enumerate(frames):
        by_file[ref.path].append((k, ref))
    files = list(by_file)
    check_output_folder(out, root, files, force)
    names = _output_names(files, root, deid is not None)
    if deid is not None and deid.cleans_text:
        collect_identifying(files, deid)
    written = []
    with atomic_outputs([out], replace=force) as temps:
        folder = temps[0]
        folder.mkdir()
        for file, name in zip(files, names, strict=True):
            try:
                ds = dcmread_any(file)
                original = ds.pixel_array
            except (OSError, EOFError, ValueError, InvalidDicomError) as err:
                raise DicomSeriesError(f"Cannot read '{file}' again to write its defaced copy ({err}).") from err
            n_frames = int(ds.get("NumberOfFrames", 1) or 1)
            stack = original[None] if n_frames == 1 and original.ndim == 2 else original.copy()
            for k, ref in by_file[file]:
                stack[ref.frame or 0] = _stored_slice(volume, k, ref, stack.dtype, ds)
            _replace_pixels(ds, stack, n_frames)
            _drop_icons(ds)  # a thumbnail of the original face, whatever the header options
            if deid is not None:
                deid.scrub(ds, source=str(file))
            target = folder / name
            target.parent.mkdir(parents=True, exist_ok=True)
            write_instance(ds, target, source=file)
            written.append(out / name)
    return written

