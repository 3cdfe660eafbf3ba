"""Report a batch: progress bar, final table in the terminal, HTML summary with verify links.

rich is used when installed (``defacer[batch]``); without it the progress is a plain line
per scan on stderr and the table is plain text.
"""

from __future__ import annotations

import html
import logging
import os
import sys
import urllib.parse
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TextIO

from defacer._version import __version__
from defacer.batch.manifest import DONE, FAILED, INCOMPLETE, NOTHING_FOUND, SKIPPED, ScanRecord
from defacer.errors import shown
from defacer.files import text_name
from defacer.options import STRONGER_FLAGS

#: Statuses of scans for which nothing was written because a requested feature was not found.
NOT_DEFACED = (NOTHING_FOUND, INCOMPLETE)


class _Collector(logging.Handler):
    """Keeps the text of every warning (or worse) logged through the loggers it is added to."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(text_name(record.getMessage()))


@contextmanager
def collected_warnings(*logger_names: str) -> Iterator[list[str]]:
    """The warnings the named loggers log inside the ``with`` block, as a list filled as they come.

    They are still printed as usual; the list is for the HTML summary, where a file left out while
    listing IN (a name that is not UTF-8 text, a label map beside a scan, a link out of IN, a DICOM
    directory...) or changed on its way to OUT (a de-identified BIDS table) stays visible after the
    console has scrolled away.
    """
    collector = _Collector()
    loggers = [logging.getLogger(name) for name in logger_names]
    for logger in loggers:
        logger.addHandler(collector)
    try:
        yield collector.messages
    finally:
        for logger in loggers:
            logger.removeHandler(collector)


@dataclass(frozen=True)
class Counts:
    """How many scans ended in each state."""

    done: int = 0
    skipped: int = 0
    failed: int = 0
    verify_failed: int = 0
    nothing_found: int = 0
    incomplete: int = 0
    verify_inconclusive: int = 0

    @property
    def total(self) -> int:
        """All scans."""
        return self.done + self.skipped + self.failed + self.nothing_found + self.incomplete


def count(records: Sequence[ScanRecord]) -> Counts:
    """Tally records by status."""
    return Counts(
        done=sum(r.status == DONE for r in records),
        skipped=sum(r.status == SKIPPED for r in records),
        failed=sum(r.status == FAILED for r in records),
        nothing_found=sum(r.status == NOTHING_FOUND for r in records),
        incomplete=sum(r.status == INCOMPLETE for r in records),
        verify_failed=sum(r.status not in (FAILED, *NOT_DEFACED) and verdict_of(r) == "FAIL" for r in records),
        verify_inconclusive=sum(r.status not in (FAILED, *NOT_DEFACED) and verdict_of(r) == "INCONCLUSIVE"
                                for r in records),
    )


def verdict_of(record: ScanRecord) -> str | None:
    """The record's verification verdict: ``PASS``, ``FAIL``, ``INCONCLUSIVE``, or None when not verified.

    Records written before there were three verdicts only hold ``passed``.
    """
    verify = record.verify
    if not verify:
        return None
    if verify.get("verdict"):
        return str(verify["verdict"])
    passed = verify.get("passed")
    return None if passed is None else ("PASS" if passed else "FAIL")


class Progress(AbstractContextManager["Progress"]):
    """A progress bar with counts, rate and ETA (rich), or nothing when ``quiet``.

    Parameters
    ----------
    total : int
        Scans to process in this run (skipped scans excluded).
    quiet : bool
        Show nothing.
    stream : file, optional
        Where to draw (default stderr).
    """

    def __init__(self, total: int, *, quiet: bool = False, stream: TextIO | None = None) -> None:
        self.total = total
        self.quiet = quiet
        self.stream = stream or sys.stderr
        self.failed = 0
        self._done = 0
        self._bar: Any = None
        self._task: Any = None

    def __enter__(self) -> Self:
        if self.quiet or self.total == 0 or not _is_terminal(self.stream):
            return self  # a log file gets one plain line per scan as it ends (see advance)
        try:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as RichProgress
        except ImportError:
            return self
        self._bar = RichProgress(
            TextColumn("[bold]defacing"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"), TextColumn("[red]{task.fields[failed]}"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), TextColumn("{task.fields[last]}", markup=False),
            console=Console(file=self.stream), transient=False,
        )
        self._bar.__enter__()
        self._task = self._bar.add_task("defacing", total=self.total, rate="", failed="", last="")
        return self

    def advance(self, record: ScanRecord) -> None:
        """Count one finished scan."""
        self._done += 1
        if record.status == FAILED:
            self.failed += 1
        if self.quiet:
            return
        if self._bar is None:
            state = "FAILED " + (record.error or "") if record.status == FAILED else record.status
            verdict = verdict_of(record)
            state += f" (verify {verdict})" if verdict else ""
            if record.status in NOT_DEFACED:
                state = f"{record.status.upper()} (nothing written) {record.error or ''}"
            print(f"[{self._done}/{self.total}] {shown(record.key)}: {one_line(state)}", file=self.stream)
            return
        elapsed = self._bar.tasks[0].elapsed or 0.0
        rate = f"{60.0 * self._done / elapsed:.1f} scans/min" if elapsed > 0 else ""
        failed = f"{self.failed} failed" if self.failed else ""
        self._bar.update(self._task, advance=1, rate=rate, failed=failed, last=_last_scan(record))

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._bar is not None:
            self._bar.__exit__(exc_type, exc, tb)


def _is_terminal(stream: TextIO) -> bool:
    """Whether ``stream`` is an interactive terminal.

    rich redraws its bar only on a terminal: written to a file (``nohup``, a SLURM job's log, ``2> log``) it
    shows nothing until the batch ends, then one line cut to 80 columns, so a log gets plain lines instead.
    """
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty()) if isatty is not None else False
    except (OSError, ValueError):  # a closed or detached stream
        return False


def one_line(message: str) -> str:
    """A recorded error on one console line: its own line breaks (a DICOM folder's "holds 2 image stacks" lists
    each on a line) become spaces, the rest as :func:`defacer.errors.shown` (they were printed as literal ``\\n``
    in the final table and the log lines)."""
    return shown(" ".join(part.strip() for part in str(message).splitlines() if part.strip()))


def _last_scan(record: ScanRecord, width: int = 60) -> str:
    """``last: <scan> <status>`` for the progress bar, the scan's path shortened from the left."""
    name = shown(record.key)
    key = name if len(name) <= width else "…" + name[-(width - 1):]
    verdict = verdict_of(record)
    return f"last: {key} {record.status}" + (f" ({verdict})" if verdict else "")


#: What to do with a scan whose verification failed (see :data:`defacer.verify.verdict.REMEDY_FACE`: with
#: ``--nose-scale 3 --eye-box-scale 2.5`` the 3 real heads the shipped detector left a face on were clear).
VERIFY_FAIL_NEXT_STEP = ("For a verification FAIL: run this batch again with --retry-stronger (it redoes only the "
                         "scans whose verification found a face, with a larger nose removal and eye cover: "
                         f"{STRONGER_FLAGS}, then if needed --whole-face); if the brain region changed, do not "
                         "share that scan and check its files.")
#: The same once every failed scan had its whole face removed (by --retry-stronger or --whole-face).
VERIFY_FAIL_AFTER_RETRY = ("For a verification FAIL after the whole face in front of the eyes was removed: do not "
                           "share that scan as it is; look at its report's pictures (a detector can fire on the cut "
                           "surface) and, if a face is recognisable, remove more with another tool (for example "
                           "pydeface).")


def verify_fail_next_step(records: Sequence[ScanRecord]) -> str | None:
    """What to do about the scans whose verification failed, or ``None`` when none failed.

    :data:`VERIFY_FAIL_AFTER_RETRY` when every such scan was already defaced with its whole face removed
    (``--whole-face``, or the last step of ``--retry-stronger``), else :data:`VERIFY_FAIL_NEXT_STEP`.
    """
    failed = [r for r in records if verdict_of(r) == "FAIL"]
    if not failed:
        return None

    def whole_face(record: ScanRecord) -> bool:
        return ((record.provenance or {}).get("options") or {}).get("whole_face") is True

    return VERIFY_FAIL_AFTER_RETRY if all(whole_face(r) for r in failed) else VERIFY_FAIL_NEXT_STEP


def print_table(records: Sequence[ScanRecord], *, wall_s: float, stream: TextIO | None = None,
                html_path: Path | None = None) -> None:
    """Print the final summary: counts, throughput and every failed scan with its error."""
    stream = stream or sys.stderr
    counts = count(records)
    ran = counts.done + counts.failed + counts.nothing_found + counts.incomplete
    rate = 60.0 * ran / wall_s if wall_s > 0 and ran else 0.0
    failed = [r for r in records if r.status == FAILED]
    not_defaced = [r for r in records if r.status in NOT_DEFACED]
    unverified = [r for r in records if r.status not in (FAILED, *NOT_DEFACED)
                  and verdict_of(r) in ("FAIL", "INCONCLUSIVE")]
    try:
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text
    except ImportError:
        print(f"done {counts.done}, already done {counts.skipped}, failed {counts.failed}, "
              f"nothing found {counts.nothing_found}, incomplete {counts.incomplete}, "
              f"verify failed {counts.verify_failed}, verify inconclusive {counts.verify_inconclusive} "
              f"of {counts.total} scans; {rate:.1f} scans/min", file=stream)
        for record in failed:
            print(f"  FAILED {shown(record.key)}: {one_line(record.error or '')}", file=stream)
        for record in not_defaced:
            print(f"  {record.status.upper()} (nothing written) {shown(record.key)}: {shown(_features_line(record))}",
                  file=stream)
        for record in unverified:
            print(f"  VERIFY {verdict_of(record)} {shown(record.key)}: {shown(_report_of(record))}", file=stream)
        step = verify_fail_next_step(unverified)
        if step:
            print(step, file=stream)
        if html_path is not None:
            print(f"summary: {html_path}", file=stream)
        return
    console = Console(file=stream)
    table = Table(title="defacer batch")
    columns = ["defaced", "already done", "failed", "total", "scans/min", "time"]
    values = [str(counts.done), str(counts.skipped), f"[red]{counts.failed}" if counts.failed else "0",
              str(counts.total), f"{rate:.1f}", f"{wall_s:.1f} s"]
    if not_defaced:
        columns.insert(3, "nothing found")
        values.insert(3, f"[yellow]{counts.nothing_found}" if counts.nothing_found else "0")
        columns.insert(4, "incomplete")
        values.insert(4, f"[yellow]{counts.incomplete}" if counts.incomplete else "0")
    if any(r.verify is not None for r in records):
        columns.insert(3, "verify failed")
        values.insert(3, f"[red]{counts.verify_failed}" if counts.verify_failed else "0")
        columns.insert(4, "verify inconclusive")
        values.insert(4, f"[yellow]{counts.verify_inconclusive}" if counts.verify_inconclusive else "0")
    for column in columns:
        table.add_column(column, justify="right", overflow="fold")
    table.add_row(*values)
    console.print(table)
    if failed:
        errors = Table(title="failed scans", show_lines=False)
        errors.add_column("scan", overflow="fold")
        errors.add_column("error")
        for record in failed:
            errors.add_row(Text(shown(record.key)), Text(one_line(record.error or "")))
        console.print(errors)
    if not_defaced:
        missing = Table(title="not defaced: a requested feature was not found (nothing written; --allow-missing "
                              "writes them)", show_lines=False)
        missing.add_column("scan", overflow="fold")
        missing.add_column("status")
        missing.add_column("features")
        for record in not_defaced:
            missing.add_row(Text(shown(record.key)), Text(record.status), Text(shown(_features_line(record))))
        console.print(missing)
    if unverified:
        checks = Table(title="verification failed (the face may still be recognisable) or inconclusive (no face "
                             "found in the original to test): look at their reports", show_lines=False)
        checks.add_column("scan", overflow="fold")
        checks.add_column("verdict")
        checks.add_column("report (in the QC folder)", overflow="fold")
        for record in unverified:
            checks.add_row(Text(shown(record.key)), Text(verdict_of(record) or ""), Text(shown(_report_of(record))))
        console.print(checks)
        step = verify_fail_next_step(unverified)
        if step:
            console.print(step, markup=False, highlight=False)
    warned = sum(1 for r in records if r.warnings and r.status == DONE)
    if warned:
        scans = "scan has" if warned == 1 else "scans have"
        console.print(f"{warned} {scans} warnings (for example a feature not found): see the summary.")
    if html_path is not None:
        console.print(Text(f"summary: {shown(html_path)}"))


def _report_of(record: ScanRecord) -> str:
    """The verification report's path as recorded (relative to the QC folder ``OUT-qc``), or ``""``."""
    verify = record.verify or {}
    return str(verify.get("report_path") or verify.get("report_dir") or "")


def _features_line(record: ScanRecord) -> str:
    """``eyes: distorted, nose: not found, ...`` from a record's provenance (its requested features)."""
    features = record.provenance.get("features", {}) if record.provenance else {}
    return ", ".join(f"{name}: {entry.get('status', '?')}" for name, entry in features.items()
                     if entry.get("requested", True))


def _link(target: str | None, base: Path, text: str) -> str:
    if not target:
        return ""
    rel = urllib.parse.quote(os.fsencode(os.path.relpath(target, base)))  # any name: spaces, '#', non-UTF-8 bytes
    return f'<a href="{html.escape(rel)}">{html.escape(text_name(text))}</a>'


def _notices_html(notices: Sequence[str]) -> str:
    """The notices of listing IN and carrying its other files as an HTML list ('' when none)."""
    if not notices:
        return ""
    items = "".join(f"<li>{html.escape(text_name(n))}</li>" for n in notices)
    return (f"<h2>{len(notices)} notice(s) while listing the input and copying its other files</h2>"
            f'<p>Files named here were left out (neither defaced nor copied) or changed on their way to the output.</p>'
            f'<ul class="notices">{items}</ul>\n')


def _not_done_html(not_done: Sequence[str], written: Sequence[str] = (), running: Sequence[str] = ()) -> str:
    """The paragraph that says a run was interrupted, or nothing (``written``, ``running``: see :func:`write_html`)."""
    if not not_done:
        return ""
    stopped = (f"; {len(written)} of them were stopped after their output was written in this output folder, before "
               "it was verified and recorded: those files are not checked, do not share them" if written else "")
    stopped += (f"; {len(running)} of them were still running on the Dask cluster when the run stopped waiting for "
                "them: they may yet write their output into this folder, not verified and not recorded; wait until the "
                "cluster's workers are idle, and do not share those files" if running else "")
    return (f"<p><strong>Interrupted: {len(not_done)} scan(s) not done</strong> (Ctrl-C or a termination signal "
            f"stopped the run before they finished{stopped}; nothing was written for the others; listed last). Run the "
            "same command again to resume: the finished scans are skipped, these are done again.</p>\n")


#: The row of a scan an interruption stopped before its output was written.
NOT_STARTED = "the run was interrupted before this scan was defaced: nothing written for it"
#: The row of a scan an interruption stopped after its output was written (:func:`write_html`'s ``written``).
STOPPED_AFTER_WRITING = ("the run was interrupted after this scan's output was written, before it was verified and "
                         "recorded: that file is not checked, do not share it; run the same command again (it is "
                         "done again)")
#: The row of a scan still running on a Dask cluster when an interrupted run stopped waiting for it
#: (:func:`write_html`'s ``running``).
LEFT_RUNNING = ("the run was interrupted while this scan ran on the Dask cluster, and stopped waiting for it: it may "
                "yet write its output here, not verified and not recorded; wait until the cluster's workers are idle, "
                "do not share that file, and run the same command again (it is done again)")


def write_html(records: Sequence[ScanRecord], path: Path, *, out_root: Path, title: str, wall_s: float,
               qc_root: Path | None = None, notices: Sequence[str] = (), not_done: Sequence[str] = (),
               written: Sequence[str] = (), running: Sequence[str] = ()) -> Path:
    """Write an HTML page listing every scan: status, time, error, output and verify report links.

    Verification reports live in ``qc_root`` (``OUT-qc``, outside OUT); the page only links to them.
    ``notices`` (the warnings of listing IN and carrying its other files, :func:`collected_warnings`)
    are listed above the scans.  ``not_done``: the scans a run stopped by Ctrl-C or SIGTERM left undone, said
    first and listed (the page once counted only the finished ones, as if they were the whole batch).
    ``written``: those of ``not_done`` whose output this run had already written (stopped while verifying, or
    before their record): the page said "nothing written for it" beside an unverified output in OUT.  ``running``:
    those of ``not_done`` still running on a Dask cluster when the run stopped waiting for them (Ctrl-C again): they
    may yet write there.
    """
    qc_root = qc_root if qc_root is not None else out_root.with_name(out_root.name + "-qc")
    counts = count(records)
    rows = []
    # Failed scans first, then those whose verification failed (do not share them), then nothing written.
    for record in sorted(records, key=lambda r: (r.status != FAILED, verdict_of(r) != "FAIL",
                                                 r.status not in NOT_DEFACED, r.key)):
        output = record.outputs[0].path if record.outputs else ""
        verify = record.verify or {}
        report = verify.get("report_path") or verify.get("report_dir")
        if report and not Path(report).is_absolute():
            report = str(qc_root / report)  # recorded relative to the QC folder
        verdict = verdict_of(record) or ""
        flagged = " verify-fail" if verdict == "FAIL" and record.status not in (FAILED, *NOT_DEFACED) else ""
        rows.append(
            f'<tr class="{html.escape(record.status)}{flagged}"><td>{html.escape(record.key)}</td>'
            f"<td>{html.escape(record.status)}</td>"
            f"<td>{record.timings.get('total', 0.0):.1f}</td>"
            f"<td>{_link(str(out_root / output) if output else None, path.parent, output)}</td>"
            f"<td>{_link(report, path.parent, 'report')} <span class=\"{verdict}\">{verdict}</span></td>"
            f"<td>{html.escape('; '.join(m for m in (_features_line(record) if record.status in NOT_DEFACED else None, record.error, *record.warnings) if m))}</td></tr>"
        )
    rows += [f'<tr class="not-done"><td>{html.escape(key)}</td><td>not done</td><td></td><td></td><td></td>'
             f"<td>{LEFT_RUNNING if key in running else STOPPED_AFTER_WRITING if key in written else NOT_STARTED}"
             "</td></tr>"
             for key in sorted(not_done)]
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}tr.failed,tr.verify-fail{{background:#fdd}}
tr.nothing-found,tr.incomplete,tr.not-done{{background:#ffd}}
tr.skipped{{color:#666}}.PASS,.FAIL,.INCONCLUSIVE{{padding:1px 6px;border-radius:3px;color:#fff;font-weight:700}}
.PASS{{background:#1a7f37}}.FAIL{{background:#cf222e}}.INCONCLUSIVE{{background:#9a6700}}</style></head><body>
<h1>{html.escape(title)}</h1>
<p>defacer {html.escape(__version__)}: {counts.done} defaced, {counts.skipped} already done,
<strong>{counts.failed} failed</strong>, {counts.verify_failed} failed verification,
{counts.verify_inconclusive} inconclusive verification (no face found in the original to test),
<strong>{counts.nothing_found} nothing found, {counts.incomplete} incomplete</strong> (a requested feature not found:
nothing written for them), {counts.total} scans,
{wall_s:.1f} s.</p>
<p>Verification reports and pictures, when made, are in the QC folder beside this output
({html.escape(qc_root.name)}/), never in it: they show the original faces, so keep that folder private.</p>
{_notices_html(notices)}{_not_done_html(not_done, written, running)}<table><tr><th>scan</th><th>status</th><th>seconds</th><th>output</th><th>verify</th><th>error or warnings</th></tr>
{chr(10).join(rows)}
</table></body></html>
"""
    from defacer.io.atomic import write_text_atomic

    return write_text_atomic(path, text_name(page))  # a name that is not UTF-8 (IN's, OUT's) shown as U+FFFD
