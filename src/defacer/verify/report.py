"""Self-contained HTML reports and JSON summaries.

The HTML embeds every picture as a ``data:image/png;base64`` URI and uses no script, font or
style sheet from elsewhere, so it can be mailed, archived, or opened offline.  Writes are atomic.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from defacer.files import make_folders, text_name
from defacer.io.atomic import atomic_outputs, check_output_path
from defacer.provenance import to_jsonable
from defacer.verify import verdict as verdicts
from defacer.verify.render import Rendering, png_bytes
from defacer.verify.slices import COLOURS, feature_slices, label_regions
from defacer.volume import Volume

REPORT_NAME = "verify_report.html"
SUMMARY_NAME = "verify_summary.json"

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
.verdict{display:inline-block;padding:6px 16px;border-radius:6px;font-weight:700;font-size:1.3em;color:#fff}
.warn{background:#fff8c5;padding:8px;border-radius:4px}
details{margin:8px 0}summary{cursor:pointer;color:#0550ae}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f4f4f4}td.l,th.l{text-align:left}.hit{color:#cf222e;font-weight:700}.weak{color:#9a6700;font-style:italic}.ok{color:#1a7f37}
.pair{display:inline-block;margin:4px 10px 10px 0;vertical-align:top;text-align:center;font-size:.85em}
.pair img{display:block;border:1px solid #999;background:#000}.rule{font-size:.9em;color:#444}
pre{background:#f6f8fa;padding:8px;overflow:auto;font-size:.8em;max-height:400px}
""" + verdicts.css() + "\n"


def data_uri(image: npt.NDArray[Any]) -> str:
    """PNG data URI of a uint8 grey or RGB array."""
    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode("ascii")


def _img(image: npt.NDArray[Any], caption: str, width: int | None = None) -> str:
    w = f' width="{width}"' if width else ""
    return f'<img src="{data_uri(image)}" alt="{html.escape(caption)}"{w}>'


def _fmt(value: Any) -> str:
    if value is None:
        return "&ndash;"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return html.escape(str(value))


def _detector_table(summary: dict[str, Any]) -> str:
    thresholds = summary["thresholds"]
    names = list(thresholds)
    head = "".join(f"<th colspan=2>{html.escape(n)} (&ge; {thresholds[n]:g})</th>" for n in names)
    sub = "".join("<th>before</th><th>after</th>" for _ in names)
    rows = []
    for view, both in summary["detectors"].items():
        cells = []
        for n in names:
            for when in ("before", "after"):
                r = both[when].get(n)
                if r is None:
                    cells.append("<td>not run</td>")
                    continue
                cls = ("hit" if r["counted"] else "weak") if r["detected"] else ""
                cells.append(f'<td class="{cls}">{_fmt(r["score"])}</td>')
        rows.append(f'<tr><td class="l">{html.escape(view)}</td>{"".join(cells)}</tr>')
    return (f'<table><tr><th class="l" rowspan=2>view</th>{head}</tr><tr>{sub}</tr>{"".join(rows)}</table>'
            '<p class="rule">Scores are the best face each model returned ("&ndash;": none). '
            'Red: at or above the stated threshold in a view where the detector counts (a face is detected). '
            'Amber italics: above the threshold in a view where it is reported but not counted. Face Mesh shows 1 '
            'when its 468 landmarks were found with presence at or above its threshold. dlib CNN runs on the front view only.</p>')


def _voxel_table(voxels: dict[str, Any]) -> str:
    """Changed voxels: the whole scan, per feature (changed by its distortion), the brain region.

    One definition everywhere (:data:`defacer.verify.check.CHANGED_VOXELS_DEFINITION`); the
    overlap with each detected feature region is one click away.
    """
    rows = [(f'<tr><td class="l">whole scan</td><td>{voxels["total"]:,}</td>'
             f'<td>{voxels["fraction_of_scan"] * 100:.3f}% of the scan</td></tr>')]
    for name, count in voxels.get("by_feature", {}).items():
        r, g, b = COLOURS.get(name, (128, 128, 128))
        rows.append(f'<tr><td class="l"><span style="color:rgb({r},{g},{b})">&#9632;</span> {html.escape(name)}</td>'
                    f'<td>{count:,}</td><td>changed by its distortion</td></tr>')
    brain = voxels["brain"]
    kind = "brain (mask given)" if brain["kind"] == "mask" else "brain (estimated region)"
    cls = "ok" if brain["changed"] == 0 else "hit"
    rows.append(f'<tr><td class="l">{kind}</td><td class="{cls}">{brain["changed"]:,}</td>'
                f'<td>{brain["changed_fraction"] * 100:.3f}% of its {brain["voxels"]:,} voxels</td></tr>')
    table = ('<table><tr><th class="l">where</th><th>changed voxels</th><th class="l">note</th></tr>'
             + "".join(rows) + "</table>")
    definition = html.escape(voxels.get("definition", ""))
    detail = ""
    inside = voxels.get("inside_detected_region") or voxels.get("features")
    if inside:
        cells = []
        for name, v in inside.items():
            label = ("outside every detected region" if name.startswith("outside")
                     else f"inside the detected {name} region")
            size = f' of {v["labelled"]:,}' if v.get("labelled") else ""
            cells.append(f'<tr><td class="l">{html.escape(label)}</td><td>{v["changed"]:,}{size}</td></tr>')
        detail = ('<details><summary>Changed voxels inside and outside the detected regions</summary>'
                  '<p class="rule">The distortions deliberately reach beyond the detected voxels (a skin band '
                  'over each eye, a box around the nose, each whole auricle), so many changed voxels lie outside '
                  'the detected regions; that is expected.</p><table>' + "".join(cells) + "</table></details>")
    return table + f'<p class="rule">{definition}</p>' + detail


