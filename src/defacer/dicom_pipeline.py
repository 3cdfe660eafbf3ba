"""Deface one DICOM series into a new series folder: read, deface, de-identify, write, record.

The single function-level entry point for DICOM, shared by ``defacer deface`` (via
:mod:`defacer.cli.deface_dicom`), the batch runner and the web interface.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from defacer._typing import PathLike
from defacer.checks import DEFAULT_MAX_VOXELS
from defacer.detect import Detector
from defacer.pipeline import DefaceOptions, check_features_found, deface


def deface_dicom_series(
    source: PathLike,
    target: PathLike,
    *,
    options: DefaceOptions,
    detector: Detector,
    scrubber: Any | None = None,
    series: str | None = None,
    force: bool = False,
    mask_path: PathLike | None = None,
    key_note: str | None = None,
    allow_missing: bool = False,
    max_voxels: int | None = DEFAULT_MAX_VOXELS,
) -> tuple[dict[str, Any], list[Path]]:
    """Deface a DICOM series folder and write it as a new series folder with its provenance sidecar.

    Parameters
    ----------
    source : path-like
        Folder (or file) holding the series.
    target : path-like
        New output folder (never inside or equal to ``source``).
    options : DefaceOptions
    detector : Detector
    scrubber : defacer.phi.scrub.Scrubber, optional
        De-identifies every header (PS3.15 Annex E); ``None`` keeps headers as they are.
    series : str, optional
        Which series to take when ``source`` holds several.
    force : bool
        Overwrite existing outputs.
    mask_path : path-like, optional
        Also write the detected label map (NIfTI) there.
    key_note : str, optional
        How the de-identification key was chosen, for the record (never the key itself).
    allow_missing : bool
        Write the series even when a requested feature was not distorted (otherwise
        :class:`~defacer.errors.FeaturesNotFoundError` and nothing is written).
    max_voxels : int or None
        Refuse a series of more voxels than this (Rows x Columns x slices), before reading its
        pixels; ``None``: no limit.

    Returns
    -------
    provenance : dict
        Also written to ``<target>.defacer.json``.
    written : list of Path
        The DICOM files written.
    """
    from defacer.checks import validate_volume
    from defacer.io import save_label_map
    from defacer.io.atomic import check_output_path
    from defacer.io.dicom_series import read_dicom_volume, write_dicom_volume
    from defacer.phi.rules import EDITION
    from defacer.provenance import sha256_of, sidecar_path, write_provenance

    source, target = Path(source), Path(target)
    sidecar = sidecar_path(target)
    for path in [target, sidecar] + ([Path(mask_path)] if mask_path else []):
        check_output_path(path, force=force, inputs=[source])
    volume = validate_volume(read_dicom_volume(source, series=series, max_voxels=max_voxels), source=str(source))
    if scrubber is not None:
        scrubber.check_burned_in(volume.header, str(source))
    result = deface(volume, detector, options)
    check_features_found(result.provenance, source.name, allow_missing=allow_missing)
    written = write_dicom_volume(result.volume, target, force=force, deid=scrubber)
    if mask_path is not None:
        save_label_map(result.labels, volume, mask_path, force=force)
    provenance = result.provenance
    # With de-identification the sidecar must not name the input: folder names often hold patient names.
    shown = "<input>" if scrubber is not None else source.name
    provenance["input"] = {"path": shown, "sha256": sha256_of(source), "format": "dicom",
                           "files": len({ref.path for ref in volume.extra["frames"]}),
                           "skipped_files": len(volume.extra.get("skipped", ()))}
    provenance["output"] = {"path": target.name, "sha256": sha256_of(target), "files": len(written)}
    provenance["dicom"] = {
        "geometry_warnings": [w.replace(str(source), shown).replace(str(source.resolve()), shown)
                              for w in volume.extra.get("warnings", ())],
        "gantry_tilt_deg": round(float(volume.extra.get("gantry_tilt_deg", 0.0)), 3),
        "per_slice_scaling": volume.extra.get("per_slice_scaling") is not None,
        "deidentified": scrubber is not None,
    }
    if scrubber is not None:
        provenance["dicom"].update({
            "profile": f"DICOM PS3.15 {EDITION} Annex E Basic Application Level Confidentiality Profile",
            "options": list(scrubber.options.chosen),
            "method_codes": [code for code, _ in scrubber.options.method_codes()],
            "key": key_note or "user-supplied (not recorded)",
        })
    else:
        provenance["dicom"]["series"] = volume.extra.get("series_key")
    if mask_path is not None:
        provenance["mask"] = {"path": Path(mask_path).name}
    write_provenance(provenance, sidecar)
    return provenance, written
