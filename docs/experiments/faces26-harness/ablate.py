# FACES26 (session 26) build-only harness, kept for the record: copy to build/f26/ and run from there with
# PYTHONPATH=<worktree>/src; paths are FACES26's worktree's (ROOT in h.py). Not part of the package or its tests.
"""Per firing view: grey out (flatten to mean) the detector's own mouth / each eye / nose tip region; lost?"""
import sys
import numpy as np
import h
sys.path.insert(0, "/work/wt-FACES26/benchmarks")
import face_cues as fc

MOUTH = {"facemesh": "lip_lower", "dlib_cnn": "mouth", "blazeface_short": "mouth"}
EYES = {"facemesh": ("eye_r_inner", "eye_l_inner"), "dlib_cnn": ("eye_r", "eye_l"), "blazeface_short": ("eye_r", "eye_l")}
NOSE = {"facemesh": "nose_tip", "dlib_cnn": "nose_tip", "blazeface_short": "nose_tip"}
DET = {"FM": "facemesh", "dlib": "dlib_cnn", "BZ": "blazeface_short"}


def grey(rgb, y, x, hh, ww):
    out = rgb.copy()
    y0, y1 = max(0, int(y - hh / 2)), min(rgb.shape[0], int(y + hh / 2))
    x0, x1 = max(0, int(x - ww / 2)), min(rgb.shape[1], int(x + ww / 2))
    out[y0:y1, x0:x1] = out[y0:y1, x0:x1].reshape(-1, 3).mean(0).astype(np.uint8)
    return out


tally = {}
for name in sys.argv[1:]:
    sc = h.scans()
    vol = h.load_volume(sc[name].path)
    det = h.detector(name, sc[name].path)
    orig = h.originals(name, vol)
    res = h.deface(vol, det, h.DefaceOptions(seed=0))
    ev = h.evaluate(name, vol, res.volume, orig, keep=True)
    for item in ev["fire"]:
        vname, dets = item.split(":")
        rgb = ev["after"][vname].rgb()
        lms = fc.landmarks(rgb)
        for d in dets.split("+"):
            dn = DET[d]
            lm = lms.get(dn)
            if not lm:
                print(name, vname, dn, "no landmarks"); continue
            my, mx = lm[MOUTH[dn]]
            parts = {"mouth": [(lm[MOUTH[dn]], 24, 48)], "mouth_upper": [((my - 6, mx), 12, 48)], "mouth_lower": [((my + 6, mx), 12, 48)], "eyes": [(lm[e], 24, 24) for e in EYES[dn]],
                     "eye_a": [(lm[EYES[dn][0]], 24, 24)], "eye_b": [(lm[EYES[dn][1]], 24, 24)],
                     "nose": [(lm[NOSE[dn]], 24, 24)]}
            res_ = {}
            for part, regs in parts.items():
                img = rgb
                for (y, x), hh, ww in regs:
                    img = grey(img, y, x, hh, ww)
                res_[part] = fc.margin(dn, img)[0] <= 0
                tally[(part)] = tally.get(part, 0) + res_[part]
            tally["n"] = tally.get("n", 0) + 1
            print(f"{name:26s} {vname:16s} {dn:16s} lost when greyed: {[p for p, v in res_.items() if v]}", flush=True)
print(tally)
