"""Where a batch writes: outputs mirroring the input, sidecars, dataset description, copies.

Two output layouts:

``mirror`` (default)
    OUT has IN's layout and names: ``OUT/sub-01/anat/sub-01_T1w.nii.gz`` is the defaced
    ``IN/sub-01/anat/sub-01_T1w.nii.gz``.  A BIDS input gives a BIDS dataset: its
    ``dataset_description.json`` gains a ``GeneratedBy`` entry for defacer, every scan's JSON
    sidecar is carried over with ``Defaced: true`` and a ``DefacedBy`` record (a sidecar is
    created if the scan had none), and non-image files are copied, hard-linked or
    symlinked as the user chooses.
``derivatives``
    OUT is a BIDS derivatives dataset (``DatasetType: derivative``, ``SourceDatasets``):
    ``OUT/sub-01/anat/sub-01_desc-defaced_T1w.nii.gz`` with a sidecar naming its
    ``Sources``.  Nothing else is copied.

Batch bookkeeping (manifest, ownership record, summary, lock) lives in ``OUT/.defacer/``, which
BIDS tools ignore; only files the ownership record names are ever replaced
(:mod:`defacer.batch.ownership`).  Verification reports, pictures and the QC gallery (``--verify``) go to the sibling
folder ``OUT-qc/``, never inside OUT: they show the original faces, and OUT is what people share.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, TypeVar

from defacer._version import __version__
from defacer.batch.discover import Scan
from defacer.errors import DefacerError, OutputError
from defacer.files import json_object_of, make_folders, read_json_object, read_small_text, stays_inside, walk
from defacer.io.atomic import copy_atomic, is_temporary, write_text_atomic
from defacer.io.output_guard import folded_name, inode_of, true_path
from defacer.phi.tables import MAX_AGE, clean_table, describe_changes, is_bids_table
from defacer.provenance import QC_SUFFIX

if TYPE_CHECKING:
    from defacer.batch.ownership import OwnershipRecord
    from defacer.phi.options import DeidOptions

log = logging.getLogger(__name__)

_T = TypeVar("_T")

#: Name of the bookkeeping folder inside OUT.
STATE_FOLDER = ".defacer"
#: The files the batch writes in :data:`STATE_FOLDER` (none may be a link): manifest, ownership record, lock, summary.
STATE_FILES: tuple[str, ...] = ("manifest.jsonl", "owned.jsonl", "lock", "summary.html")
#: Choices for non-image files.
OTHERS_MODES: tuple[str, ...] = ("copy", "hardlink", "symlink", "skip")
#: Output layouts.
LAYOUTS: tuple[str, ...] = ("mirror", "derivatives")


@dataclass(frozen=True)
class OutputLayout:
    """Maps scans of an input dataset to paths in the output folder.

    Parameters
    ----------
    in_root, out_root : Path
        Absolute input and output folders.
    layout : {"mirror", "derivatives"}
    bids : bool
        Whether the input is a BIDS dataset.
    """

    in_root: Path
    out_root: Path
    layout: str = "mirror"
    bids: bool = False

    @property
    def state_dir(self) -> Path:
        """``OUT/.defacer``: manifest, summary, lock."""
        return self.out_root / STATE_FOLDER

    @property
    def qc_dir(self) -> Path:
        """``OUT-qc`` beside OUT: verification reports, pictures and the QC gallery (never inside OUT)."""
        return self.out_root.with_name(self.out_root.name + QC_SUFFIX)

    @property
    def manifest_path(self) -> Path:
        """The batch manifest (JSON Lines)."""
        return self.state_dir / "manifest.jsonl"

    def output_relpath(self, scan: Scan) -> PurePosixPath:
        """The scan's output path relative to OUT (a lone series folder keeps its folder name)."""
        if str(scan.relpath) == ".":
            return PurePosixPath(self.in_root.name)
        if self.layout == "derivatives" and scan.kind == "file":
            return scan.relpath.parent / f"{desc_defaced_name(scan.stem)}{scan.extension}"
        return scan.relpath

    def output_path(self, scan: Scan) -> Path:
        """Absolute output path of the scan (a folder for a DICOM series)."""
        return self.out_root / self.output_relpath(scan)

    def sidecar_path(self, scan: Scan) -> Path | None:
        """Where the scan's BIDS-style JSON sidecar is written, or ``None`` when it gets none.

        BIDS datasets always get one (carried over or new); other inputs only when the scan
        had one.
        """
        if scan.kind != "file":
            return None
        if not self.bids and scan.sidecar is None:
            return None
        out = self.output_path(scan)
        return out.parent / f"{desc_defaced_name(scan.stem) if self.layout == 'derivatives' else scan.stem}.json"

    def scan_targets(self, scan: Scan) -> list[Path]:
        """Every path in OUT that defacing ``scan`` may write: the image (a folder for a DICOM series),
        a ``.nhdr``'s possible data files, the provenance sidecar and the JSON sidecar."""
        from defacer.io.output_guard import detached_data_candidates
        from defacer.provenance import sidecar_path

        out = self.output_path(scan)
        sidecar = self.sidecar_path(scan)
        return [out, *detached_data_candidates(out), sidecar_path(out), *([sidecar] if sidecar is not None else [])]

    def verify_dir(self, scan: Scan) -> Path:
        """Folder for the scan's verification report and pictures, in :attr:`qc_dir` (outside OUT): the scan's path
        without its image ending, ``/`` written ``__`` (``sub-01/anat/sub-01_T1w`` -> ``sub-01__anat__sub-01_T1w``).

        Where that is ambiguous (a name holding ``__``, or a folder or file name that starts or ends with ``_``:
        ``x/y`` and ``x__y`` would share ``x__y``, and the later scan's report and pictures replace the earlier's),
        the first 10 hex digits of the sha256 of the scan's path are appended (``x__y-3f2a...``): one folder per scan.
        """
        key = str(scan.relpath.parent / scan.stem) if scan.kind == "file" else scan.key
        if key == ".":
            return self.qc_dir / self.in_root.name
        parts = key.split("/")
        safe = "__".join(parts)
        if any("__" in part for part in parts) or (len(parts) > 1 and any(part.startswith("_") or part.endswith("_")
                                                                          for part in parts)):
            digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()
            safe = f"{safe}-{digest[:10]}"
        return self.qc_dir / safe


