"""Self-contained HTML report: tables, embedded PNGs, the commands that made it, provenance.

One file with no external URLs, scripts or style sheets: images and the per-case CSV are
embedded as base64 `data:` URIs, so the report can be mailed or archived and still open.
"""

from __future__ import annotations

import base64
import html
import math
import platform
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from clinfuse.errors import ClinfuseInputError
from clinfuse.io.atomic import write_text_atomic

# Printed on every report, whatever made it (issue 12: a report must never read as a diagnosis).
DISCLAIMER = (
    "Research software, not for clinical use: clinfuse outputs are not validated for diagnosis "
    "or treatment decisions."
)

# Above this size the per-case CSV is only linked (relative path), not embedded, to keep the
# report small enough for a mail attachment.
MAX_EMBEDDED_CSV_BYTES = 2_000_000

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2em auto;
       max-width: 1400px; color: #222; line-height: 1.4; padding: 0 1em; }
h1 { font-size: 1.6em; border-bottom: 2px solid #4e79a7; padding-bottom: .2em; }
h2 { font-size: 1.25em; margin-top: 1.6em; color: #2b4a6f; }
table { border-collapse: collapse; margin: .6em 0; font-size: .85em; }
th, td { border: 1px solid #ccc; padding: .3em .6em; text-align: right; }
td { white-space: nowrap; }
.ci { font-size: .8em; color: #666; }
th { background: #eef2f7; }
td:first-child, th:first-child { text-align: left; font-weight: 600; }
tr.highlight td { background: #fff6d5; }
caption { caption-side: bottom; text-align: left; font-size: .85em; color: #555; padding: .3em 0; }
.disclaimer { background: #fde2e1; border-left: 4px solid #c0392b; padding: .5em .8em;
              margin: .8em 0; font-weight: 600; }
.side { display: flex; flex-wrap: wrap; gap: 1.5em; align-items: flex-start; }
.side figure { margin: .6em 0; max-width: 640px; }
.note { background: #fff3cd; border-left: 4px solid #e0a800; padding: .5em .8em; margin: .8em 0; }
figure { margin: 1em 0; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: .85em; color: #555; }
pre { background: #f6f8fa; padding: .6em; overflow-x: auto; font-size: .85em; }
dl { display: grid; grid-template-columns: max-content auto; gap: .2em 1em; font-size: .9em; }
dt { font-weight: 600; }
"""


@dataclass
class Table:
    """A table for the report: `header` names the columns, each row starts with its label.

    Cells are shown as given (strings) or formatted (floats: 3 decimals, NaN as "—"); a newline
    in a cell starts a smaller second line (e.g. "2 of 3 cases: no prediction"). Rows whose
    label is in `highlight` are shaded (e.g. our method). `figure` (caption, PNG path) is drawn
    beside the table, e.g. the reliability diagram next to the calibration numbers.
    """

    title: str
    header: Sequence[str]
    rows: Sequence[Sequence[Any]]
    caption: str = ""
    highlight: Sequence[str] = field(default_factory=tuple)
    figure: tuple[str, str | Path] | None = None  # (caption, PNG) shown beside the table


def format_cell(value: Any) -> str:
    """Text of one table cell: floats with 3 decimals, NaN/None as an em dash."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return "—" if math.isnan(value) else f"{value:.3f}"
    return str(value)


def format_stat(
    mean: float, sd: float | None = None, ci: Sequence[float] | None = None, digits: int = 3
) -> str:
    """`mean ± sd [lo, hi]` as used in every table (95 % bootstrap CI in brackets)."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "—"
    text = f"{mean:.{digits}f}"
    if sd is not None and not math.isnan(sd):
        text += f" ± {sd:.{digits}f}"
    if ci is not None and len(ci) == 2 and not any(math.isnan(float(v)) for v in ci):
        text += f" [{float(ci[0]):.{digits}f}, {float(ci[1]):.{digits}f}]"
    return text


def collect_versions() -> dict[str, str]:
    """Versions of Python, the platform and the libraries a result depends on."""
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for dist in ("clinfuse", "torch", "monai", "numpy", "scipy", "scikit-image", "nibabel"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def data_uri(path: str | Path, mime: str) -> str:
    """The file's bytes as a base64 `data:` URI (raises `ClinfuseInputError` if unreadable)."""
    p = Path(path)
    try:
        payload = p.read_bytes()
    except OSError as err:
        raise ClinfuseInputError(f"cannot read file for the report: {err.strerror}", p) from err
    return f"data:{mime};base64," + base64.b64encode(payload).decode("ascii")


def _cell_html(text: str) -> str:
    """A cell's HTML: a trailing `[lo, hi]` CI goes on its own smaller line, so wide method ×
    metric tables stay readable without horizontal scrolling; so does each further line of a
    multi-line cell (a note such as "1 of 3 cases: no prediction")."""
    first, *more = text.split("\n")
    main, sep, ci = first.partition(" [")
    if sep and ci.endswith("]"):
        out = f'{html.escape(main)}<br><span class="ci">[{html.escape(ci)}</span>'
    else:
        out = html.escape(first)
    return out + "".join(f'<br><span class="ci">{html.escape(m)}</span>' for m in more)


def _figure_html(caption: str, path: str | Path) -> str:
    esc = html.escape
    uri = data_uri(path, "image/png")
    return (
        f'<figure><img src="{uri}" alt="{esc(caption)}">'
        f"<figcaption>{esc(caption)}</figcaption></figure>"
    )


def _table_html(table: Table) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(str(h))}</th>" for h in table.header)
    body = []
    for row in table.rows:
        cls = ' class="highlight"' if row and str(row[0]) in table.highlight else ""
        cells = "".join(f"<td>{_cell_html(format_cell(v))}</td>" for v in row)
        body.append(f"<tr{cls}>{cells}</tr>")
    cap = f"<caption>{esc(table.caption)}</caption>" if table.caption else ""
    grid = f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    if table.figure is not None:
        grid = f'<div class="side"><div>{grid}</div>{_figure_html(*table.figure)}</div>'
    return f"<h2>{esc(table.title)}</h2>\n{grid}"


def render_report(
    *,
    title: str,
    tables: Sequence[Table] = (),
    images: Sequence[tuple[str, str | Path]] = (),
    per_case_csv: str | Path | None = None,
    csv_href: str | None = None,
    commands: Sequence[str] = (),
    provenance: Mapping[str, Any] | None = None,
    notes: Sequence[str] = (),
    intro: str = "",
) -> str:
    """The report as one HTML string (see `write_report`)."""
    esc = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        f'<p class="disclaimer">{esc(DISCLAIMER)}</p>',
    ]
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts.append(f"<p>Generated {esc(stamp)} by clinfuse.</p>")
    if intro:
        parts.append(f"<p>{esc(intro)}</p>")
    parts += [f'<div class="note">{esc(n)}</div>' for n in notes]
    parts += [_table_html(t) for t in tables]
    if per_case_csv is not None:
        csv_path = Path(per_case_csv)
        href = csv_href or csv_path.name
        links = f'<a href="{esc(href)}">{esc(href)}</a> (file next to this report)'
        if csv_path.exists() and csv_path.stat().st_size <= MAX_EMBEDDED_CSV_BYTES:
            uri = data_uri(csv_path, "text/csv")
            links += f'; <a download="{esc(csv_path.name)}" href="{uri}">embedded copy</a>'
        parts.append(f"<h2>Per-case results</h2><p>{links}</p>")
    if images:
        parts.append("<h2>Figures</h2>")
        parts += [_figure_html(caption, path) for caption, path in images]
    if commands:
        parts.append("<h2>How this was made</h2>")
        parts.append("<pre>" + esc("\n".join(commands)) + "</pre>")
    prov = dict(provenance or {})
    prov.setdefault("versions", collect_versions())
    parts.append("<h2>Provenance</h2><dl>")
    for key, value in prov.items():
        if isinstance(value, Mapping):
            value = ", ".join(f"{k} {v}" for k, v in value.items())
        parts.append(f"<dt>{esc(str(key))}</dt><dd>{esc(str(value))}</dd>")
    parts.append("</dl>")
    parts.append(f'<p class="disclaimer">{esc(DISCLAIMER)}</p></body></html>')
    return "\n".join(parts) + "\n"


def write_report(
    out_html: str | Path,
    *,
    title: str,
    tables: Sequence[Table] = (),
    images: Sequence[tuple[str, str | Path]] = (),
    per_case_csv: str | Path | None = None,
    commands: Sequence[str] = (),
    provenance: Mapping[str, Any] | None = None,
    notes: Sequence[str] = (),
    intro: str = "",
) -> Path:
    """Write a self-contained HTML report atomically and return its path.

    `tables`: `Table`s (method × metric, cells usually `format_stat(mean, sd, ci)`); `images`:
    (caption, PNG path) pairs, embedded as base64; `per_case_csv`: linked relative to the
    report and, if ≤ 2 MB, embedded as a download; `commands`: the shell commands that
    reproduce the report; `provenance`: seed, checkpoint, data... (library versions are added);
    `notes`: highlighted remarks, e.g. why a method's row is missing.
    """
    out = Path(out_html)
    csv_href = None
    if per_case_csv is not None:
        try:
            csv_href = Path(per_case_csv).resolve().relative_to(out.parent.resolve()).as_posix()
        except ValueError:
            csv_href = Path(per_case_csv).name
    text = render_report(
        title=title,
        tables=tables,
        images=images,
        per_case_csv=per_case_csv,
        csv_href=csv_href,
        commands=commands,
        provenance=provenance,
        notes=notes,
        intro=intro,
    )
    write_text_atomic(out, text)
    return out
