"""benchmarks/distortion_quality.py --without-network-ears: every ear looked for from the image.

The shipped detector finds every ear of the 19 real heads itself, so its image-based ear search
(what the tool relies on for heads whose ears the network misses) is never measured there unless the
network's ears are dropped first.
"""

from __future__ import annotations

import numpy as np
import pytest
from benchmark_module import load_benchmark

from defacer.detect import model
from defacer.detect.model import OnnxDetector, default_weights_path
from defacer.labels import Label
from defacer.phantom import make_phantom


@pytest.mark.skipif(not default_weights_path().is_file(), reason="no shipped detector weights")
def test_without_network_ears_every_ear_comes_from_the_image(monkeypatch) -> None:
    made = make_phantom(2.0)
    image = made.volume.values(np.float32)
    detector = OnnxDetector(threads=1)
    plain = detector.predict(image, made.volume.affine)
    assert "network" in detector.last_sources["ears"].values()  # the network finds the phantom's ears
    monkeypatch.setattr(model, "add_missing_ears", model.add_missing_ears)  # restored after the test
    load_benchmark("distortion_quality").without_network_ears()
    labels = detector.predict(image, made.volume.affine)
    assert set(detector.last_sources["ears"].values()) <= {"image", "none"}
    assert "image" in detector.last_sources["ears"].values()
    assert (labels == Label.EARS).any()
    # only the ears differ
    assert np.array_equal(np.where(labels == Label.EARS, 0, labels), np.where(plain == Label.EARS, 0, plain))


def test_the_option_is_parsed_and_names_the_output(monkeypatch, tmp_path) -> None:
    bench = load_benchmark("distortion_quality")
    seen = {}

    def fake_run(args):
        seen["flag"] = args.without_network_ears
        return {"modes": {}}

    monkeypatch.setattr(bench, "run", fake_run)
    assert bench.main(["--without-network-ears", "--mode", "detector", "--heads", str(tmp_path),
                       "--out", str(tmp_path / "out")]) == 0
    assert seen["flag"] is True
    assert (tmp_path / "out" / "quality_image_ears_detector.json").is_file()
