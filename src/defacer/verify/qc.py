"""Where verification and QC pictures go, and the batch QC gallery.

Nothing derived from the original's face (renders, reports, thumbnails, the detected label
map) is written inside an output folder or into the defaced file's own name: it goes to a
sibling QC folder whose name says what it is:

* ``defacer deface IN sub-01_T1w_defaced.nii.gz --verify``: ``sub-01_T1w_defaced-qc/``;
* ``defacer deface dicom/ dicom_out/ --verify``: ``dicom_out-qc/``;
* ``defacer batch IN OUT --verify``: ``OUT-qc/`` with one folder per scan and ``index.html``.

Each QC folder gets a ``README.txt`` saying whether it holds pictures of the original faces.
With "after only" (``--qc-after-only``) no picture of the original is written at all.

defacer never replaces a file in a QC folder that it did not write, ``--force`` or not: every
name it writes there is listed in the folder's ownership record ``.defacer-owned.jsonl`` (the
batch's :class:`~defacer.batch.ownership.OwnershipRecord`, relative to the QC folder) before it
is written, and an existing file with one of those names that the record does not list is
refused (:func:`check_owned`), so a rerun replaces defacer's own reports and pictures only.
"""

from __future__ import annotations

import contextlib
import html
import logging
import os
import stat
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from defacer.batch.ownership import OwnershipRecord, quoted_names
from defacer.errors import OutputError, shown
from defacer.files import make_folders, text_name, walk
from defacer.io.atomic import atomic_outputs
from defacer.verify import verdict as verdicts

log = logging.getLogger(__name__)

README_NAME = "README.txt"
GALLERY_NAME = "index.html"
#: Views shown as thumbnails: the front and one oblique.
THUMB_VIEWS: tuple[str, ...] = ("front", "left45")
#: Thumbnail edge in pixels.
THUMB_SIZE = 160
#: Rows per page of the gallery (each page is a separate section; images load lazily).
PAGE_ROWS = 100
#: The ownership record of a QC folder: the names (relative to it) of every file defacer writes there.
RECORD_NAME = ".defacer-owned.jsonl"
#: What a verification writes into its folder (besides a label map): reports, README and pictures.
REPORT_FILES: tuple[str, ...] = ("verify_report.html", "verify_summary.json", README_NAME, "before_after.png",
                                 "after.png", "front_before.png", "front_after.png", "left45_before.png",
                                 "left45_after.png")


def report_targets(folder: Path, *extra: str) -> list[Path]:
    """Every file a verification may write into ``folder``: :data:`REPORT_FILES` and the names in ``extra``."""
    return [folder / name for name in (*REPORT_FILES, *extra)]


def _record(qc_root: Path) -> OwnershipRecord:
    return OwnershipRecord(qc_root / RECORD_NAME, qc_root)


def owned_files(qc_root: Path, targets: Iterable[Path]) -> list[Path]:
    """Those of ``targets`` that are regular files the QC folder's ownership record lists (defacer wrote them)."""
    paths = [path for path in targets if path.is_file() and not path.is_symlink()]
    foreign = set(_record(qc_root).foreign(paths))
    return [path for path in paths if path not in foreign]


def check_owned(qc_root: Path, targets: Iterable[Path]) -> None:
    """Refuse when a file defacer would write into the QC folder exists and is not defacer's.

    Parameters
    ----------
    qc_root : Path
        The QC folder whose ownership record (:data:`RECORD_NAME`) is read; may not exist yet.
    targets : iterable of Path
        Files under ``qc_root`` the run may write.

    Raises
    ------
    OutputError
        Naming the files in the way and what to do (``--force`` does not change it); or ``qc_root``
        is a symbolic link, or exists and is no folder.
    """
    if qc_root.is_symlink():
        raise OutputError(f"The QC folder '{qc_root}' is a symbolic link (to '{os.readlink(qc_root)}'): the pictures of "
                          "the original face it will hold would land wherever it points. defacer writes them only into "
                          "a real folder: remove the link, or name the real folder ('defacer verify' and 'defacer "
                          "evaluate': --out).")
    if os.path.lexists(qc_root) and not qc_root.is_dir():
        raise OutputError(f"The QC folder '{qc_root}' exists and is not a folder: defacer writes its reports and pictures "
                          "into a folder. Choose another output (the QC folder is named after it; 'defacer verify' and "
                          "'defacer evaluate': another --out).")
    foreign = _record(qc_root).foreign(targets)
    if not foreign:
        return
    raise OutputError(
        f"The QC folder '{qc_root}' holds files defacer did not write where it would write its reports and "
        f"pictures: {quoted_names(foreign)}. defacer never replaces them, --force or not. Move those files away or choose "
        "another output (the QC folder is named after it; 'defacer verify' and 'defacer evaluate': another --out)."
    )