def target_clashes(layout: OutputLayout, scans: Iterable[Scan]) -> list[tuple[str, str, Path]]:
    """``(scan key, other scan key, path)`` for each file in OUT that two scans would both write (``head.nii`` and
    ``head.nii.gz`` both write ``head.defacer.json``; in BIDS also ``head.json``): the second would replace the
    first's, and each rerun would find the other's damaged and redo it."""
    owner: dict[Path, str] = {}
    clashes = []
    for scan in scans:
        for target in dict.fromkeys(layout.scan_targets(scan)):
            first = owner.setdefault(target, scan.key)
            if first != scan.key:
                clashes.append((first, scan.key, target))
    return clashes



def folded_clashes(layout: OutputLayout, scans: Iterable[Scan],
                   excluded: Iterable[Scan] = ()) -> dict[str, tuple[str, Path]]:
    """``{scan key: (earlier scan key, path in OUT)}`` for each scan that, on a case-insensitive disk, would write
    over a file or folder of an earlier scan (in key order) though their names differ: ``SUB-01/anat/...`` and
    ``sub-01/anat/...`` with the same file name, ``sub-01_T1W`` and ``sub-01_T1w``, a name in its two Unicode forms,
    or a DICOM series folder ``A`` where another scan writes inside ``a/``.  Folders merely shared (``SUB-01/`` and
    ``sub-01/`` holding different files) are no clash.  Exact clashes are :func:`target_clashes`' (the run is refused).

    ``excluded``: the scans ``--include``/``--exclude`` left out of this run.  Those whose output is in OUT already
    (written by another run) take their place in the key order as claimants (never reported): a run selecting only
    ``sub-01`` into an OUT holding ``SUB-01``'s output is refused as the whole run is (on a case-insensitive disk the
    same file); into another folder it runs.
    """
    files: dict[str, tuple[str, Path]] = {}    # folded target -> (first scan, exact target)
    folders: dict[str, tuple[str, Path]] = {}  # folded folder above a target, inside OUT -> (first scan, exact)
    clashes: dict[str, tuple[str, Path]] = {}
    selected = list(scans)
    left_out = [scan for scan in excluded if any(os.path.lexists(path) for path in layout.scan_targets(scan))]
    chosen = {id(scan) for scan in selected}
    for scan in sorted([*selected, *left_out], key=lambda s: s.key) if left_out else selected:
        targets = list(dict.fromkeys(layout.scan_targets(scan)))
        above = [folder for target in targets for folder in target.parents
                 if folder != layout.out_root and folder.is_relative_to(layout.out_root)]
        checks = [(target, (files, folders)) for target in targets] + [(folder, (files,)) for folder in above]
        hit = None
        for path, mappings in checks:
            for mapping in mappings:
                earlier = mapping.get(folded_name(path))
                if earlier is not None and earlier[0] != scan.key and earlier[1] != path:
                    hit = (earlier[0], path)
                    break
            if hit:
                break
        if hit:
            if id(scan) in chosen:
                clashes[scan.key] = hit
            continue  # nothing is written for it: its names do not shadow later scans
        for target in targets:
            files.setdefault(folded_name(target), (scan.key, target))
        for folder in above:
            folders.setdefault(folded_name(folder), (scan.key, folder))
    return clashes


