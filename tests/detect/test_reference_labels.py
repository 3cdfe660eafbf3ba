"""The committed reference labels: one per real head, on the scan's own grid, with provenance."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage as ndi

from defacer.head import estimate_threshold
from defacer.io import load_volume

LABELS = Path(__file__).resolve().parents[2] / "reference_labels"
RECORDS = json.loads((LABELS / "provenance.json").read_text()) if (LABELS / "provenance.json").is_file() else {}
#: Names of the sided landmarks: the subject's sides, as in RAS+ (left = -x); label value of each.
SIDED = {"eye_left": 1, "eye_right": 1, "ear_left": 3, "ear_right": 3}
LANDMARKS = set(SIDED) | {"nasion", "nose_tip"}


def test_every_real_head_has_a_label_map_and_a_provenance_line() -> None:
    readme = (LABELS / "README.md").read_text()
    assert len(RECORDS) >= 10
    for name in RECORDS:
        assert (LABELS / f"{name}.labels.nii.gz").is_file()
        assert name in readme


def test_label_maps_use_only_the_label_convention() -> None:
    for name in RECORDS:
        values = set(np.unique(np.asarray(nib.load(str(LABELS / f"{name}.labels.nii.gz")).dataobj)))
        assert values <= {0, 1, 2, 3}
        assert 1 in values, f"{name}: every head here shows its eyes"


@pytest.mark.realdata
def test_label_maps_sit_on_the_grid_load_volume_gives(shared_data) -> None:
    for name, record in RECORDS.items():
        volume = load_volume(shared_data / record["source"])
        image = nib.load(str(LABELS / f"{name}.labels.nii.gz"))
        assert image.shape == volume.shape, name
        assert np.allclose(image.affine, volume.affine, atol=1e-3), name


def _scan_name(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii", ".nhdr", ".nrrd", ".mgz"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


@pytest.mark.realdata
def test_every_scan_in_the_shared_heads_has_a_label_map(shared_data) -> None:
    heads = shared_data / "heads"
    scans = {_scan_name(p) for p in heads.iterdir()
             if p.is_dir() or p.name.endswith((".nii.gz", ".nii", ".nhdr", ".nrrd", ".mgz"))}
    missing = sorted(scans - set(RECORDS))
    assert not missing, f"no reference label map for {missing}"


def test_every_ear_in_view_is_labelled_and_cut_ones_are_recorded() -> None:
    # every head here shows both auricles at least in part (issue 15: hand-placed landmarks found
    # them on all of them); a cut or flattened one is labelled where it is seen and noted
    for name, record in RECORDS.items():
        assert record["present"]["ears"] == 2, name
        assert record["present"]["eyes"] == 2, name
        assert record["present"]["nose"] == 1, name
        assert set(record.get("partial", [])) <= set(SIDED) | {"nose"}, name
        image = nib.load(str(LABELS / f"{name}.labels.nii.gz"))
        ears = np.asarray(image.dataobj) == 3
        voxel_cm3 = abs(float(np.linalg.det(image.affine[:3, :3]))) / 1000.0
        assert ears.sum() * voxel_cm3 >= 2.0, f"{name}: ear labels too small to be auricles"


def test_every_record_names_sides_as_ras_does() -> None:
    for name, record in RECORDS.items():
        assert set(record["landmarks_mm"]) == LANDMARKS, name
        assert "subject's left (-x" in record["sides"], name
        for note in record.get("overrides", []):
            assert note.split(" ")[0].rstrip(":") in LANDMARKS, f"{name}: {note}"


def _head_centre_mm(values: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """World (RAS+ mm) centroid of the largest connected region above the air/tissue threshold."""
    tissue = values > estimate_threshold(values[::2, ::2, ::2])
    regions, _ = ndi.label(tissue)
    largest = regions == np.argmax(np.bincount(regions.ravel())[1:]) + 1
    return (affine @ np.r_[ndi.center_of_mass(largest), 1.0])[:3]


@pytest.mark.realdata
def test_left_eyes_and_ears_lie_at_minus_x_of_the_head_centre(shared_data) -> None:
    # RAS+: the subject's left is -x; the label maps hold no side, so the labelled voxels near each
    # recorded landmark must lie on that landmark's side too
    for name, record in RECORDS.items():
        labels_path = LABELS / f"{name}.labels.nii.gz"
        if not labels_path.is_file():
            continue
        volume = load_volume(shared_data / record["source"])
        centre_x = _head_centre_mm(np.asarray(volume.values(), np.float32), volume.affine)[0]
        labels = np.asarray(nib.load(str(labels_path)).dataobj)
        for key, value in SIDED.items():
            side = -1.0 if key.endswith("_left") else 1.0
            landmark = np.asarray(record["landmarks_mm"][key], float)
            assert side * (landmark[0] - centre_x) > 10.0, f"{name}: {key} at x {landmark[0]:.1f}, centre {centre_x:.1f}"
            voxels = np.argwhere(labels == value) @ volume.affine[:3, :3].T + volume.affine[:3, 3]
            near = voxels[np.linalg.norm(voxels - landmark, axis=1) < 30.0]
            assert len(near), f"{name}: no label {value} within 30 mm of {key}"
            assert side * (near[:, 0].mean() - centre_x) > 10.0, f"{name}: {key} labels on the wrong side"


def _side_centroids_mm(labels: np.ndarray, affine: np.ndarray, value: int) -> list[np.ndarray]:
    """World centroids of the two largest components of ``value``, ordered by x (the subject's left first)."""
    regions, n = ndi.label(labels == value)
    sizes = ndi.sum(labels == value, regions, range(1, n + 1))
    biggest = np.argsort(sizes)[::-1][:2] + 1
    centres = [(affine @ np.r_[ndi.center_of_mass(regions == i), 1.0])[:3] for i in biggest]
    return sorted(centres, key=lambda c: float(c[0]))


def test_each_ear_label_lies_as_far_from_its_eye_as_the_other_side() -> None:
    # Issue 15: a hand-placed flat-ear disc on plain scalp beside the auricle shows as an asymmetry:
    # otsu_T1w's left disc sat 28 mm behind its auricle, eye-to-ear 121.7 mm on the left against
    # 107.0 mm on the right (14.7 mm); on every head now the sides differ by at most 9.7 mm (uih,
    # both ears cut by the field; ge, tilted CT, 9.4 mm).
    for name in RECORDS:
        image = nib.load(str(LABELS / f"{name}.labels.nii.gz"))
        labels = np.asarray(image.dataobj)
        eyes = _side_centroids_mm(labels, image.affine, 1)
        ears = _side_centroids_mm(labels, image.affine, 3)
        left, right = (float(np.linalg.norm(eye - ear)) for eye, ear in zip(eyes, ears))
        assert abs(left - right) <= 12.0, f"{name}: eye-to-ear {left:.1f} mm left, {right:.1f} mm right"


def _ear_components_mm(labels: np.ndarray, affine: np.ndarray) -> list[np.ndarray]:
    """World (RAS+ mm) voxel positions of the two largest ear components, the subject's left (-x) first."""
    regions, n = ndi.label(labels == 3)
    sizes = ndi.sum(labels == 3, regions, range(1, n + 1))
    parts = [np.argwhere(regions == i + 1) @ affine[:3, :3].T + affine[:3, 3] for i in np.argsort(sizes)[::-1][:2]]
    return sorted(parts, key=lambda p: float(p[:, 0].mean()))


def test_a_hand_set_flat_ear_takes_no_scalp_behind_the_auricle() -> None:
    # Issue 14 (session 20): the pressed auricles of otsu_T1w and anon0006_T1w_ASL were labelled as discs
    # as wide front to back as an auricle is tall (55 / 55 / 52 mm): on the side relief renders each took
    # 10-14 mm of plain scalp behind the helix rim, which no ear edit may take.  Their footprints now follow
    # the auricle (helix, concha, lobule): taller than wide, at most 46 mm front to back.
    checked = 0
    for name, record in RECORDS.items():
        flat = [note.split(":")[0] for note in record.get("overrides", []) if "flat against the head" in note]
        if not flat:
            continue
        image = nib.load(str(LABELS / f"{name}.labels.nii.gz"))
        left, right = _ear_components_mm(np.asarray(image.dataobj), image.affine)
        for key in flat:
            part = left if key == "ear_left" else right
            front_back, height = (float(np.ptp(part[:, axis])) for axis in (1, 2))
            assert front_back <= 46.0, f"{name} {key}: {front_back:.1f} mm front to back"
            assert height > front_back, f"{name} {key}: {height:.1f} mm tall, {front_back:.1f} mm front to back"
            checked += 1
    assert checked == 3
