"""Face identity: dlib 128-d embeddings of renders and re-identification against a gallery.

The embedding of a defaced render is computed on the **original render's face box**, so a
face that no detector finds any more is still compared where it used to be.  Embedding
distances of renders are small for any two grey heads (0.3-0.6), so a single distance is not
evidence; :func:`rank1_rate` measures whether a defaced render still picks its own original out
of a gallery of several people, which is.

The 5-point landmark model is used (released into the public domain), not the 68-point one
(iBUG 300-W, no commercial use).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt

from defacer.verify.faces import _MODEL_LOCK, Box, _check_image, _import_dlib, dlib_model_path


@lru_cache(maxsize=1)
def _models() -> tuple[Any, Any]:
    dlib = _import_dlib()
    predictor = dlib.shape_predictor(str(dlib_model_path("shape_predictor_5_face_landmarks.dat")))
    encoder = dlib.face_recognition_model_v1(str(dlib_model_path("dlib_face_recognition_resnet_model_v1.dat")))
    return predictor, encoder


def embed(image: npt.NDArray[Any], box: Box) -> npt.NDArray[np.float64]:
    """128-d dlib face embedding of the face inside ``box``.

    Parameters
    ----------
    image : ndarray, uint8, shape (H, W, 3) or (H, W)
        The picture.
    box : tuple of 4 int
        (left, top, right, bottom) in pixels.

    Returns
    -------
    ndarray, float64, shape (128,)
        Unit-scale embedding; Euclidean distances below ~0.6 mean "same person" on photographs.
    """
    dlib = _import_dlib()
    rgb = _check_image(image)
    left, top, right, bottom = (int(v) for v in box)
    rect = dlib.rectangle(left, top, max(right - 1, left + 1), max(bottom - 1, top + 1))
    with _MODEL_LOCK:
        predictor, encoder = _models()
        shape = predictor(rgb, rect)
        return np.asarray(encoder.compute_face_descriptor(rgb, shape), dtype=np.float64)


def distance(a: npt.NDArray[np.floating], b: npt.NDArray[np.floating]) -> float:
    """Euclidean distance between two embeddings."""
    return float(np.linalg.norm(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)))


def default_box(image: npt.NDArray[Any]) -> Box:
    """A face box guessed from the silhouette when no detector found one.

    The central 60% of the rendered head's width, from 25% to 85% of its height: where the face
    sits in a front render.
    """
    grey = np.asarray(image)
    if grey.ndim == 3:
        grey = grey.max(axis=2)
    rows = np.flatnonzero(grey.any(axis=1))
    cols = np.flatnonzero(grey.any(axis=0))
    if rows.size == 0 or cols.size == 0:
        h, w = grey.shape[:2]
        return (w // 4, h // 4, 3 * w // 4, 3 * h // 4)
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    h, w = bottom - top, right - left
    return (int(left + 0.2 * w), int(top + 0.25 * h), int(right - 0.2 * w), int(top + 0.85 * h))


def rank1_rate(probes: Mapping[str, npt.NDArray[np.floating]], gallery: Mapping[str, npt.NDArray[np.floating]]
               ) -> dict[str, Any]:
    """Re-identification: how often the nearest gallery face is the probe's own.

    Parameters
    ----------
    probes : mapping of subject name to embedding (128,)
        E.g. the defaced front renders.
    gallery : mapping of subject name to embedding (128,)
        E.g. the original front renders of every subject in the set.  Each probe's subject
        must be in the gallery.

    Returns
    -------
    dict
        ``rate`` (fraction of probes whose nearest gallery entry is their own), ``chance``
        (1 / gallery size), ``n``, and per probe the ``matches`` (nearest name) and ``rank``
        of the true subject (1 = first).
    """
    names = list(gallery)
    if not names:
        return {"rate": None, "chance": None, "n": 0, "matches": {}, "ranks": {}}
    matrix = np.stack([np.asarray(gallery[n], dtype=np.float64) for n in names])
    matches: dict[str, str] = {}
    ranks: dict[str, int] = {}
    for subject, vector in probes.items():
        d = np.linalg.norm(matrix - np.asarray(vector, dtype=np.float64)[None, :], axis=1)
        order = np.argsort(d, kind="stable")
        matches[subject] = names[int(order[0])]
        if subject in names:
            ranks[subject] = int(np.flatnonzero(order == names.index(subject))[0]) + 1
    hits = sum(1 for s, m in matches.items() if s == m)
    n = len(matches)
    return {"rate": hits / n if n else None, "chance": 1.0 / len(names), "n": n, "matches": matches, "ranks": ranks}


def binomial_p_value(hits: int, n: int, chance: float) -> float | None:
    """One-sided binomial p-value of getting ``hits`` or more right out of ``n`` at ``chance``.

    The probability, if every probe were matched to a gallery entry at random, of a rank-1 rate
    at least as high as the one measured: small (below 0.05) means better than chance.
    """
    if n <= 0 or chance is None:
        return None
    from math import comb

    p = sum(comb(n, k) * chance**k * (1 - chance) ** (n - k) for k in range(max(hits, 0), n + 1))
    return float(min(1.0, p))


#: A gallery entry that is the nearest match of at least this share of the probes (and of two or more)
#: is reported as a "hub": its matches say more about it than about the probes.
HUB_SHARE = 1 / 3


def reid_statistics(result: Mapping[str, Any], alpha: float = 0.05) -> dict[str, Any]:
    """What a :func:`rank1_rate` result means: hits, one-sided binomial p-value, significance, hubs.

    Returns
    -------
    dict
        ``hits``, ``n``, ``chance``, ``p_value`` (of "better than chance", one-sided binomial),
        ``alpha``, ``significant`` (``p_value < alpha``), and ``hubs``: gallery entries chosen as the
        nearest match by at least :data:`HUB_SHARE` of the probes (and by two or more), with how many.
    """
    matches = dict(result.get("matches") or {})
    n = len(matches)
    hits = sum(1 for s, m in matches.items() if s == m)
    chance = result.get("chance")
    p = binomial_p_value(hits, n, chance) if chance is not None else None
    counts: dict[str, int] = {}
    for m in matches.values():
        counts[m] = counts.get(m, 0) + 1
    hubs = {name: c for name, c in sorted(counts.items(), key=lambda kv: -kv[1]) if c >= 2 and c >= HUB_SHARE * n}
    return {"hits": hits, "n": n, "chance": chance, "p_value": None if p is None else round(p, 4), "alpha": alpha,
            "significant": bool(p is not None and p < alpha), "hubs": hubs}


def pairwise_distances(embeddings: Sequence[npt.NDArray[np.floating]]) -> npt.NDArray[np.float64]:
    """(N, N) matrix of Euclidean distances between embeddings."""
    m = np.stack([np.asarray(e, dtype=np.float64) for e in embeddings])
    return np.linalg.norm(m[:, None, :] - m[None, :, :], axis=2)
