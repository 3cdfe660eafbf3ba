"""Face detector wrappers on a photograph shipped with scikit-image and on renders."""

from __future__ import annotations

import numpy as np
import pytest
from skimage import data

from defacer.errors import VerificationError
from defacer.verify import faces, identity
from defacer.verify.render import View, render_volume

pytestmark = pytest.mark.usefixtures("detectors")


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return np.ascontiguousarray(data.astronaut())


def test_every_detector_finds_the_astronauts_face_at_its_threshold(astronaut) -> None:
    results = faces.detect_all(astronaut)
    assert set(results) == set(faces.DETECTORS)
    for name, r in results.items():
        assert r.detected, f"{name} missed the face (score {r.score})"
        assert r.score is not None and r.score >= r.threshold
        left, top, right, bottom = r.box
        # Eileen Collins' face is around x 170-260, y 70-170 in the 512 x 512 picture.
        assert left < 215 < right and top < 120 < bottom, (name, r.box)
    assert results["facemesh"].extra["landmarks"] == 468


def test_no_detector_fires_on_an_empty_picture() -> None:
    blank = np.zeros((256, 256, 3), dtype=np.uint8)
    for name, r in faces.detect_all(blank).items():
        assert not r.detected and r.score is None, name


def test_no_counted_detector_finds_a_face_on_the_phantom(phantom) -> None:
    # The phantom has eyes, a nose and ears but no mouth or facial relief: not a face.
    _, renders = render_volume(phantom.volume, (View("front"),))
    results = faces.detect_all(renders["front"].rgb())
    assert not results["dlib_cnn"].detected
    assert not results["facemesh"].detected


def test_detectors_reject_pictures_that_are_not_uint8_rgb() -> None:
    with pytest.raises(VerificationError, match="uint8 RGB"):
        faces.blazeface_short(np.zeros((64, 64, 3), dtype=np.float32))
    with pytest.raises(VerificationError, match="Unknown face detector"):
        faces.detect_all(np.zeros((64, 64, 3), dtype=np.uint8), ("haar",))


def test_grey_pictures_are_accepted_as_rgb(astronaut) -> None:
    grey = astronaut.mean(axis=2).astype(np.uint8)
    assert faces.dlib_cnn(grey).detected


def test_only_calibrated_views_count() -> None:
    assert faces.is_counted("facemesh", "left45")
    assert faces.is_counted("blazeface_short", "front")
    assert not faces.is_counted("blazeface_short", "left45")
    assert not faces.is_counted("blazeface_full", "front")


def test_identity_embedding_is_stable_and_tells_people_apart(astronaut) -> None:
    box = faces.dlib_cnn(astronaut).box
    a = identity.embed(astronaut, box)
    assert a.shape == (128,)
    assert identity.distance(a, identity.embed(astronaut, box)) < 1e-6
    # The same face mirrored stays the same person; the camera man's face does not exist here, so compare with a
    # render, which is far from a photograph.
    mirrored = np.ascontiguousarray(astronaut[:, ::-1])
    mbox = faces.dlib_cnn(mirrored).box
    assert identity.distance(a, identity.embed(mirrored, mbox)) < 0.5


def test_rank1_rate_counts_probes_whose_nearest_gallery_face_is_their_own() -> None:
    gallery = {"a": np.array([0.0, 0.0]), "b": np.array([1.0, 0.0]), "c": np.array([0.0, 1.0])}
    probes = {"a": np.array([0.1, 0.0]), "b": np.array([0.1, 0.1]), "c": np.array([0.0, 0.8])}
    result = identity.rank1_rate(probes, gallery)
    assert result["rate"] == pytest.approx(2 / 3)
    assert result["chance"] == pytest.approx(1 / 3)
    assert result["matches"]["b"] == "a" and result["ranks"]["b"] == 2


def test_reid_p_value_is_the_one_sided_binomial_tail_and_names_hubs() -> None:
    # 9 subjects, chance 1/9: P(X >= 2) = 1 - (8/9)^9 - 9 (1/9) (8/9)^8.
    expected = 1 - (8 / 9) ** 9 - 9 * (1 / 9) * (8 / 9) ** 8
    assert identity.binomial_p_value(2, 9, 1 / 9) == pytest.approx(expected)
    assert identity.binomial_p_value(0, 9, 1 / 9) == pytest.approx(1.0)
    assert identity.binomial_p_value(5, 9, 1 / 9) < 0.01
    names = [f"s{i}" for i in range(9)]
    matches = {n: "s8" for n in names[:6]} | {"s6": "s6", "s7": "s7", "s8": "s8"}
    stats = identity.reid_statistics({"matches": matches, "chance": 1 / 9})
    assert stats["hits"] == 3 and stats["n"] == 9
    assert stats["p_value"] == pytest.approx(identity.binomial_p_value(3, 9, 1 / 9), abs=1e-4)
    assert not stats["significant"], "3/9 at chance 1/9 is p = 0.069, not below 0.05"
    assert stats["hubs"] == {"s8": 7}
    from defacer.verify.evaluate import reid_verdict

    text = reid_verdict(stats)
    assert "not significantly above chance" in text and "hub: s8" in text


def test_a_missing_extra_is_reported_with_the_install_command(monkeypatch) -> None:
    import sys

    from defacer.errors import MissingExtraError

    monkeypatch.setitem(sys.modules, "mediapipe", None)  # makes `import mediapipe` raise ImportError
    with pytest.raises(MissingExtraError, match=r"pip install 'defacer\[verify\]'"):
        faces._import_mediapipe()


def test_face_mesh_prints_no_protobuf_error() -> None:
    # mediapipe 0.10.21's bindings call a protobuf API removed in protobuf 5 (the error is printed
    # once per process, at the first graph): defacer restores it.  A fresh process sees the first call.
    import subprocess
    import sys

    code = ("from skimage import data; from defacer.verify import faces; "
            "r = faces.facemesh(data.astronaut()); print(r.detected, r.extra['landmarks'])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert done.stdout.split() == ["True", "468"]
    assert "GetPrototype" not in done.stderr


def test_mediapipe_and_tensorflow_lite_print_nothing(detectors) -> None:
    """Issue 13: every run printed 7 TensorFlow Lite / MediaPipe log lines on stderr."""
    import subprocess
    import sys

    code = ("import numpy as np; from defacer.verify import faces; "
            "image = np.zeros((256, 256, 3), np.uint8); image[60:200, 80:180] = 200; "
            "faces.available(); faces.detect_all(image, faces.FAST_DETECTORS); print('ran')")
    done = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "ran" in done.stdout, done.stderr
    for noise in ("TensorFlow Lite", "absl::InitializeLog", "W0000", "inference_feedback_manager"):
        assert noise not in done.stderr, done.stderr
