"""Training data: labelled heads as TorchIO subjects on the detector's box, plus augmentation.

Every sample (a real head with its reference label map, or a synthetic phantom) is first put on
the network's box exactly as at inference (:func:`defacer.detect.preprocess.to_box`), so the
augmentations act on small 64^3 tensors and training stays cheap on a CPU.

Augmentation (TorchIO; the paper's recipe plus what makes the detector robust on unseen scans):

* paper: Gaussian noise, rotation +-15 degrees per axis, shift up to 10 % of the field of view,
  scale 0.90-1.10 (``RandomAffine``); flips (``RandomFlip``; left/right needs no label swap because
  both eyes share one label and both ears another) and random axis transposes
  (:class:`RandomAxisTranspose`, a small custom transform: TorchIO has none).  Shear 0-0.20:
  TorchIO's ``RandomAffine`` has no shear term, so a smooth ``RandomElasticDeformation``
  (up to 12 mm) stands in for it, as a documented substitute;
* beyond the paper: contrast randomisation (``RandomGamma``, intensity inversion for T2/CT-like
  contrast, :class:`RandomContrastCurve` remapping intensities through a random monotone or
  non-monotone curve), ``RandomBiasField``, ``RandomBlur``, ``RandomAnisotropy`` (thick slices),
  :class:`RandomFieldCrop` (a cut field of view: image and labels beyond the cut are emptied, so a
  feature outside the field is absent, not guessed), and phantoms in T1, T2, PD, FLAIR and CT
  contrast in several orientations and voxel sizes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
import torchio as tio

from defacer.detect.preprocess import BOX_SHAPE, BOX_SPACING, labels_to_box, normalise, to_box
from defacer.volume import canonical_reorientation


@dataclass
class BoxSample:
    """One labelled head on the detector's box.

    Attributes
    ----------
    name : str
        Scan or phantom name.
    group : str
        Subject identifier: samples of one group are always held out together.
    image : ndarray, shape (64, 64, 64), float32
    labels : ndarray, shape (64, 64, 64), uint8
    affine : ndarray, shape (4, 4)
        Box voxel -> RAS+ mm.
    """

    name: str
    group: str
    image: npt.NDArray[np.float32]
    labels: npt.NDArray[np.uint8]
    affine: npt.NDArray[np.float64]


def sample_from_arrays(name: str, group: str, image: npt.NDArray, labels: npt.NDArray, affine: npt.NDArray,
                       shape: tuple[int, int, int] = BOX_SHAPE, spacing: float = BOX_SPACING) -> BoxSample:
    """Put an image and its label map (file axis order, voxel->RAS ``affine``) on the box."""
    reo = canonical_reorientation(np.asarray(affine, float), tuple(image.shape))  # type: ignore[arg-type]
    image_ras = reo.to_ras(np.asarray(image, np.float32))
    labels_ras = reo.to_ras(np.asarray(labels, np.uint8))
    box_image, box = to_box(image_ras, reo.ras_affine, shape, spacing)
    box_labels = labels_to_box(labels_ras, reo.ras_affine, box)
    return BoxSample(name, group, box_image, box_labels, box.affine)


def load_real_samples(data_dir: Path, labels_dir: Path, scans: dict[str, str]) -> list[BoxSample]:
    """Load each real scan and its reference label map onto the box.

    Parameters
    ----------
    data_dir : Path
        The shared data folder (``../shared/data``).
    labels_dir : Path
        Folder with ``<name>.labels.nii.gz`` on each scan's grid.
    scans : dict
        Scan name -> path relative to ``data_dir``.
    """
    import nibabel as nib

    from defacer.io import load_volume

    samples = []
    for name, rel in scans.items():
        label_path = labels_dir / f"{name}.labels.nii.gz"
        if not label_path.is_file():
            continue
        volume = load_volume(data_dir / rel)
        labels = np.asarray(nib.load(str(label_path)).dataobj, dtype=np.uint8)
        if labels.shape != volume.shape:
            message = f"Label map {label_path} has shape {labels.shape}, but the scan {rel} has {volume.shape}."
            raise ValueError(message)
        samples.append(sample_from_arrays(name, name, volume.values(), labels, volume.affine))
    return samples


#: Phantom variations used for training: (contrast, axcodes, voxel size).
PHANTOM_VARIANTS: tuple[tuple[str, str, float | tuple[float, float, float]], ...] = (
    ("T1", "RAS", 2.0), ("T2", "LPS", 2.0), ("PD", "ASL", 2.0), ("FLAIR", "LAS", (1.5, 1.5, 4.0)),
    ("CT", "LPS", (1.0, 1.0, 3.0)), ("T1", "PIR", (2.0, 2.0, 2.0)), ("T2", "RAS", (1.0, 1.0, 5.0)),
    ("CT", "RAS", 2.0),
)


def make_phantom_samples(count: int = len(PHANTOM_VARIANTS), seed: int = 0) -> list[BoxSample]:
    """Synthetic heads from :func:`defacer.phantom.make_phantom` on the box (group ``"phantom"``)."""
    from defacer.phantom import make_phantom

    rng = np.random.default_rng(seed)
    samples = []
    for i in range(count):
        contrast, axcodes, voxel = PHANTOM_VARIANTS[i % len(PHANTOM_VARIANTS)]
        shift = tuple(float(v) for v in rng.uniform(-10, 10, size=3))
        ph = make_phantom(voxel, axcodes=axcodes, contrast=contrast, noise=float(rng.uniform(0.01, 0.05)),
                          seed=int(rng.integers(1 << 30)), shift_mm=shift)  # type: ignore[arg-type]
        samples.append(sample_from_arrays(f"phantom{i}-{contrast}-{axcodes}", "phantom", ph.volume.values(),
                                          ph.labels, ph.volume.affine))
    return samples


def to_subject(sample: BoxSample) -> tio.Subject:
    """A TorchIO subject with ``image`` (ScalarImage) and ``label`` (LabelMap) on the box."""
    image = tio.ScalarImage(tensor=torch.from_numpy(sample.image[None].copy()), affine=sample.affine)
    label = tio.LabelMap(tensor=torch.from_numpy(sample.labels[None].astype(np.int64)), affine=sample.affine)
    return tio.Subject(image=image, label=label, name=sample.name)


class RandomAxisTranspose(tio.transforms.augmentation.RandomTransform, tio.SpatialTransform):
    """Swap two spatial axes of every image of a subject (same permutation for image and labels)."""

    def apply_transform(self, subject: tio.Subject) -> tio.Subject:
        perm = [0, *(1 + np.random.permutation(3)).tolist()]
        for image in subject.get_images(intensity_only=False):
            image.set_data(image.data.permute(*perm).contiguous())
        return subject


class RandomFieldCrop(tio.transforms.augmentation.RandomTransform, tio.SpatialTransform):
    """Empty one side of the box (image to 0, labels to background) to mimic a cut field of view.

    Parameters
    ----------
    max_fraction : float
        Largest fraction of the box removed along the chosen axis.
    """

    def __init__(self, max_fraction: float = 0.35, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.max_fraction = max_fraction

    def apply_transform(self, subject: tio.Subject) -> tio.Subject:
        axis = int(np.random.randint(3))
        side = int(np.random.randint(2))
        size = subject.spatial_shape[axis]
        cut = int(np.random.uniform(0.05, self.max_fraction) * size)
        for image in subject.get_images(intensity_only=False):
            data = image.data.clone()
            index = [slice(None)] * 4
            index[axis + 1] = slice(0, cut) if side == 0 else slice(size - cut, size)
            data[tuple(index)] = 0
            image.set_data(data)
        return subject


class RandomContrastCurve(tio.transforms.augmentation.RandomTransform, tio.IntensityTransform):
    """Remap intensities through a random piecewise-linear curve (5 knots), sometimes non-monotone.

    Mimics other MR contrasts and CT windows: tissues keep their boundaries but change order.
    Background (0) stays 0 so the air stays dark.
    """

    def apply_transform(self, subject: tio.Subject) -> tio.Subject:
        knots_x = np.linspace(0.0, 1.5, 6)
        knots_y = np.concatenate([[0.0], np.random.uniform(0.05, 1.2, size=5)])
        if np.random.rand() < 0.5:
            knots_y[1:] = np.sort(knots_y[1:])
        for image in self.get_images(subject):
            data = image.data.numpy()
            mapped = np.interp(data, knots_x, knots_y).astype(np.float32)
            image.set_data(torch.from_numpy(mapped))
        return subject


def _invert(tensor: torch.Tensor) -> torch.Tensor:
    """Intensity inversion inside the head (air stays 0): T1-like <-> T2-like ordering."""
    head = tensor > 0.08
    out = tensor.clone()
    out[head] = (1.3 - tensor[head]).clamp(min=0.05)
    return out


def _renormalise(tensor: torch.Tensor) -> torch.Tensor:
    """Apply the inference normalisation again after intensity changes."""
    return torch.from_numpy(normalise(tensor.numpy()))


def training_transform(transpose_probability: float = 0.1) -> tio.Compose:
    """The augmentation pipeline used by ``defacer train``."""
    fov_mm = BOX_SHAPE[0] * BOX_SPACING
    return tio.Compose([
        tio.RandomFlip(axes=(0,), flip_probability=0.5),
        tio.RandomFlip(axes=(1, 2), flip_probability=0.05),
        RandomAxisTranspose(p=transpose_probability),
        tio.RandomAffine(scales=(0.9, 1.1), degrees=15, translation=0.10 * fov_mm, isotropic=False,
                         image_interpolation="linear", default_pad_value=0, p=0.9),
        tio.RandomElasticDeformation(num_control_points=5, max_displacement=12.0, p=0.3),
        RandomFieldCrop(p=0.25),
        tio.RandomAnisotropy(axes=(0, 1, 2), downsampling=(1.2, 2.5), p=0.2),
        tio.RandomBiasField(coefficients=0.4, p=0.4),
        tio.Lambda(_invert, types_to_apply=[tio.INTENSITY], p=0.2),
        RandomContrastCurve(p=0.3),
        tio.RandomGamma(log_gamma=(-0.4, 0.4), p=0.5),
        tio.RandomBlur(std=(0.0, 0.8), p=0.2),
        tio.RandomNoise(std=(0.0, 0.06), p=0.5),
        tio.Lambda(_renormalise, types_to_apply=[tio.INTENSITY]),
    ])


class AugmentedDataset(torch.utils.data.Dataset):
    """``length`` augmented draws from the given samples (uniformly, each draw re-augmented).

    Returns ``(image (1, X, Y, Z) float32, labels (X, Y, Z) int64)`` tensors.
    """

    def __init__(self, samples: list[BoxSample], length: int, transform: tio.Transform | None,
                 weights: list[float] | None = None) -> None:
        self.subjects = [to_subject(s) for s in samples]
        self.length = length
        self.transform = transform
        p = np.asarray(weights if weights is not None else [1.0] * len(samples), float)
        self.p = p / p.sum()

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        subject = self.subjects[int(np.random.choice(len(self.subjects), p=self.p))]
        if self.transform is not None:
            subject = self.transform(subject)
        return subject["image"].data.float(), subject["label"].data[0].long()