def _render_pairs(before: dict[str, Rendering], after: dict[str, Rendering], after_only: bool = False) -> str:
    parts = []
    for name, r in after.items():
        if not after_only:
            parts.append(f'<div class="pair">{_img(before[name].image, f"{name} before")}{html.escape(name)}: before</div>')
        parts.append(f'<div class="pair">{_img(r.image, f"{name} after")}{html.escape(name)}: after</div>')
    return "".join(parts)


def _slices_html(original: Volume, defaced: Volume, labels: npt.NDArray[Any] | None,
                 changed: npt.NDArray[np.bool_], after_only: bool = False) -> str:
    regions = label_regions(labels, changed)
    if not regions:
        return "<p>No voxel changed and no feature is labelled: nothing to show.</p>"
    parts = []
    for s in feature_slices(original, defaced, regions):
        r, g, b = COLOURS.get(s.feature, (255, 0, 255))
        colour = f"rgb({r},{g},{b})"
        cap = f"{s.feature}, {s.plane} at {s.position_mm:.1f} mm"
        swatch = f'<span style="color:{colour}">&#9632;</span> '
        if after_only:
            parts.append(f'<div class="pair">{_img(s.after, cap + " after")}{swatch}{html.escape(cap)}: after</div><br>')
            continue
        parts.append(f'<div class="pair">{_img(s.before, cap + " before")}{swatch}'
                     f'{html.escape(cap)}: before</div><div class="pair">{_img(s.after, cap + " after")}after</div><br>')
    note = ("Outlines: the labelled features." if labels is not None
            else "No label map was given: the outline shows the voxels that changed.")
    return "".join(parts) + f'<p class="rule">{note}</p>'


def render_html(summary: dict[str, Any], before: dict[str, Rendering], after: dict[str, Rendering],
                original: Volume, defaced: Volume, labels: npt.NDArray[Any] | None, changed: npt.NDArray[np.bool_],
                provenance: dict[str, Any] | None, title: str | None, after_only: bool = False) -> str:
    """The report's HTML text (``after_only``: no picture of the original, only after defacing)."""
    verdict = summary["verdict"]
    heading = html.escape(title or "defacer verification report")
    meaning = summary.get("verdict_meaning") or verdicts.MEANING.get(verdict, "")
    step = verdicts.remedy(summary)
    next_step = f'<p class="warn">{html.escape(step)}</p>' if step else ""
    if after_only:
        faces_note = ('<p class="rule">Pictures of the original were left out (after-defacing pictures only): '
                      'this report shows no face of the original.</p>')
    else:
        faces_note = ('<p class="warn">This report shows renders and slices of the <b>original</b> face: keep it '
                      'out of any data you share.</p>')
    ident = summary["identity"]
    prov = json.dumps(provenance, indent=2, default=str) if provenance else "(no provenance given)"
    timings = summary.get("timings", {})
    pairs_title = "3D renders after defacing" if after_only else "3D renders (before | after)"
    slices_title = ("Slices through each distorted feature, after defacing" if after_only
                    else "Slices through each distorted feature (before | after)")
    return f"""<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{heading}</title>
<style>{_CSS}</style></head><body>
<h1>{heading}</h1>
<p><span class="verdict {html.escape(verdict)}">{html.escape(verdict)}</span> {html.escape(meaning)}</p>{next_step}{faces_note}
<p>Face found before: {html.escape(", ".join(summary["face_found_before"]) or "none")}<br>
Face found after: {html.escape(", ".join(summary["face_found_after"]) or "none")}<br>
Brain region untouched: {"yes" if summary["brain_untouched"] else "<b>no</b>"}</p>
<details><summary>How the verdict is decided</summary><p class="rule">{html.escape(summary["rule"])}</p></details>
<h2>{pairs_title}</h2>
<p class="rule">Orthographic ray-cast of the skin surface in world (RAS) space at iso-level
{summary["render"]["iso_level"]:g}, the same for both; {summary["render"]["step_mm"]:.2f} mm per ray.</p>
{_render_pairs(before, after, after_only)}
<h2>Face detectors</h2>{_detector_table(summary)}
<h2>Identity</h2>
<p>dlib embedding distance between the original and defaced front renders (on the original's face box,
from {html.escape(ident["box_source"])}): <b>{ident["distance"]:.3f}</b>.
<span class="rule">{html.escape(ident["note"])}</span></p>
<h2>Changed voxels</h2>{_voxel_table(summary["voxels"])}
<h2>{slices_title}</h2>{_slices_html(original, defaced, labels, changed, after_only)}
<h2>Technical details</h2>
<details><summary>Scan</summary><pre>{html.escape(json.dumps(summary["scan"]))}</pre></details>
<details><summary>Provenance</summary><pre>{html.escape(prov)}</pre></details>
<details><summary>Timings</summary><pre>{html.escape(json.dumps(timings))}</pre></details>
</body></html>
"""


