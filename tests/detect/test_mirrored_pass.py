"""The conditional mirrored pass: it runs only where the plain pass lacks an eye or the nose, and the
averaged answer is kept unless it loses every eye and the nose.

The network is the shipped one; a wrapper round its onnxruntime session changes what a pass returns
(the plain pass unsure of the nose, the mirrored one sure of it), so the detector's own code decides
whether to run the mirrored pass, averages, post-processes and chooses.
"""

from __future__ import annotations

import numpy as np
import pytest

from defacer.detect.model import OnnxDetector, class_argmax, default_weights_path, load_default_detector
from defacer.labels import Label
from defacer.phantom import make_phantom
from defacer.volume import canonical_reorientation

needs_weights = pytest.mark.skipif(not default_weights_path().is_file(), reason="shipped weights not built yet")


class _Session:
    """The detector's session, each run's output changed by ``change(call, output)`` (call 0: the plain pass)."""

    def __init__(self, session, weights: np.ndarray, change) -> None:
        self.session, self.weights, self.change, self.calls = session, weights, change, 0

    def run(self, names, feed):
        (out,) = self.session.run(names, feed)
        out = np.array(out, np.float32)
        nose = class_argmax(out[0] * self.weights[:, None, None, None]) == int(Label.NOSE)
        self.change(self.calls, out[0], nose)
        self.calls += 1
        return [out]


def _predict(detector: OnnxDetector, change=None) -> tuple[np.ndarray, _Session | None]:
    ph = make_phantom(2.0, seed=7)
    reo = canonical_reorientation(ph.volume.affine, ph.volume.shape)
    session = None
    if change is not None:
        session = _Session(detector._session, detector.class_weights, change)
        detector._session = session
    return detector.predict(reo.to_ras(ph.volume.values()), reo.ras_affine), session


def _unsure_then_sure(call: int, probs: np.ndarray, nose: np.ndarray) -> None:
    """Plain pass: 0.75 nose (below the card's weighted line, 0.86); mirrored pass: 1.0 (the mean, 0.875, above)."""
    sure = 0.75 if call == 0 else 1.0
    probs[:, nose] = 0.0
    probs[int(Label.NOSE), nose] = sure
    probs[0, nose] = 1.0 - sure


@needs_weights
def test_where_the_plain_pass_loses_the_nose_the_mirrored_pass_runs_and_its_nose_is_kept() -> None:
    detector = load_default_detector()
    assert detector.mirror is False, "the shipped card runs the plain pass alone"
    labels, session = _predict(detector, _unsure_then_sure)
    assert session is not None and session.calls == 2, "the plain pass once, the mirrored pass once"
    assert (labels == Label.NOSE).any(), "the averaged passes find the nose"
    assert (labels == Label.EYES).any() and (labels == Label.EARS).any()
    record = detector.last_sources["mirrored_pass"]
    assert record["why"] == "no nose found" and record["kept"] == "mirrored"
    assert record["found"] == "eyes/nose/ears 2/0/2 -> 2/1/2"
    assert "ears" in detector.last_sources, "the ear record stays beside it"
    assert "mirrored_pass" in detector.last_timings


@needs_weights
def test_the_averaged_answer_is_kept_even_with_fewer_features_than_the_doubtful_plain_pass() -> None:
    """Counting cannot tell a plausible pair in the wrong place from a right one, so the average is trusted."""
    def ears_lost_when_mirrored(call: int, probs: np.ndarray, nose: np.ndarray) -> None:
        probs[:, nose] = 0.0
        probs[0, nose] = 1.0  # the plain pass loses the nose
        if call == 1:  # the mirrored pass sees no ear: the mean's ears fall below the card's line
            ears = probs[int(Label.EARS)] > 0.05
            probs[:, ears] = 0.0
            probs[0, ears] = 1.0

    detector = load_default_detector()
    detector.ear_fallback = False  # the network's own ears, not the image search's, are what is compared
    labels, session = _predict(detector, ears_lost_when_mirrored)
    assert session is not None and session.calls == 2
    record = detector.last_sources["mirrored_pass"]
    assert record["kept"] == "mirrored", record
    plain, mirrored = (part.split("/") for part in record["found"].removeprefix("eyes/nose/ears ").split(" -> "))
    assert int(mirrored[2]) < int(plain[2]), "the average found fewer ears than the plain pass"
    assert int(mirrored[0]) == 2, "and kept both eyes"
    assert (labels == Label.EYES).any(), "its eyes are the answer"


@needs_weights
def test_a_mirrored_pass_that_loses_the_whole_face_is_dropped() -> None:
    def nothing_mirrored(call: int, probs: np.ndarray, nose: np.ndarray) -> None:
        probs[:, nose] = 0.0
        probs[0, nose] = 1.0  # the plain pass loses the nose
        if call == 1:  # the mirrored pass sees nothing at all: the mean has no feature either
            probs[:] = 0.0
            probs[0] = 1.0

    detector = load_default_detector()
    labels, session = _predict(detector, nothing_mirrored)
    assert session is not None and session.calls == 2
    record = detector.last_sources["mirrored_pass"]
    assert record["kept"] == "plain" and record["found"] == "eyes/nose/ears 2/0/2 -> 0/0/0"
    assert (labels == Label.EYES).any() and (labels == Label.EARS).any(), "the plain pass's features stay"


@needs_weights
def test_a_clean_head_never_runs_the_mirrored_pass() -> None:
    detector = load_default_detector()
    labels, session = _predict(detector, lambda call, probs, nose: None)
    assert session is not None and session.calls == 1, "one network pass"
    assert all((labels == v).any() for v in (Label.EYES, Label.NOSE, Label.EARS))
    assert "mirrored_pass" not in detector.last_sources and "mirrored_pass" not in detector.last_timings


@needs_weights
def test_a_card_with_the_mirror_on_runs_no_second_mirrored_pass(tmp_path) -> None:
    detector = load_default_detector()
    detector.mirror = True  # both passes already averaged: nothing more to try

    def no_nose(call: int, probs: np.ndarray, nose: np.ndarray) -> None:
        probs[:, nose] = 0.0
        probs[0, nose] = 1.0

    _, session = _predict(detector, no_nose)
    assert session is not None and session.calls == 2 and "mirrored_pass" not in detector.last_sources
