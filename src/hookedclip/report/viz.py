"""The static HTML report: a folder with ``index.html`` and its PNGs, readable offline in any
browser. The figures are drawn by :mod:`hookedclip.plotting`; this module writes the pages.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Section:
    """One part of a report: a title, paragraphs of text, figures (paths relative to the
    report folder) and tables (header row + rows)."""

    title: str
    text: list[str] = field(default_factory=list)
    figures: list[tuple[str, str]] = field(default_factory=list)  # (file name, caption)
    tables: list[tuple[list[str], list[list[str]]]] = field(default_factory=list)


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 2em; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: .9em; color: #555; }
table { border-collapse: collapse; margin: .8em 0; font-size: .92em; }
td, th { border: 1px solid #ccc; padding: .25em .6em; text-align: left; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.meta { color: #666; font-size: .9em; }
"""


def _cell(text: str) -> str:
    numeric = text.rstrip("%").replace(".", "", 1).lstrip("+-").isdigit()
    return f"<td class='num'>{html.escape(text)}</td>" if numeric else f"<td>{html.escape(text)}</td>"


def head_nav(labels: Sequence[str], i: int) -> str:
    """Links of the page of ``labels[i]`` in a report with one sub-folder per head: back to the
    overview, previous and next head."""
    links = ["<a href='../index.html'>↑ overview</a>"]
    if i > 0:
        links.append(f"<a href='../{labels[i - 1]}/index.html'>← {labels[i - 1]}</a>")
    if i + 1 < len(labels):
        links.append(f"<a href='../{labels[i + 1]}/index.html'>{labels[i + 1]} →</a>")
    return "<p class='nav'>" + " · ".join(links) + "</p>"


def link_head_pages(index: Path, labels: Sequence[str]) -> Path:
    """Make each head name of the overview table in ``index`` a link to that head's page
    (``<label>/index.html``, as :func:`head_nav` expects); the first cell of each name only."""
    html = index.read_text()
    for label in labels:
        html = html.replace(f"<td>{label}</td>", f"<td><a href='{label}/index.html'>{label}</a></td>", 1)
    index.write_text(html)
    return index


def write_report(out_dir: str | Path, title: str, sections: Sequence[Section], meta: str = "", nav: str = "") -> Path:
    """Write ``index.html`` into ``out_dir`` (figures must already be there); ``nav``: HTML
    (e.g. links to other pages) placed as is under the title."""
    out_dir = Path(out_dir)
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>{nav}",
    ]
    if meta:
        parts.append(f"<p class='meta'>{html.escape(meta)}</p>")
    parts.append(
        "<ul>"
        + "".join(f"<li><a href='#s{i}'>{html.escape(s.title)}</a></li>" for i, s in enumerate(sections))
        + "</ul>"
    )
    for i, section in enumerate(sections):
        parts.append(f"<h2 id='s{i}'>{html.escape(section.title)}</h2>")
        parts += [f"<p>{html.escape(p)}</p>" for p in section.text]
        for header, rows in section.tables:
            head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
            body = "".join("<tr>" + "".join(_cell(c) for c in row) + "</tr>" for row in rows)
            parts.append(f"<table><tr>{head}</tr>{body}</table>")
        for name, caption in section.figures:
            parts.append(
                f"<figure><img src='{html.escape(name)}' alt='{html.escape(caption)}'>"
                f"<figcaption>{html.escape(caption)}</figcaption></figure>"
            )
    parts.append("</body></html>")
    path = out_dir / "index.html"
    path.write_text("\n".join(parts))
    return path