def desc_defaced_name(stem: str) -> str:
    """Insert ``desc-defaced`` before the BIDS suffix: ``sub-01_T1w`` -> ``sub-01_desc-defaced_T1w``.

    An existing ``desc-X`` becomes ``desc-Xdefaced``; a name without ``_`` gets ``_desc-defaced``.
    """
    parts = stem.split("_")
    for index, part in enumerate(parts[:-1]):
        if part.startswith("desc-"):
            parts[index] = f"{part}defaced"
            return "_".join(parts)
    if len(parts) == 1:
        return f"{stem}_desc-defaced"
    return "_".join([*parts[:-1], "desc-defaced", parts[-1]])


def check_folders(in_root: Path, out_root: Path) -> None:
    """Refuse an output folder that is the input, inside it, or contains it.

    Raises
    ------
    OutputError
    """
    src, dst = in_root.resolve(), out_root.resolve()
    # Also the same folder under another name ('Study' and 'study' on a case-insensitive file system, a bind
    # mount): told by (device, inode), since the paths differ, and by the names the folders list (a FUSE exFAT
    # mount numbers each spelling of a folder apart).
    here = inode_of(src)
    same = here is not None and (inode_of(dst) == here or any(inode_of(p) == here for p in dst.parents))
    around = dst.exists() and inode_of(dst) in {inode_of(p) for p in src.parents}
    listed_src, listed_dst = true_path(src), true_path(dst)
    spelled = listed_src == listed_dst or listed_src in listed_dst.parents or listed_dst in listed_src.parents
    if src == dst or src in dst.parents or dst in src.parents or same or around or spelled:
        raise OutputError(
            f"The output folder '{out_root}' overlaps the input '{in_root}'. defacer never writes into its input: "
            "choose an output folder outside the input dataset (for example next to it)."
        )


def check_state_dir(layout: OutputLayout) -> None:
    """Refuse an ``OUT/.defacer`` that is a symbolic link or a file: the manifest, lock, ownership record and
    summary would be written through it, outside OUT (over a ``summary.html`` of wherever it leads).

    Raises
    ------
    OutputError
    """
    state = layout.state_dir
    if state.is_symlink() or (state.exists() and not state.is_dir()):
        raise OutputError(
            f"'{state}' is a symbolic link or a file, not the batch's own folder: defacer keeps its manifest, lock "
            "and summary inside OUT and never writes through a link to elsewhere. Remove it, or choose another "
            "output folder (nothing was written)."
        )
    linked = [name for name in STATE_FILES if (state / name).is_symlink()]
    if linked:
        raise OutputError(
            f"'{state / linked[0]}' is a symbolic link: defacer writes its bookkeeping files there itself and never "
            "through a link to elsewhere. Remove it, or choose another output folder (nothing was written)."
        )


