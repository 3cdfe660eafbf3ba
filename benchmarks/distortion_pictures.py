"""Before/after pictures of each distortion on the synthetic phantom (no real person), for docs/img/.

The phantom gets two eye sockets carved into its face (so the eye cover has relief to hide), and
its ear labels are cut down to the core of each auricle around the ear canal, as a detector that
finds only the concha would give: the pictures show that the whole auricle goes all the same.

Usage::

    python benchmarks/distortion_pictures.py [--out docs/img]

writes ``distortion_eyes.png``, ``distortion_nose.png``, ``distortion_ears.png`` and
``distortion_all.png``: the original (top row) and the defaced phantom (bottom row) rendered from
the views that show the feature.  :func:`contact_sheet` is also used by
``benchmarks/distortion_quality.py`` for the real heads' sheets (which go to ``build/`` only).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import numpy.typing as npt

from defacer.labels import Label
from defacer.phantom import Phantom, make_phantom
from defacer.pipeline import DefaceOptions, deface
from defacer.verify.render import View, render_volume
from defacer.volume import Volume

FRONT = View("front", 0.0, 0.0)
LEFT45 = View("left45", 45.0, 0.0)
RIGHT45 = View("right45", -45.0, 0.0)
LEFT90 = View("left90", 90.0, 0.0)
RIGHT90 = View("right90", -90.0, 0.0)
BELOW = View("below25", 0.0, -25.0)
ALL_VIEWS = (FRONT, LEFT45, RIGHT45, LEFT90, RIGHT90, BELOW)


class TruthDetector:
    """A fixed RAS label map as the detector (the phantom is made in RAS)."""

    name = "phantom-truth"
    weights_sha256 = None

    def __init__(self, labels: npt.NDArray[np.uint8]) -> None:
        self.labels = labels

    def predict(self, image_ras: npt.NDArray[np.floating], ras_affine: npt.NDArray[np.floating]) -> npt.NDArray[np.uint8]:
        return self.labels


def phantom_with_relief(voxel_mm: float = 1.0) -> tuple[Phantom, npt.NDArray[np.uint8]]:
    """The phantom with carved eye sockets, and labels whose ears cover only each auricle's core.

    Returns
    -------
    phantom : Phantom
        Its volume has the sockets; its labels are the full truth.
    core_labels : ndarray, uint8
        The same labels with each ear cut to the voxels within 9 mm of the ear canal's centre.
    """
    phantom = make_phantom(voxel_mm, fov_mm=(200.0, 240.0, 220.0))
    raw = phantom.volume.raw.copy()
    eyes = phantom.labels == Label.EYES
    a = np.arange(raw.shape[1])[None, :, None]
    front = int(np.nonzero(eyes)[1].max())
    socket = eyes & (a > front - int(round(8 / voxel_mm)))  # noqa: RUF046 - numpy < 2 rounds to float
    raw[socket] = 0
    volume = phantom.volume.with_raw(raw)
    core = phantom.labels.copy()
    shape = raw.shape
    coords = [(np.arange(n) - (n - 1) / 2.0) * voxel_mm for n in shape]
    x, y, z = np.meshgrid(*coords, indexing="ij", sparse=True)
    near_canal = np.zeros(shape, dtype=bool)
    for side in (-1, 1):
        near_canal |= ((x - side * 77.0) ** 2 + (y + 2.0) ** 2 + (z + 6.0) ** 2) <= 9.0**2
    core[(core == Label.EARS) & ~near_canal] = 0
    return Phantom(volume, phantom.labels, phantom.brain), core


def contact_sheet(before: Volume, after: Volume, views: tuple[View, ...] = ALL_VIEWS, size: int = 128
                  ) -> npt.NDArray[np.uint8]:
    """Renders of ``before`` (top row) and ``after`` (bottom row), same camera and iso-level, as one picture."""
    scene, top = render_volume(before, views, size=size)
    _, bottom = render_volume(after, views, like=scene, reference=top, size=size)
    gap = 4
    rows = []
    for renders in (top, bottom):
        tiles = [renders[v.name].image for v in views]
        h = tiles[0].shape[0]
        row = np.zeros((h, len(tiles) * (tiles[0].shape[1] + gap) - gap), dtype=np.uint8)
        for i, tile in enumerate(tiles):
            row[:, i * (tile.shape[1] + gap): i * (tile.shape[1] + gap) + tile.shape[1]] = tile
        rows.append(row)
    sheet = np.full((2 * rows[0].shape[0] + gap, rows[0].shape[1]), 255, dtype=np.uint8)
    sheet[: rows[0].shape[0]] = rows[0]
    sheet[rows[0].shape[0] + gap:] = rows[1]
    return sheet


def save_png(image: npt.NDArray[np.uint8], path: Path) -> None:
    """Write a grey picture as PNG (Pillow)."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/img"), help="folder for the PNGs (default docs/img)")
    parser.add_argument("--voxel", type=float, default=1.0, help="phantom voxel size in mm (default 1)")
    args = parser.parse_args(argv)
    phantom, core = phantom_with_relief(args.voxel)
    detector = TruthDetector(core)
    plan = {"eyes": (FRONT, LEFT45, RIGHT45), "nose": (FRONT, LEFT45, BELOW), "ears": (LEFT90, RIGHT90, LEFT45),
            "all": (FRONT, LEFT45, LEFT90)}
    for name, views in plan.items():
        features = ("eyes", "nose", "ears") if name == "all" else (name,)
        result = deface(phantom.volume, detector, DefaceOptions(features=features))
        assert result.provenance["protection"]["changed_inside_protected"] == 0
        changed_brain = int((result.volume.raw != phantom.volume.raw)[phantom.brain].sum())
        path = args.out / f"distortion_{name}.png"
        save_png(contact_sheet(phantom.volume, result.volume, views), path)
        print(f"{path}: voxels changed {result.provenance['voxels_changed']}, brain voxels changed {changed_brain}, "
              f"distort {result.provenance['timings']['distort_s']:.3f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
