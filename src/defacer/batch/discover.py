"""Find the scans to deface in a dataset folder.

Three kinds of input folder are recognised:

``bids``
    A BIDS dataset (``dataset_description.json`` or ``sub-*`` folders at the top).  Every
    image below an ``anat/`` folder (at any depth) is a scan to deface (T1w, T2w, FLAIR, PDw, T2starw, angio,
    quantitative maps...), except masks and segmentations; so is every image whose suffix is
    ``CT`` and every image in a ``ct/`` folder.  ``sourcedata/``, ``derivatives/`` and
    ``code/`` are not searched for scans, and never copied (``sourcedata`` usually holds the
    original DICOMs, with faces).
``files``
    Any other folder: every NIfTI, NRRD or MGH/MGZ file below it, and every folder that
    directly holds DICOM files (one series per folder).
A single DICOM series folder is a ``files`` dataset with one scan whose relative path is ``.``.

Filters (``--include``/``--exclude``) are either ``KEY=VALUE`` on BIDS entities (``sub=01``,
``suffix=T1w``, ``datatype=anat``, ``acq=mprage``; the value may hold ``*`` and ``?``), or a
glob matched against the scan's path relative to the input folder and against its name
(``sub-01/*``, ``*_T2w.nii.gz``).  A scan is kept if it matches any include (or there are
none) and no exclude.  Excluded scans are neither defaced nor copied.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import re
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from defacer import files
from defacer._typing import PathLike
from defacer.errors import InputImageError, shown
from defacer.files import label_ending, stays_inside
from defacer.io.output_guard import NRRD_SUFFIXES, nrrd_data_files

#: Image file endings that defacer reads (longest first, so ``.nii.gz`` wins over ``.gz``).
IMAGE_SUFFIXES: tuple[str, ...] = files.IMAGE_SUFFIXES

#: BIDS suffixes in ``anat/`` that hold no face (masks, segmentations): never defaced.
NON_FACE_SUFFIXES: frozenset[str] = frozenset({"defacemask", "mask", "dseg", "probseg", "label", "roi"})

#: Top-level BIDS folders that are neither searched for scans nor copied.
BIDS_SKIPPED_FOLDERS: frozenset[str] = frozenset({"sourcedata", "derivatives", "code"})

#: The file name of a DICOM directory (PS3.10): an index of the media's patients, studies and files, never a series.
DICOMDIR = "DICOMDIR"


#: What batch does with a file of IN that is a symbolic link out of it (a hostile dataset could otherwise copy any
#: file of this machine into the output): the end of the warning.
NOT_CARRIED = "not carried to the output (copy the file into the dataset if it belongs there)"
#: ... and for an image so linked: it is not read at all.
NOT_READ = ("not read, so neither defaced nor carried to the output (a dataset may not pull in files from elsewhere: "
            "copy the file into the dataset if it belongs there, or give its own folder to 'defacer batch')")

log = logging.getLogger(__name__)

_ENTITY = re.compile(r"^([a-zA-Z0-9]+)-([a-zA-Z0-9]+)$")


@dataclass(frozen=True)
class Scan:
    """One scan to deface.

    Attributes
    ----------
    path : Path
        Absolute path of the image file, or of the DICOM series folder.
    relpath : PurePosixPath
        Path relative to the input folder (``"."`` for a lone series folder); this is the
        scan's identity in the manifest and the place of its output in the output folder.
    kind : str
        ``"file"`` or ``"dicom"``.
    entities : dict
        BIDS entities parsed from the name (``sub``, ``ses``, ``acq``...), plus ``suffix``
        and ``datatype`` (the parent folder's name); empty keys are absent.
    sidecar : Path or None
        The scan's own JSON sidecar (``<stem>.json`` beside it), if there is one.
    companions : tuple of Path
        Other input files that belong to the scan (the detached data file of a ``.nhdr``):
        they are replaced by the scan's output, never copied.
    """

    path: Path
    relpath: PurePosixPath
    kind: str
    entities: dict[str, str] = field(default_factory=dict)
    sidecar: Path | None = None
    companions: tuple[Path, ...] = ()

    @property
    def key(self) -> str:
        """The scan's identity: its relative path with forward slashes."""
        return str(self.relpath)

    @property
    def stem(self) -> str:
        """File name without its image ending (``sub-01_T1w`` for ``sub-01_T1w.nii.gz``)."""
        return image_stem(self.relpath.name)

    @property
    def extension(self) -> str:
        """The image ending (``".nii.gz"``), or ``""`` for a DICOM folder."""
        return self.relpath.name[len(self.stem):] if self.kind == "file" else ""


@dataclass(frozen=True)
class Discovery:
    """What :func:`discover` found.

    Attributes
    ----------
    root : Path
        The input folder (absolute).
    layout : str
        ``"bids"`` or ``"files"``.
    scans : list of Scan
        The scans to deface, sorted by relative path.
    others : list of PurePosixPath
        Files to carry over unchanged (relative to ``root``): everything that is not a
        scan, a scan's sidecar or companion, an excluded scan, or under a skipped folder.
    excluded : list of PurePosixPath
        Scans the filters removed (neither defaced nor copied).
    excluded_scans : list of Scan
        The same scans, sorted by key: a case clash with one of them is refused as with a scan of this run
        (:func:`defacer.batch.layout.folded_clashes`), whichever ``--include`` selects.
    """

    root: Path
    layout: str
    scans: list[Scan]
    others: list[PurePosixPath]
    excluded: list[PurePosixPath]
    excluded_scans: list[Scan] = field(default_factory=list)


def image_stem(name: str) -> str:
    """Strip an image ending from a file name (``a.nii.gz`` -> ``a``); other names are kept."""
    return files.image_stem(name)


def is_image_file(path: Path) -> bool:
    """Whether the name ends in an image ending defacer reads."""
    return files.is_image_name(path.name)


def is_dicom_file(path: Path) -> bool:
    """Whether a file is DICOM: ``DICM`` at byte 128 (Part 10), or a ``.dcm`` name."""
    if path.name.lower().endswith(".dcm"):
        return True
    try:
        with path.open("rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def parse_bids_name(relpath: PurePosixPath) -> dict[str, str]:
    """Parse BIDS entities, ``suffix`` and ``datatype`` from a path.

    ``sub-01/ses-1/anat/sub-01_ses-1_acq-mp_T1w.nii.gz`` gives ``{"sub": "01", "ses": "1",
    "acq": "mp", "suffix": "T1w", "datatype": "anat"}``.  Parts that are not ``key-value``
    are ignored, so any name parses.
    """
    entities: dict[str, str] = {}
    parts = image_stem(relpath.name).split("_")
    for part in parts[:-1]:
        match = _ENTITY.match(part)
        if match:
            entities[match.group(1)] = match.group(2)
    if parts and not _ENTITY.match(parts[-1]):
        entities["suffix"] = parts[-1]
    if len(relpath.parts) > 1:
        entities["datatype"] = relpath.parts[-2]
    return entities


def matches(scan_relpath: PurePosixPath, entities: dict[str, str], pattern: str) -> bool:
    """Whether a scan matches one ``--include``/``--exclude`` pattern (see module docstring)."""
    if "=" in pattern:
        key, _, value = pattern.partition("=")
        key = key.strip()
        if key not in entities:
            return False
        return fnmatch.fnmatchcase(entities[key], value.strip())
    text = str(scan_relpath)
    return fnmatch.fnmatchcase(text, pattern) or fnmatch.fnmatchcase(scan_relpath.name, pattern)


def check_patterns(patterns: Iterable[str]) -> list[str]:
    """Validate filter patterns; return them stripped.

    Raises
    ------
    ValueError
        For an empty pattern or ``KEY=VALUE`` with an empty key.
    """
    checked = []
    for pattern in patterns:
        text = pattern.strip()
        if not text or text.startswith("="):
            raise ValueError(
                f"Invalid filter {pattern!r}: expected KEY=VALUE on a BIDS entity (e.g. suffix=T1w, sub=01) "
                "or a glob on the path (e.g. 'sub-0*/anat/*_T1w.nii.gz')."
            )
        checked.append(text)
    return checked


def _selected(scan: Scan, include: Sequence[str], exclude: Sequence[str]) -> bool:
    if include and not any(matches(scan.relpath, scan.entities, p) for p in include):
        return False
    return not any(matches(scan.relpath, scan.entities, p) for p in exclude)


def detect_layout(root: Path) -> str:
    """``"bids"`` if ``root`` has ``dataset_description.json``, or ``sub-*`` folders holding image files;
    else ``"files"``.

    A DICOM export sorted into ``sub-01/``, ``sub-02/``... folders holds no image file: it is a folder of DICOM
    series (as BIDS its series would all be passed over as DICOM outside ``sourcedata/``).
    """
    if (root / "dataset_description.json").is_file():
        return "bids"
    subjects = [child for child in root.iterdir() if child.is_dir() and child.name.startswith("sub-")]
    return "bids" if any(_holds_image_file(folder) for folder in subjects) else "files"


def _holds_image_file(folder: Path) -> bool:
    """Whether an image file (NIfTI, NRRD, MGH/MGZ, by name) lies anywhere under ``folder`` (links not followed)."""
    for _, _, filenames in files.walk(folder):
        if any(files.is_image_name(name) for name in filenames):
            return True
    return False


def _walk(root: Path, skip_top: frozenset[str]) -> Iterable[tuple[Path, list[str], list[str]]]:
    for dirpath, dirnames, filenames in files.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and _text_name(here / d, root)
                             and not _linked_folder(here / d, root))
        if here == root:
            dirnames[:] = [d for d in dirnames if d not in skip_top]
        yield here, dirnames, sorted(f for f in filenames if not f.startswith(".") and _text_name(here / f, root)
                                     and _readable_entry(here / f))


def _text_name(path: Path, root: Path) -> bool:
    """Whether the name of ``path`` (found under ``root``) is text, so that it can be recorded: a name that is not
    valid UTF-8 (bytes kept by Python as surrogates, e.g. Latin-1 from an old export) once stopped the whole batch
    with "'utf-8' codec can't encode character '\\udcff'" when the manifest was written.  Such a file or folder is
    skipped with a warning saying to rename it."""
    if not files.is_text_name(path.name):
        shown = os.fsencode(path.relative_to(root)).decode("utf-8", "backslashreplace")
        what = "the folder and everything under it are" if path.is_dir() and not path.is_symlink() else "it is"
        log.warning("'%s' has a name that is not UTF-8 text: %s neither defaced nor carried to the output (the name "
                    "cannot be recorded). Rename it (e.g. with convmv) and run the batch again.", shown, what)
        return False
    return True


def _series_has_untext_names(here: Path, rel_here: PurePosixPath) -> bool:
    """Whether a DICOM series folder holds a file whose name is not UTF-8 text (see :func:`_text_name`), warned
    about: the series is read whole, so it cannot be defaced without recording that name."""
    try:
        names = [name for name in os.listdir(here) if not (here / name).is_dir()]
    except OSError:
        return False
    bad = [name for name in names if not files.is_text_name(name)]
    if bad:
        log.warning("The DICOM series folder '%s' holds %d file(s) whose names are not UTF-8 text: the series is not "
                    "defaced (it is read whole, and those names cannot be recorded). Rename them (e.g. with convmv) and "
                    "run the batch again.", rel_here.as_posix(), len(bad))
    return bool(bad)


def _linked_folder(path: Path, root: Path) -> bool:
    """Whether ``path`` is a symbolic link to a folder, which batch does not enter (it could lead out of IN, or
    back into it): warned about, since the scans under it are then neither defaced nor copied."""
    if not path.is_symlink():
        return False
    log.warning("'%s' is a symbolic link to a folder: not searched, so nothing under it is defaced or copied. "
                "Give its target as a batch input of its own, or copy the folder into the dataset.",
                path.relative_to(root).as_posix())
    return True


def _readable_entry(path: Path) -> bool:
    """Whether a file found in IN is one to look at: a regular file, or a broken link (a DataLad file not fetched,
    reported later). A named pipe, socket or device is skipped with a warning: opening a pipe waits for a writer
    forever, so one in a hostile dataset would hang the batch."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return path.is_symlink()
    if stat.S_ISREG(mode):
        return True
    log.warning("'%s' is not a regular file (a pipe, socket or device): skipped", path)
    return False


#: BIDS anatomical suffixes (casefolded) of whole-head images: defaced wherever they lie under ``sub-*``, not only
#: in ``anat/`` (a T1w left in ``sub-01/``, ``sub-01/Anat/`` or ``sub-01/T1/`` was carried to OUT with its face).
ANATOMICAL_SUFFIXES: frozenset[str] = frozenset(s.casefold() for s in (
    "T1w", "T2w", "PDw", "T2starw", "FLAIR", "inplaneT1", "inplaneT2", "PDT2", "angio", "T2star", "FLASH", "PD",
    "UNIT1", "T1map", "T2map", "T2starmap", "R1map", "R2map", "R2starmap", "PDmap", "MTRmap", "MTsat", "T1rho",
    "MWFmap", "MTVmap", "Chimap", "S0map", "M0map", "MP2RAGE", "MPM", "MTS", "VFA", "IRT1", "MESE", "MEGRE", "CT",
))  # fmap's B1 maps (TB1map, RB1map) stay out: they belong in fmap/, which is carried


#: BIDS datatype folders of images that are carried as they are (``--others``): an image under ``sub-*`` in none
#: of them, neither below ``anat/`` or ``ct/`` nor named with an anatomical suffix, is carried with a warning.
CARRIED_DATATYPES: frozenset[str] = frozenset(("func", "dwi", "fmap", "perf", "pet", "meg", "eeg", "ieeg", "beh",
                                               "micr", "nirs", "motion", "mrs"))


def _folders(relpath: PurePosixPath) -> set[str]:
    """The casefolded names of the folders between ``sub-*`` and the file."""
    return {part.casefold() for part in relpath.parts[1:-1]}


def _is_bids_scan(relpath: PurePosixPath, entities: dict[str, str]) -> bool:
    """Whether a BIDS image is one to deface: below an ``anat/`` or ``ct/`` folder (at any depth: ``anat/old/``
    too; folder names in any case: ``ANAT/`` on a case-insensitive disk is ``anat/``), or with an anatomical suffix
    (``T1w``, ``FLAIR``, ``CT``...) wherever it lies under ``sub-*``; masks and segmentations excepted."""
    if not relpath.parts or not relpath.parts[0].startswith("sub-"):
        return False
    suffix = entities.get("suffix", "")
    folders = _folders(relpath)
    if suffix.casefold() == "ct" or "ct" in folders:
        return True
    if suffix in NON_FACE_SUFFIXES:
        return False
    return "anat" in folders or suffix.casefold() in ANATOMICAL_SUFFIXES


def _warn_of_unknown_images(base: Path, others: Sequence[PurePosixPath]) -> None:
    """Warn of images under ``sub-*`` carried as they are that no BIDS datatype folder explains (``sub-01/head.nii.gz``,
    ``sub-01/extra/scan.nii.gz``): they may show a head, face included."""
    unknown = [rel for rel in others if rel.parts and rel.parts[0].startswith("sub-") and not rel.name.startswith(".")
               and is_image_file(base / rel) and not (_folders(rel) & CARRIED_DATATYPES)
               and parse_bids_name(rel).get("suffix", "") not in NON_FACE_SUFFIXES]
    if unknown:
        named = ", ".join(f"'{shown(str(rel))}'" for rel in unknown[:5])
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        log.warning("%d image(s) under sub-* are carried to the output as they are, not defaced: %s%s. They lie in no "
                    "BIDS datatype folder (func/, dwi/, fmap/...), not in anat/, and their names end in no anatomical "
                    "suffix (T1w, T2w, FLAIR...), so they may show a head, face included. Rename such an image with its "
                    "suffix (sub-01_T1w.nii.gz) or move it into anat/ and run again, or deface it apart.",
                    len(unknown), named, more)


def _without_label_maps(candidates: list[Scan]) -> tuple[list[Scan], list[PurePosixPath]]:
    """The candidates less the label maps among them, and those label maps.

    A file named ``<stem>.labels.nii.gz`` (or ``.labels.nii``, ``.labels.nrrd``, ``.labels.nhdr``, ``.labels.mgz``, ``.labels.mgh``; any case) beside a
    scan ``<stem>.*`` or a DICOM series folder ``<stem>/`` is that scan's label map, as ``--labels-dir`` names them,
    not a scan: defaced by the detector it came out "done" in OUT with most of the features' shapes (the ears' shapes
    can identify a person).  It is neither defaced nor carried (warned about); ``--labels-dir`` still uses it.
    """
    stems = {(scan.relpath.parent, (image_stem(scan.relpath.name) if scan.kind == "file" else scan.relpath.name)
              .casefold()) for scan in candidates}
    kept: list[Scan] = []
    maps: list[PurePosixPath] = []
    for scan in candidates:
        name = scan.relpath.name
        ending = label_ending(name) if scan.kind == "file" else None
        if ending is not None and (scan.relpath.parent, name[: -len(ending)].casefold()) in stems:
            maps.append(scan.relpath)
        else:
            kept.append(scan)
    if maps:
        log.warning("%d file(s) are named as the label map of a scan beside them (%s): neither defaced nor carried to "
                    "the output (they hold the shapes of the eyes, nose and ears); give their folder with "
                    "--labels-dir to deface with them", len(maps), ", ".join(f"'{m.as_posix()}'" for m in maps[:3])
                    + (" ..." if len(maps) > 3 else ""))
    return kept, maps


def discover(
    root: PathLike,
    *,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    layout: str | None = None,
) -> Discovery:
    """Find the scans to deface and the files to carry over in ``root``.

    Parameters
    ----------
    root : path-like
        A BIDS dataset, a folder of image files and/or DICOM series folders, or one
        DICOM series folder.
    include, exclude : sequence of str
        Filter patterns (see the module docstring).
    layout : {"bids", "files"}, optional
        Force the kind of input instead of detecting it.

    Returns
    -------
    Discovery

    Raises
    ------
    InputImageError
        If ``root`` is not a folder.
    ValueError
        For a malformed filter pattern.
    """
    base = Path(root).resolve()
    if not base.exists():
        raise InputImageError(f"The batch input '{root}' does not exist. Check the path (a typo, or a disk that is "
                              "not mounted).")
    if not base.is_dir():
        raise InputImageError(
            f"The batch input '{root}' is not a folder. Give a BIDS dataset, a folder of NIfTI/NRRD/MGZ files "
            "or a folder of DICOM series (for one file use 'defacer deface')."
        )
    include = check_patterns(include)
    exclude = check_patterns(exclude)
    kind = layout or detect_layout(base)
    if kind not in ("bids", "files"):
        raise ValueError(f"Unknown input layout {kind!r}: expected 'bids' or 'files'.")
    skip_top = BIDS_SKIPPED_FOLDERS if kind == "bids" else frozenset()

    candidates: list[Scan] = []
    listed: list[PurePosixPath] = []
    for here, dirnames, filenames in _walk(base, skip_top):
        rel_here = PurePosixPath(here.relative_to(base).as_posix())
        directories = [name for name in filenames if name.upper() == DICOMDIR]
        if directories:
            log.warning("'%s' is a DICOM directory (it lists the patients by name and ID): not carried to the output "
                        "(viewers find the series without it)", (rel_here / directories[0]).as_posix())
            filenames = [name for name in filenames if name.upper() != DICOMDIR]
        dicoms = [name for name in filenames if not is_image_file(here / name) and is_dicom_file(here / name)]
        if dicoms and kind == "files":
            # The series folder is rewritten as a whole: other files in it are not carried over,
            # and its subfolders are not searched (their outputs would sit inside this output).
            if _series_has_untext_names(here, rel_here):
                dirnames[:] = []  # not searched, as under any series folder
                continue
            candidates.append(Scan(path=here, relpath=rel_here, kind="dicom", entities={}))
            images = [name for name in filenames if is_image_file(here / name)]
            if images:
                log.warning("'%s' holds DICOM files and %d image file(s) (%s): the folder is defaced as one DICOM "
                            "series, and the image files are neither defaced nor copied. Put them in a folder of "
                            "their own.", rel_here.as_posix(), len(images), ", ".join(images[:3]))
            if dirnames:
                log.warning("'%s' holds DICOM files and subfolders; the subfolders are not searched (put each "
                            "series in its own leaf folder)", here)
                dirnames[:] = []
            continue
        if dicoms:  # a BIDS dataset: DICOM belongs in sourcedata/, which is neither searched nor carried
            log.warning("'%s' holds %d DICOM file(s) outside sourcedata/: not carried to the output (they hold the "
                        "face and the patient's identity in their headers). Deface them apart with 'defacer batch' "
                        "on their folder, or move them into sourcedata/.", rel_here.as_posix(), len(dicoms))
            dicom_names = set(dicoms)
            filenames = [name for name in filenames if name not in dicom_names]
        for name in filenames:
            rel = rel_here / name
            image = is_image_file(here / name)
            # A scan linked out of IN (not into a git-annex store holding it) is not read, as a DICOM file or another
            # file so linked is not: a hostile dataset's 'sub-02_T1w.nii.gz -> /home/you/study/patient.nii.gz' was
            # defaced into OUT, ready to be sent back.  A broken link (a DataLad file not fetched) is reported later.
            if image and (here / name).exists() and not stays_inside(here / name, base, log=log, outcome=NOT_READ):
                continue
            listed.append(rel)
            if not image:
                continue
            entities = parse_bids_name(rel)
            if kind == "bids" and not _is_bids_scan(rel, entities):
                continue
            sidecar = here / f"{image_stem(name)}.json"
            companions = tuple(nrrd_data_files(here / name)) if name.lower().endswith(NRRD_SUFFIXES) else ()
            # A sidecar linked out of IN is not the scan's: it is warned about once, below, as an other file.
            candidates.append(
                Scan(
                    path=here / name,
                    relpath=rel,
                    kind="file",
                    entities=entities,
                    sidecar=sidecar if sidecar.is_file() and stays_inside(sidecar, base) else None,
                    companions=companions,
                )
            )

    found = candidates
    candidates, _ = _without_label_maps(found)
    scans = [scan for scan in candidates if _selected(scan, include, exclude)]
    left_out = sorted((scan for scan in candidates if not _selected(scan, include, exclude)), key=lambda s: s.key)
    excluded = [scan.relpath for scan in left_out]
    claimed: set[PurePosixPath] = set()
    for scan in found:  # a label map's detached data file and sidecar are its own: not carried either
        if scan.kind == "dicom":
            continue
        claimed.add(scan.relpath)
        if scan.sidecar is not None:
            claimed.add(PurePosixPath(scan.sidecar.relative_to(base).as_posix()))
        for companion in scan.companions:
            try:
                claimed.add(PurePosixPath(companion.resolve().relative_to(base).as_posix()))
            except ValueError:
                continue
    others = [rel for rel in listed if rel not in claimed and stays_inside(base / rel, base, log=log, outcome=NOT_CARRIED)]
    scans.sort(key=lambda s: s.key)
    if kind == "bids":
        _warn_of_unknown_images(base, others)
    _warn_of_folded_names([scan.relpath for scan in scans] + others)
    return Discovery(root=base, layout=kind, scans=scans, others=sorted(others), excluded=sorted(excluded),
                     excluded_scans=left_out)


def _warn_of_folded_names(relpaths: Iterable[PurePosixPath]) -> None:
    """Warn of names OUT will hold that are one name on a case-insensitive disk (``sub-01_T1w.nii.gz`` and
    ``sub-01_T1W.nii.gz``, or a name in two Unicode forms): written there, the later replaces the earlier."""
    import unicodedata

    groups: dict[str, set[str]] = {}
    for rel in relpaths:
        text = rel.as_posix()
        groups.setdefault(unicodedata.normalize("NFC", text).casefold(), set()).add(text)
    clashes = [sorted(names) for names in groups.values() if len(names) > 1]
    if clashes:
        shown = "; ".join(" and ".join(f"'{name}'" for name in names) for names in sorted(clashes)[:3])
        log.warning("%d group(s) of files in IN differ only in letter case or Unicode form (%s%s): on a case-insensitive "
                    "disk (macOS, Windows, exFAT) each group is one file in OUT. Of scans, the first in name order is "
                    "defaced and the others are recorded as failed (nothing written for them); of other files, only the "
                    "first is carried. Rename them so that the names differ by more than letter case.",
                    len(clashes), shown, " ..." if len(clashes) > 3 else "")