#: Permissions of a QC folder defacer creates: the owner's only.  It holds renders and slices of the original faces
#: (unless ``--qc-after-only``), which must not be readable by every user of a shared machine, as the web
#: interface's session folders are not.
QC_FOLDER_MODE = 0o700


def _make_qc_folder(qc_root: Path) -> bool:
    """Create the QC folder ``qc_root`` with exactly :data:`QC_FOLDER_MODE` (whatever the umask), and the folders
    above it with the usual permissions; whether this call created it (``False``: another process made it
    meanwhile, and its permissions stay)."""
    make_folders(qc_root.parent)
    try:
        qc_root.mkdir(mode=QC_FOLDER_MODE)
    except FileExistsError:
        return False
    os.chmod(qc_root, QC_FOLDER_MODE)  # exactly, whatever the umask removed from mkdir's mode
    return True


def claim(qc_root: Path, targets: Iterable[Path]) -> None:
    """Check ``targets`` (:func:`check_owned`), then list them in the QC folder's record, before any is written.

    A QC folder that does not exist yet is created readable by its owner only (:data:`QC_FOLDER_MODE`), whatever
    the umask; the folders above it that are made with it get the usual permissions, and an existing QC folder
    keeps its own, with a warning when other users may open it (:func:`warn_if_shared`).

    Raises
    ------
    OutputError
        As :func:`check_owned`.
    """
    paths = list(targets)
    check_owned(qc_root, paths)
    if not os.path.lexists(qc_root):
        _make_qc_folder(qc_root)
    else:
        warn_if_shared(qc_root)
    _record(qc_root).add(paths)


@contextlib.contextmanager
def held(qc_root: Path, *, what: str, nothing: str = "Nothing was written by this run.") -> Iterator[bool]:
    """Hold an exclusive lock on the QC folder ``qc_root`` (created, 0700, when absent) while a run writes into it.

    Two ``deface --verify`` runs into one output (a script started twice, a rerun while the first still verifies)
    both passed the output check and wrote into one QC folder: the run that then lost the output's name removed
    the folder it had created with the other run's README, record and label map while that run verified, whose
    renders of the original face then landed in a folder made again with the usual permissions, without README or
    record.  The lock is an ``flock`` on the folder itself (no file is added to it; the system releases it when the
    process ends, so a killed run never leaves it held); the second run is refused before it writes anything.

    Parameters
    ----------
    qc_root : Path
        The QC folder; its parents are made when missing (:func:`missing_folders_above` says which).
    what : str
        What to do instead, ending the refusal (``"choose another output"``).
    nothing : str
        What the refused run wrote (a batch: nothing for that scan, the others as usual).

    Yields
    ------
    bool
        Whether this run created the folder (only then may it remove it again, :func:`remove_unused`).

    Raises
    ------
    OutputError
        If another process holds the lock (expected / found / what to do).
    """
    try:
        import fcntl
    except ImportError:  # not POSIX: run without the lock
        yield not os.path.lexists(qc_root)
        return
    for _ in range(3):
        # made by another run meanwhile (created False): its lock decides
        created = _make_qc_folder(qc_root) if not os.path.lexists(qc_root) else False
        handle = os.open(qc_root, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0))
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:  # held by another process (EWOULDBLOCK)
            os.close(handle)
            raise OutputError(
                f"Another defacer run is writing into the QC folder '{text_name(str(qc_root))}' right now (expected: "
                "no other run verifying this output; found: the folder is locked by another process). "
                f"{nothing} Wait for that run to finish, or {what}.") from err
        except OSError:  # a disk that takes no locks (ENOLCK, EOPNOTSUPP on some network shares): run without it
            log.debug("the QC folder '%s' cannot be locked on this disk", text_name(str(qc_root)))
            break
        try:
            same = os.path.samestat(os.fstat(handle), os.stat(qc_root, follow_symlinks=False))
        except OSError:
            same = False
        if same:
            break
        os.close(handle)  # the folder locked was removed (its run failed) and maybe made again: lock that one
    else:
        raise OutputError(f"The QC folder '{text_name(str(qc_root))}' was removed and made again three times while "
                          f"defacer locked it: another program is working there. Nothing was written; {what}.")
    try:
        yield created
    finally:
        os.close(handle)


