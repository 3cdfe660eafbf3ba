"""Command-line options shared by the commands that deface or de-identify, and the option objects built from them.

The defaults shown and used here are read from :class:`defacer.options.DefaceOptions`,
:class:`defacer.phi.options.DeidOptions` and :data:`defacer.options.DEFAULT_MAX_VOXELS`; nothing
repeats them.  This module and the command modules import no numerical library (numpy, nibabel, SciPy),
so the arguments are parsed before those imports (``defacer deface`` starts reading the scan meanwhile).  ``deface`` and ``batch`` add :func:`add_deface_arguments`,
:func:`add_scan_arguments`, :func:`add_force_argument` and :func:`add_verify_arguments`;
``deface``, ``batch`` and ``anonymize`` add :func:`add_deid_arguments` (the first two with
``--no-deidentify``).  Each option is declared once, with one help text for every command.
"""

from __future__ import annotations

import argparse
import logging
from typing import TYPE_CHECKING

from defacer.cli.paths import path_argument
from defacer.labels import FEATURES, parse_features
from defacer.options import (
    DEFAULT_MAX_VOXELS,
    DEFAULT_OPTIONS,
    NOSE_REACH_MM,
    STRONGER_FLAGS,
    DefaceOptions,
    Deidentification,
)

if TYPE_CHECKING:
    from defacer.phi.options import DeidOptions

log = logging.getLogger(__name__)

#: A parser or an argument group (both have ``add_argument`` and ``add_mutually_exclusive_group``).
ArgumentTarget = argparse.ArgumentParser | argparse._ArgumentGroup

#: Flag name -> (DeidOptions field, help), for the standard's options.
RETAIN_FLAGS: dict[str, tuple[str, str]] = {
    "--retain-safe-private": ("retain_safe_private", "keep private attributes known to be safe (PS3.15 E.3.10)"),
    "--retain-uids": ("retain_uids", "keep the original UIDs"),
    "--retain-device-identity": ("retain_device_identity", "keep device serial numbers, station names and IDs"),
    "--retain-institution-identity": ("retain_institution_identity", "keep institution names and addresses"),
    "--retain-patient-characteristics": ("retain_patient_characteristics",
                                         "keep sex, age, size, weight and similar"),
    "--clean-descriptors": ("clean_descriptors",
                            "keep descriptions and comments but mask identifying text in them (instead of removing)"),
    "--clean-structured-content": ("clean_structured_content", "clean SR content instead of removing it"),
    "--clean-graphics": ("clean_graphics", "clean graphics/overlays instead of removing them"),
}


def parse_voxel_limit(text: str) -> int:
    """``--max-voxels``: a positive integer, or 0 for no limit (``1e9`` and ``512**3`` forms too)."""
    try:
        value = int(float(text)) if "**" not in text else int(text.split("**")[0]) ** int(text.split("**")[1])
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected a number of voxels such as 134217728, 1e9 or 512**3, "
                                         f"not '{text}'") from err
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of voxels (0: no limit), not {value}")
    return value


def parse_jobs(text: str) -> int:
    """``--jobs``: a whole number of worker processes, 1 or more (more than the cores is capped by the run)."""
    from defacer.batch.workers import usable_cores

    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        cores = usable_cores()
        raise argparse.ArgumentTypeError(
            f"expected a whole number of worker processes, 1 or more; found '{text}'. Give --jobs 1 for one worker, "
            f"or up to --jobs {cores} to use every CPU core of this machine")
    return value


def add_jobs_argument(parser: ArgumentTarget, help_text: str) -> None:
    """``-j/--jobs N`` (default 1), checked by :func:`parse_jobs`."""
    parser.add_argument("-j", "--jobs", type=parse_jobs, default=1, metavar="N", help=help_text)


def max_voxels_from_args(args: argparse.Namespace) -> int | None:
    """The loader's voxel limit for these arguments (``None``: no limit)."""
    value: int | None = getattr(args, "max_voxels", None)
    if value is None:
        return DEFAULT_MAX_VOXELS
    return None if value == 0 else value


def add_scan_arguments(parser: ArgumentTarget) -> None:
    """How each scan is read and when its output is written: ``--weights``, ``--max-voxels`` and
    ``--allow-missing`` (read back with :func:`max_voxels_from_args` and ``args.allow_missing``)."""
    side = round(DEFAULT_MAX_VOXELS ** (1 / 3))
    parser.add_argument("--weights", metavar="FILE", type=path_argument,
                        help="use other ONNX detector weights (default: the shipped model)")
    parser.add_argument("--max-voxels", type=parse_voxel_limit, default=None, metavar="N",
                        help=f"refuse scans declaring more voxels than N, before reading them (batch records such a "
                             f"scan as failed; default {side}^3 = {DEFAULT_MAX_VOXELS}; 0: no limit)")
    parser.add_argument("--allow-missing", action="store_true",
                        help="write the output even when a requested feature is not found (by default nothing is "
                             "written for that scan, batch records it as nothing-found or incomplete, and the exit "
                             "status is 4: an unchanged copy could pass for a defaced scan)")


