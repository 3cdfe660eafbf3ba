# FACES28 (session 28) build-only: the lower-end sizes on FACES26's harness (docs/experiments/faces26-harness/h.py, ROOT/B edited);
# needs docs/experiments/faces28-trr48.patch applied. Run: F28_DROP=15 F28_FLAT=12 F28_REACH=48 python var28.py f12 [heads...]
"""FACES28 (build only): the lower end's sizes as nose_region's arguments, on FACES26's harness (h.py)."""
import contextlib, functools, os, sys
import h
import defacer.distort as d
import defacer.pipeline as pl
import defacer.distort_frame as df

ORIG = d.nose_region


@contextlib.contextmanager
def patch():
    kw = dict(drop_mm=float(os.environ["F28_DROP"]), flat_mm=float(os.environ["F28_FLAT"]),
              drop_reach_mm=float(os.environ["F28_REACH"]))
    pl.nose_region = functools.partial(ORIG, **kw)
    df.nose_region = functools.partial(ORIG, **kw)
    try:
        yield
    finally:
        pl.nose_region = ORIG
        df.nose_region = ORIG


if __name__ == "__main__":
    name = sys.argv[1]
    heads = sys.argv[2:] or h.FIRING
    h.run_heads(heads, name, patch)