def warn_if_shared(qc_root: Path) -> bool:
    """Warn when an existing QC folder can be opened by users other than its owner; return whether it can.

    defacer creates its QC folders 0700 (:data:`QC_FOLDER_MODE`), but one made by an earlier version
    (0755 with the usual umask), by hand or by another user in a shared parent keeps its permissions,
    and renders of the original faces written into it could be read by every user of the machine.
    The folder is not changed (it is not defacer's to change); the warning says how.
    """
    try:
        mode = stat.S_IMODE(os.stat(qc_root).st_mode)
    except OSError:
        return False
    if not mode & 0o077:
        return False
    log.warning("The QC folder '%s' can be opened by other users (mode %s) and is about to hold renders of the "
                "scans (of the original faces, unless --qc-after-only): restrict it with chmod 700 '%s' (defacer "
                "creates its QC folders that way).", text_name(str(qc_root)), oct(mode), text_name(str(qc_root)))
    return True


def missing_folders_above(path: Path) -> list[Path]:
    """The folders above ``path`` that do not exist yet, nearest first: what writing ``path`` would make."""
    return [folder for folder in Path(path).parents if not os.path.lexists(folder)]


def remove_unused(qc_root: Path, *written: str, made_above: Sequence[Path] = ()) -> None:
    """Remove a QC folder a failed run created, when it holds only its README, ownership record and ``written``.

    A verification claims and describes its QC folder before rendering; when the run then ends in an
    error (exit 1 or 4, no report), a folder this run created is not left behind.  Call it only for a
    folder the run created: anything else in it (another run's or the user's files) keeps the folder
    as it is.

    Parameters
    ----------
    qc_root : Path
        The QC folder, created by this run.
    *written : str
        Names of further files this run wrote there (e.g. the label map kept for the report).
    made_above : sequence of Path
        The folders above it that did not exist before the run (:func:`missing_folders_above`, nearest first):
        removed after it while they are empty (an output in a new folder left them behind, empty).
    """
    ours = {README_NAME, RECORD_NAME, *written}
    with contextlib.suppress(OSError):
        if {p.name for p in qc_root.iterdir()} <= ours:
            for name in ours:
                (qc_root / name).unlink(missing_ok=True)
            qc_root.rmdir()
            for folder in made_above:  # only while empty: one holding the output or anything else stays
                folder.rmdir()


def notice(qc_dir: Path, after_only: bool) -> str:
    """The console line saying where the QC pictures are and whether they show faces (the folder's name escaped:
    :func:`defacer.errors.shown`)."""
    shown_dir = shown(qc_dir)
    if after_only and holds_original_pictures(qc_dir):
        return (f"QC pictures: {shown_dir}\n  This folder still holds pictures of the ORIGINAL faces from an earlier "
                "run: --qc-after-only writes none but deletes none. Delete the folder (a batch --verify remakes it) "
                "before sharing it.")
    if after_only:
        return f"QC pictures (after defacing only, no original face): {shown_dir}"
    return (f"QC pictures and reports: {shown_dir}\n  This folder holds pictures of the ORIGINAL faces: keep it out "
            "of any data you share (--qc-after-only writes after-defacing pictures only).")


def holds_original_pictures(qc_dir: Path) -> bool:
    """Whether ``qc_dir`` holds pictures of an original face (``*_before.png``, ``before_after.png``)."""
    return qc_dir.is_dir() and any(name.endswith("_before.png") or name == "before_after.png"
                                    for _, _, names in walk(qc_dir) for name in names)


