"""Headless orthographic rendering of the skin surface of a head volume.

The volume is sampled in **world (RAS+) space**, never in its file's voxel order, so the same
head stored as RAS, LPS or ASL renders the same picture.  No display, OpenGL or mesh is needed:

1. :func:`prepare_scene` resamples the scan (trilinear, through its full affine, so oblique and
   anisotropic grids are handled) onto an isotropic grid aligned with the RAS axes around the
   head, smooths it (Gaussian, ``smooth_mm``), picks the skin iso-level (:func:`auto_iso_level`)
   and keeps only the large connected bodies above it, which removes background noise and
   ghosting specks.
2. :func:`render_view` rotates that grid to the view (yaw about S, then pitch about the rotated
   R axis), casts one orthographic ray per pixel toward the back of the head, finds the first
   iso-crossing with sub-voxel interpolation, and shades the depth map (Lambert + a little
   Blinn-Phong, light from the upper left of the camera, mild depth cue).

The picture is a uint8 grey image, rows top to bottom = superior to inferior (for pitch 0),
columns left to right = the subject's right to left (the viewer faces the subject).

A defaced volume must be rendered with the *original's* scene (same grid, iso-level and body
mask region): see :func:`prepare_scene`'s ``like`` argument, so that the two pictures differ
only where the voxels differ.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from defacer.errors import VerificationError
from defacer.volume import Volume, canonical_reorientation


@dataclass(frozen=True)
class View:
    """A camera direction.

    Attributes
    ----------
    name : str
        Short name used in file names and reports.
    yaw : float
        Degrees about the superior axis; positive turns the camera toward the subject's left
        (shows the left cheek and ear).
    pitch : float
        Degrees about the camera's horizontal axis; positive raises the camera (looks down on
        the head), negative looks up from below the chin.
    """

    name: str
    yaw: float = 0.0
    pitch: float = 0.0


#: Views rendered by default: the face from the front, both three-quarter views, and from below.
DEFAULT_VIEWS: tuple[View, ...] = (
    View("front", 0.0, 0.0),
    View("left45", 45.0, 0.0),
    View("right45", -45.0, 0.0),
    View("below25", 0.0, -25.0),
)

#: The "other angle" used as the re-identification baseline (an original seen from elsewhere).
BASELINE_VIEW = View("left30", 30.0, 10.0)


@dataclass(frozen=True)
class Scene:
    """A head resampled on an isotropic RAS+ grid, ready to be rendered from any view.

    Attributes
    ----------
    grid : ndarray, float32, shape (N, N, N)
        Smoothed physical intensities on the cube; voxels outside the head's body are set to
        ``background`` so they never stop a ray.
    centre : ndarray, shape (3,)
        World (RAS+ mm) coordinates of the cube's centre.
    step_mm : float
        Grid spacing in mm (also the size of one rendered pixel before upsampling).
    iso : float
        The skin iso-level in physical units of the scan.
    background : float
        Value written outside the body (below ``iso``).
    head_turn : ndarray, shape (3, 3)
        Rotation from an upright head's axes to this head's (RAS+): every view is taken relative to the head, so a
        head turned in the scanner (yaw, roll: :mod:`defacer.detect.pose`) is still seen from its own front.  The
        identity for a head within 10 degrees of upright.
    """

    grid: npt.NDArray[np.float32]
    centre: npt.NDArray[np.float64]
    step_mm: float
    iso: float
    background: float
    head_turn: npt.NDArray[np.float64] = field(default_factory=lambda: np.eye(3))


@dataclass(frozen=True)
class Rendering:
    """One view of a scene.

    Attributes
    ----------
    view : View
    image : ndarray, uint8, shape (H, W)
        Shaded grey picture (0 = no surface).
    depth_mm : ndarray, float32, shape (H, W)
        Distance from the image plane to the surface in mm, NaN where no ray hit.
    near_mm : float
        Depth at which the depth cue starts (the nearest surface of the original's view).
    """

    view: View
    image: npt.NDArray[np.uint8]
    depth_mm: npt.NDArray[np.float32]
    near_mm: float = 0.0

    def rgb(self) -> npt.NDArray[np.uint8]:
        """The picture as an (H, W, 3) RGB array, as face detectors expect."""
        return np.ascontiguousarray(np.repeat(self.image[:, :, None], 3, axis=2))


def auto_iso_level(values: npt.NDArray[np.floating], fraction: float = 0.3) -> float:
    """Skin/air iso-level of an MR or CT head from its intensities.

    Otsu's threshold splits the voxels into air and tissue; the iso-level is placed at
    ``fraction`` of the way from the air median to the tissue median.  This is robust to the
    scale of the data (MR in arbitrary units, uint8 exports, CT in Hounsfield units, where it
    lands near -700 HU) and to very bright fat or bone, which move the tissue median less than
    they move Otsu's threshold.

    Parameters
    ----------
    values : ndarray
        Physical intensities (any shape; a subsample is fine).
    fraction : float
        Position between the air and tissue medians, in (0, 1).

    Returns
    -------
    float
        The iso-level in the units of ``values``.
    """
    from skimage.filters import threshold_otsu

    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        raise VerificationError("Cannot choose an iso-level: the volume has no finite values.")
    lo, hi = np.percentile(v, [0.5, 99.5])
    if hi <= lo:
        raise VerificationError(
            f"Cannot choose an iso-level: the volume is flat (values between {lo:g} and {hi:g}). "
            "Check that the file holds a head scan."
        )
    v = np.clip(v, lo, hi)
    t = float(threshold_otsu(v, nbins=256))
    air = float(np.median(v[v < t]))
    tissue = float(np.median(v[v >= t]))
    return air + fraction * (tissue - air)


def _head_box_world(volume: Volume, values: npt.NDArray[np.float32], iso: float) -> tuple[np.ndarray, np.ndarray]:
    """World (RAS+) bounding box of the voxels above ``iso``: (min corner, max corner) in mm."""
    coarse = values[::2, ::2, ::2] > iso
    if not coarse.any():
        raise VerificationError(f"No voxel is above the skin iso-level {iso:g}: nothing to render.")
    idx = np.argwhere(coarse) * 2
    lo, hi = idx.min(axis=0), idx.max(axis=0) + 1
    corners = np.array([[a, b, c, 1.0] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])])
    world = (volume.affine @ corners.T).T[:, :3]
    return world.min(axis=0), world.max(axis=0)


#: Bodies above the iso-level smaller than this fraction of the largest are dropped as noise.
MIN_BODY_FRACTION = 0.02


def prepare_scene(
    volume: Volume,
    *,
    size: int = 128,
    smooth_mm: float = 1.5,
    iso: float | None = None,
    like: Scene | None = None,
) -> Scene:
    """Resample a head onto an isotropic RAS+ cube and isolate its skin surface.

    Parameters
    ----------
    volume : Volume
        The scan, in any axis order.
    size : int
        Cube edge in voxels; the rendered picture is ``size`` pixels before upsampling.
    smooth_mm : float
        Gaussian sigma in mm applied before thresholding (noise and stair-steps).
    iso : float, optional
        Skin iso-level in physical units; default :func:`auto_iso_level`.
    like : Scene, optional
        Reuse this scene's cube (centre, spacing, edge: ``size`` is then ignored) and iso-level, e.g. the original's when
        rendering its defaced copy, so the pictures are directly comparable.

    Returns
    -------
    Scene
    """
    if volume.raw.ndim != 3:
        raise VerificationError(f"Expected a 3D volume to render, found shape {volume.raw.shape}.")
    # Exact axis permutation/flips to RAS first, so that every subsample below (and so the iso-level
    # and the framing) is the same whatever the file's axis order.  For non-oblique grids the
    # resampling matrix is then diagonal, which scipy handles with its much faster zoom path.
    reo = canonical_reorientation(volume.affine, volume.shape)
    values = reo.values_to_ras(volume)
    ras_volume = Volume(values, reo.ras_affine)
    if like is not None:
        iso_level, centre, step = like.iso, like.centre, like.step_mm
        size = like.grid.shape[0]  # the same cube: its step was chosen for its own edge
        head_turn = like.head_turn
    else:
        head_turn = _head_turn(values, reo.ras_affine)
        sample = values[::3, ::3, ::3]
        iso_level = float(iso) if iso is not None else auto_iso_level(sample)
        lo, hi = _head_box_world(ras_volume, values, iso_level)
        centre = (lo + hi) / 2.0
        # The cube must hold the head from every view: its largest extent, plus a margin.
        step = float(np.max(hi - lo)) * 1.08 / size
    air = float(np.percentile(values[::4, ::4, ::4], 1))
    background = min(air, iso_level - 1.0)
    # Output voxel (i, j, k) of the cube -> world point centre + step * ((i, j, k) - (size - 1) / 2).
    to_voxel = np.linalg.inv(reo.ras_affine)
    matrix = to_voxel[:3, :3] * step
    half = (size - 1) / 2.0
    offset = to_voxel[:3, :3] @ (np.asarray(centre) - step * half) + to_voxel[:3, 3]
    off_diagonal = matrix - np.diag(np.diag(matrix))
    if np.abs(off_diagonal).max() <= 1e-9 * np.abs(matrix).max():
        matrix = np.diag(matrix)
    grid = ndimage.affine_transform(values, matrix, offset=offset, output_shape=(size,) * 3, order=1,
                                    mode="constant", cval=background, prefilter=False).astype(np.float32)
    if smooth_mm > 0:
        grid = ndimage.gaussian_filter(grid, sigma=smooth_mm / step, mode="nearest").astype(np.float32)
    body = grid > iso_level
    labelled, count = ndimage.label(body)
    if count == 0:
        raise VerificationError(
            f"No surface above the iso-level {iso_level:g} after resampling. Check the scan's affine and values."
        )
    if count > 1:
        # Keep every large body (the scalp and the brain may be separate shells where the skull is
        # dark); drop small specks of noise, ghosting or fiducials.
        sizes = np.bincount(labelled.ravel())
        sizes[0] = 0
        big = np.flatnonzero(sizes >= MIN_BODY_FRACTION * sizes.max())
        body = np.isin(labelled, big)
    keep = ndimage.binary_dilation(body, iterations=2)
    grid[~keep] = background
    return Scene(grid=grid, centre=np.asarray(centre, dtype=np.float64), step_mm=step, iso=iso_level,
                 background=background, head_turn=head_turn)


def _head_turn(values_ras: npt.NDArray[Any], ras_affine: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """The head's turn (yaw about S, roll about A) as a rotation matrix (3, 3), read as the detector reads it
    (:func:`defacer.detect.pose.measured_pose`); the identity within 10 degrees of upright or where no head is found."""
    from defacer.detect.pose import measured_pose, plane_rotation

    pose = measured_pose(values_ras, ras_affine)
    return plane_rotation(pose.yaw_deg, pose.roll_deg) if pose is not None and pose.turned else np.eye(3)


def _camera_axes(view: View, head_turn: npt.NDArray[np.float64] | None = None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit vectors (right, up, forward) of the camera in RAS+ for a view.

    At yaw = pitch = 0 the camera stands in front of the face (+A) and looks toward -A;
    screen-right is the subject's left (-R) and screen-up is +S.  With ``head_turn`` (:attr:`Scene.head_turn`)
    these are the head's own directions: the camera turns with the head.
    """
    right = np.array([-1.0, 0.0, 0.0])
    up = np.array([0.0, 0.0, 1.0])
    forward = np.array([0.0, -1.0, 0.0])
    yaw, pitch = np.deg2rad(view.yaw), np.deg2rad(view.pitch)
    # Yaw: rotate the camera about +S.  Positive yaw moves it toward the subject's left (-R).
    c, s = np.cos(yaw), np.sin(yaw)
    rot_yaw = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    right, up, forward = rot_yaw @ right, rot_yaw @ up, rot_yaw @ forward
    # Pitch: rotate about the camera's right axis (Rodrigues); positive raises the camera.
    axis = right / np.linalg.norm(right)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rot_pitch = np.eye(3) + np.sin(-pitch) * k + (1 - np.cos(-pitch)) * (k @ k)
    turn = np.eye(3) if head_turn is None else np.asarray(head_turn, float)
    return turn @ rot_pitch @ right, turn @ rot_pitch @ up, turn @ rot_pitch @ forward


#: Fraction of the cube's depth that rays traverse (the visible surface is in the near half).
DEPTH_FRACTION = 0.65


def _view_grid(scene: Scene, basis: npt.NDArray[np.float64], depth_n: int) -> npt.NDArray[np.float32]:
    """Resample the scene cube into view order (row, col, depth), ``depth_n`` samples deep."""
    n = scene.grid.shape[0]
    half = (n - 1) / 2.0
    rounded = np.rint(basis)
    if np.allclose(basis, rounded, atol=1e-9):
        # A signed axis permutation (e.g. the front view): exact, no interpolation.
        out = scene.grid
        axes = [int(np.flatnonzero(rounded[:, c])[0]) for c in range(3)]
        out = np.transpose(out, axes)
        for c in range(3):
            if rounded[axes[c], c] < 0:
                out = np.flip(out, axis=c)
        return np.ascontiguousarray(out[:, :, :depth_n])
    offset = half - basis @ np.full(3, half)
    return ndimage.affine_transform(scene.grid, basis, offset=offset, output_shape=(n, n, depth_n), order=1,
                                    mode="constant", cval=scene.background, prefilter=False)


def render_view(scene: Scene, view: View, *, upsample: int = 2, near_mm: float | None = None) -> Rendering:
    """Render one orthographic view of a scene.

    Parameters
    ----------
    scene : Scene
        From :func:`prepare_scene`.
    view : View
        Camera direction.
    upsample : int
        The depth map is interpolated by this factor before shading, so the picture is
        ``upsample * N`` pixels square.
    near_mm : float, optional
        Where the depth cue starts; default the nearest surface point of this view.  Pass the
        original's value when rendering its defaced copy so unchanged parts shade identically.

    Returns
    -------
    Rendering
    """
    n = scene.grid.shape[0]
    right, up, forward = _camera_axes(view, scene.head_turn)
    # View voxel (row, col, depth) -> world direction: rows go down (-up), cols right, depth forward.
    basis = np.stack([-up, right, forward], axis=1)  # world = centre + step * basis @ (idx - half)
    # World -> scene cube voxel is (world - centre) / step + half; compose both (rotation about the centre).
    # Rays stop a little beyond the centre: the surface facing the camera lies in the near half.
    depth_n = min(n, int(np.ceil(n * DEPTH_FRACTION)))
    view_grid = _view_grid(scene, basis, depth_n)
    inside = view_grid > scene.iso
    hit = np.asarray(inside.any(axis=2), dtype=bool)
    first = np.argmax(inside, axis=2)
    before = np.clip(first - 1, 0, depth_n - 1)
    rows, cols = np.indices(first.shape)
    v0 = view_grid[rows, cols, before]
    v1 = view_grid[rows, cols, first]
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(first > 0, (scene.iso - v0) / (v1 - v0), 0.0)
    t = np.clip(np.nan_to_num(t, nan=0.0), 0.0, 1.0)
    depth = (before + t) * scene.step_mm
    depth = np.where(first > 0, depth, first * scene.step_mm).astype(np.float32)
    if near_mm is None:
        near_mm = float(depth[hit].min()) if hit.any() else 0.0
    return _shade(depth, hit, scene.step_mm, view, upsample, depth_n * scene.step_mm, near_mm)


def _shade(depth: npt.NDArray[np.float32], hit: npt.NDArray[np.bool_], step_mm: float, view: View,
           upsample: int, depth_range_mm: float, near_mm: float) -> Rendering:
    """Shade a depth map (mm, larger = farther) into a grey picture."""
    # The background depth is the fixed ray length and the cue starts at ``near_mm`` (the original's),
    # so an unchanged part of a defaced head is shaded exactly as in the original.
    filled = np.where(hit, depth, depth_range_mm).astype(np.float32)
    if upsample > 1:
        filled = ndimage.zoom(filled, upsample, order=1, mode="nearest", grid_mode=True)
        hit = ndimage.zoom(hit.astype(np.float32), upsample, order=1, mode="nearest", grid_mode=True) > 0.5
    pixel = step_mm / upsample
    gy, gx = np.gradient(filled, pixel)
    # Surface normal toward the camera in (x right, y down, z away) coordinates.
    normal = np.stack([-gx, -gy, -np.ones_like(gx)], axis=-1)
    normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
    light = np.array([-0.35, -0.45, -1.0])
    light /= np.linalg.norm(light)
    lambert = np.clip(normal @ light, 0.0, 1.0)
    halfway = light + np.array([0.0, 0.0, -1.0])
    halfway /= np.linalg.norm(halfway)
    specular = np.clip(normal @ halfway, 0.0, 1.0) ** 24
    cue = 1.0 - 0.35 * np.clip((filled - near_mm) / 150.0, 0.0, 1.0)
    shade = (0.12 + 0.78 * lambert + 0.18 * specular) * cue
    image = np.where(hit, np.clip(shade * 255.0, 1.0, 255.0), 0.0).astype(np.uint8)
    depth_out = np.where(hit, filled, np.nan).astype(np.float32)
    return Rendering(view=view, image=image, depth_mm=depth_out, near_mm=near_mm)


def render_volume(
    volume: Volume,
    views: tuple[View, ...] = DEFAULT_VIEWS,
    *,
    like: Scene | None = None,
    size: int = 128,
    upsample: int = 2,
    iso: float | None = None,
    reference: dict[str, Rendering] | None = None,
) -> tuple[Scene, dict[str, Rendering]]:
    """Render a head from several views.

    Parameters
    ----------
    volume : Volume
        The scan, in any axis order.
    views : tuple of View
        Camera directions (default :data:`DEFAULT_VIEWS`).
    like : Scene, optional
        The original's scene when rendering a defaced copy (same cube, edge and iso-level).
    size, upsample : int
        Cube edge in voxels (ignored when ``like`` is given) and depth-map upsampling: pictures are
        ``size * upsample`` square.
    iso : float, optional
        Skin iso-level; default automatic (ignored when ``like`` is given).
    reference : dict of str to Rendering, optional
        The original's renderings, whose depth-cue start is reused view by view (with ``like``,
        this makes unchanged regions of a defaced copy shade exactly as in the original).

    Returns
    -------
    scene : Scene
    renderings : dict of str to Rendering
        Keyed by view name, in the order of ``views``.
    """
    scene = prepare_scene(volume, size=size, iso=iso, like=like)
    near = {name: r.near_mm for name, r in (reference or {}).items()}
    return scene, {view.name: render_view(scene, view, upsample=upsample, near_mm=near.get(view.name))
                   for view in views}


def png_bytes(image: npt.NDArray[Any]) -> bytes:
    """Encode a uint8 grey (H, W) or RGB (H, W, 3) array as PNG bytes (needs Pillow)."""
    try:
        from PIL import Image
    except ImportError as err:  # pragma: no cover - depends on the environment
        from defacer.errors import MissingExtraError

        raise MissingExtraError("verify", "pillow") from err
    import io

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()
