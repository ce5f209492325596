"""The report as one self-contained HTML page: the plots embedded as data URIs, no script, no outside file."""

from __future__ import annotations

import base64
import dataclasses
import html
from pathlib import Path
from typing import Any

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: .8em 0; font-size: .9em; }
td, th { border: 1px solid #ddd; padding: .3em .6em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; margin: .5em 0; border: 1px solid #eee; display: block; }
p.note { color: #555; }
"""


@dataclasses.dataclass
class Section:
    """One part of the page: a heading, a sentence, a table (first row: headings), plots by name, a note."""

    title: str
    intro: str
    table: list[tuple] = dataclasses.field(default_factory=list)
    figures: dict[str, Any] = dataclasses.field(default_factory=dict)
    note: str = ""


def number(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:,.4f}" if abs(value) < 1000 else f"{value:,.0f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def stats_text(stats: dict) -> str:
    """A column's statistics in a line: scalars as numbers, lists by their length."""
    parts = []
    for key, value in stats.items():
        if isinstance(value, list):
            parts.append(f"{key}: {len(value)} values")
        else:
            parts.append(f"{key} {number(value)}")
    return ", ".join(parts)


def _table(rows: list[tuple]) -> str:
    if not rows:
        return ""
    head, *body = rows
    cells = "".join(f"<th>{html.escape(str(c))}</th>" for c in head)
    lines = [f"<tr>{cells}</tr>"]
    for row in body:
        lines.append("<tr>" + "".join(
            f'<td class="num">{html.escape(str(c))}</td>' if isinstance(c, (int, float)) else
            f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>")
    return "<table>" + "".join(lines) + "</table>"


def _image(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def render(title: str, overview: list[tuple[str, str]], sections: list[Section], images: Path) -> str:
    """The page; `images` is the directory holding each section's plots as <name>.png."""
    body = [f"<h1>{html.escape(title)}</h1>", _table([("", ""), *overview])]
    for section in sections:
        body.append(f"<h2>{html.escape(section.title)}</h2><p>{html.escape(section.intro)}</p>")
        body.append(_table(section.table))
        if section.note:
            body.append(f'<p class="note">{html.escape(section.note)}</p>')
        body.extend(_image(images / f"{name}.png", name) for name in section.figures)
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{_STYLE}</style></head><body>{''.join(body)}</body></html>\n")
