"""A turned head seen upright: its left-right symmetry plane, found in the detector's box.

The network was trained on heads within about 15 degrees of upright (its rotation augmentation); a head
turned further in the scanner (yaw: about the superior axis; roll: about the anterior axis) is found less
well: on the 11 held-out heads with their headers turned by 30 degrees of yaw the shipped fold models lost
both CTs' eyes and one nose and found 16 of 22 ears with 5 extra.  A head is close to mirror-symmetric about
its mid-sagittal plane, so the plane's normal gives the head's yaw and roll without a template: the angles
whose mirror image of the box best matches the box itself.  Where the head is turned by
:data:`POSE_MIN_DEG` or more, the box is turned with it (:func:`upright_box`), so the network sees the head
upright; a head closer to upright keeps the world-aligned box (every labelled head, unperturbed: within 7
degrees), so its labels are exactly as before.  Pitch (nodding) leaves the plane where it is and is not
measured here (the network finds every feature of heads pitched 20 and -25 degrees); an oblique grid's pitch,
confirmed by the ears, is taken for the eyes' and nose's rules (:func:`defacer.detect.frame.grid_pitch`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt
from scipy import ndimage as ndi

from defacer._typing import Affine
from defacer.detect.preprocess import Box, block_mean, to_box

#: A head turned (yaw or roll) by this much or more is presented to the network upright, in degrees.
POSE_MIN_DEG = 10.0
#: ...and only where the mirror match at the turned plane beats the upright plane's by this much (Pearson
#: correlation; the labelled heads turned by 20-30 degrees gain 0.25-0.75, a symmetric head upright 0).
POSE_MIN_GAIN = 0.1
#: ...and only where the head is whole about that plane: its mirror match at least this (every labelled head,
#: turned by 20-30 degrees of yaw or 15-20 of roll: 0.58-0.82; half a head, or a head cut by the field of view
#: at a side: 0.08-0.54)...
POSE_MIN_SYMMETRY = 0.5
#: ...and at least this fraction of its voxels (5 mm grid) mirrored into the head (every labelled head, upright or
#: turned: 0.92-0.96; half a head or one cut at a side: 0.38-0.88).  A false turn costs the detector dearly: on
#: heads cut at a side the turned box lost the nose on all 7 tried (Dice 0.83-0.99 -> 0).
POSE_MIN_OVERLAP = 0.9
#: The coarse search's angles (degrees) on the 10 mm grid, then a refinement within +-1 coarse step on the 5 mm grid.
YAW_RANGE_DEG = 45.0
ROLL_RANGE_DEG = 30.0
COARSE_STEP_DEG = 7.5
FINE_STEP_DEG = 2.5
#: Tissue level of the box's scaled intensities (:func:`defacer.detect.preprocess.normalise`), as the box placement.
TISSUE_LEVEL = 0.12


@dataclass(frozen=True)
class Pose:
    """The head's mid-sagittal plane in the box.

    Attributes
    ----------
    yaw_deg, roll_deg : float
        The plane's normal is ``(cos yaw cos roll, sin yaw cos roll, sin roll)`` in the box's (world-aligned,
        RAS) axes: yaw turns the head about S (positive: the face towards the left, R to A), roll about A.
    symmetry : float
        Pearson correlation of the head's voxels with their mirror images about that plane.
    symmetry_upright : float
        The same about the plane with normal R through the same point.
    centre_box : ndarray, shape (3,)
        A point of the plane (the head's centroid), in box voxel indices.
    mirror_overlap : float or None
        The fraction of the head's voxels (5 mm grid) whose mirror images about that plane are in the head too:
        a whole head about 0.95, half a head (cut by the field of view) well under 0.9.  Measured only where the
        plane would otherwise turn the box (``None`` elsewhere: 10 ms saved on every upright head).
    """

    yaw_deg: float
    roll_deg: float
    symmetry: float
    symmetry_upright: float
    centre_box: npt.NDArray[np.float64]
    mirror_overlap: float | None = None

    @property
    def far(self) -> bool:
        """Whether the plane is far enough from upright, and beats the upright plane clearly enough, to turn the
        box for a whole head."""
        return (max(abs(self.yaw_deg), abs(self.roll_deg)) >= POSE_MIN_DEG
                and self.symmetry - self.symmetry_upright >= POSE_MIN_GAIN)

    @property
    def whole(self) -> bool:
        """Whether the head was measured whole and clearly symmetric about the plane: a plane a turn may be read
        from (``False`` where :attr:`mirror_overlap` was not measured)."""
        return (self.mirror_overlap is not None and self.symmetry >= POSE_MIN_SYMMETRY
                and self.mirror_overlap >= POSE_MIN_OVERLAP)

    @property
    def turned(self) -> bool:
        """Whether the head is far enough from upright, and its plane clear enough, to turn the box.

        Never for a head that is not whole about the plane (:attr:`whole`): half a head, or one cut by the field
        of view at a side, reads a turned plane (0.29-0.54 against 0.15-0.30 upright), and a box turned for it
        loses the face."""
        return self.far and self.whole

    def as_dict(self) -> dict[str, float | bool | None]:
        """The sidecar's record."""
        return {"yaw_deg": round(self.yaw_deg, 1), "roll_deg": round(self.roll_deg, 1),
                "symmetry": round(self.symmetry, 3), "symmetry_upright": round(self.symmetry_upright, 3),
                "mirror_overlap": None if self.mirror_overlap is None else round(self.mirror_overlap, 3),
                "box_turned": self.turned}


def plane_normal(yaw_deg: npt.ArrayLike, roll_deg: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Unit normals, shape (..., 3), of the planes at these angles (see :class:`Pose`)."""
    yaw, roll = np.radians(np.asarray(yaw_deg, float)), np.radians(np.asarray(roll_deg, float))
    return np.stack([np.cos(yaw) * np.cos(roll), np.sin(yaw) * np.cos(roll), np.sin(roll)], axis=-1)


def _head_points(volume: npt.NDArray[np.float32]
                 ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.bool_]] | None:
    """The largest piece above the tissue level: its centroid (3,), the indices (N, 3) of its outer shell
    (the voxels within 2 of its outside: the outline of the face and the ears carries the symmetry, and a
    fifth of the voxels costs a fifth of the time) and its mask, or ``None`` where there is none."""
    mask = volume > TISSUE_LEVEL
    labels, n = ndi.label(mask)
    if n == 0:
        return None
    if n > 1:
        mask = labels == int(np.argmax(np.bincount(labels.ravel())[1:])) + 1
    shell = mask & ~ndi.binary_erosion(mask, iterations=2)
    if np.count_nonzero(shell) < 8:
        return None
    return np.argwhere(mask).mean(axis=0), np.argwhere(shell).astype(np.float64), mask


def _mirror_overlap(mask: npt.NDArray[np.bool_], centre: npt.NDArray[np.float64],
                    normal: npt.NDArray[np.float64]) -> float:
    """The fraction of ``mask``'s voxels whose mirror images about the plane (``centre``, ``normal``) are in it."""
    points = np.argwhere(mask).astype(np.float64)
    mirrored = np.rint(points - 2.0 * ((points - centre) @ normal)[:, None] * normal[None, :]).astype(np.intp)
    inside = np.all((mirrored >= 0) & (mirrored < np.asarray(mask.shape)), axis=1)
    hits = np.zeros(len(points), bool)
    hits[inside] = mask[tuple(mirrored[inside].T)]
    return float(hits.mean()) if len(points) else 0.0


def _symmetry(volume: npt.NDArray[np.float32], points: npt.NDArray[np.float64], centre: npt.NDArray[np.float64],
              normals: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Correlation of the values at ``points`` (N, 3) with those at their mirror images, one per normal (M, 3).

    The mirror images are read at the nearest voxel (past the volume's edge: its edge voxel): several times
    cheaper than trilinear interpolation, and the search's steps are finer than the voxels anyway.
    """
    values = volume[tuple(points.astype(np.intp).T)].astype(np.float32)
    offsets = ((points - centre) @ normals.T).astype(np.float32)  # (N, M): signed distance to each plane
    shape = np.asarray(volume.shape)
    flat = np.zeros((len(normals), len(points)), np.int32)  # a box of up to 1290^3 voxels
    for axis in range(3):  # one axis at a time: no (M, N, 3) array
        at = (points[:, axis].astype(np.float32)[None, :] + np.float32(0.5)
              - offsets.T * (2.0 * normals[:, axis]).astype(np.float32)[:, None])
        np.clip(at, 0.0, shape[axis] - 0.5, out=at)  # past the box's edge: its edge voxel (air, or the neck)
        flat *= shape[axis]
        flat += at.astype(np.int32)  # the nearest voxel
    seen = volume.ravel()[flat]
    a = values - values.mean()
    b = seen - seen.mean(axis=1, keepdims=True)
    norm = np.sqrt(float((a * a).sum()) * (b * b).sum(axis=1))
    return np.where(norm > 0, (b @ a) / np.where(norm > 0, norm, 1.0), -1.0).astype(np.float64)


def head_pose(box_image: npt.NDArray[np.float32]) -> Pose | None:
    """The head's yaw and roll in the box, from its left-right symmetry.

    Parameters
    ----------
    box_image : ndarray, shape (X, Y, Z), float32
        The network's input (:func:`defacer.detect.preprocess.to_box`): scaled intensities on a world-aligned
        (RAS) grid of isotropic voxels; each axis a multiple of 4 voxels long for the coarse grids.

    Returns
    -------
    Pose or None
        ``None`` where the box holds no head.  A head upright on the coarse grid is not refined: its pose reads
        0, 0 and its two symmetries are the same.  Cost: 0.05-0.1 s for a 96^3 box.
    """
    fine = block_mean(box_image, [2, 2, 2])  # 5 mm for the 2.5 mm box
    coarse = block_mean(fine, [2, 2, 2])  # 10 mm
    coarse_head, fine_head = _head_points(coarse), _head_points(fine)
    if coarse_head is None or fine_head is None:
        return None
    (_, points, _), (centre_fine, fine_points, fine_mask) = coarse_head, fine_head
    centre_coarse = (centre_fine - 0.5) / 2.0  # the same point on the coarser grid (block means: i -> 2i + 0.5)
    yaws, rolls = np.meshgrid(np.arange(-YAW_RANGE_DEG, YAW_RANGE_DEG + 0.1, COARSE_STEP_DEG),
                              np.arange(-ROLL_RANGE_DEG, ROLL_RANGE_DEG + 0.1, COARSE_STEP_DEG), indexing="ij")
    scores = _symmetry(coarse, points, centre_coarse, plane_normal(yaws.ravel(), rolls.ravel()))
    best = int(np.argmax(scores))
    yaw0, roll0 = float(yaws.ravel()[best]), float(rolls.ravel()[best])
    steps = np.arange(-COARSE_STEP_DEG, COARSE_STEP_DEG + 0.1, FINE_STEP_DEG)
    if max(abs(yaw0), abs(roll0)) + COARSE_STEP_DEG < POSE_MIN_DEG:  # upright on the coarse grid: the refinement
        steps = np.zeros(1)  # could not reach POSE_MIN_DEG, the box stays; half the cost on most heads
    fine_yaws, fine_rolls = np.meshgrid(yaw0 + steps, roll0 + steps, indexing="ij")
    candidates = np.r_[plane_normal(fine_yaws.ravel(), fine_rolls.ravel()), plane_normal([0.0], [0.0])]
    fine_scores = _symmetry(fine, fine_points, centre_fine, candidates)
    best = int(np.argmax(fine_scores[:-1]))
    pose = Pose(yaw_deg=float(fine_yaws.ravel()[best]), roll_deg=float(fine_rolls.ravel()[best]),
                symmetry=float(fine_scores[best]), symmetry_upright=float(fine_scores[-1]),
                centre_box=2.0 * centre_fine + 0.5)
    if not pose.far:  # the box stays whatever the overlap: not measured
        return pose
    return replace(pose, mirror_overlap=_mirror_overlap(fine_mask, centre_fine, candidates[best]))


def plane_rotation(yaw_deg: float, roll_deg: float) -> npt.NDArray[np.float64]:
    """The rotation (3, 3) taking an upright head's axes to a head turned by ``yaw_deg`` and ``roll_deg``.

    ``Rz(yaw) Ry(-roll)``: it takes R to the plane's normal (:func:`plane_normal`), A to the turned head's anterior
    and S to its superior direction.
    """
    yaw, roll = np.radians(yaw_deg), np.radians(roll_deg)
    turn_z = np.array([[np.cos(yaw), -np.sin(yaw), 0.0], [np.sin(yaw), np.cos(yaw), 0.0], [0.0, 0.0, 1.0]])
    turn_y = np.array([[np.cos(-roll), 0.0, np.sin(-roll)], [0.0, 1.0, 0.0], [-np.sin(-roll), 0.0, np.cos(-roll)]])
    return turn_z @ turn_y


def upright_box(box: Box, pose: Pose) -> Box:
    """``box`` turned about the head's centre by the head's yaw and roll: its first axis along the plane's normal.

    Parameters
    ----------
    box : Box
        A world-aligned box (diagonal affine).
    pose : Pose
        :func:`head_pose` of the image in that box.

    Returns
    -------
    Box
        The same shape and spacing; voxel -> RAS+ affine ``T(c) R T(-c) box.affine`` with ``c`` the head's centre
        in mm and ``R`` the rotation taking R to the normal (``R = Rz(yaw) Ry(-roll)``): the head it holds is
        upright.
    """
    rotation = np.eye(4)
    rotation[:3, :3] = plane_rotation(pose.yaw_deg, pose.roll_deg)
    centre = box.affine[:3, :3] @ pose.centre_box + box.affine[:3, 3]
    to_origin, back = np.eye(4), np.eye(4)
    to_origin[:3, 3], back[:3, 3] = -centre, centre
    return Box(shape=box.shape, affine=back @ rotation @ to_origin @ box.affine)


def measured_pose(image_ras: npt.NDArray[np.floating], ras_affine: Affine) -> Pose | None:
    """The head's pose read as the detector reads it: :func:`head_pose` in the detector's default box
    (:func:`defacer.detect.preprocess.to_box`), for a caller without a detector's reading (a label map given
    instead, the verification's renders); ``None`` where the box holds no head."""
    return to_box(np.asarray(image_ras, np.float32), ras_affine)[1].pose


def turned_affine(affine: npt.NDArray[np.float64], shape: tuple[int, ...], axis: str, degrees: float
                  ) -> npt.NDArray[np.float64]:
    """``affine`` turned by ``degrees`` about world axis ``axis`` (``"x"``: R, ``"y"``: A, ``"z"``: S) through the
    volume's centre: the same voxels, a head turned in the world (for tests and benchmarks of turned heads).

    Parameters
    ----------
    affine : ndarray, shape (4, 4)
        Voxel -> RAS+ mm.
    shape : tuple of int
        The volume's shape (its first three axes are the grid's).
    axis : {"x", "y", "z"}
    degrees : float
        Right-handed about the axis (``"z"``, 30: the face turned towards the subject's left).
    """
    i, j = {"x": (1, 2), "y": (2, 0), "z": (0, 1)}[axis]  # the plane turned, in the right-handed order
    angle = np.radians(degrees)
    c, s = np.cos(angle), np.sin(angle)
    rotation = np.eye(4)
    rotation[i, i], rotation[i, j], rotation[j, i], rotation[j, j] = c, -s, s, c
    centre = np.asarray(affine, float) @ np.r_[(np.asarray(shape[:3], float) - 1) / 2, 1.0]
    to_origin, back = np.eye(4), np.eye(4)
    to_origin[:3, 3], back[:3, 3] = -centre[:3], centre[:3]
    return back @ rotation @ to_origin @ np.asarray(affine, float)
