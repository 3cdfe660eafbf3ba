"""The brain-protection check is independent of the gate that masked the writes, and it can fail.

It takes what changed from the stored values (input vs output) and measures each changed
voxel's exact distance to the outside of the opened head, so a wrong edit or a broken gate
shows up as ``changed_inside_protected > 0``.
"""

from __future__ import annotations

import numpy as np
import pytest

import defacer.pipeline
from defacer.cli.main import main
from defacer.distort import Edit
from defacer.errors import ProtectionError
from defacer.head import analyse_head, depth_below_surface
from defacer.labels import Label
from defacer.phantom import make_phantom, save_phantom
from defacer.pipeline import deface, protected_in_box
from defacer.protection_check import changed_mask, check_protection, outside_tree, within_depth
from defacer.volume import canonical_reorientation


class Labels:
    name = "test labels"
    weights_sha256 = None

    def __init__(self, labels_ras: np.ndarray) -> None:
        self.labels = labels_ras

    def predict(self, image_ras: np.ndarray, ras_affine: np.ndarray) -> np.ndarray:
        return self.labels


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(2.0)


def _brain_labelled(phantom) -> np.ndarray:
    """A detector gone wrong: the brain labelled as ears (noise would fill it) on top of the true labels."""
    labels = phantom.labels.copy()
    labels[phantom.brain] = Label.EARS
    return labels


def test_a_correct_run_passes_the_check(phantom):
    result = deface(phantom.volume, Labels(phantom.labels))
    protection = result.provenance["protection"]
    assert protection["changed_inside_protected"] == 0
    assert protection["changed_outside_edits"] == 0


def test_a_detector_labelling_the_brain_still_passes_and_the_brain_is_untouched(phantom):
    result = deface(phantom.volume, Labels(_brain_labelled(phantom)))
    assert result.provenance["protection"]["changed_inside_protected"] == 0
    assert not (result.volume.raw != phantom.volume.raw)[phantom.brain].any()