def add_force_argument(parser: ArgumentTarget) -> None:
    """``--force``: replace what defacer wrote before (:mod:`defacer.io.output_guard`, :mod:`defacer.batch.ownership`)."""
    parser.add_argument("--force", action="store_true",
                        help="deface: replace an existing output (a file, or a folder defacer itself wrote); "
                             "batch: write into a non-empty OUT that is no batch output, beside its files. Never "
                             "replaces a folder (batch: nor a file) that defacer did not write")


def add_verify_arguments(parser: ArgumentTarget) -> None:
    """``--verify``, ``--qc-after-only`` and ``--retry-stronger``: check each defaced face (pictures only in a QC
    folder beside the output), and deface again larger where a face is still found."""
    parser.add_argument("--verify", action="store_true",
                        help="render each face before and after and check it with offline face detectors (needs "
                             "defacer[verify]); reports and pictures go to a QC folder beside the output, never into "
                             "it (deface: OUT-stem-qc/; batch: OUT-qc/ with a gallery). They show the original faces: "
                             "keep that folder private")
    parser.add_argument("--qc-after-only", action="store_true",
                        help="with --verify: put no picture of an original face in the QC folder, only pictures after "
                             "defacing")
    parser.add_argument("--retry-stronger", action="store_true",
                        help="verify (as --verify), and when a face is still found after defacing a scan, deface it "
                             f"again from the original with a larger nose removal and eye cover ({STRONGER_FLAGS}; the "
                             "other options as given) and verify that; if a face is found even then, once more with "
                             "--whole-face. Every attempt is recorded (deface: in the sidecar; batch: in the "
                             "manifest). batch: a rerun with it redoes only the scans whose verification found a "
                             "face")


def add_deface_arguments(parser: ArgumentTarget, *, seed_help: str | None = None) -> None:
    """What to distort and how: ``--features``, ``--seed``, ``--protect-depth``, ``--eye-band``,
    ``--eye-box-scale``, ``--nose-scale`` (the fields of :class:`~defacer.options.DefaceOptions`)."""
    d = DEFAULT_OPTIONS
    parser.add_argument("--features", default="all", metavar="LIST",
                        help=f"comma-separated features to distort, from {', '.join(FEATURES)} (default: all)")
    parser.add_argument("--seed", type=int, default=d.seed,
                        help=seed_help or f"seed of the ear noise; same seed, same output (default {d.seed})")
    parser.add_argument("--protect-depth", type=float, default=d.protect_depth_mm, metavar="MM",
                        help=f"never change voxels deeper than this below the head surface "
                             f"(default {d.protect_depth_mm:g} mm)")
    parser.add_argument("--eye-band", type=float, default=d.eye_band_mm, metavar="MM",
                        help=f"thickness of the skin layer under each eye cover (default {d.eye_band_mm:g} mm)")
    parser.add_argument("--eye-box-scale", type=float, default=d.eye_box_scale, metavar="X",
                        help=f"each eye cover is an ellipse X times the detected eye's size, with a soft edge "
                             f"(default {d.eye_box_scale:g}: from the brow to the upper cheek, nasal bridge to outer "
                             "eye corner)")
    parser.add_argument("--nose-scale", type=float, default=d.nose_scale, metavar="X",
                        help=f"the nose's bounding box is enlarged X times per axis (default {d.nose_scale:g}), "
                             f"within {NOSE_REACH_MM:g} mm of the detected nose's centroid")
    parser.add_argument("--whole-face", action="store_true",
                        help="also remove the whole face in front of the eyes, from above the brows to below the "
                             "chin (set to air; only the outer --protect-depth of the head, never the brain): the "
                             "last resort for a scan whose face is still found after the feature distortions")


def deface_options_from_args(args: argparse.Namespace) -> DefaceOptions:
    """Build :class:`~defacer.options.DefaceOptions` from the arguments of :func:`add_deface_arguments`.

    Raises
    ------
    DefacerError
        For an unknown feature or an out-of-range value, saying what is allowed.
    """
    from defacer.errors import DefacerError

    try:
        return DefaceOptions(features=parse_features(args.features), seed=args.seed,
                             protect_depth_mm=args.protect_depth, eye_band_mm=args.eye_band,
                             eye_box_scale=args.eye_box_scale, nose_scale=args.nose_scale,
                             whole_face=bool(getattr(args, "whole_face", False)))
    except ValueError as err:
        raise DefacerError(str(err)) from err


