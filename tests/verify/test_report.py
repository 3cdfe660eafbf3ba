"""defacer.verify.report: embedded pictures, JSON summaries, the evaluation page (no script, names escaped)."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest

pytest.importorskip("PIL")
from PIL import Image

from defacer.verify import report
from defacer.verify import verdict as verdicts


def _decode(uri: str) -> np.ndarray:
    assert uri.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))))


def test_data_uri_embeds_the_picture_losslessly():
    grey = (np.arange(48 * 32) % 256).astype(np.uint8).reshape(48, 32)
    rgb = np.stack([grey, 255 - grey, grey // 2], axis=-1)
    assert np.array_equal(_decode(report.data_uri(grey)), grey)
    assert np.array_equal(_decode(report.data_uri(rgb)), rgb)


def test_numbers_and_text_are_formatted_for_html():
    assert report._fmt(None) == "&ndash;"
    assert report._fmt(0.123456) == "0.123"
    assert report._fmt(12345.6) == "12346"
    assert report._fmt("<b>") == "&lt;b&gt;"


def test_write_summary_is_json_with_numpy_values_and_atomic(tmp_path):
    target = tmp_path / report.SUMMARY_NAME
    summary = {"verdict": "pass", "voxels": np.int64(3), "distance": np.float32(0.5), "box": np.arange(2)}
    assert report.write_summary(target, summary) == target
    assert json.loads(target.read_text()) == {"verdict": "pass", "voxels": 3, "distance": 0.5, "box": [0, 1]}
    assert [p.name for p in tmp_path.iterdir()] == [report.SUMMARY_NAME]
    report.write_summary(target, {"verdict": "fail"})  # rewritten in place
    assert json.loads(target.read_text()) == {"verdict": "fail"}


def _scan(name: str, verdict: str) -> dict:
    return {"name": name, "features_found": ["eyes", "nose"], "dice": {"eyes": 0.8, "nose": None},
            "face_found_before": ["blazeface"], "face_found_after": [], "identity_distance": 0.71,
            "verdict": verdict, "seconds": 1.84, "peak_rss_mb": 612.0}


def test_evaluation_page_lists_every_scan_and_escapes_names():
    result = {
        "scans": [_scan("<script>alert(1)</script>", verdicts.PASS), _scan("sub-02", verdicts.FAIL),
                  {"name": "broken & bad", "error": "could not read <file>"}],
        "overall": {"reid_verdict": "not above chance", "scans": 3},
        "rule": "pass when no face is found after",
    }
    thumbs = {"sub-02": (np.zeros((8, 8), np.uint8), np.full((8, 8), 255, np.uint8))}
    page = report.evaluation_html(result, thumbs)
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "broken &amp; bad" in page and "could not read &lt;file&gt;" in page
    assert page.count("<tr>") == 1 + 3  # header and one row per scan
    assert page.count('src="data:image/png;base64,') == 2  # the thumbnails given, embedded
    assert "eyes 0.80" in page and 'class="hit"' in page and 'class="ok"' in page
    assert "not above chance" in page
    assert "http://" not in page and "https://" not in page  # nothing fetched from elsewhere