def test_a_deliberately_wrong_edit_is_counted_exactly(phantom):
    """Changing a block in the middle of the brain (tens of mm deep) after defacing: every voxel is caught."""
    result = deface(phantom.volume, Labels(phantom.labels))
    spacing = (2.0, 2.0, 2.0)
    image = phantom.volume.values(np.float32)
    head = analyse_head(image, spacing)
    depth = depth_below_surface(head, spacing)
    wrong = result.volume.raw.copy()
    centre = tuple(n // 2 for n in wrong.shape)
    block = tuple(slice(c - 3, c + 3) for c in centre)
    wrong[block] += 1
    changed = changed_mask(phantom.volume.raw, wrong)
    check = check_protection(changed, head, depth, spacing, 10.0)
    assert check.changed_voxels == int(np.count_nonzero(result.edit_mask)) + 216
    assert check.changed_inside_protected == 216
    # The same edit within the surface band is not counted: the check is about depth, not about any change.
    assert check_protection(changed_mask(phantom.volume.raw, result.volume.raw), head, depth, spacing,
                            10.0).changed_inside_protected == 0


def test_a_broken_gate_is_caught_by_the_check(phantom, monkeypatch):
    """A gate reading the depth map at half its value writes down to ~2x the protection depth; the check sees it."""
    real = defacer.pipeline.depth_below_surface

    def halved(head, spacing):
        return real(head, spacing) * 0.5

    monkeypatch.setattr(defacer.pipeline, "depth_below_surface", halved)
    with pytest.raises(ProtectionError, match=r"[1-9]\d* voxels deeper than 10 mm"):
        deface(phantom.volume, Labels(_brain_labelled(phantom)))


def test_a_result_failing_the_check_is_never_written(phantom, tmp_path, monkeypatch, capsys):
    """The check is a second line of defence: with the gate broken (every edit let through), the command
    refuses in words, exits 1 and writes no output and no sidecar; before, it wrote the output and only
    printed the count of protected voxels changed."""
    monkeypatch.setattr(defacer.pipeline, "protected_in_box",
                        lambda edit, *args, **kwargs: np.zeros(edit.mask.shape, dtype=bool))
    scan, labels = tmp_path / "head.nii.gz", tmp_path / "labels.nii.gz"
    brain_labelled = make_phantom(2.0)
    brain_labelled.labels[brain_labelled.brain] = Label.EARS
    save_phantom(brain_labelled, scan, labels)
    out = tmp_path / "out"
    out.mkdir()
    code = main(["deface", str(scan), str(out / "defaced.nii.gz"), "--labels", str(labels)])
    err = capsys.readouterr().err
    assert code == 1 and "protected region" in err and "nothing was written" in err and "Traceback" not in err
    assert list(out.iterdir()) == []


def test_a_gate_without_slack_is_caught_too(phantom, monkeypatch):
    """Reading the coarse map at the nearest sample without the half-diagonal slack lets writes a little too deep."""
    head_model = type(analyse_head(phantom.volume.values(np.float32), (2.0, 2.0, 2.0)))
    real_upsample = head_model.upsample
    slack = 0.5 * float(np.linalg.norm([4.0, 4.0, 4.0]))

    def no_slack(self, coarse, box):
        values = real_upsample(self, coarse, box)
        return values - slack if coarse.dtype == np.float32 else values  # depth map only: cancels the slack

    monkeypatch.setattr(head_model, "upsample", no_slack)
    with pytest.raises(ProtectionError, match=r"[1-9]\d* voxels deeper than 10 mm"):
        deface(phantom.volume, Labels(_brain_labelled(phantom)))
    # The correct gate, on the same labels: 0 (test_a_detector_labelling_the_brain_still_passes...).


def test_other_axis_orders_pass(phantom):
    lps = make_phantom(3.0, axcodes="PIR")
    reorientation = canonical_reorientation(lps.volume.affine, lps.volume.shape)
    labels = reorientation.to_ras(lps.labels).copy()
    labels[reorientation.to_ras(lps.brain)] = Label.EARS
    result = deface(lps.volume, Labels(labels))
    assert result.provenance["protection"]["changed_inside_protected"] == 0
    assert result.provenance["protection"]["changed_outside_edits"] == 0


@pytest.mark.parametrize("feature", ["ears", "eyes", "nose"])
def test_the_ear_gate_decides_the_slack_band_at_exact_depth_and_the_others_stay_conservative(phantom, feature):
    """A box from the surface to deep inside: ears may write every voxel within 10 mm exactly, never deeper;
    eyes and nose keep the coarse gate with its slack (they write nothing that deep)."""
    spacing = (2.0, 2.0, 2.0)
    image = phantom.volume.values(np.float32)
    head = analyse_head(image, spacing)
    depth = depth_below_surface(head, spacing)
    outside = outside_tree(depth, tuple(float(s) * st for s, st in zip(spacing, head.strides, strict=True)))
    shape = image.shape
    box = tuple(slice(0, n) for n in shape)
    mask = np.ones(shape, dtype=bool)
    edit = Edit(feature, box, mask, np.zeros(shape, dtype=np.float32))
    protected = protected_in_box(edit, head, depth, outside, spacing, 10.0)
    exact_within = within_depth(np.argwhere(mask), outside, spacing, 10.0).reshape(shape)
    assert not (~protected & ~exact_within).any(), "nothing deeper than 10 mm is ever writable"
    assert protected.any()
    slack = 0.5 * float(np.linalg.norm(np.asarray(spacing) * np.asarray(head.strides)))
    coarse = head.upsample(depth, box)
    band_within = exact_within & (coarse > 10.0 - slack)
    assert band_within.sum() > 100, "the phantom has voxels in the slack band within 10 mm"
    if feature == "ears":
        assert not (protected & exact_within).any(), "every voxel within 10 mm is writable for the ears"
    else:
        assert protected[band_within].all(), "eyes and nose keep the slack"


@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("dtype", [np.int16, np.float32])
def test_changed_indices_lists_what_argwhere_lists_in_its_order(order: str, dtype: type) -> None:
    """The changed voxels listed from their bounding box are np.argwhere's list of the whole grid, row for row."""
    from defacer.protection_check import changed_indices

    rng = np.random.default_rng(3)
    before = np.asarray(rng.integers(0, 50, (23, 31, 17)), dtype=dtype, order=order)
    after = before.copy(order=order)
    after[4:9, 20:27, 3:5] += 1
    after[15, 2, 16] += 2
    if np.issubdtype(dtype, np.floating):
        before[0, 0, 0] = after[0, 0, 0] = np.nan  # NaN against NaN is no change
    expected = np.argwhere(changed_mask(before, after))
    found = changed_indices(before, after)
    assert found.dtype == expected.dtype and found.shape == expected.shape == (5 * 7 * 2 + 1, 3)
    assert np.array_equal(found, expected)
    none = changed_indices(before, before.copy())
    assert none.shape == (0, 3) and none.dtype == np.intp


def test_the_samples_near_the_voxels_answer_as_the_tree_of_every_outside_sample() -> None:
    """OutsideSamples.within (the samples within reach of the voxels asked about, searched without a k-d tree)
    gives within_depth's answer with the tree of every outside sample: on anisotropic grids, strides, depths,
    and voxels past the last coarse sample."""
    from scipy import ndimage as ndi

    from defacer.protection_check import OutsideSamples

    rng = np.random.default_rng(0)
    answers = 0
    for _ in range(60):
        coarse_shape = tuple(int(n) for n in rng.integers(4, 18, 3))
        strides = tuple(int(n) for n in rng.integers(1, 5, 3))
        spacing = tuple(float(s) for s in rng.choice([0.5, 0.9, 1.0, 1.2, 2.0, 5.5], 3))
        blob = ndi.gaussian_filter(rng.random(coarse_shape), 1.5)
        depth = np.where(blob > np.quantile(blob, rng.uniform(0.2, 0.9)), 5.0, 0.0).astype(np.float32)
        step = tuple(s * st for s, st in zip(spacing, strides, strict=True))
        full_shape = np.asarray(coarse_shape) * np.asarray(strides) + rng.integers(0, 4, 3)
        indices = np.stack([rng.integers(0, n, 300) for n in full_shape], axis=1)
        for depth_mm in (3.0, 10.0, 14.5):
            every = within_depth(indices, outside_tree(depth, step), spacing, depth_mm)
            near = within_depth(indices, OutsideSamples(depth <= 0, step, strides), spacing, depth_mm)
            assert np.array_equal(near, every)
            answers += int(every.sum())
    assert answers > 1000  # both answers occur


def _tree_and_search(indices, depth, spacing, strides, depth_mm):
    """within_depth's answers from the k-d tree of every outside sample and from OutsideSamples.within."""
    from defacer.protection_check import OutsideSamples

    step = tuple(float(s) * st for s, st in zip(spacing, strides, strict=True))
    tree = within_depth(indices, outside_tree(depth, step), spacing, depth_mm)
    search = within_depth(indices, OutsideSamples(np.asarray(depth <= 0), step, strides), spacing, depth_mm)
    return tree, search


def test_the_search_decides_distances_at_the_reach_itself_as_the_tree_does() -> None:
    """Depths set so that the reach (depth + 1e-6) falls on, or within a rounding of, distances the voxels have
    (the tree keeps a sample strictly closer than the reach, its distances squared in its own order): the search
    without a tree agrees voxel for voxel, on grids of 1 mm, 0.9375 mm, odd header sizes and thick slices."""
    rng = np.random.default_rng(7)
    checked = 0
    for spacing, strides in (((1.0, 1.0, 1.0), (4, 4, 4)), ((0.9375, 0.9375, 1.2), (4, 4, 3)),
                             ((0.8984375, 1.0000001, 3.3), (4, 4, 1)), ((2.0, 2.0, 2.0), (2, 2, 2))):
        coarse_shape = (9, 10, 8)
        depth = np.full(coarse_shape, 5.0, dtype=np.float32)
        depth[0], depth[:, -1], depth[3:5, 4:6, 0] = 0.0, 0.0, 0.0  # outside: two faces of the grid and a notch
        full = np.asarray(coarse_shape) * np.asarray(strides)
        indices = np.stack([rng.integers(0, n, 400) for n in full], axis=1)
        step = np.asarray(spacing) * np.asarray(strides)
        samples = np.argwhere(depth <= 0).astype(np.float64) * step
        points = indices.astype(np.float64) * np.asarray(spacing)
        nearest = np.sqrt(((points[:, None, :] - samples[None]) ** 2).sum(-1)).min(axis=1)
        for distance in rng.choice(nearest[nearest > 1.0], 12, replace=False):
            for depth_mm in (float(distance) - 1e-6, float(np.nextafter(distance - 1e-6, 0)),
                             float(np.nextafter(distance - 1e-6, 100))):
                tree, search = _tree_and_search(indices, depth, spacing, strides, depth_mm)
                assert np.array_equal(search, tree), (spacing, depth_mm)
                checked += int(tree.sum())
    assert checked > 10_000


def test_the_search_answers_as_the_tree_on_the_phantoms_head_and_at_the_edges(phantom) -> None:
    """On the phantom's own depth map (every voxel of the grid, three depths), and where the tree has nothing
    to answer from: no voxel asked about, no sample outside, every sample outside."""
    from defacer.protection_check import OutsideSamples

    spacing = (2.0, 2.0, 2.0)
    head = analyse_head(phantom.volume.values(np.float32), spacing)
    depth = depth_below_surface(head, spacing)
    indices = np.argwhere(np.ones(phantom.volume.shape, dtype=bool))
    for depth_mm in (4.0, 10.0, 17.5):
        tree, search = _tree_and_search(indices, depth, spacing, head.strides, depth_mm)
        assert np.array_equal(search, tree)
        assert 0 < tree.sum() < len(tree)
    inside = np.full((5, 6, 7), 3.0, dtype=np.float32)
    for depth_map, expected in ((inside, False), (np.zeros_like(inside), True)):
        tree, search = _tree_and_search(np.argwhere(np.ones((10, 12, 14), dtype=bool)), depth_map, (1.0, 1.0, 1.0),
                                        (2, 2, 2), 10.0)
        assert np.array_equal(search, tree) and bool(search.all()) is expected and bool(search.any()) is expected
    samples = OutsideSamples(np.zeros((4, 4, 4), dtype=bool), (2.0, 2.0, 2.0), (2, 2, 2))
    assert samples.within(np.zeros((0, 3), dtype=np.intp), (1.0, 1.0, 1.0), 10.0).shape == (0,)
    with pytest.raises(ValueError, match="not the voxel size"):
        samples.within(np.zeros((1, 3), dtype=np.intp), (1.5, 1.0, 1.0), 10.0)
