"""``defacer train``: train the facial-feature detector and export it to ONNX (extra ``train``).

Example (one run; the shipped model and its cross-validation folds come from
``scripts/train_detector_folds.sh``, see docs/model-card.md)::

    defacer train --data ../shared/data --labels-dir reference_labels --cache build/boxes96.npz \
        --validate-on-train --out build/train/main --export build/train/main/detector.onnx --time-limit 3600
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from defacer.cli.paths import path_argument
from defacer.errors import InputImageError, MissingExtraError, OutputError
from defacer.files import read_json_object

if TYPE_CHECKING:
    from defacer.train.data import BoxSample


#: The files a training run writes into its ``--out`` folder (:func:`defacer.train.loop.train`).
CHECKPOINT_FILES = ("best.pt", "last.pt", "history.json")

#: Largest ``--box-size`` (voxels per axis): a 256^3 box is a 1 mm head whole, and the training's float32 cache,
#: network activations and augmentation copies grow with its cube (a 1024 box would ask for tens of GB before
#: anything said so).
MAX_BOX_SIZE = 256


@contextlib.contextmanager
def only_run_in(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on the checkpoint folder ``out`` (created if absent) while a run trains and exports.

    Two runs started into one ``--out`` (a sweep with a repeated name, a run started again under ``--force`` while the
    first trains) both passed the output check, then wrote ``best.pt``, ``last.pt`` and ``history.json`` over each
    other's each epoch: checkpoints and history of two runs mixed, and an export whose card described the other run.
    The lock is an ``flock`` on the folder itself (no file is added to it); the system releases it when the process
    ends, so a killed run never leaves it held.

    Raises
    ------
    OutputError
        If another run holds it.
    """
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not POSIX: run without the lock
        fcntl = None  # type: ignore[assignment]
    handle = os.open(out, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)) if fcntl is not None else None
    try:
        if fcntl is not None and handle is not None:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as err:  # held by another process; a disk that takes no locks runs without it
                raise OutputError(f"Another defacer training run is writing its checkpoints to '{out}' right now "
                                  "(nothing was written). Wait for it to finish, or choose another --out.") from err
            except OSError:  # ENOLCK, EOPNOTSUPP (some network shares): no other run, train without the lock
                pass
        yield
    finally:
        if handle is not None:
            os.close(handle)
        if created:  # a run refused before its first checkpoint (a bad input) leaves no folder behind
            with contextlib.suppress(OSError):
                out.rmdir()


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the ``train`` subcommand."""
    parser = subparsers.add_parser(
        "train", help="train the eye/nose/ear detector (needs defacer[train])",
        description="Train the attention U-Net on labelled heads (+ synthetic phantoms) and export ONNX weights.",
    )
    parser.add_argument("--ensemble", type=path_argument, nargs="+", default=None, metavar="CHECKPOINT",
                        help="do not train: export the mean of these checkpoints to --export (the shipped model)")
    parser.add_argument("--data", type=path_argument, default=None, help="folder the label provenance's 'source' paths are relative to")
    parser.add_argument("--labels-dir", type=path_argument, default=None,
                        help="folder with <scan>.labels.nii.gz and provenance.json (see reference_labels/README.md)")
    parser.add_argument("--cache", type=path_argument, default=None, metavar="FILE.npz",
                        help="the real heads already on the network's box: read from FILE when it exists (then --data "
                             "and --labels-dir are not needed), else made from --data/--labels-dir and written there. "
                             "It holds cut-down scans: keep it out of the repository")
    parser.add_argument("--out", type=path_argument, required=True, help="checkpoint folder")
    parser.add_argument("--export", type=path_argument, default=None, help="write the best model as ONNX (+ .json card) here")
    parser.add_argument("--force", action="store_true",
                        help="replace existing checkpoints (best.pt, last.pt, history.json in --out), --export and its "
                             "card; never an input (--resume, --ensemble, --cache)")
    parser.add_argument("--holdout", nargs="*", default=[], help="scan names never trained on (validation set)")
    parser.add_argument("--exclude", nargs="*", default=[], help="scan names not used at all")
    parser.add_argument("--validate-on-train", action="store_true",
                        help="also score the (unaugmented) training scans each epoch; use when no scan can be spared "
                             "for validation (held-out numbers then come from benchmarks/evaluate_detector.py folds)")
    parser.add_argument("--phantoms", type=int, default=8, help="synthetic phantoms added to training (default 8)")
    parser.add_argument("--epochs", type=int, default=60, help="training epochs (default 60; 0: train nothing, e.g. only build --cache)")
    parser.add_argument("--samples-per-epoch", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--patience", type=int, default=5)
    parser.add_argument("--channels", type=str, default="8,16,32,64", help="channels per level, finest first")
    parser.add_argument("--time-limit", type=float, default=0.0, help="stop after this many seconds (0: none)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--resume", type=path_argument, default=None,
                        help="start from the weights of this checkpoint (.pt) or exported single detector (.onnx; "
                             "--channels must match). The shipped detector is an ensemble of two: write its "
                             "members with 'python scripts/split_detector_members.py --out build/folds' and "
                             "resume from one, e.g. build/folds/foldA.onnx with --channels 8,16,32,64")
    parser.add_argument("--foreground-probability", type=float, default=0.7, metavar="P",
                        help="with --patch: chance that a patch is centred on a feature (default 0.7); high values "
                             "teach a larger foreground prior (over-segmentation on whole boxes), so finish with ~0.33")
    parser.add_argument("--patch", type=int, default=0,
                        help="train on cubes of this many voxels cut from each augmented box, centred on a feature with "
                             "the chance --foreground-probability (ears twice as often); 0: whole box. 64 makes CPU "
                             "training ~3x cheaper")
    parser.add_argument("--box-size", type=int, default=None, metavar="N",
                        help="the network's input box: N voxels per axis, at most 256 (default: an existing --cache's box, else the "
                             "package's, defacer.detect.preprocess.BOX_SHAPE); written into the checkpoint and the "
                             "exported card, which inference follows")
    parser.add_argument("--box-spacing", type=float, default=None, metavar="MM",
                        help="the box's voxel size in mm (default: an existing --cache's, else the package's "
                             "BOX_SPACING); --box-size x --box-spacing should keep about 240 mm, a whole head")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--class-weights", default="1,1,1,3", metavar="B,E,N,A",
                        help="factors on the background, eyes, nose and ears probabilities written into the exported "
                             "card (default 1,1,1,3: the ears, thin and under-segmented, get 3; see docs/model-card.md)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Train, then optionally export; prints one JSON line per epoch."""
    try:
        import monai  # noqa: F401
        import torch  # noqa: F401
    except ImportError as err:
        raise MissingExtraError("train", err.name or "torch") from err
    from defacer.detect.preprocess import BOX_SHAPE, BOX_SPACING
    from defacer.train.data import make_phantom_samples
    from defacer.train.export import export_ensemble, export_onnx
    from defacer.train.loop import TrainConfig, train
    from defacer.train.unet import UNetConfig

    class_weights = _class_weights(args.class_weights)  # checked before any training starts
    channels = _channels(args.channels)
    _check_numbers(args)
    step = 2 ** (len(channels) - 1)
    size = BOX_SHAPE[0] if args.box_size is None else args.box_size
    spacing = BOX_SPACING if args.box_spacing is None else args.box_spacing
    if size <= 0 or size % step or size > MAX_BOX_SIZE or not 0.5 <= spacing <= 8.0:
        message = (f"--box-size expects a positive multiple of {step} (the network pools {len(channels) - 1} times) up "
                   f"to {MAX_BOX_SIZE} and --box-spacing a voxel size from 0.5 to 8 mm, found {size} and {spacing:g}. "
                   f"The package's box is {BOX_SHAPE[0]} voxels x {BOX_SPACING:g} mm.")
        raise InputImageError(message)
    if args.patch > size:
        raise InputImageError(f"--patch {args.patch} is larger than the box ({size} voxels per axis); "
                              "pass a patch no larger than --box-size, or 0 for whole boxes.")
    if args.patch < 0 or args.patch % step:
        message = (f"--patch expects 0 or a positive multiple of {step} (the network pools {len(channels) - 1} times), "
                   f"found {args.patch}. Try --patch 64.")
        raise InputImageError(message)
    if args.ensemble and args.export is None:
        raise InputImageError("--ensemble needs --export PATH.onnx to write the combined model to.")
    check_train_outputs(args)
    if args.ensemble:
        trained_on: list[str] = []
        for checkpoint in args.ensemble:
            trained_on += _trained_on(checkpoint.parent / "detector.json")
        card = export_ensemble(list(args.ensemble), args.export,
                               {"trained_on": sorted(set(trained_on)), "class_weights": class_weights},
                               replace=args.force)
        print(json.dumps({"exported": str(args.export), "sha256": card["sha256"]}), flush=True)
        return 0
    with only_run_in(args.out):  # a second run into this --out meanwhile would mix checkpoints with this one's
        samples = _real_samples(args)
        samples = [s for s in samples if s.name not in args.exclude]
        train_samples = [s for s in samples if s.name not in args.holdout]
        val_samples = [s for s in samples if s.name in args.holdout]
        if args.validate_on_train:
            val_samples += [s for s in train_samples]
        if args.phantoms:
            shape, box_mm = _sample_box(samples[0]) if samples else ((size,) * 3, spacing)  # the real heads' box
            phantoms = make_phantom_samples(args.phantoms + 2, seed=args.seed, shape=shape, spacing=box_mm)
            train_samples += phantoms[:-2]
            val_samples += phantoms[-2:]
        config = TrainConfig(epochs=args.epochs, samples_per_epoch=args.samples_per_epoch, batch_size=args.batch_size,
                             learning_rate=args.lr, patience=args.patience, time_limit_s=args.time_limit,
                             seed=args.seed, threads=args.threads, patch=args.patch,
                             foreground_probability=args.foreground_probability, unet=UNetConfig(channels=channels).to_dict())
        print(json.dumps({"train": [s.name for s in train_samples], "validate": [s.name for s in val_samples]}), flush=True)
        best = train(train_samples, val_samples, args.out, config, resume=args.resume)
        if args.export is not None:
            card = export_onnx(best, args.export, {"trained_on": [s.name for s in train_samples],
                                                   "validated_on": [s.name for s in val_samples],
                                                   "class_weights": class_weights}, replace=args.force)
            print(json.dumps({"exported": str(args.export), "sha256": card["sha256"]}), flush=True)
    return 0


