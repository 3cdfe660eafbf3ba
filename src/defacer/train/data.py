"""Training data: labelled heads on the detector's box, and their augmentation (MONAI).

Every sample (a real head with its reference label map, or a synthetic phantom) is first put on
the network's box exactly as at inference (:func:`defacer.detect.preprocess.to_box`); the
augmentations then act on the box tensors, on the GPU when one is present, so a training draw
costs milliseconds there and stays affordable on a CPU.

Augmentation (MONAI dictionary transforms; the paper's recipe plus what makes the detector robust
on unseen scans):

* paper: Gaussian noise (``RandGaussianNoised``); rotation +-15 degrees per axis, shear up to
  0.20, shift up to 10 % of the field of view and scale 0.90-1.10 in one ``RandAffined``; random
  flips (``RandFlipd``; left/right needs no label swap because both eyes share one label and both
  ears another) and random axis transposes (:class:`RandAxisTransposed`: MONAI has none);
* beyond the paper: contrast randomisation (intensity inversion for T2/CT-like contrast,
  :class:`RandContrastCurved` remapping intensities through a random monotone or non-monotone
  curve, ``RandAdjustContrastd`` gamma 0.67-1.5), optionally a bright background
  (:class:`RandBackgroundFloord`: a Rician noise floor and a gamma below 1 over the whole box,
  air included, as on a low-SNR magnitude image or round a bright halo, with gamma 0.4-2.5;
  ``TrainConfig.bright_background``, off by default), ``RandBiasFieldd``,
  ``RandGaussianSmoothd``, thick slices (:class:`RandThickSlicesd`), a cut field of view
  (:class:`RandFieldCropd`: image and labels beyond the cut are emptied, so a feature outside
  the field is absent, not guessed), and
  phantoms in T1, T2, PD, FLAIR and CT contrast in several orientations and voxel sizes.
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from monai import transforms as mt
from monai.transforms import MapTransform, RandomizableTransform

from defacer.detect.preprocess import BOX_SHAPE, BOX_SPACING, NORMALISE_PERCENTILES, labels_to_box, to_box
from defacer.errors import DefacerError
from defacer.io.atomic import atomic_file
from defacer.volume import Volume, canonical_reorientation

#: Keys of a training draw: ``image`` (1, X, Y, Z) float32 and ``label`` (1, X, Y, Z) float32 class ids.
KEYS: tuple[str, str] = ("image", "label")


@dataclass
class BoxSample:
    """One labelled head on the detector's box.

    Attributes
    ----------
    name : str
        Scan or phantom name.
    group : str
        Subject identifier: samples of one group are always held out together.
    image : ndarray, shape (X, Y, Z) (the box shape), float32
        Normalised intensities (:func:`defacer.detect.preprocess.normalise`), RAS axis order.
    labels : ndarray, shape (X, Y, Z), uint8
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


def load_real_samples(data_dir: Path, labels_dir: Path, scans: dict[str, str],
                      shape: tuple[int, int, int] = BOX_SHAPE, spacing: float = BOX_SPACING) -> list[BoxSample]:
    """Load each real scan and its reference label map onto the box.

    Parameters
    ----------
    data_dir : Path
        The shared data folder (``../shared/data``).
    labels_dir : Path
        Folder with ``<name>.labels.nii.gz`` on each scan's grid.
    scans : dict
        Scan name -> path relative to ``data_dir``.
    shape, spacing
        The box (voxels, mm).
    """
    from defacer.io import load_volume

    samples = []
    for name, rel in scans.items():
        check_provenance_entry(name, rel, data_dir, labels_dir)
        label_path = labels_dir / f"{name}.labels.nii.gz"
        if not label_path.is_file():
            continue
        volume = load_volume(data_dir / rel)
        labels = reference_labels(load_volume(label_path, strict=False), volume, label_path, rel)
        samples.append(sample_from_arrays(name, name, volume.values(), labels, volume.affine, shape, spacing))
    return samples


