"""``defacer demo``: make a synthetic head phantom, deface it, and say where the results are."""

from __future__ import annotations

import argparse
from pathlib import Path

from defacer.cli.paths import path_argument

#: The phantom voxel sizes the demo accepts (mm): finer needs gigabytes (0.01 mm ran out of memory), coarser leaves
#: the features too few voxels to distort (12 mm: "found but not changed").
MIN_VOXEL_MM, MAX_VOXEL_MM = 0.5, 10.0


def voxel_size_argument(text: str) -> float:
    """``--voxel-size``: a number of mm in [:data:`MIN_VOXEL_MM`, :data:`MAX_VOXEL_MM`] (``nan``, ``inf``, 0 and
    negative sizes reached the phantom maker: "unexpected error ... a bug"; 1e9 wrote an empty phantom first)."""
    import math

    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and MIN_VOXEL_MM <= value <= MAX_VOXEL_MM):
        raise argparse.ArgumentTypeError(f"expected a voxel size in mm from {MIN_VOXEL_MM:g} to {MAX_VOXEL_MM:g}, "
                                         f"found {text!r}")
    return value


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="make a synthetic head phantom, deface it, write everything under build/demo/",
        description="Makes a synthetic head (no real person), defaces it with the shipped detector (or, when no "
                    "model weights are installed, with the phantom's known labels), and writes the scan, the "
                    "defaced scan, the label map and the provenance sidecar.",
    )
    parser.add_argument("--out", type=path_argument, default=Path("build/demo"), help="output folder (default build/demo)")
    parser.add_argument("--voxel-size", type=voxel_size_argument, default=1.0,
                        help=f"phantom voxel size in mm, {MIN_VOXEL_MM:g} to {MAX_VOXEL_MM:g} (default 1)")
    parser.add_argument("--contrast", default="T1", choices=["T1", "T2", "PD", "FLAIR", "CT"])
    parser.add_argument("--use-true-labels", action="store_true",
                        help="use the phantom's known labels instead of the detector")
    parser.add_argument("--force", action="store_true",
                        help="replace the files of an earlier demo in OUT (by default an existing file is refused)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from defacer.errors import DetectorError
    from defacer.io.atomic import atomic_outputs
    from defacer.io.output_guard import check_outputs
    from defacer.phantom import make_phantom, save_phantom
    from defacer.pipeline import load_detector
    from defacer.provenance import sidecar_path
    from defacer.route import deface_path

    out: Path = args.out
    scan = out / "phantom_T1w.nii.gz" if args.contrast == "T1" else out / f"phantom_{args.contrast}.nii.gz"
    truth = out / "phantom_labels.nii.gz"
    defaced = scan.with_name(scan.name.replace(".nii.gz", "_defaced.nii.gz"))
    mask = scan.with_name(scan.name.replace(".nii.gz", "_detected-labels.nii.gz"))
    # Every file is checked before anything is written; written by renaming (a link in the way is replaced,
    # never written through).
    check_outputs([scan, truth, defaced, mask, sidecar_path(defaced)], force=args.force)
    phantom = make_phantom(args.voxel_size, contrast=args.contrast)
    with atomic_outputs([scan, truth]) as temps:
        save_phantom(phantom, temps[0], temps[1])
    labels_path = truth if args.use_true_labels else None
    detector = None
    if labels_path is None:
        try:
            detector = load_detector()
            source = f"the shipped detector ({detector.name})"
        except DetectorError as err:
            print(f"note: {err}\n      Using the phantom's known labels instead.")
            labels_path = truth
    if labels_path is not None:
        source = "the phantom's known labels"
    provenance = deface_path(scan, defaced, detector=detector, labels_path=labels_path, force=args.force,
                             mask_path=mask).provenance
    from defacer.io import load_volume

    after = load_volume(defaced).raw
    brain_changed = int(np.count_nonzero((after != phantom.volume.raw) & phantom.brain))
    print(f"Synthetic head defaced with {source}.")
    print(f"  scan:         {scan}")
    print(f"  defaced:      {defaced}")
    print(f"  labels found: {mask}")
    print(f"  provenance:   {sidecar_path(defaced)}")
    print("  voxels changed: " + ", ".join(f"{k} {v}" for k, v in provenance["voxels_changed"].items())
          + f"; brain voxels changed: {brain_changed}")
    print("Open the two scans side by side in any NIfTI viewer (e.g. fsleyes, ITK-SNAP, 3D Slicer) to compare.")
    return 0 if brain_changed == 0 else 1