def check_train_outputs(args: argparse.Namespace) -> None:
    """Check every file the run will write before any training: none is an input, none exists unless ``--force``.

    The outputs are the checkpoints in ``--out`` (not with ``--ensemble``), ``--export`` and its ``.json``
    card, and a ``--cache`` that does not exist yet; the inputs are ``--resume``, the ``--ensemble``
    checkpoints and an existing ``--cache`` (the scans under ``--data`` are read-only data sets, not walked here).

    Raises
    ------
    OutputError
        Naming the output and why it may not be written.
    """
    from defacer.io.output_guard import check_outputs

    outputs: list[Path | None] = [] if args.ensemble else [args.out / name for name in CHECKPOINT_FILES]
    if args.export is not None:
        outputs += [args.export, args.export.with_suffix(".json")]
    cache_is_input = args.cache is not None and args.cache.is_file()
    if args.cache is not None and not cache_is_input:
        outputs.append(args.cache)
    inputs = [args.resume, *(args.ensemble or []), args.cache if cache_is_input else None]
    check_outputs(outputs, inputs=inputs, force=args.force)
    if not args.ensemble and not cache_is_input:
        for what, folder in (("--data", args.data), ("--labels-dir", args.labels_dir)):
            _check_outside(outputs, folder, what)


def _check_outside(outputs: list[Path | None], folder: Path | None, what: str) -> None:
    """Refuse to replace a file inside the read-only ``folder`` (``--data`` or ``--labels-dir``), even with
    ``--force``: ``--export LABELS/provenance.onnx --force`` wrote its card over ``LABELS/provenance.json``, and
    checkpoints in ``--out DATA`` replaced files of the data set.  New files there (``--out DATA/run``) are
    the user's choice and stay allowed.

    Raises
    ------
    OutputError
    """
    from defacer.errors import OutputError
    from defacer.io.output_guard import true_path

    if folder is None or not Path(folder).is_dir():
        return
    inside = true_path(folder)
    for output in outputs:
        if output is not None and os.path.lexists(output) and inside in true_path(output).parents:
            raise OutputError(
                f"The output '{output}' would replace a file inside {what} '{folder}', which training only "
                "reads (--force does not cover it). Write the checkpoints, --export and --cache somewhere else "
                "(for example build/train/)."
            )