def check_provenance_entry(name: str, rel: str, data_dir: Path, labels_dir: Path) -> None:
    """Refuse a label provenance entry that would make ``train`` read outside its two folders: a scan name that is no
    plain name (``../x``: its label map outside ``--labels-dir``) or whose label map is a symbolic link out of
    ``--labels-dir``, or a ``source`` that is absolute, climbs out with ``..``, or is a symbolic link out of
    ``--data``.  Such entries were joined as given (HOSTILE7, open item 4), so a
    hostile labels folder made ``train`` read any file the user can read as a scan or a label map.

    Raises
    ------
    InputImageError
    """
    from pathlib import PurePosixPath, PureWindowsPath

    from defacer.errors import InputImageError
    from defacer.files import stays_inside

    redo = "Write it again with scripts/make_reference_labels.py, or fix the entry."
    if not name or name in (".", "..") or any(sep in name for sep in ("/", "\\", "\0")):
        raise InputImageError(f"The label provenance names a scan {name!r}: expected a plain scan name (its label map "
                              f"is <name>.labels.nii.gz in --labels-dir, never a path). {redo}")
    parts = PurePosixPath(rel.replace("\\", "/")).parts
    if not rel or "\0" in rel or PurePosixPath(rel).is_absolute() or PureWindowsPath(rel).is_absolute() \
            or PureWindowsPath(rel).drive or ".." in parts:
        raise InputImageError(f"The label provenance gives scan {name!r} the source {rel!r}: expected a path inside "
                              f"--data, relative to it and without '..'. {redo}")
    label_path = labels_dir / f"{name}.labels.nii.gz"
    if label_path.is_symlink() and not stays_inside(label_path, labels_dir):
        raise InputImageError(f"The label map '{label_path}' is a symbolic link out of --labels-dir: train reads only "
                              "the label maps inside it. Copy the map into --labels-dir.")
    if not stays_inside(data_dir / rel, data_dir):
        raise InputImageError(f"The source {rel!r} of scan {name!r} is a symbolic link out of --data '{data_dir}': "
                              f"train reads only the scans inside it. Copy the scan into --data, or point --data at "
                              "the folder that holds it.")


def reference_labels(label_volume: Volume, volume: Volume, label_path: Path, rel: str) -> npt.NDArray[np.uint8]:
    """A reference label map as uint8 on its scan's grid, refused in words unless it is one.

    It used to be cast to uint8 whatever it held: a 7 was trained on as a fifth class, 257 became
    1 (eyes), halves were truncated (the nose, 2 x 0.5, trained as eyes), and a map of the same shape on
    another grid (shifted, or stored in the other voxel order) taught the wrong voxels, all silently.

    Raises
    ------
    LabelMapError
        For another shape, another affine, or values that are not the integers 0-3.
    """
    from defacer.errors import LabelMapError
    from defacer.labels import feature_label_values

    if label_volume.shape != volume.shape:
        raise LabelMapError(f"Label map {label_path} has shape {label_volume.shape}, but the scan {rel} has "
                            f"{volume.shape}.")
    if not np.allclose(label_volume.affine, volume.affine, atol=1e-3):
        raise LabelMapError(
            f"Label map {label_path} is on another grid than the scan {rel} (affines differ by up to "
            f"{np.abs(np.asarray(label_volume.affine) - volume.affine).max():.3g} mm): it would teach the wrong "
            "voxels. Write it again on the scan's own grid (scripts/make_reference_labels.py).")
    return feature_label_values(label_volume.values(np.float64), f"'{label_path}'")


#: Phantom variations used for training: (contrast, axcodes, voxel size).
PHANTOM_VARIANTS: tuple[tuple[str, str, float | tuple[float, float, float]], ...] = (
    ("T1", "RAS", 2.0), ("T2", "LPS", 2.0), ("PD", "ASL", 2.0), ("FLAIR", "LAS", (1.5, 1.5, 4.0)),
    ("CT", "LPS", (1.0, 1.0, 3.0)), ("T1", "PIR", (2.0, 2.0, 2.0)), ("T2", "RAS", (1.0, 1.0, 5.0)),
    ("CT", "RAS", 2.0),
)


def make_phantom_samples(count: int = len(PHANTOM_VARIANTS), seed: int = 0, shape: tuple[int, int, int] = BOX_SHAPE,
                         spacing: float = BOX_SPACING) -> list[BoxSample]:
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
                                          ph.labels, ph.volume.affine, shape, spacing))
    return samples


