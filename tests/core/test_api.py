"""The library API (``defacer.deface``, ``defacer.deface_image``, ``Volume.from_nibabel``/``to_nibabel``).

Every image here is a synthetic phantom; most tests pass the phantom's own labels (fast), one
runs the shipped detector.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import defacer
from defacer.errors import FeaturesNotFoundError, InputImageError, LabelMapError, OutputError
from defacer.phantom import make_phantom


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(2.0, noise=0.01)


def _saved(phantom, path: Path, klass=nib.Nifti1Image, slope: float | None = None, inter: float = 0.0,
           extra_axis: bool = False):
    """The phantom written to ``path`` with ``klass`` and read back by nibabel (an array-proxy image)."""
    raw = phantom.volume.raw
    if extra_axis:
        raw = raw[..., None]
    if slope is not None:  # stored values raw, physical raw * slope + inter (nibabel.save would rescale)
        defacer.save_volume(defacer.Volume(raw, phantom.volume.affine, slope=slope, inter=inter), path)
        return nib.load(str(path))
    if klass is nib.MGHImage:
        image = nib.MGHImage(raw, phantom.volume.affine)
    else:
        image = klass(raw, phantom.volume.affine)
        image.set_data_dtype(np.int16)
    nib.save(image, str(path))
    return nib.load(str(path))


def _stored(image) -> np.ndarray:
    return np.asarray(image.dataobj.get_unscaled())


@pytest.mark.parametrize("klass, name", [(nib.Nifti1Image, "a.nii.gz"), (nib.Nifti2Image, "a.nii"),
                                         (nib.MGHImage, "a.mgz")])
def test_deface_returns_the_same_kind_of_image_with_only_the_features_changed(tmp_path, phantom, klass, name):
    image = _saved(phantom, tmp_path / name, klass)
    stored_before = _stored(image).copy()
    header_before = image.header.copy()
    result = defacer.deface_image(image, labels=phantom.labels)
    out = result.image
    assert type(out) is type(image)
    assert out.shape == image.shape
    assert np.array_equal(out.affine, image.affine)
    assert out.get_data_dtype() == image.get_data_dtype()
    assert out.header == image.header
    stored_after = _stored(out)
    changed = stored_after != stored_before
    assert changed.any()
    assert np.array_equal(changed, result.edit_mask > 0)
    assert set(result.voxels_changed) == {"eyes", "nose", "ears"}
    assert all(result.voxels_changed[n] > 0 for n in ("eyes", "nose", "ears"))
    assert sum(result.voxels_changed.values()) == int(changed.sum())
    assert not (changed & phantom.brain).any()
    assert np.array_equal(result.labels, phantom.labels)
    assert result.features["eyes"]["status"] == "distorted"
    assert result.provenance["input"] == {"object": f"nibabel {klass.__name__}"}
    # The input is untouched: its stored values and header.
    assert np.array_equal(_stored(image), stored_before)
    assert image.header == header_before


def test_deface_returns_just_the_image(tmp_path, phantom):
    image = _saved(phantom, tmp_path / "a.nii.gz")
    out = defacer.deface(image, labels=phantom.labels)
    assert isinstance(out, nib.Nifti1Image)
    assert np.array_equal(_stored(out), _stored(defacer.deface_image(image, labels=phantom.labels).image))


def test_scaled_nifti_keeps_stored_values_and_scaling(tmp_path, phantom):
    image = _saved(phantom, tmp_path / "scaled.nii.gz", slope=2.0, inter=-100.0)
    assert image.dataobj.slope == 2.0 and image.dataobj.inter == -100.0
    result = defacer.deface_image(image, labels=phantom.labels)
    out = result.image
    assert (out.dataobj.slope, out.dataobj.inter) == (2.0, -100.0)
    keep = result.edit_mask == 0
    assert np.array_equal(_stored(out)[keep], _stored(image)[keep])
    # nibabel.save rescales a scaled image (same dtype, values within one new step) ...
    nib.save(out, str(tmp_path / "out.nii.gz"))
    again = nib.load(str(tmp_path / "out.nii.gz"))
    assert again.get_data_dtype() == np.int16
    assert np.allclose(again.get_fdata()[keep], image.get_fdata()[keep], atol=abs(again.dataobj.slope))
    # ... defacer.save_volume keeps the stored values and the scaling exactly.
    defacer.save_volume(result.volume, tmp_path / "exact.nii.gz")
    exact = nib.load(str(tmp_path / "exact.nii.gz"))
    assert (exact.dataobj.slope, exact.dataobj.inter) == (2.0, -100.0)
    assert np.array_equal(_stored(exact), _stored(out))


def test_saved_output_is_bit_identical_outside_the_edits(tmp_path, phantom):
    image = _saved(phantom, tmp_path / "a.nii.gz")
    result = defacer.deface_image(image, labels=phantom.labels)
    nib.save(result.image, str(tmp_path / "out.nii.gz"))
    again = nib.load(str(tmp_path / "out.nii.gz"))
    keep = result.edit_mask == 0
    assert again.get_data_dtype() == image.get_data_dtype()
    assert np.array_equal(_stored(again)[keep], _stored(image)[keep])


def test_trailing_axis_of_one_is_kept(tmp_path, phantom):
    image = _saved(phantom, tmp_path / "a4.nii.gz", extra_axis=True)
    assert image.ndim == 4
    out = defacer.deface(image, labels=phantom.labels)
    assert out.shape == image.shape


def test_image_made_in_memory(phantom):
    values = phantom.volume.values(np.float32)
    image = nib.Nifti1Image(values, phantom.volume.affine)
    result = defacer.deface_image(image, labels=phantom.labels)
    assert result.image.get_data_dtype() == np.float32
    keep = result.edit_mask == 0
    assert np.array_equal(np.asarray(result.image.dataobj)[keep], values[keep])
    assert np.array_equal(image.get_fdata(dtype=np.float32), values)  # input untouched


def test_volume_in_volume_out(phantom):
    result = defacer.deface_image(phantom.volume, labels=phantom.labels)
    assert isinstance(result.image, defacer.Volume)
    assert result.image.raw.dtype == phantom.volume.raw.dtype
    assert result.image.header is not None
    assert result.provenance["input"] == {"object": "defacer.Volume"}


def test_labels_as_image_volume_and_file(tmp_path, phantom):
    image = _saved(phantom, tmp_path / "a.nii.gz")
    label_image = nib.Nifti1Image(phantom.labels, phantom.volume.affine)
    nib.save(label_image, str(tmp_path / "labels.nii.gz"))
    by_array = defacer.deface_image(image, labels=phantom.labels)
    by_image = defacer.deface_image(image, labels=label_image)
    by_file = defacer.deface_image(image, labels=tmp_path / "labels.nii.gz")
    by_volume = defacer.deface_image(image, labels=defacer.Volume(phantom.labels, phantom.volume.affine))
    for other in (by_image, by_file, by_volume):
        assert np.array_equal(_stored(other.image), _stored(by_array.image))
    assert by_array.provenance["detector"]["labels_sha256"] == by_image.provenance["detector"]["labels_sha256"]


def test_wrong_labels_are_refused_clearly(tmp_path, phantom):
    image = _saved(phantom, tmp_path / "a.nii.gz")
    with pytest.raises(LabelMapError, match="shape"):
        defacer.deface(image, labels=phantom.labels[:-1])
    bad = phantom.labels.astype(np.int16)
    bad[0, 0, 0] = 7
    with pytest.raises(LabelMapError, match="expected 0"):
        defacer.deface(image, labels=bad)
    shifted = phantom.volume.affine.copy()
    shifted[0, 3] += 5
    with pytest.raises(LabelMapError, match="different voxel grid"):
        defacer.deface(image, labels=nib.Nifti1Image(phantom.labels, shifted))
    with pytest.raises(TypeError, match="labels="):
        defacer.deface(image, labels=[1, 2, 3])
    with pytest.raises(TypeError, match="not both"):
        defacer.deface(image, labels=phantom.labels, detector=defacer.load_detector())


def test_bad_arguments_are_refused_clearly(tmp_path, phantom):
    image = _saved(phantom, tmp_path / "a.nii.gz")
    with pytest.raises(TypeError, match="not a path"):
        defacer.deface(str(tmp_path / "a.nii.gz"))
    with pytest.raises(TypeError, match="Nifti1Image"):
        defacer.deface(np.zeros((10, 10, 10)))
    with pytest.raises(TypeError, match="Unknown option"):
        defacer.deface(image, labels=phantom.labels, eyes_band=3)
    with pytest.raises(InputImageError, match="2D"):
        defacer.deface(nib.Nifti1Image(np.zeros((50, 50), np.int16), np.eye(4)), labels=np.zeros((50, 50)))
    with pytest.raises(InputImageError, match="limit"):
        defacer.deface(image, labels=phantom.labels, max_voxels=1000)


def test_options_as_keywords(tmp_path, phantom):
    image = _saved(phantom, tmp_path / "a.nii.gz")
    result = defacer.deface_image(image, labels=phantom.labels, features="eyes,nose", seed=3)
    assert result.voxels_changed["ears"] == 0
    assert result.features["ears"]["status"] == "not requested"
    assert result.provenance["options"]["seed"] == 3
    options = defacer.DefaceOptions(features=("nose",))
    assert defacer.deface_image(image, labels=phantom.labels, options=options).voxels_changed["eyes"] == 0


def test_missing_feature_raises_unless_allowed(tmp_path, phantom):
    image = _saved(phantom, tmp_path / "a.nii.gz")
    no_ears = np.where(phantom.labels == defacer.Label.EARS, 0, phantom.labels).astype(np.uint8)
    with pytest.raises(FeaturesNotFoundError, match="allow_missing=True") as caught:
        defacer.deface(image, labels=no_ears)
    assert caught.value.missing == ["ears"]
    result = defacer.deface_image(image, labels=no_ears, allow_missing=True)
    assert result.features["ears"]["status"] == "not found"


def test_shipped_detector_is_the_default(tmp_path):
    phantom = make_phantom(2.0)
    image = _saved(phantom, tmp_path / "a.nii.gz")
    result = defacer.deface_image(image)
    assert result.provenance["detector"]["weights_sha256"]
    assert all(result.features[n]["status"] == "distorted" for n in ("eyes", "nose", "ears"))
    assert not (result.edit_mask.astype(bool) & phantom.brain).any()


def test_volume_nibabel_round_trip(tmp_path, phantom):
    image = _saved(phantom, tmp_path / "s.nii.gz", slope=0.5, inter=3.0)
    volume = defacer.Volume.from_nibabel(image)
    assert (volume.slope, volume.inter) == (0.5, 3.0)
    assert np.array_equal(volume.raw, _stored(image))
    back = volume.to_nibabel()
    assert type(back) is nib.Nifti1Image and back.header == image.header
    assert np.array_equal(_stored(back), _stored(image))
    # Written by defacer: the physical values are those of the image.
    defacer.save_volume(volume, tmp_path / "v.nii.gz")
    assert np.array_equal(nib.load(str(tmp_path / "v.nii.gz")).get_fdata(), image.get_fdata())
    with pytest.raises(TypeError, match="no nibabel image class"):
        defacer.Volume(volume.raw, volume.affine, format="nrrd").to_nibabel()


def test_save_volume_without_a_header(tmp_path, phantom):
    raw = phantom.volume.raw
    written = defacer.save_volume(defacer.Volume(raw, phantom.volume.affine), tmp_path / "fresh.nii.gz")
    assert written == [tmp_path / "fresh.nii.gz"]
    again = nib.load(str(tmp_path / "fresh.nii.gz"))
    assert np.array_equal(np.asarray(again.dataobj), raw) and np.allclose(again.affine, phantom.volume.affine)
    defacer.save_volume(defacer.Volume(raw, phantom.volume.affine, format="mgh"), tmp_path / "fresh.mgz")
    assert np.array_equal(np.asarray(nib.load(str(tmp_path / "fresh.mgz")).dataobj), raw)
    for fmt, name in (("nrrd", "x.nrrd"), ("dicom", "dicom_out")):
        with pytest.raises(OutputError, match="no header"):
            defacer.save_volume(defacer.Volume(raw, phantom.volume.affine, format=fmt), tmp_path / name)
        assert not (tmp_path / name).exists()


@pytest.mark.parametrize("allow_missing", ["false", "False", "no", 0, 1, None, [True]])
def test_allow_missing_that_is_not_a_bool_returns_no_partly_defaced_image(tmp_path, phantom, allow_missing):
    """``allow_missing="false"`` (a non-empty string: true) returned an image whose ears were not distorted."""
    image = _saved(phantom, tmp_path / "a.nii.gz")
    no_ears = np.where(phantom.labels == defacer.Label.EARS, 0, phantom.labels).astype(np.uint8)
    with pytest.raises(TypeError, match="allow_missing must be True or False"):
        defacer.deface_image(image, labels=no_ears, allow_missing=allow_missing)
    assert defacer.deface_image(image, labels=no_ears, allow_missing=np.bool_(True)).voxels_changed["ears"] == 0


def test_other_arguments_of_the_wrong_kind_are_refused_in_words(tmp_path, phantom):
    image = _saved(phantom, tmp_path / "a.nii.gz")
    for max_voxels in ("1000000", 0, -1, 1.5, True):
        with pytest.raises(TypeError, match="max_voxels must be a whole number >= 1, or None"):
            defacer.deface(image, labels=phantom.labels, max_voxels=max_voxels)
    with pytest.raises(TypeError, match="options must be a defacer.DefaceOptions"):
        defacer.deface(image, labels=phantom.labels, options={"seed": 1})
    with pytest.raises(TypeError, match=r"load_detector\(path\)"):
        defacer.deface(image, detector=str(tmp_path / "weights.onnx"))
    assert defacer.deface_image(image, labels=phantom.labels, max_voxels=np.int64(10**8)).voxels_changed["eyes"] > 0


@pytest.mark.parametrize("empty", ["", " "])  # Path("") is Path("."): not told apart
def test_an_empty_label_path_is_refused_not_read_as_the_current_folder(tmp_path, phantom, monkeypatch, empty):
    """labels="" was Path("."): every file of the working folder was read as DICOM before a misleading refusal."""
    image = _saved(phantom, tmp_path / "a.nii.gz")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(LabelMapError, match="labels= is an empty path"):
        defacer.deface(image, labels=empty)


@pytest.mark.parametrize("max_voxels", ["5", 1.5, True])
def test_load_volume_refuses_a_voxel_limit_that_is_no_whole_number(tmp_path, phantom, max_voxels):
    """load_volume(path, max_voxels="5") died "'<' not supported between 'str' and 'int'"; 1.5 was used as given."""
    _saved(phantom, tmp_path / "a.nii.gz")
    with pytest.raises(TypeError, match="max_voxels must be a whole number >= 1, or None"):
        defacer.load_volume(tmp_path / "a.nii.gz", max_voxels=max_voxels)


def test_features_as_a_dict_is_refused_not_read_as_its_keys(tmp_path, phantom):
    """features={"eyes": False, "nose": True} distorted the eyes too (the dict's keys)."""
    image = _saved(phantom, tmp_path / "a.nii.gz")
    with pytest.raises(TypeError, match="features must be feature names"):
        defacer.deface(image, labels=phantom.labels, features={"eyes": False, "nose": True})