def write_readme(qc_dir: Path, after_only: bool) -> Path:
    """Write ``README.txt`` into the QC folder, saying what it holds.

    An after-only run into a folder that still holds an earlier run's pictures of the original
    keeps the warning.
    """
    make_folders(qc_dir)
    if after_only and not holds_original_pictures(qc_dir):
        text = ("defacer quality-control folder.\n\nIt holds verification reports and pictures of the scans AFTER "
                "defacing only (--qc-after-only): no picture of an original face.\n")
    else:
        text = ("defacer quality-control folder.\n\nWARNING: it holds renders and slices of the ORIGINAL faces "
                "(before defacing) next to the defaced ones. Keep it out of any data you share; delete it once the "
                "results are reviewed. Use --qc-after-only to write after-defacing pictures only.\n")
    path = qc_dir / README_NAME
    with atomic_outputs([path]) as (tmp,):
        tmp.write_text(text, encoding="utf-8")
    return path


def thumbnail(image: npt.NDArray[Any], size: int = THUMB_SIZE) -> npt.NDArray[np.uint8]:
    """A picture shrunk (never enlarged) to at most ``size`` pixels on its longer edge."""
    from PIL import Image

    picture = Image.fromarray(np.ascontiguousarray(image))
    picture.thumbnail((size, size))
    return np.asarray(picture, dtype=np.uint8)


def _save_png(image: npt.NDArray[Any], path: Path) -> Path:
    from defacer.verify.render import png_bytes

    with atomic_outputs([path]) as (tmp,):
        tmp.write_bytes(png_bytes(image))
    return path


def write_pictures(renders: dict[str, dict[str, Any]], qc_dir: Path, after_only: bool) -> dict[str, str]:
    """Thumbnails of the front and oblique views and one before/after picture.

    Parameters
    ----------
    renders : dict
        ``{"original": {view: Rendering}, "defaced": {...}}`` (:attr:`VerifyResult.renders`).
    qc_dir : Path
        The scan's QC folder.
    after_only : bool
        Write pictures after defacing only.

    Returns
    -------
    dict
        ``{"front_after": name, "left45_after": name, ..., "overview": name}``: file names in ``qc_dir``.
    """
    make_folders(qc_dir)
    written: dict[str, str] = {}
    whens = ("defaced",) if after_only else ("original", "defaced")
    rows = []
    for when in whens:
        label = "after" if when == "defaced" else "before"
        row = []
        for view in THUMB_VIEWS:
            rendering = renders.get(when, {}).get(view)
            if rendering is None:
                continue
            small = thumbnail(rendering.image)
            name = f"{view}_{label}.png"
            _save_png(small, qc_dir / name)
            written[f"{view}_{label}"] = name
            row.append(small)
        if row:
            height = max(p.shape[0] for p in row)
            rows.append(np.hstack([np.pad(p, ((0, height - p.shape[0]), (0, 2))) for p in row]))
    if rows:
        width = max(r.shape[1] for r in rows)
        overview = np.vstack([np.pad(r, ((0, 2), (0, width - r.shape[1]))) for r in rows])
        name = "after.png" if after_only else "before_after.png"
        _save_png(overview, qc_dir / name)
        written["overview"] = name
    return written


@dataclass
class GalleryRow:
    """One scan of the QC gallery.

    Attributes
    ----------
    name : str
        Subject / file name shown as the row's title.
    verdict : str or None
        ``PASS``, ``FAIL``, ``INCONCLUSIVE``, or None when the scan was not verified.
    folder : str or None
        The scan's QC folder relative to the gallery.
    pictures : dict
        As returned by :func:`write_pictures` (file names inside ``folder``).
    features : list of str
        Features found in the scan.
    report : str or None
        The full report, relative to the gallery.
    status : str
        The batch status (``done``, ``failed``, ...).
    note : str
        An error or warning to show.
    """

    name: str
    verdict: str | None = None
    folder: str | None = None
    pictures: dict[str, str] = field(default_factory=dict)
    features: list[str] = field(default_factory=list)
    report: str | None = None
    status: str = ""
    note: str = ""


