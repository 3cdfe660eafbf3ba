# FACES28 (session 28) build-only: distortion_quality.py with nose_region's lower-end sizes from F28_DROP, F28_FLAT, F28_REACH
# (needs docs/experiments/faces28-trr48.patch applied; run from the worktree root with PYTHONPATH=src). Not part of the package.
"""distortion_quality.py with the lower end's sizes from F28_DROP, F28_FLAT, F28_REACH (build only)."""
import functools, os, runpy, sys
import defacer.distort as d
import defacer.pipeline as pl
import defacer.distort_frame as df
kw = dict(drop_mm=float(os.environ["F28_DROP"]), flat_mm=float(os.environ["F28_FLAT"]),
          drop_reach_mm=float(os.environ["F28_REACH"]))
pl.nose_region = functools.partial(d.nose_region, **kw)
df.nose_region = functools.partial(d.nose_region, **kw)
sys.argv = ["distortion_quality.py", *sys.argv[1:]]
runpy.run_path("benchmarks/distortion_quality.py", run_name="__main__")
