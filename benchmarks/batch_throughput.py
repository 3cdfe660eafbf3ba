"""Batch throughput: one-millimetre heads per minute for 1, 2, ... workers, and the scaling curve.

Builds a BIDS dataset of synthetic 1 mm phantom heads (200 x 240 x 240 voxels) in a scratch
folder, then runs ``defacer batch`` on it with each worker count and engine, timing the
whole run (worker start-up included).  The detector is the shipped ONNX model when it is
installed, otherwise the phantoms' label maps (``--labels-dir``), and the output says which.

Usage::

    python benchmarks/batch_throughput.py                 # 8 heads, 1 and 2 workers, processes
    python benchmarks/batch_throughput.py --scans 16 --jobs 1 2 3 4 --engines processes dask  (jobs above the usable cores are skipped)
    python benchmarks/batch_throughput.py --labels        # force label files (no detector)

Results go to ``build/benchmarks/batch_throughput.json`` (and are printed).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from defacer.batch.runner import BatchConfig, run_batch
from defacer.batch.workers import usable_cores
from defacer.phantom import make_phantom, save_phantom

CONTRASTS = ("T1", "T2", "FLAIR", "PD")


def build_dataset(root: Path, scans: int, voxel_size: float) -> tuple[Path, Path]:
    """Write ``scans`` phantom heads as a BIDS dataset plus a labels folder; return both."""
    ds, labels = root / "ds", root / "labels"
    ds.mkdir(parents=True)
    (ds / "dataset_description.json").write_text(json.dumps({"Name": "bench", "BIDSVersion": "1.9.0"}))
    for index in range(scans):
        sub = f"{index + 1:03d}"
        for folder in (ds, labels):
            (folder / f"sub-{sub}" / "anat").mkdir(parents=True)
        phantom = make_phantom(voxel_size, contrast=CONTRASTS[index % len(CONTRASTS)], seed=index,
                               shift_mm=(index % 3 - 1.0, index % 5 - 2.0, 0.0))
        save_phantom(phantom, ds / f"sub-{sub}/anat/sub-{sub}_T1w.nii.gz",
                     labels / f"sub-{sub}/anat/sub-{sub}_T1w.labels.nii.gz")
    return ds, labels


def detector_available(weights: Path | None = None) -> bool:
    """Whether the detector (shipped, or ``weights``) loads."""
    try:
        from defacer.pipeline import load_detector

        load_detector(weights_path=weights)
    except Exception:  # noqa: BLE001 - any failure means: use label files
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", type=int, default=8, help="heads per run (default 8)")
    parser.add_argument("--voxel-size", type=float, default=1.0, help="phantom voxel size in mm (default 1)")
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2], help="worker counts (default 1 2)")
    parser.add_argument("--engines", nargs="+", default=["processes"], choices=("processes", "dask"),
                        help="engines for jobs > 1 (jobs = 1 always runs serially)")
    parser.add_argument("--labels", action="store_true", help="use label files even if the detector is installed")
    parser.add_argument("--weights", type=Path, default=None, help="detector weights to use (default: the shipped)")
    parser.add_argument("--scratch", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=Path("build/benchmarks/batch_throughput.json"))
    args = parser.parse_args(argv)

    scratch = Path(tempfile.mkdtemp(prefix="defacer-bench-", dir=args.scratch))
    try:
        t = time.perf_counter()
        ds, labels = build_dataset(scratch, args.scans, args.voxel_size)
        print(f"built {args.scans} phantom heads at {args.voxel_size} mm in {time.perf_counter() - t:.1f} s")
        use_detector = not args.labels and detector_available(args.weights)
        detector = f"ONNX model {args.weights or '(shipped)'}" if use_detector else "label files (--labels-dir)"
        print(f"detector: {detector}")
        results = []
        cores = usable_cores()
        for jobs in args.jobs:
            if jobs > cores:  # run_batch caps the workers at the usable cores: such a row would be mislabelled
                print(f"jobs={jobs}: skipped, this machine has {cores} usable cores (batch runs at most {cores} workers)")
                continue
            for engine in (["serial"] if jobs == 1 else args.engines):
                out = scratch / f"out-{engine}-{jobs}"
                config = BatchConfig(in_root=ds, out_root=out, labels_dir=None if use_detector else labels, jobs=jobs,
                                     weights_path=args.weights if use_detector else None,
                                     scheduler="local" if engine == "dask" else None, quiet=True)
                summary = run_batch(config)
                if summary.counts.failed:
                    failed = [r for r in summary.records if r.status == "failed"]
                    print(f"  {failed[0].key}: {failed[0].error}", file=sys.stderr)
                rate = 60.0 * summary.counts.done / summary.wall_s
                stamps = [(datetime.fromisoformat(r.started), datetime.fromisoformat(r.finished))
                          for r in summary.records if r.started and r.finished]
                span = (max(f for _, f in stamps) - min(s for s, _ in stamps)).total_seconds() if stamps else 0.0
                steady = 60.0 * len(stamps) / span if span > 0 else 0.0
                per_scan = sorted(r.timings.get("total", 0.0) for r in summary.records)
                cpu = sorted(r.timings.get("cpu", 0.0) for r in summary.records)
                cpu_median = cpu[len(cpu) // 2] if cpu else 0.0
                results.append({"engine": engine, "jobs": jobs, "scans": summary.counts.done,
                                "failed": summary.counts.failed, "wall_s": round(summary.wall_s, 2),
                                "scans_per_min": round(rate, 1),
                                "scans_per_min_after_startup": round(steady, 1),
                                "median_scan_s": round(per_scan[len(per_scan) // 2], 2) if per_scan else None,
                                "median_scan_cpu_s": round(cpu_median, 2),
                                "cores_used": round(sum(cpu) / summary.wall_s, 2) if summary.wall_s else 0.0,
                                "load_average_1min": round(os.getloadavg()[0], 2)})
                print(f"{engine:>9} jobs={jobs}: {summary.counts.done} scans in {summary.wall_s:.1f} s = "
                      f"{rate:.1f} scans/min ({steady:.1f} after worker start-up; median per scan: {results[-1]['median_scan_s']} s wall, "
                      f"{cpu_median:.2f} s CPU; {results[-1]['cores_used']} cores busy on average; "
                      f"load average {os.getloadavg()[0]:.1f})")
                shutil.rmtree(out, ignore_errors=True)
        base = next((r["scans_per_min"] for r in results if r["jobs"] == 1), None)
        if base:
            print("scaling (speed-up over 1 worker):")
            for r in results:
                r["speedup"] = round(r["scans_per_min"] / base, 2)
                print(f"  {r['engine']:>9} jobs={r['jobs']}: x{r['speedup']} (ideal x{r['jobs']}; CPU per head "
                      f"{r['median_scan_cpu_s']} s, so x{r['jobs'] * min(c['median_scan_cpu_s'] for c in results) / max(r['median_scan_cpu_s'], 1e-9):.2f} on idle cores)")
        cpu_all = [r["median_scan_cpu_s"] for r in results if r["median_scan_cpu_s"]]
        if cpu_all:
            cpu_s = min(cpu_all)
            cores = os.cpu_count() or 1
            print(f"CPU per head: {cpu_s:.2f} s, so {cores} idle cores could do about {60 * cores / cpu_s:.0f} "
                  "heads/min (the ceiling when nothing else runs on this machine)")
        report = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                              "python": platform.python_version()},
                  "voxel_size_mm": args.voxel_size, "detector": detector,
                  "results": results}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"written {args.out}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
