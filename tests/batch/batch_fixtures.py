"""Builders of small phantom datasets for the batch tests (BIDS of NIfTI, DICOM series)."""

from __future__ import annotations

import json
from pathlib import Path

from defacer.phantom import make_phantom, save_phantom


def write_bids_phantoms(root: Path, labels: Path, scans: list[tuple[str, str | None, str, str]],
                        voxel_size: float = 3.0) -> list[str]:
    """Write a BIDS dataset of phantoms under ``root`` and their label maps under ``labels``.

    Returns the relative paths of the scans.
    """
    root.mkdir(parents=True)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "phantoms", "BIDSVersion": "1.9.0"}))
    (root / "participants.tsv").write_text("participant_id\n" + "".join(f"sub-{s}\n" for s in
                                                                      sorted({s[0] for s in scans})))
    (root / "README").write_text("synthetic phantoms\n")
    relpaths = []
    for index, (sub, ses, suffix, contrast) in enumerate(scans):
        folder = Path(f"sub-{sub}") / (f"ses-{ses}" if ses else "") / "anat"
        stem = f"sub-{sub}" + (f"_ses-{ses}" if ses else "") + f"_{suffix}"
        (root / folder).mkdir(parents=True, exist_ok=True)
        (labels / folder).mkdir(parents=True, exist_ok=True)
        phantom = make_phantom(voxel_size, contrast=contrast, seed=index, axcodes="RAS" if index % 2 else "LPS")
        save_phantom(phantom, root / folder / f"{stem}.nii.gz", labels / folder / f"{stem}.labels.nii.gz")
        (root / folder / f"{stem}.json").write_text(json.dumps({"RepetitionTime": 2.3, "EchoTime": 0.003}))
        relpaths.append((folder / f"{stem}.nii.gz").as_posix())
    (root / "sub-01" / "func").mkdir()
    (root / "sub-01" / "func" / "sub-01_task-rest_events.tsv").write_text("onset\tduration\n0\t1\n")
    return relpaths


def write_dicom_phantom(folder: Path, labels_path: Path, *, seed: int = 0, voxel_size: float = 3.0,
                        patient: str = "Doe^Jane") -> None:
    """Write a phantom head as an axial DICOM series (one file per slice) and its labels as NIfTI.

    The phantom is made in LPS axis order, which is how the series stores it (columns
    towards patient Left, rows towards Posterior, slices towards Superior), so the label map
    is on the series' own grid.
    """
    import nibabel as nib
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    phantom = make_phantom(voxel_size, axcodes="LPS", seed=seed)
    raw = phantom.volume.raw.astype(np.int16)
    affine = phantom.volume.affine
    folder.mkdir(parents=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    for k in range(raw.shape[2]):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.Modality = "MR"
        ds.PatientName = patient
        ds.PatientID = "ID-" + patient.split("^")[-1]
        ds.PatientBirthDate = "19700101"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.SeriesNumber, ds.InstanceNumber = 1, k + 1
        ds.Rows, ds.Columns = raw.shape[1], raw.shape[0]
        ds.PixelSpacing = [voxel_size, voxel_size]
        ds.SliceThickness = voxel_size
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ras = affine @ np.array([0.0, 0.0, k, 1.0])
        ds.ImagePositionPatient = [float(-ras[0]), float(-ras[1]), float(ras[2])]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.PixelData = np.ascontiguousarray(raw[:, :, k].T).tobytes()
        ds.save_as(folder / f"IM{k:04d}.dcm", enforce_file_format=True)
    labels_path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(phantom.labels, affine), labels_path)