def save_samples(samples: list[BoxSample], path: Path) -> None:
    """Write box samples to one compressed ``.npz`` (a training cache; it holds cut-down scans, keep it private).

    Images are stored as float16 (the box intensities lie in [0, 1.5]).
    """
    arrays: dict[str, np.ndarray] = {}
    for i, s in enumerate(samples):
        arrays[f"image{i}"] = s.image.astype(np.float16)
        arrays[f"labels{i}"] = s.labels
        arrays[f"affine{i}"] = s.affine
    meta = [{"name": s.name, "group": s.group} for s in samples]
    path.parent.mkdir(parents=True, exist_ok=True)
    contents: dict[str, Any] = {"meta": np.array(json.dumps(meta)), **arrays}
    with atomic_file(path) as tmp, tmp.open("wb") as handle:  # a file object: numpy adds no ".npz" to its name
        np.savez_compressed(handle, **contents)


def load_samples(path: Path) -> list[BoxSample]:
    """Read box samples written by :func:`save_samples` (arrays only: nothing pickled is loaded).

    Raises
    ------
    defacer.errors.DefacerError
        The file is not such a cache, saying what to do.
    """
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            samples = [BoxSample(m["name"], m["group"], data[f"image{i}"].astype(np.float32), data[f"labels{i}"],
                                 data[f"affine{i}"]) for i, m in enumerate(meta)]
        from defacer.labels import NUM_CLASSES

        for sample in samples:  # a cache of another tool or a damaged one: labels the network has no class for
            if sample.labels.dtype != np.uint8 or (sample.labels.size and sample.labels.max() >= NUM_CLASSES):
                raise ValueError(f"the labels of '{str(sample.name)[:80]}' are not the integers 0-{NUM_CLASSES - 1}")
        return samples
    except Exception as err:  # numpy, zipfile and json raise their own errors for a file that is no such cache
        raise DefacerError(f"'{path}' is not a box cache written by 'defacer train --cache' ({type(err).__name__}: "
                           f"{str(err)[:200]}). Pass another --cache, or remove this file to rebuild it from "
                           "--data and --labels-dir.") from err


class _RandomKeyTransform(RandomizableTransform, MapTransform):
    """A MONAI random dictionary transform: one draw per call (:meth:`_draw`), applied to every key (:meth:`_apply`)."""

    def __init__(self, keys: tuple[str, ...], prob: float) -> None:
        MapTransform.__init__(self, keys)
        RandomizableTransform.__init__(self, prob)

    def randomize(self, data: object = None) -> None:
        super().randomize(None)
        if self._do_transform:
            self._draw()

    def _draw(self) -> None:
        """Draw this call's random parameters from ``self.R``."""

    def _apply(self, tensor: torch.Tensor) -> torch.Tensor:
        """Transform one (1, X, Y, Z) tensor with the drawn parameters."""
        raise NotImplementedError

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        self.randomize()
        if self._do_transform:
            for key in self.key_iterator(d):
                d[key] = self._apply(torch.as_tensor(d[key]))
        return d


