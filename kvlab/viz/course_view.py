"""The course map and its paths as HTML tables, read from kvlab.course (notebook 00 shows them)."""
from __future__ import annotations

import html

from ..course import NOTEBOOKS, PATHS, notebook


def course_map_html() -> str:
    rows = "".join(f"<tr><td><a href='{nb.file}'>{nb.number:02d} · {html.escape(nb.title)}</a></td>"
                   f"<td style='text-align:left'>{html.escape(nb.question)}</td>"
                   f"<td style='text-align:left'>{html.escape(nb.measures)}</td></tr>" for nb in NOTEBOOKS)
    return ("<table><tr><th>notebook</th><th style='text-align:left'>the question it answers</th>"
            f"<th style='text-align:left'>what it measures, live</th></tr>{rows}</table>")


def paths_html() -> str:
    parts = []
    for path in PATHS:
        stops = "".join(f"<li><a href='{file}'>{notebook(file).number:02d} · {html.escape(notebook(file).title)}</a>"
                        f" — {html.escape(what)}</li>" for file, what in path.stops)
        parts.append(f"<p><b>{html.escape(path.name)}</b> ({path.minutes} min) — for {html.escape(path.audience)}</p>"
                     f"<ol>{stops}</ol>")
    return "".join(parts)
