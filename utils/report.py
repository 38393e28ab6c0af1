"""One self-contained HTML report of a scoring run (``test.py --report``, ``protocol.py --report``): provenance,
metrics with their intervals, per-group tables, the figures (embedded PNGs) and a sortable, filterable table. No
network, no server: one file that opens in any browser, offline, and can be mailed or archived with the results.

The page is built from plain data (strings, numbers, PNG bytes), so any entry point can make one; its script only
sorts and filters tables and marks ``<body data-ready="1">`` when it has run to its end.
"""
from __future__ import annotations

import base64
import html
import math
from collections.abc import Sequence

STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1180px;padding:0 16px;color:#222}
h1{font-size:21px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:8px 0}td,th{padding:3px 9px;border-bottom:1px solid #eee;text-align:left}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
table.sortable th{cursor:pointer;user-select:none;background:#f5f5f5}
th[aria-sort=ascending]::after{content:" \\25B2"}th[aria-sort=descending]::after{content:" \\25BC"}
.warn{background:#fde2e1;border:2px solid #c0392b;padding:10px;font-weight:600}
.muted{color:#777}img{max-width:100%;border:1px solid #eee}.groups{display:flex;flex-wrap:wrap;gap:28px}
#filter{width:320px;padding:4px}
"""

SCRIPT = """
function cellValue(row, i) {
  const cell = row.cells[i];
  const v = cell.dataset.v;
  return v === undefined ? cell.textContent.trim().toLowerCase() : (v === "" ? null : Number(v));
}
function sortTable(table, i, th) {
  const rising = th.getAttribute("aria-sort") !== "ascending";
  table.querySelectorAll("th").forEach(h => h.removeAttribute("aria-sort"));
  th.setAttribute("aria-sort", rising ? "ascending" : "descending");
  const body = table.tBodies[0];
  const rows = Array.from(body.rows);
  rows.sort((a, b) => {
    const x = cellValue(a, i), y = cellValue(b, i);
    if (x === null || y === null) return (x === null) - (y === null);  // empty cells last, either way
    const c = x < y ? -1 : x > y ? 1 : 0;
    return rising ? c : -c;
  });
  rows.forEach(r => body.appendChild(r));
}
document.querySelectorAll("table.sortable").forEach(table => {
  table.querySelectorAll("th").forEach((th, i) => th.addEventListener("click", () => sortTable(table, i, th)));
});
const filter = document.getElementById("filter");
if (filter) {
  const table = document.getElementById("images"), count = document.getElementById("shown");
  filter.addEventListener("input", () => {
    const words = filter.value.toLowerCase().split(/\\s+/).filter(Boolean);
    let shown = 0;
    for (const row of table.tBodies[0].rows) {
      const text = row.textContent.toLowerCase();
      row.hidden = !words.every(w => text.includes(w));
      shown += !row.hidden;
    }
    count.textContent = shown + " of " + table.tBodies[0].rows.length + " shown";
  });
}
document.body.dataset.ready = "1";
"""


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def number(value: object, digits: int = 4) -> str:
    """A table cell's text: a float to ``digits`` decimals, None or NaN as n/a."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def table(header: Sequence[str], rows: Sequence[Sequence[object]], sortable: bool = False, table_id: str = "") -> str:
    """An HTML table; numbers right-aligned and sorted as numbers (their value in ``data-v``), None as n/a."""
    def cell(value: object, tag: str = "td") -> str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            finite = not isinstance(value, float) or math.isfinite(value)
            return f'<{tag} class="n" data-v="{value if finite else ""}">{esc(number(value))}</{tag}>'
        if value is None:
            return f'<{tag} class="n" data-v="">n/a</{tag}>'
        return f"<{tag}>{esc(value)}</{tag}>"

    attrs = (f' id="{esc(table_id)}"' if table_id else "") + (' class="sortable"' if sortable else "")
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "\n".join("<tr>" + "".join(cell(v) for v in row) + "</tr>" for row in rows)
    return f"<table{attrs}><thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody></table>"


def image(png: bytes, alt: str) -> str:
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def group_tables(tables: dict[str, dict], count: str = "images") -> str:
    """Per-group tables (``by_type``, ``by_level``, ...: :func:`utils.stats.group_metrics`), side by side: each
    group's code with its dataset's name for it, its intervals where computed; a group too small for a correlation
    shows n/a and why. ``count``: what each group's ``n`` counts."""
    def span(interval) -> str:
        return "" if not interval or interval[0] is None else f"[{interval[0]:.3f}, {interval[1]:.3f}]"

    parts = []
    for key, groups in tables.items():
        ranged = any(g.get("srcc_interval") for g in groups.values())
        head = ("group", count, "SRCC", *(("95%",) if ranged else ()), "PLCC", *(("95%",) if ranged else ()), "note")
        rows = [(f"{code} {g['name']}" if g.get("name") else code, g["n"], g.get("srcc"),
                 *((span(g.get("srcc_interval")),) if ranged else ()), g.get("plcc"),
                 *((span(g.get("plcc_interval")),) if ranged else ()), g.get("note") or "")
                for code, g in groups.items()]
        parts.append(f"<div><h3>per {esc(key.removeprefix('by_'))}</h3>{table(head, rows, sortable=True)}</div>")
    return f'<div class="groups">{"".join(parts)}</div>'


def page(title: str, warning: str | None, sections: Sequence[tuple[str, str]]) -> str:
    """The whole document: a title, the warning (random backbones) on top, then (heading, HTML) sections."""
    body = "\n".join(f"<h2>{esc(h)}</h2>\n{content}" for h, content in sections)
    banner = f'<p class="warn">{esc(warning)}</p>' if warning else ""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f'<meta name="viewport" content="width=device-width"><style>{STYLE}</style></head>\n<body>\n'
            f"<h1>{esc(title)}</h1>\n{banner}\n{body}\n<script>{SCRIPT}</script>\n</body></html>\n")


def filter_box(n: int) -> str:
    return (f'<p><input id="filter" type="search" placeholder="filter rows: words that must all appear">'
            f' <span id="shown" class="muted">{n} of {n} shown</span> <span class="muted">(click a column to sort)'
            f"</span></p>")