def _real_samples(args: argparse.Namespace) -> list[BoxSample]:
    """The labelled real heads on the box, from ``--cache`` or from ``--data``/``--labels-dir``."""
    from defacer.train.data import load_real_samples, load_samples, save_samples

    if args.cache is not None and args.cache.is_file():
        samples = load_samples(args.cache)
        _check_cached_box(samples, args)
        return samples
    if args.data is None or args.labels_dir is None:
        message = ("Expected --data DIR and --labels-dir DIR (or an existing --cache FILE.npz), "
                   f"found data={args.data}, labels-dir={args.labels_dir}, cache={args.cache}. Pass both folders.")
        raise InputImageError(message)
    provenance = args.labels_dir / "provenance.json"
    if not provenance.is_file():
        message = f"Expected {provenance} (written by scripts/make_reference_labels.py), found nothing."
        raise InputImageError(message)
    records = read_json_object(provenance, what="label provenance",
                               redo="Write it again with scripts/make_reference_labels.py.")
    try:
        scans = {str(name): str(rec["source"]) for name, rec in records.items()}
    except (TypeError, KeyError) as err:
        raise InputImageError(f"{provenance} does not give a 'source' for every scan (written by "
                              "scripts/make_reference_labels.py: {name: {'source': path, ...}}).") from err
    from defacer.detect.preprocess import BOX_SHAPE, BOX_SPACING

    size = BOX_SHAPE[0] if args.box_size is None else args.box_size
    spacing = BOX_SPACING if args.box_spacing is None else args.box_spacing
    samples = load_real_samples(args.data, args.labels_dir, scans, shape=(size,) * 3, spacing=spacing)
    if args.cache is not None:
        save_samples(samples, args.cache)
    return samples


