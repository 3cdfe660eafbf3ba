#!/usr/bin/env python
"""Detector inference time and peak memory for a 1 mm 256^3 head.

Runs the detector in a fresh process so the peak RSS (``ru_maxrss``) belongs to the detector
(plus the Python interpreter and the 64 MB input image).  The head is the synthetic phantom (no
real face needed) at 1 mm, 256^3, made in the parent process and handed over as a .npy file.

Example::

    python benchmarks/detector_speed.py --repeat 3 [--weights FILE] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

MAKE_PHANTOM = r"""
import sys
from pathlib import Path
import numpy as np
from defacer.phantom import make_phantom
from defacer.volume import canonical_reorientation
phantom = make_phantom(1.0, fov_mm=(256.0, 256.0, 256.0))
reo = canonical_reorientation(phantom.volume.affine, phantom.volume.shape)
np.save(Path(sys.argv[1]) / "image.npy", reo.to_ras(phantom.volume.values()))
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
for _ in range(repeat):
    t0 = time.perf_counter()
    labels = detector.predict(image, affine)
    times.append(time.perf_counter() - t0)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"shape": list(image.shape), "load_s": round(load_s, 3), "predict_s": [round(t, 3) for t in times],
                  "peak_rss_mb": round(peak / 1024, 1), "rss_before_detector_mb": round(before / 1024, 1),
                  "found": {str(v): int((labels == v).sum()) for v in (1, 2, 3)}}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=None)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    import tempfile

    # the phantom is made in its own process: ru_maxrss survives fork/exec, so a big parent
    # would inflate the detector's measured peak
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-c", MAKE_PHANTOM, tmp], check=True)
        out = subprocess.run([sys.executable, "-c", CHILD, str(args.weights or ""), str(args.repeat),
                              str(Path(tmp) / "image.npy"), str(Path(tmp) / "affine.npy")],
                             capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
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
