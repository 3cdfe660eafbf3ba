"""Hostile image content and options through the library API: refused in words, never a silent unchanged copy."""

from __future__ import annotations

import nibabel as nib
import pytest

import defacer
from defacer.phantom import make_phantom


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(4.0)


@pytest.mark.parametrize("features", ["", " , ", (), []])
def test_the_api_refuses_an_empty_feature_choice_instead_of_returning_the_image_unchanged(phantom, features):
    """features='' distorted nothing and returned the unchanged image as the defaced one, without a word."""
    image = nib.Nifti1Image(phantom.volume.raw, phantom.volume.affine)
    with pytest.raises(ValueError, match="No feature chosen"):
        defacer.deface(image, labels=phantom.labels, features=features)
    with pytest.raises(ValueError, match="at least one of"):
        defacer.DefaceOptions(features=())
