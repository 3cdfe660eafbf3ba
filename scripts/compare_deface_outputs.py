"""Deface every head of a folder with two source trees of defacer and compare the outputs voxel for voxel.

For a change meant to leave every output as it was (speed work): each scan is defaced by each tree's
``defacer deface`` (``python -c 'from defacer.cli.entry import run; run()'`` with ``PYTHONPATH`` set to the
tree's ``src``) into a NIfTI, with ``--save-mask`` for the detected label map, and the two trees' defaced
images and label maps are compared as arrays (nibabel; the values and the affine must be equal).  Prints one
line per scan and exits 1 when any differs.

    python scripts/compare_deface_outputs.py OLD_SRC NEW_SRC [--data ../shared/data/heads] [--out build/compare]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
#: Image files defaced (a ``.raw.gz`` is the data file of an ``.nhdr`` header, not a scan of its own).
SUFFIXES = (".nii.gz", ".nii", ".nhdr", ".nrrd", ".mgz")


def scans(folder: Path) -> list[Path]:
    """The scans of ``folder``: image files with a known suffix and DICOM folders (``*_dicom``)."""
    return [p for p in sorted(folder.iterdir())
            if (p.is_file() and p.name.endswith(SUFFIXES)) or (p.is_dir() and p.name.endswith("_dicom"))]


def deface(src: Path, scan: Path, out: Path) -> tuple[Path, Path] | str:
    """Deface ``scan`` with the tree ``src`` into ``out``; the image and label map written, or the error."""
    out.mkdir(parents=True, exist_ok=True)
    stem = scan.name.split(".")[0]
    suffix = "" if scan.is_dir() else scan.name[len(stem):]  # the input's format: a DICOM series, a folder
    image, labels = out / f"{stem}{suffix}", out / f"{stem}.labels.nii.gz"
    env = {**os.environ, "PYTHONPATH": str(src)}
    command = [sys.executable, "-c", "from defacer.cli.entry import run; run()", "deface", str(scan), str(image),
               "--save-mask", str(labels), "--force", "--allow-missing"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        return f"exit {result.returncode}: {result.stderr.strip()[-300:]}"
    return image, labels


def same(a: Path, b: Path) -> bool:
    """Whether two outputs hold equal arrays (values, dtype, shape) on equal affines: NIfTI files through
    nibabel, other formats (NRRD, a DICOM series folder) through :func:`defacer.io.load_volume`."""
    if a.name.endswith((".nii.gz", ".nii")):
        x, y = nib.load(a), nib.load(b)
        return bool(np.array_equal(x.affine, y.affine) and x.get_data_dtype() == y.get_data_dtype()
                    and np.array_equal(np.asanyarray(x.dataobj), np.asanyarray(y.dataobj)))
    from defacer.io import load_volume

    v, w = load_volume(a), load_volume(b)
    return bool(np.array_equal(v.affine, w.affine) and v.raw.dtype == w.raw.dtype and np.array_equal(v.raw, w.raw))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path, help="the old tree's src folder")
    parser.add_argument("new", type=Path, help="the new tree's src folder")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "heads")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "compare")
    args = parser.parse_args()
    differ = 0
    for scan in scans(args.data):
        old = deface(args.old, scan, args.out / "old")
        new = deface(args.new, scan, args.out / "new")
        if isinstance(old, str) or isinstance(new, str):
            same_run = old == new
            print(f"{scan.name}: {'both failed alike' if same_run else 'DIFFERENT'}: old {old} / new {new}", flush=True)
            differ += not same_run
            continue
        equal = [same(o, n) for o, n in zip(old, new, strict=True)]
        print(f"{scan.name}: image {'equal' if equal[0] else 'DIFFERENT'}, labels {'equal' if equal[1] else 'DIFFERENT'}",
              flush=True)
        differ += not all(equal)
    print(f"{differ} scan(s) differ")
    return 1 if differ else 0


if __name__ == "__main__":
    raise SystemExit(main())