class RandAxisTransposed(_RandomKeyTransform):
    """Swap the spatial axes of image and labels by one random permutation (MONAI has no such transform)."""

    def __init__(self, keys: tuple[str, ...] = KEYS, prob: float = 0.1) -> None:
        super().__init__(keys, prob)
        self._perm = [0, 1, 2, 3]

    def _draw(self) -> None:
        self._perm = [0, *(1 + self.R.permutation(3)).tolist()]

    def _apply(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.permute(*self._perm).contiguous()


class RandFieldCropd(_RandomKeyTransform):
    """Empty one side of the box (image to 0, labels to background) to mimic a cut field of view.

    Parameters
    ----------
    max_fraction : float
        Largest fraction of the box removed along the chosen axis.
    """

    def __init__(self, keys: tuple[str, ...] = KEYS, prob: float = 0.25, max_fraction: float = 0.35) -> None:
        super().__init__(keys, prob)
        self.max_fraction = max_fraction
        self._axis, self._side, self._fraction = 0, 0, 0.0

    def _draw(self) -> None:
        self._axis = int(self.R.randint(3))
        self._side = int(self.R.randint(2))
        self._fraction = float(self.R.uniform(0.05, self.max_fraction))

    def _apply(self, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.clone()
        size = out.shape[self._axis + 1]
        cut = int(self._fraction * size)
        index: list[slice] = [slice(None)] * 4
        index[self._axis + 1] = slice(0, cut) if self._side == 0 else slice(size - cut, size)
        out[tuple(index)] = 0
        return out


class RandThickSlicesd(_RandomKeyTransform):
    """Mimic a thick-slice acquisition: average along one random axis by 1.2-2.5x, then interpolate back.

    Applied to the image only; the labels keep their full resolution (the target stays the anatomy).
    """

    def __init__(self, keys: tuple[str, ...] = ("image",), prob: float = 0.2, factors: tuple[float, float] = (1.2, 2.5)) -> None:
        super().__init__(keys, prob)
        self.factors = factors
        self._axis, self._factor = 0, 1.0

    def _draw(self) -> None:
        self._axis = int(self.R.randint(3))
        self._factor = float(self.R.uniform(*self.factors))

    def _apply(self, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.float()
        shape = list(tensor.shape[1:])
        small = list(shape)
        small[self._axis] = max(2, round(shape[self._axis] / self._factor))
        low = F.interpolate(tensor[None], size=small, mode="area")
        return F.interpolate(low, size=shape, mode="trilinear", align_corners=False)[0]


class RandContrastCurved(_RandomKeyTransform):
    """Remap intensities through a random piecewise-linear curve (6 knots), half the time non-monotone.

    Mimics other MR contrasts and CT windows: tissues keep their boundaries but change order.
    Background (0) stays 0 so the air stays dark.
    """

    def __init__(self, keys: tuple[str, ...] = ("image",), prob: float = 0.3) -> None:
        super().__init__(keys, prob)
        self._knots_y = np.zeros(6)

    def _draw(self) -> None:
        knots_y = np.concatenate([[0.0], self.R.uniform(0.05, 1.2, size=5)])
        if self.R.rand() < 0.5:
            knots_y[1:] = np.sort(knots_y[1:])
        self._knots_y = knots_y

    def _apply(self, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.float()
        knots = torch.as_tensor(self._knots_y, dtype=tensor.dtype, device=tensor.device)
        position = (tensor.clamp(0.0, 1.5) / (1.5 / 5)).clamp(max=4.999999)
        lower = position.floor().long()
        weight = position - lower
        return knots[lower] * (1 - weight) + knots[lower + 1] * weight


class RandInvertHeadd(_RandomKeyTransform):
    """Invert intensities inside the head (air stays 0): T1-like <-> T2/CT-like tissue order."""

    def __init__(self, keys: tuple[str, ...] = ("image",), prob: float = 0.2) -> None:
        super().__init__(keys, prob)

    def _apply(self, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.float()
        return torch.where(tensor > 0.08, (1.3 - tensor).clamp(min=0.05), tensor)


class RandBackgroundFloord(_RandomKeyTransform):
    """Lift the air round the head the way a low-SNR magnitude image or a bright halo does.

    Complex Gaussian noise of standard deviation ``sigma`` (a fraction of the bright-tissue
    level 1) is added to the image and its magnitude taken, so the air gets a Rician floor of
    about 1.25 ``sigma`` and the tissue grows grainy; then a gamma below 1 is applied to the
    whole box, air included (``(x / 1.5) ** gamma * 1.5``), which lifts that floor, partial-volume
    voxels and any ghosting round the head further, towards the level of skin.  The inversion
    (:class:`RandInvertHeadd`) and the contrast curve (:class:`RandContrastCurved`) keep the air
    at 0, so a training draw without this transform never shows a bright background.

    Parameters
    ----------
    keys : tuple of str
        Image keys; each value a tensor of shape (1, X, Y, Z) on the normalised scale (tissue ~1,
        clipped to [0, 1.5]).  Labels are left alone.
    prob : float
        Chance that a draw is transformed.
    sigma_range : tuple of float
        Range of the noise's standard deviation, as a fraction of the bright-tissue level.
    gamma_range : tuple of float
        Range of the whole-box gamma (below 1 lifts the dark background).

    Notes
    -----
    The noise comes from a torch generator seeded by this transform's random state, so draws are
    reproducible with ``set_random_state``.  The output is not renormalised (:class:`Renormalised`
    does that at the end of :func:`training_transform`).
    """

    def __init__(self, keys: tuple[str, ...] = ("image",), prob: float = 0.25,
                 sigma_range: tuple[float, float] = (0.01, 0.08), gamma_range: tuple[float, float] = (0.4, 1.0)) -> None:
        super().__init__(keys, prob)
        self.sigma_range = sigma_range
        self.gamma_range = gamma_range
        self._sigma, self._gamma, self._seed = 0.0, 1.0, 0

    def _draw(self) -> None:
        self._sigma = float(self.R.uniform(*self.sigma_range))
        self._gamma = float(self.R.uniform(*self.gamma_range))
        self._seed = int(self.R.randint(2**31 - 1))

    def _apply(self, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.float()
        generator = torch.Generator().manual_seed(self._seed)
        noise = torch.randn((2, *tensor.shape), generator=generator).to(tensor.device) * self._sigma
        magnitude = torch.hypot(tensor + noise[0], noise[1])
        return (magnitude.clamp(0.0, 1.5) / 1.5) ** self._gamma * 1.5


class Renormalised(MapTransform):
    """Apply the inference normalisation again (percentiles 0.5/99.5 -> 0/1, clipped to [0, 1.5])."""

    def __init__(self, keys: tuple[str, ...] = ("image",)) -> None:
        super().__init__(keys)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            tensor = torch.as_tensor(d[key]).float()
            q = torch.tensor([p / 100.0 for p in NORMALISE_PERCENTILES], device=tensor.device)
            lo, hi = torch.quantile(tensor.reshape(-1), q)
            if not torch.isfinite(hi - lo) or float(hi - lo) <= 0:
                d[key] = torch.zeros_like(tensor)
            else:
                d[key] = ((tensor - lo) / (hi - lo)).clamp(0.0, 1.5)
        return d


def training_transform(transpose_probability: float = 0.1, device: torch.device | None = None,
                       shape: tuple[int, int, int] = BOX_SHAPE, bright_background: bool = False) -> mt.Compose:
    """The augmentation pipeline used by ``defacer train`` (MONAI; runs on ``device``).

    Input and output: ``{"image": (1, X, Y, Z) float, "label": (1, X, Y, Z) float class ids}``.

    Parameters
    ----------
    transpose_probability : float
        Chance of a random axis transpose per draw.
    device : torch.device, optional
    shape : tuple of int
        The box (voxels).
    bright_background : bool
        Add :class:`RandBackgroundFloord` (p 0.25) and widen the gamma from 0.67-1.5 to 0.4-2.5.
        Off by default: the shipped detector (v3) was trained without it, and two warm-started CPU
        runs with it did not make the held-out detector more robust to contrast (model card,
        "Contrast retrain"); off, the pipeline and its random draws are those of v3's recipe.
    """
    shift_voxels = tuple(0.10 * n for n in shape)
    background = [RandBackgroundFloord(("image",), prob=0.25)] if bright_background else []
    gamma = (0.4, 2.5) if bright_background else (0.67, 1.5)
    return mt.Compose([
        mt.RandFlipd(KEYS, prob=0.5, spatial_axis=0),
        mt.RandFlipd(KEYS, prob=0.05, spatial_axis=1),
        mt.RandFlipd(KEYS, prob=0.05, spatial_axis=2),
        RandAxisTransposed(KEYS, prob=transpose_probability),
        mt.RandAffined(KEYS, prob=0.9, rotate_range=(np.deg2rad(15.0),) * 3, shear_range=(0.2,) * 6,
                       translate_range=shift_voxels, scale_range=(0.1,) * 3, mode=("bilinear", "nearest"),
                       padding_mode="zeros", device=device),
        RandFieldCropd(KEYS, prob=0.25),
        RandThickSlicesd(("image",), prob=0.2),
        mt.RandBiasFieldd("image", prob=0.4, coeff_range=(0.0, 0.3)),
        RandInvertHeadd(("image",), prob=0.2),
        RandContrastCurved(("image",), prob=0.3),
        *background,
        mt.RandAdjustContrastd("image", prob=0.5, gamma=gamma),
        mt.RandGaussianSmoothd("image", prob=0.2, sigma_x=(0.0, 0.8), sigma_y=(0.0, 0.8), sigma_z=(0.0, 0.8)),
        mt.RandGaussianNoised("image", prob=0.5, std=0.06),
        Renormalised(("image",)),
    ], lazy=False)


class AugmentedBatches:
    """Draw augmented batches from samples (weighted), on ``device``.

    Parameters
    ----------
    samples : list of BoxSample
    transform : MONAI transform or None
        Applied to each draw (``{"image", "label"}``, each (1, X, Y, Z)).
    weights : list of float, optional
        Relative sampling weight per sample.
    device : torch.device
    seed : int
    patch : int
        Edge of the cube cut from each augmented draw (0: the whole box).
    foreground_probability : float
        Chance that a patch is centred on a feature voxel rather than anywhere.
    class_weights : tuple of float
        Relative chance of the eyes, nose and ears as that feature (classes absent from the draw
        are skipped).
    """

    def __init__(self, samples: list[BoxSample], transform: mt.Compose | None, weights: list[float] | None = None,
                 device: torch.device | None = None, seed: int = 0, patch: int = 0,
                 foreground_probability: float = 0.7, class_weights: tuple[float, ...] = (1.0, 1.0, 2.0)) -> None:
        self.patch = int(patch)
        self.foreground_probability = float(foreground_probability)
        self.class_weights = tuple(float(w) for w in class_weights)
        self.device = device or torch.device("cpu")
        self.images = [torch.from_numpy(np.ascontiguousarray(s.image[None])).float().to(self.device) for s in samples]
        self.labels = [torch.from_numpy(np.ascontiguousarray(s.labels[None])).float().to(self.device) for s in samples]
        self.transform = transform
        if transform is not None:
            transform.set_random_state(seed=seed)
        p = np.asarray(weights if weights is not None else [1.0] * len(samples), float)
        self.p = p / p.sum()
        self.rng = np.random.default_rng(seed)

    def draw(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One augmented draw: image (1, X, Y, Z) float32, labels (X, Y, Z) int64, on ``device``."""
        i = int(self.rng.choice(len(self.images), p=self.p))
        item = {"image": self.images[i], "label": self.labels[i]}
        if self.transform is not None:
            item = self.transform(item)
        image, labels = item["image"], item["label"]
        if hasattr(image, "as_tensor"):  # MONAI MetaTensor -> plain tensor
            image = image.as_tensor()
        if hasattr(labels, "as_tensor"):
            labels = labels.as_tensor()
        image, target = image.float().to(self.device), labels.round().long().to(self.device)[0]
        if self.patch:
            image, target = self._cut_patch(image, target)
        return image, target

    def _cut_patch(self, image: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A ``patch``^3 cube of an augmented draw: image (1, P, P, P), labels (P, P, P)."""
        shape = np.asarray(target.shape)
        size = np.minimum(self.patch, shape)
        centre = None
        if self.rng.random() < self.foreground_probability:
            present = [c for c in (1, 2, 3) if bool((target == c).any())]
            if present:
                w = np.asarray([self.class_weights[c - 1] for c in present], float)
                cls = present[int(self.rng.choice(len(present), p=w / w.sum()))]
                where = torch.nonzero(target == cls)
                centre = where[int(self.rng.integers(len(where)))].cpu().numpy()
        if centre is None:
            centre = self.rng.integers(0, shape)
        lo = np.clip(centre - size // 2, 0, shape - size)
        box = tuple(slice(int(a), int(a + n)) for a, n in zip(lo, size))
        return image[(slice(None), *box)], target[box]

    def batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``size`` draws stacked: image (N, 1, X, Y, Z), labels (N, X, Y, Z)."""
        draws = [self.draw() for _ in range(size)]
        return torch.stack([d[0] for d in draws]), torch.stack([d[1] for d in draws])
