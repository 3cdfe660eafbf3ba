"""Build small synthetic DICOM series for tests (no real data, no PHI)."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4.1"


def base_dataset(rows: int, columns: int, *, signed: bool = False, sop_class: str = MR_STORAGE) -> Dataset:
    """A minimal image instance without geometry or pixels."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPClassUID = sop_class
    ds.Modality = "MR"
    ds.PatientName = "Synthetic^Phantom"
    ds.PatientID = "SYN001"
    ds.StudyInstanceUID = generate_uid()
    ds.FrameOfReferenceUID = generate_uid()
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if signed else 0
    return ds


def write_series(
    folder: Path,
    raw: np.ndarray,
    *,
    row_cos=(1.0, 0.0, 0.0),
    col_cos=(0.0, 1.0, 0.0),
    spacing=(1.0, 1.0),
    origin=(-10.0, -20.0, -30.0),
    step=None,
    positions=None,
    scaling=None,
    series_uid: str | None = None,
    series_number: int = 1,
    shuffle_names: bool = True,
    seed: int = 0,
    extra=None,
) -> list[Path]:
    """Write ``raw`` (Columns, Rows, K) as one file per slice.

    ``step`` (LPS mm per slice) defaults to the normal times 2 mm; ``positions`` overrides it
    (K x 3).  ``spacing`` is PixelSpacing (row spacing, column spacing).  ``scaling`` is a
    list of (slope, intercept) per slice.  File names and InstanceNumbers are shuffled so
    that only ImagePositionPatient gives the order.
    """
    folder.mkdir(parents=True, exist_ok=True)
    columns, rows, k_count = raw.shape
    row_cos, col_cos = np.asarray(row_cos, float), np.asarray(col_cos, float)
    normal = np.cross(row_cos, col_cos)
    if positions is None:
        step = normal * 2.0 if step is None else np.asarray(step, float)
        positions = [np.asarray(origin, float) + k * step for k in range(k_count)]
    series_uid = series_uid or generate_uid()
    order = list(range(k_count))
    rng = random.Random(seed)
    if shuffle_names:
        rng.shuffle(order)
    study = generate_uid()
    frame_of_reference = generate_uid()
    paths = []
    for n, k in enumerate(order):
        ds = base_dataset(rows, columns, signed=raw.dtype.kind == "i")
        ds.StudyInstanceUID = study
        ds.FrameOfReferenceUID = frame_of_reference
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = series_number
        ds.SeriesDescription = f"synthetic {series_number}"
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = rng.randint(1, 1000)
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*row_cos, *col_cos)]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in positions[k]]
        ds.PixelSpacing = [f"{spacing[0]:.6f}", f"{spacing[1]:.6f}"]
        ds.SliceThickness = "2.0"
        if scaling is not None:
            ds.RescaleSlope = f"{scaling[k][0]:g}"
            ds.RescaleIntercept = f"{scaling[k][1]:g}"
        for keyword, value in (extra or {}).items():
            setattr(ds, keyword, value)
        ds.PixelData = np.ascontiguousarray(raw[:, :, k].T).astype(raw.dtype.newbyteorder("<")).tobytes()
        ds["PixelData"].VR = "OW"
        path = folder / f"file{n:03d}_{rng.randint(0, 99999)}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_enhanced(path: Path, raw: np.ndarray, *, spacing=(1.0, 1.0), origin=(0.0, 0.0, 0.0), step=2.0,
                   scaling=None) -> Path:
    """Write ``raw`` (Columns, Rows, K) as one enhanced multi-frame instance, frames in reverse order."""
    columns, rows, k_count = raw.shape
    ds = base_dataset(rows, columns, signed=raw.dtype.kind == "i", sop_class=ENHANCED_MR_STORAGE)
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 7
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.NumberOfFrames = k_count
    shared = Dataset()
    measures = Dataset()
    measures.PixelSpacing = [spacing[0], spacing[1]]
    measures.SliceThickness = step
    shared.PixelMeasuresSequence = [measures]
    orientation = Dataset()
    orientation.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    shared.PlaneOrientationSequence = [orientation]
    ds.SharedFunctionalGroupsSequence = [shared]
    per_frame = []
    frames = []
    for f, k in enumerate(reversed(range(k_count))):
        item = Dataset()
        plane = Dataset()
        plane.ImagePositionPatient = [origin[0], origin[1], origin[2] + k * step]
        item.PlanePositionSequence = [plane]
        if scaling is not None:
            transform = Dataset()
            transform.RescaleSlope = scaling[k][0]
            transform.RescaleIntercept = scaling[k][1]
            transform.RescaleType = "US"
            item.PixelValueTransformationSequence = [transform]
        per_frame.append(item)
        frames.append(np.ascontiguousarray(raw[:, :, k].T))
    ds.PerFrameFunctionalGroupsSequence = per_frame
    ds.PixelData = np.stack(frames).astype(raw.dtype.newbyteorder("<")).tobytes()
    ds["PixelData"].VR = "OW"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def expected_affine(row_cos, col_cos, spacing, origin, step) -> np.ndarray:
    """The RAS affine the reader must produce for :func:`write_series`'s geometry."""
    lps = np.eye(4)
    lps[:3, 0] = np.asarray(row_cos, float) * spacing[1]
    lps[:3, 1] = np.asarray(col_cos, float) * spacing[0]
    lps[:3, 2] = step
    lps[:3, 3] = origin
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def rewrite_raw(path: Path, *, preamble: bytes | None = None, command_set: bool = False,
                meta_in_body: bool = False, drop_meta: tuple[str, ...] = ()) -> None:
    """Rewrite ``path`` byte by byte the way other software writes odd files (pydicom refuses to).

    ``preamble``: 128 bytes put before "DICM"; ``command_set``: Command Set elements (group
    0000) at the start of the data set and in a sequence item; ``meta_in_body``: a File Meta
    element (0002,0016) inside the data set body; ``drop_meta``: File Meta keywords left out.
    """
    import pydicom
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset, write_file_meta_info

    ds = pydicom.dcmread(path)
    if command_set:
        ds.add_new(0x00000002, "UI", ds.SOPClassUID)  # AffectedSOPClassUID
        ds.add_new(0x00000100, "US", 1)  # CommandField
        ds.add_new(0x00000110, "US", 7)  # MessageID
        ds.add_new(0x00001000, "UI", ds.SOPInstanceUID)  # AffectedSOPInstanceUID
        item = Dataset()
        item.add_new(0x00000100, "US", 1)
        item.CodeValue = "1"
        ds.add_new(0x00081140, "SQ", [item])  # ReferencedImageSequence
    if meta_in_body:
        ds.add_new(0x00020016, "AE", "SENDER_AE")
    meta = FileMetaDataset()
    for element in ds.file_meta:
        if element.keyword not in drop_meta and element.tag.element != 0:
            meta.add(element)
    buffer = DicomBytesIO()
    buffer.write((preamble if preamble is not None else b"\x00" * 128) + b"DICM")
    write_file_meta_info(buffer, meta, enforce_standard=False)
    buffer.is_little_endian = True
    buffer.is_implicit_VR = False
    write_dataset(buffer, ds)
    path.write_bytes(buffer.getvalue())


def write_phantom_series(folder: Path, labels_path: Path, voxel_mm: float = 3.0) -> None:
    """A synthetic phantom head (:func:`defacer.phantom.make_phantom`) as an axial DICOM series in ``folder`` (LPS
    rows and columns, one file per slice), and its feature label map as NIfTI on the same world grid."""
    import nibabel as nib

    from defacer.phantom import make_phantom

    phantom = make_phantom(voxel_mm)
    affine = phantom.volume.affine
    write_series(folder, phantom.volume.raw.astype(np.int16), row_cos=(-1, 0, 0), col_cos=(0, -1, 0),
                 spacing=(voxel_mm, voxel_mm), origin=(-affine[0, 3], -affine[1, 3], affine[2, 3]),
                 step=(0, 0, voxel_mm))
    nib.save(nib.Nifti1Image(phantom.labels.astype(np.uint8), affine), str(labels_path))