def prepare_output(layout: OutputLayout, *, force: bool, owned: OwnershipRecord | None = None,
                   targets: Iterable[Path] = ()) -> bool:
    """Create OUT (or accept it for resuming) and clear stale temporary files.

    OUT may be new, empty, or a previous batch's output (it has ``.defacer/manifest.jsonl``):
    the batch then resumes.  Any other non-empty folder is refused unless ``force``.  With
    ``owned``, every one of ``targets`` (the files the batch will write) that exists must be
    listed in that ownership record (:meth:`OwnershipRecord.check`); all this is checked before
    anything is created.

    Returns
    -------
    bool
        True if a previous batch's manifest was found (resume).

    Raises
    ------
    OutputError
    """
    check_folders(layout.in_root, layout.out_root)
    out = layout.out_root
    if out.exists() and not out.is_dir():
        raise OutputError(f"The output '{out}' exists and is not a folder. Choose a folder name for the batch output.")
    check_state_dir(layout)
    resuming = layout.manifest_path.is_file()
    if out.is_dir() and not resuming and any(out.iterdir()) and not force:
        raise OutputError(
            f"The output folder '{out}' is not empty and holds no defacer batch manifest. Choose an empty or new "
            "folder, or pass --force to write beside the files it holds (never over them)."
        )
    if owned is not None:
        owned.check(targets)
    try:
        make_folders(layout.state_dir)
    except OSError as err:
        raise OutputError(f"Cannot create the output folder '{out}': {err.strerror}. Choose a writable place.") from err
    remove_stale_temporaries(out)
    return resuming