def add_deid_arguments(parser: ArgumentTarget, *, mapping: bool = True, what_if: bool = True,
                       optional: bool = False) -> None:
    """The header de-identification options (PS3.15 Annex E) on a parser or argument group.

    ``mapping`` adds ``--mapping-file``, ``what_if`` adds ``--what-if`` (``batch`` has neither);
    ``optional`` adds ``--no-deidentify`` (``deface`` and ``batch``: a DICOM series is also defaced).
    """
    if optional:
        parser.add_argument("--no-deidentify", action="store_true",
                            help="deface the pixels only; leave every header attribute as it is (by default headers "
                                 "are de-identified following DICOM PS3.15 Annex E)")
    parser.add_argument("--key", metavar="TEXT",
                        help="secret for the keyed pseudonyms (UIDs, IDs, date shifts); the same key gives the same "
                             "pseudonyms on every run. Prefer --key-file (a command line is visible to others)")
    parser.add_argument("--key-file", metavar="FILE", type=path_argument,
                        help="file holding the secret key (at least 16 bytes). Without --key/--key-file a random key "
                             "is used: pseudonyms are consistent within this run only")
    for flag, (_, help_text) in RETAIN_FLAGS.items():
        parser.add_argument(flag, action="store_true", help=help_text)
    dates = parser.add_mutually_exclusive_group()
    dates.add_argument("--retain-full-dates", action="store_true",
                       help="keep all dates and times unchanged (Retain Longitudinal Temporal Information, full dates)")
    dates.add_argument("--retain-shifted-dates", action="store_true",
                       help="keep dates shifted into the past by a per-patient offset derived from the key "
                            "(modified dates option); default: dates removed or emptied")
    if mapping:
        parser.add_argument("--mapping-file", metavar="FILE", type=path_argument,
                            help="write the original -> new identifiers (UIDs, patient IDs, date shifts) as JSON "
                                 "here; never inside the output folder. Keep it apart from the data: it re-identifies "
                                 "it")
    parser.add_argument("--allow-burned-in", action="store_true",
                        help="process instances that may show text in their pixels (BurnedInAnnotation not NO, "
                             "secondary captures, screenshots) or identify by their content (photographs, voice "
                             "recordings, surface scans) instead of refusing them; their pixels are NOT cleaned")
    if what_if:
        parser.add_argument("--what-if", "--describe", dest="what_if", action="store_true",
                            help="print what will be done to each header attribute, and stop without writing anything")


def deid_options_from_args(args: argparse.Namespace) -> DeidOptions:
    """Build :class:`~defacer.phi.options.DeidOptions` (the PS3.15 options) from :func:`add_deid_arguments`'s."""
    from defacer.phi.options import DeidOptions

    values = {field: bool(getattr(args, flag[2:].replace("-", "_"))) for flag, (field, _) in RETAIN_FLAGS.items()}
    return DeidOptions(**values, retain_long_full_dates=args.retain_full_dates,
                       retain_long_modified_dates=args.retain_shifted_dates, allow_burned_in=args.allow_burned_in)


def deidentification_from_args(args: argparse.Namespace, *, warn_random: bool = True) -> Deidentification | None:
    """The :class:`~defacer.options.Deidentification` of these arguments; ``None`` with ``--no-deidentify``.

    The key is read here (``--key`` / ``--key-file``); without one the scrubber draws a random key and, with
    ``warn_random``, a warning says that pseudonyms are consistent within this run only.

    Raises
    ------
    DefacerError
        When both ``--key`` and ``--key-file`` are given, or the key is unreadable or too short.
    """
    from defacer.phi.pseudonym import load_key

    if getattr(args, "no_deidentify", False):
        return None
    key: bytes | None = None
    if args.key is not None or args.key_file is not None:
        key, _ = load_key(args.key, args.key_file)
        if args.key is not None:  # as 'serve --token': the secret is readable by others while the command runs
            log.warning("The key given with --key is visible to every user of this computer while the command runs "
                        "(ps, /proc/PID/cmdline) and stays in your shell history; with it and the original "
                        "identifiers anyone can recompute the pseudonyms and date shifts. Put it in a file only you "
                        "can read (umask 077) and pass --key-file FILE instead.")
    elif warn_random:
        log.warning("No --key/--key-file given: using a random key, so pseudonyms (UIDs, IDs, date shifts) are "
                    "consistent within this run only.")
    return Deidentification(profile=deid_options_from_args(args), key=key,
                            record_mapping=getattr(args, "mapping_file", None) is not None)


def print_what_if(options: DeidOptions) -> None:
    """Print the per-attribute plan of these :class:`~defacer.phi.options.DeidOptions`."""
    from defacer.phi.describe import describe_actions

    print("\n".join(describe_actions(options)))