def write_report(out_dir: Path, summary: dict[str, Any], before: dict[str, Rendering], after: dict[str, Rendering],
                 original: Volume, defaced: Volume, labels: npt.NDArray[Any] | None, changed: npt.NDArray[np.bool_],
                 *, provenance: dict[str, Any] | None = None, title: str | None = None, force: bool = True,
                 timings: dict[str, float] | None = None, after_only: bool = False) -> tuple[Path, Path]:
    """Write ``verify_report.html`` and ``verify_summary.json`` into ``out_dir`` atomically.

    With ``after_only`` the report holds no picture of the original (renders and slices after
    defacing only).

    Returns
    -------
    report_path, summary_path : Path
    """
    out_dir = Path(out_dir)
    make_folders(out_dir)
    report_path = check_output_path(out_dir / REPORT_NAME, force=force)
    summary_path = check_output_path(out_dir / SUMMARY_NAME, force=force)
    summary = dict(summary)
    if timings:
        summary["timings"] = {k: round(v, 3) for k, v in timings.items()}
    text = render_html(summary, before, after, original, defaced, labels, changed, provenance, title, after_only)
    with atomic_outputs([report_path, summary_path]) as (tmp_report, tmp_summary):
        tmp_report.write_text(text_name(text), encoding="utf-8")  # a name that is not UTF-8 shown as U+FFFD
        tmp_summary.write_text(json.dumps(summary, indent=2, default=to_jsonable) + "\n", encoding="utf-8")
    return report_path, summary_path


def write_summary(path: Path, summary: dict[str, Any]) -> Path:
    """(Re)write a JSON summary atomically."""
    with atomic_outputs([path]) as (tmp,):
        tmp.write_text(json.dumps(summary, indent=2, default=to_jsonable) + "\n", encoding="utf-8")
    return path


def evaluation_html(result: dict[str, Any], thumbs: dict[str, tuple[npt.NDArray[Any], npt.NDArray[Any]]]) -> str:
    """Summary HTML of ``defacer evaluate``: one row per scan, overall figures, small front renders.

    Parameters
    ----------
    result : dict
        The evaluation JSON (see :mod:`defacer.verify.evaluate`).
    thumbs : dict of str to (before, after) uint8 arrays
        Front renders per scan (may be empty, e.g. ``--no-pictures``).
    """
    rows = []
    for s in result["scans"]:
        if "error" in s:
            rows.append(f'<tr><td class="l">{html.escape(s["name"])}</td><td class="l" colspan=9>'
                        f'{html.escape(s["error"])}</td></tr>')
            continue
        dice = s.get("dice") or {}
        dice_txt = ", ".join(f"{k} {v:.2f}" for k, v in dice.items() if v is not None) or "&ndash;"
        pics = ""
        if s["name"] in thumbs:
            b, a = thumbs[s["name"]]
            pics = _img(b, "before", 96) + _img(a, "after", 96)
        cls = {verdicts.PASS: "ok", verdicts.FAIL: "hit"}.get(s["verdict"], "weak")
        rows.append(
            f'<tr><td class="l">{html.escape(s["name"])}</td><td class="l">{html.escape(", ".join(s["features_found"]))}</td>'
            f'<td class="l">{dice_txt}</td><td class="l">{html.escape(", ".join(s["face_found_before"]) or "none")}</td>'
            f'<td class="l">{html.escape(", ".join(s["face_found_after"]) or "none")}</td>'
            f'<td>{_fmt(s["identity_distance"])}</td><td class="{cls}">{s["verdict"]}</td>'
            f'<td>{s["seconds"]:.1f}</td><td>{s["peak_rss_mb"]:.0f}</td><td>{pics}</td></tr>')
    overall = result["overall"]
    return f"""<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>defacer evaluation</title>
<style>{_CSS}</style></head><body><h1>defacer evaluation</h1>
<p class="rule"><b>Re-identification.</b> {html.escape(str(overall.get("reid_verdict", "not measured")))}</p>
<pre>{html.escape(json.dumps(overall, indent=2, default=str))}</pre>
<p class="rule"><b>Rule per scan.</b> {html.escape(result["rule"])}</p>
<table><tr><th class="l">scan</th><th class="l">features found</th><th class="l">Dice</th>
<th class="l">face before</th><th class="l">face after</th><th>identity distance</th><th>verdict</th>
<th>seconds</th><th>peak RSS MB</th><th>front before / after</th></tr>{"".join(rows)}</table>
</body></html>
"""