def remove_stale_temporaries(out_root: Path) -> list[Path]:
    """Delete the temporary files and folders a killed run left under OUT; return what was removed.

    Only defacer's own (:func:`defacer.io.atomic.is_temporary`: exact names, no links, this user's): OUT may
    hold a user's files beside the batch's (``--force``), and a user's ``.defacer-tmp-notes/`` is not one.
    """
    removed = []
    for dirpath, dirnames, _ in walk(out_root):
        with os.scandir(dirpath) as found:
            entries = [entry for entry in found if is_temporary(entry)]
        for entry in entries:
            path = Path(entry.path)
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(path, ignore_errors=True)
                if entry.name in dirnames:
                    dirnames.remove(entry.name)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def json_text(data: Any) -> str:
    """``data`` as indented JSON text with a trailing newline: characters as they are, or as ``\\u`` escapes when
    some cannot be written as UTF-8.

    A JSON file of IN may hold ``"\\udcff"``: :func:`json.loads` gives a lone surrogate, which UTF-8 cannot
    encode, so writing it back unescaped stopped the whole batch ("'utf-8' codec can't encode character
    '\\udcff'", a carried JSON file or dataset description) or failed the scan whose sidecar held it.  The
    escapes read back as the same value.
    """
    text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(data, indent=2) + "\n"
    return text


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON (:func:`json_text`) atomically and durably (:mod:`defacer.io.atomic`)."""
    write_text_atomic(path, json_text(data), durable=True)


def generated_by(description: str = "Facial features (eyes, nose, ears) distorted by defacer") -> dict[str, Any]:
    """The BIDS ``GeneratedBy`` entry describing this defacer."""
    return {"Name": "defacer", "Version": __version__, "Description": description}


def dataset_description(layout: OutputLayout, source: dict[str, Any] | None) -> dict[str, Any]:
    """Build OUT's ``dataset_description.json`` from IN's (``None`` when IN has none).

    Mirror: IN's description with defacer prepended to ``GeneratedBy``.  Derivatives: a
    derivative description naming IN in ``SourceDatasets``.
    """
    source = dict(source or {})
    name = source.get("Name", layout.in_root.name)
    if layout.layout == "derivatives":
        # A relative reference, not the absolute path (the folders above IN can name people).
        origin: dict[str, Any] = {"URL": Path(os.path.relpath(layout.in_root.resolve(),
                                                              layout.out_root.resolve())).as_posix()}
        if isinstance(source.get("DatasetDOI"), str):
            origin["DOI"] = source["DatasetDOI"]
        derived: dict[str, Any] = {
            "Name": f"{name} (defaced)",
            "BIDSVersion": source.get("BIDSVersion", "1.10.0"),
            "DatasetType": "derivative",
            "GeneratedBy": [generated_by()],
            "SourceDatasets": [origin],
            # Each defaced sidecar's "Sources" names its scan as bids:raw:<path>; BIDS resolves "raw" here.
            "DatasetLinks": {"raw": origin["URL"]},
        }
        if "License" in source:  # the defaced images are still the source's images: its licence (share-alike...)
            derived["License"] = source["License"]
        return derived
    described = dict(source)
    described.setdefault("Name", name)
    described.setdefault("BIDSVersion", "1.10.0")
    listed = described.get("GeneratedBy", [])
    if not isinstance(listed, list):
        log.warning("IN's dataset_description.json has a GeneratedBy that is no list (BIDS wants a list of objects): "
                    "OUT's names defacer only; fix the file in IN to keep its own entries.")
        listed = []
    previous = [g for g in listed if isinstance(g, dict) and g.get("Name") != "defacer"]
    described["GeneratedBy"] = [generated_by(), *previous]
    return described


#: The line a BIDS output's ``.bidsignore`` gets (the per-scan provenance files are not BIDS).
BIDSIGNORE_LINE = "*.defacer.json"


def dataset_targets(layout: OutputLayout) -> list[Path]:
    """The files :func:`write_dataset_files` will write: ``dataset_description.json`` and, unless it already
    lists :data:`BIDSIGNORE_LINE`, ``.bidsignore`` (none for a non-BIDS input)."""
    if not layout.bids:
        return []
    ignore = layout.out_root / ".bidsignore"
    try:
        listed = ignore.is_file() and BIDSIGNORE_LINE in read_small_text(ignore, what=".bidsignore", redo="").splitlines()
    except DefacerError:  # unreadable: write_dataset_files warns and leaves it
        listed = False
    return [layout.out_root / "dataset_description.json", *([] if listed else [ignore])]


def write_dataset_files(layout: OutputLayout) -> None:
    """Write ``dataset_description.json`` and ``.bidsignore`` into a BIDS output.

    Both start from IN's own, when :func:`_read_input` reads it; ``.bidsignore`` gains :data:`BIDSIGNORE_LINE`.
    """
    if not layout.bids:
        return
    source = _read_input(layout.in_root, layout.in_root / "dataset_description.json", partial(
        read_json_object, what="dataset description",
        redo="Not read: OUT's dataset_description.json gets defacer's fields only; fix the file in IN to keep its own."))
    write_json_atomic(layout.out_root / "dataset_description.json", dataset_description(layout, source))
    ignore = layout.out_root / ".bidsignore"
    try:
        lines = read_small_text(ignore, what=".bidsignore", redo="").splitlines() if ignore.is_file() else []
    except DefacerError as err:  # OUT's own, edited since defacer wrote it: not ours to rewrite
        log.warning("%s Left as it is: add the line '%s' to it so that BIDS validators skip defacer's sidecars.",
                    str(err).strip(), BIDSIGNORE_LINE)
        return
    if not lines:
        text = _read_input(layout.in_root, layout.in_root / ".bidsignore", partial(
            read_small_text, what=".bidsignore",
            redo="Not read: OUT's .bidsignore lists defacer's files only; fix the file in IN to keep its lines."))
        lines = text.splitlines() if text is not None else []
    if BIDSIGNORE_LINE not in lines:
        lines.append(BIDSIGNORE_LINE)
        write_text_atomic(ignore, "\n".join(lines) + "\n")


def _read_input(in_root: Path, path: Path, read: Callable[[Path], _T]) -> _T | None:
    """``read(path)`` for a file of the input dataset, or ``None``: when IN has no such regular file, when it is a
    symbolic link out of ``in_root`` (a hostile dataset's ``.bidsignore -> ~/.ssh/id_rsa`` would be copied into
    OUT), or when ``read`` refuses it (too large, not text, not a JSON object: :mod:`defacer.files`). The last two
    are warned about, with what the batch writes instead."""
    if not path.is_file() or not stays_inside(path, in_root, log=log, outcome="not read"):
        return None
    try:
        return read(path)
    except DefacerError as err:
        log.warning("%s", err)
        return None


def defaced_sidecar(scan: Scan, layout: OutputLayout, features: Iterable[str], seed: int,
                    profile: DeidOptions | None = None) -> dict[str, Any]:
    """The scan's JSON sidecar carried over from IN (if any), de-identified and marked defaced.

    With ``profile`` (the run's header de-identification; ``None`` with ``--no-deidentify``), every
    key that names a DICOM attribute gets that attribute's PS3.15 Annex E treatment
    (:func:`defacer.phi.sidecar.scrub_sidecar`: a converter's ``PatientName``, ``PatientBirthDate``,
    ``InstitutionName``... go), and ``DefacedBy.IdentifyingKeysRemoved`` lists the removed keys'
    names.  Adds ``Defaced: true`` and ``DefacedBy`` (tool, version, features, per-scan seed); in
    the derivatives layout also ``Sources``.
    """
    data: dict[str, Any] = {}
    if scan.sidecar is not None:
        data = _read_input(layout.in_root, scan.sidecar, partial(
            read_json_object, what="JSON sidecar",
            redo="Not read: the defaced scan's sidecar gets defacer's record only; fix the file in IN to keep its "
                 "fields.")) or {}
    removed: list[str] = []
    if profile is not None and data:
        from defacer.phi.sidecar import scrub_sidecar

        data, removed = scrub_sidecar(data, profile)
    data["Defaced"] = True
    data["DefacedBy"] = {
        "Name": "defacer",
        "Version": __version__,
        "Features": list(features),
        "Seed": seed,
        "Method": "the listed features distorted inside their detected regions; the brain is never changed",
        **({"IdentifyingKeysRemoved": removed} if removed else {}),
    }
    if layout.layout == "derivatives":
        data["Sources"] = [f"bids:raw:{scan.key}"]
    return data


def _carried(layout: OutputLayout, relpaths: Iterable[PurePosixPath], mode: str, *, warn: bool = False,
             scans: Iterable[Scan] = ()) -> list[tuple[Path, Path]]:
    """(source in IN, target in OUT) of each non-image file :func:`carry_over` handles.

    Of files whose paths differ only in letter case or Unicode form (``README`` and ``readme``): one file on a
    case-insensitive disk (macOS, Windows, exFAT), where each copy replaced the other's, only the first in name order
    is carried (``warn``: the others are named in a warning).

    A file whose target is one a scan of ``scans`` writes (``a.defacer.json`` beside ``a.nii.gz``: an earlier
    provenance record; also ``A.defacer.json``, the same file on a case-insensitive disk) is not carried: the
    scan's own record replaced the copy, and each rerun copied it back over that record and defaced the scan again.
    """
    if mode not in OTHERS_MODES:
        raise ValueError(f"Unknown mode for non-image files {mode!r}: expected one of {', '.join(OTHERS_MODES)}.")
    if mode == "skip":
        return []
    carried: list[tuple[Path, Path]] = []
    first: dict[str, PurePosixPath] = {}
    written = {folded_name(target): scan for scan in scans for target in layout.scan_targets(scan)}
    for rel in sorted(relpaths):
        if rel.name in ("dataset_description.json", ".bidsignore") and len(rel.parts) == 1 and layout.bids:
            continue
        scan = written.get(folded_name(layout.out_root / rel))
        if scan is not None:
            if warn:
                log.warning("'%s' is not carried to the output: defacing '%s' writes a file of that name there (on a "
                            "case-insensitive disk, letter case aside), its own record. Rename it in IN if OUT should "
                            "hold it too.", rel.as_posix(), scan.key)
            continue
        earlier = first.setdefault(folded_name(rel), rel)
        if earlier != rel:
            if warn:
                log.warning("'%s' is not carried to the output: on a case-insensitive disk (macOS, Windows, exFAT) it "
                            "is the same file as '%s', which is. Rename one of them so that the names differ by more "
                            "than letter case.", rel.as_posix(), earlier.as_posix())
            continue
        carried.append((layout.in_root / rel, layout.out_root / rel))
    return carried


def carry_over_targets(layout: OutputLayout, relpaths: Iterable[PurePosixPath], mode: str, *,
                       clean_tables: bool = False, profile: DeidOptions | None = None,
                       scans: Iterable[Scan] = ()) -> list[Path]:
    """The files in OUT that :func:`carry_over` would write now (those not already there)."""
    targets = []
    for source, target in _carried(layout, relpaths, mode, scans=scans):
        try:
            if _deidentified(source, clean_tables, profile):
                there = _deidentified_text(source, profile)[0] == _copy_text(source, target)
            else:
                there = _already_there(source, target, mode)
        except (OSError, DefacerError):  # a broken source: carry_over warns and writes nothing
            continue
        if not there:
            targets.append(target)
    return targets


def carry_over(layout: OutputLayout, relpaths: Iterable[PurePosixPath], mode: str, *,
               clean_tables: bool = False, profile: DeidOptions | None = None,
               scans: Iterable[Scan] = ()) -> tuple[int, int]:
    """Copy, hard-link or symlink non-image files from IN to the same place in OUT.

    A file already in OUT with the same size (copy, hardlink) or pointing at the same
    source (symlink) is left alone, so resuming is cheap.  Copies are atomic.

    With ``clean_tables`` (the run de-identifies), a BIDS ``participants.tsv``, ``*_scans.tsv`` or
    ``*_sessions.tsv`` is never linked or copied as it is: OUT gets a de-identified copy
    (:func:`defacer.phi.tables.clean_table`: acquisition dates and times, operators and the like
    set to ``n/a``, ages over 89 written ``89+``), whatever ``mode``, and a warning names the columns
    changed.  A table that cannot be read as UTF-8 text is not carried (warned about).

    With ``profile`` (the run's header de-identification), a JSON file likewise gets a copy of its
    own, never a link, with the keys that name DICOM attributes treated as in a scan's sidecar
    (:func:`defacer.phi.sidecar.scrub_sidecar`): the sidecars of the images carried as they are
    (``func/``, ``dwi/``, ``fmap/``; a top-level ``task-rest_bold.json``) hold a converter's
    ``PatientName`` as a defaced scan's sidecar does.  Byte for byte when nothing is removed; a
    JSON file that is no readable object is not carried (warned about).

    Returns
    -------
    (done, kept) : tuple of int
        Files written now, and files already present.
    """
    done = kept = 0
    for source, target in _carried(layout, relpaths, mode, warn=True, scans=scans):
        if _deidentified(source, clean_tables, profile):
            written = _carry_deidentified(source, target, profile)
            done, kept = done + (written is True), kept + (written is False)
            continue
        try:
            if _already_there(source, target, mode):
                kept += 1
                continue
            _carry_one(source, target, mode)
        except OSError as err:  # e.g. a broken symlink (a DataLad file not fetched): warn, go on
            log.warning("could not %s '%s' to the output: %s", mode, source, err.strerror or err)
            continue
        done += 1
    return done, kept


def _carry_one(source: Path, target: Path, mode: str) -> None:
    make_folders(target.parent)
    if target.is_symlink() or target.exists():
        target.unlink()
    if mode == "symlink":
        os.symlink(source, target)
    elif mode == "hardlink":
        try:
            os.link(source, target)
        except OSError:  # other file system: fall back to a copy
            copy_atomic(source, target)
    else:
        copy_atomic(source, target)


def _deidentified(source: Path, clean_tables: bool, profile: DeidOptions | None) -> bool:
    """Whether a carried file gets a de-identified copy of its own: a BIDS table, or a JSON file under ``profile``."""
    return (clean_tables and is_bids_table(source.name, source.parent.name)) or (profile is not None and source.name.lower().endswith(
        ".json"))


def _deidentified_text(source: Path, profile: DeidOptions | None) -> tuple[str, str]:
    """The de-identified text of a BIDS table or JSON file in IN, and what was changed, for a warning (``""``: nothing).

    Raises
    ------
    DefacerError
        For a file that cannot be read as text (or, for JSON, as an object): it cannot be de-identified.
    """
    if profile is None or not source.name.lower().endswith(".json"):
        text = read_small_text(source, what="BIDS table", redo="Not carried to the output: a table of acquisition "
                               "times or participants that cannot be read cannot be de-identified; fix the file in IN.")
        # ages over 89 are pooled whatever the options (--retain-patient-characteristics pools them in a header too)
        cleaned, changed = clean_table(text, keep_dates=profile is not None and profile.retain_long_full_dates)
        return cleaned, (f"{describe_changes(changed)} de-identified in the output's copy (dates and times, operators: "
                         f"n/a; ages over {MAX_AGE}: {MAX_AGE}+)" if changed else "")
    from defacer.phi.sidecar import scrub_sidecar

    redo = ("Not carried to the output: a JSON file that cannot be read cannot be de-identified; fix the file in IN "
            "(or pass --no-deidentify).")
    text = read_small_text(source, what="JSON file", redo=redo)
    data = json_object_of(text, source, what="JSON file", redo=redo)
    scrubbed, removed = scrub_sidecar(data, profile)
    if scrubbed == data:
        return text, ""
    what = (f"{', '.join(removed)} removed from the output's copy (DICOM attributes the de-identification removes)"
            if removed else "the patient's own values masked in the output's copy")
    return json_text(scrubbed), what


def _copy_text(source: Path, target: Path) -> str | None:
    """The text of ``target`` when it is a copy of its own (:func:`_text_or_none`), ``None`` when it is ``source``
    itself: a hard link left by an earlier ``--others hardlink`` run (or one without de-identification) held the
    same text as the cleaned copy when nothing needed cleaning, and stayed a link, so a later edit of the file in
    IN reached OUT at once, not de-identified (and an in-place edit of OUT's file changed IN's)."""
    try:
        if target.exists() and os.path.samefile(source, target):
            return None
    except OSError:
        return None
    return _text_or_none(target)


def _text_or_none(path: Path) -> str | None:
    """The UTF-8 text of a regular file already in OUT, or ``None`` (missing, a link, not text).

    Line endings are kept as they are (not read with universal newlines): a table with CRLF or CR
    endings never equalled its cleaned text and was written again on every rerun.
    """
    if path.is_symlink() or not path.is_file():
        return None
    try:
        return path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def _carry_deidentified(source: Path, target: Path, profile: DeidOptions | None) -> bool | None:
    """Write the de-identified copy of a BIDS table or JSON file; ``True`` written, ``False`` already there, ``None``
    not carried."""
    try:
        cleaned, changed = _deidentified_text(source, profile)
    except DefacerError as err:
        log.warning("%s", err)
        return None
    if changed:
        log.warning("'%s': %s; pass --no-deidentify to keep them.", source, changed)
    if _copy_text(source, target) == cleaned:
        return False
    try:
        make_folders(target.parent)
        if target.is_symlink():  # a link left by an earlier --others symlink run: replaced, never written through
            target.unlink()
        write_text_atomic(target, cleaned)
    except OSError as err:
        log.warning("could not write '%s' to the output: %s", target, err.strerror or err)
        return None
    return True


def _already_there(source: Path, target: Path, mode: str) -> bool:
    """Whether ``target`` already is what ``mode`` would make of ``source``: the link to it (symlink), a file of the
    same size (hardlink, copy).  For a copy, a hard link to ``source`` itself (left by an earlier ``--others
    hardlink`` run) is not: it stayed a link, so an edit of OUT's file in place changed IN's."""
    if mode == "symlink":
        return target.is_symlink() and Path(os.readlink(target)) == source
    if target.is_symlink() or not target.is_file():
        return False
    if mode == "copy" and os.path.samefile(source, target):
        return False
    return target.stat().st_size == source.stat().st_size


