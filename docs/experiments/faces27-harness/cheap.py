# FACES27 (session 27) build-only harness, kept for the record: copy beside FACES26's h.py (docs/experiments/faces26-harness,
# ROOT/B set to your worktree and build folder) and run from there with PYTHONPATH=<worktree>/src. Not part of the package or its tests.
"""main vs a var27 variant: nose / far-changed mm3 (reference-label centroids), protected, distort_s (build only)."""
import sys
import numpy as np
import h, var27
import distortion_quality as dq
from defacer.io import load_volume
from defacer.pipeline import DefaceOptions, deface

sc = h.scans()
for name in sys.argv[1:]:
    vol = load_volume(sc[name].path)
    det = h.detector(name, sc[name].path)
    ref_path = h.ROOT / "reference_labels" / f"{name}.labels.nii.gz"
    ref = load_volume(ref_path, strict=False).raw.astype(np.uint8) if ref_path.is_file() else None
    if ref is not None and ref.shape != vol.shape:
        ref = None
    out = []
    for tag in ("main", "var"):
        if tag == "var":
            with var27.patch():
                r = deface(vol, det, DefaceOptions(seed=0))
        else:
            r = deface(vol, det, DefaceOptions(seed=0))
        m = dq.cheap_metrics(vol, r, ref)
        out.append(f"{tag}: nose {m['changed_mm3'].get('nose')} far {m.get('far_changed_mm3')} prot {m['changed_inside_protected']} distort_s {m['distort_s']:.2f}")
    print(f"{name:28s} " + " | ".join(out), flush=True)