_GALLERY_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:20px;color:#222}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:middle;text-align:left}
th{background:#f4f4f4;position:sticky;top:0}img{display:block;background:#000}.pics{display:flex;gap:4px}
.verdict{display:inline-block;padding:3px 10px;border-radius:4px;font-weight:700}
.NONE{background:#ddd;color:#222}.warn{background:#fff8c5;padding:8px;border-radius:4px}
nav a{margin-right:8px}.small{font-size:.85em;color:#555}
"""


def _caption(key: str) -> str:
    """``front_before`` -> ``front, before``; ``left45_after`` -> ``oblique, after``."""
    view, _, when = key.rpartition("_")
    return f"{'front' if view == 'front' else 'oblique'}, {when}"


def _row_html(row: GalleryRow) -> str:
    pics = []
    for key in ("front_before", "left45_before", "front_after", "left45_after"):
        name = row.pictures.get(key)
        if name and row.folder:
            src = html.escape(f"{row.folder}/{name}", quote=True)
            pics.append(f'<figure style="margin:0"><img src="{src}" alt="{html.escape(key)}" loading="lazy" '
                        f'width="{THUMB_SIZE}"><figcaption class="small">{html.escape(_caption(key))}</figcaption></figure>')
    verdict = row.verdict or "NONE"
    badge = html.escape(row.verdict or "not verified")
    link = (f'<a href="{html.escape(row.report, quote=True)}">full report</a>' if row.report else "")
    return (f'<tr class="row-{html.escape(verdict)}"><td><b>{html.escape(row.name)}</b><br>'
            f'<span class="small">{html.escape(row.status)}</span></td>'
            f'<td><div class="pics">{"".join(pics) or "&ndash;"}</div></td>'
            f'<td><span class="verdict {html.escape(verdict)}">{badge}</span></td>'
            f'<td>{html.escape(", ".join(row.features) or "none")}</td><td>{link}</td>'
            f'<td class="small">{html.escape(row.note)}</td></tr>')


def gallery_html(rows: Sequence[GalleryRow], title: str, after_only: bool) -> str:
    """The gallery page: verdict counts, then the scans (failing first) in pages of :data:`PAGE_ROWS`."""
    order = {verdicts.FAIL: 0, verdicts.INCONCLUSIVE: 1, None: 2, verdicts.PASS: 3}
    ordered = sorted(rows, key=lambda r: (order.get(r.verdict, 2), r.name))
    counts = {v: sum(1 for r in rows if r.verdict == v) for v in verdicts.VERDICTS}
    tally = ", ".join(f'<span class="verdict {v}">{counts[v]} {v}</span>' for v in verdicts.VERDICTS)
    pages = [ordered[i:i + PAGE_ROWS] for i in range(0, len(ordered), PAGE_ROWS)] or [[]]
    nav = ""
    if len(pages) > 1:
        nav = "<nav>Pages: " + "".join(f'<a href="#page-{n + 1}">{n + 1}</a>' for n in range(len(pages))) + "</nav>"
    head = ('<tr><th>scan</th><th>pictures</th><th>verdict</th><th>features found</th><th>report</th>'
            '<th>notes</th></tr>')
    sections = "".join(
        f'<section id="page-{n + 1}"><h2>Scans {n * PAGE_ROWS + 1}&ndash;{n * PAGE_ROWS + len(page)}</h2>'
        f'<table>{head}{"".join(_row_html(r) for r in page)}</table></section>'
        for n, page in enumerate(pages))
    holds_faces = not after_only or any(key.endswith("_before") for row in rows for key in row.pictures)
    warning = ("" if not holds_faces else '<p class="warn">This folder holds pictures of the <b>original</b> faces: keep '
               "it out of any data you share.</p>")
    legend = " ".join(f'<span class="verdict {v}">{v}</span> {html.escape(verdicts.MEANING[v])}<br>'
                      for v in verdicts.VERDICTS)
    return f"""<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{_GALLERY_CSS}{verdicts.css()}</style></head><body>
<h1>{html.escape(title)}</h1>{warning}
<p>{len(rows)} scans: {tally}</p><p class="small">{legend}</p>{nav}{sections}
</body></html>
"""


def write_gallery(qc_root: Path, rows: Sequence[GalleryRow], *, title: str = "defacer QC gallery",
                  after_only: bool = False) -> Path:
    """Write ``index.html`` into the batch QC folder (atomically); pictures are files beside it."""
    make_folders(qc_root)
    path = qc_root / GALLERY_NAME
    with atomic_outputs([path]) as (tmp,):
        tmp.write_text(gallery_html(rows, title, after_only), encoding="utf-8")
    return path