def _trained_on(card_path: Path) -> list[str]:
    """The scans a checkpoint's card (beside it, if any) lists as ``trained_on``; a damaged card is refused in words.

    It was read with :func:`json.loads` as it was: text that is no JSON, a list, or ``"trained_on": 5`` stopped
    ``train --ensemble`` with "unexpected error ... a bug".
    """
    if not card_path.is_file():
        return []
    redo = "Remove it (the ensemble's card then lists no training scans from it) or re-export that model."
    names = read_json_object(card_path, what="model card", redo=redo).get("trained_on", [])
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise InputImageError(f"The model card '{card_path}' has \"trained_on\" {json.dumps(names)[:80]}: expected a "
                              f"list of scan names. {redo}")
    return names


def _sample_box(sample: BoxSample) -> tuple[tuple[int, int, int], float]:
    """A box sample's grid: its shape (voxels) and voxel size (mm)."""
    import numpy as np

    shape = tuple(int(n) for n in sample.image.shape)
    return (shape[0], shape[1], shape[2]), float(np.sqrt((sample.affine[:3, :3] ** 2).sum(axis=0))[0])


def _check_cached_box(samples: list[BoxSample], args: argparse.Namespace) -> None:
    """Refuse a ``--cache`` made on another box than an explicit ``--box-size``/``--box-spacing`` (its heads would not fit)."""
    if not samples:
        return
    shape, spacing = _sample_box(samples[0])
    if (args.box_size is not None and shape != (args.box_size,) * 3) or (
            args.box_spacing is not None and abs(spacing - args.box_spacing) > 1e-6):
        message = (f"The cache {args.cache} holds heads on a {shape[0]}-voxel box at {spacing:g} mm, but --box-size "
                   f"{args.box_size} --box-spacing {args.box_spacing} asks for another box. Pass the cache made for "
                   "this box, a new --cache path to make one, or neither option to train on the cache's box.")
        raise InputImageError(message)


def _class_weights(text: str) -> list[float]:
    """Parse ``--class-weights``: four positive numbers."""
    try:
        weights = [float(v) for v in text.split(",")]
    except ValueError:
        weights = []
    if len(weights) != 4 or not all(math.isfinite(w) and w > 0 for w in weights):
        message = f"--class-weights expects four positive numbers (background,eyes,nose,ears), found {text!r}."
        raise InputImageError(message)
    return weights


def _channels(text: str) -> tuple[int, ...]:
    """Parse ``--channels``: 2 to 6 positive whole numbers, finest level first."""
    try:
        channels = tuple(int(c) for c in text.split(","))
    except ValueError:
        channels = ()
    if not 2 <= len(channels) <= 6 or not all(c >= 1 for c in channels):
        raise InputImageError(f"--channels expects 2 to 6 positive whole numbers, finest level first (the shipped "
                              f"network: 8,16,32,64), found {text!r}.")
    return channels


def _check_numbers(args: argparse.Namespace) -> None:
    """Refuse, before any data is read, the numbers no training can run with, naming each and its range."""
    problems = []
    for name, value, low in (("--epochs", args.epochs, 0), ("--samples-per-epoch", args.samples_per_epoch, 1),
                             ("--batch-size", args.batch_size, 1), ("--patience", args.patience, 1),
                             ("--threads", args.threads, 1), ("--phantoms", args.phantoms, 0)):
        if value < low:
            problems.append(f"{name} >= {low} (found {value})")
    if not (math.isfinite(args.lr) and args.lr > 0):
        problems.append(f"--lr a finite number > 0 (found {args.lr})")
    if not (math.isfinite(args.time_limit) and args.time_limit >= 0):
        problems.append(f"--time-limit seconds >= 0, 0 for none (found {args.time_limit})")
    if not 0.0 <= args.foreground_probability <= 1.0:  # NaN fails both comparisons
        problems.append(f"--foreground-probability between 0 and 1 (found {args.foreground_probability})")
    if problems:
        raise InputImageError("Expected " + "; ".join(problems) + ".")
