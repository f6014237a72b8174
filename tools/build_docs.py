"""Build the docs site: every executed notebook of the course map as a static HTML page, and an index.

    make docs                                     # writes site/ (git-ignored); open site/index.html
    .venv/bin/python tools/build_docs.py [SITE]   # the same, into SITE (default: site)

The pages are nbconvert's "lab" template over the committed outputs (nothing is executed), with three changes:
* plotly figures stay interactive: each is a div drawn by `Plotly.newPlot`, and plotly.js (the plotly package's
  own plotly.min.js) is copied into the site once and loaded by every page that has a figure. A PNG snapshot saved
  beside a figure is dropped: the live figure replaces it;
* a widget cannot run without a kernel. A widget output that carries its first view (FIRST_VIEW_MIME, written by
  kvlab.viz.first_view.show_with_first_view: the plotly figures it showed when the cell ran) becomes those figures,
  live like any other, under a caption saying so. An output that is only a widget view is replaced by a note saying
  so, and where the same section shows the widget's first view as a plain figure, the note points at it;
* every page links to the index and to the previous and next notebook; links between notebooks point at pages,
  and nbval's `# NBVAL_...` markers are left out of the code.
The index (course map and paths) is read from kvlab/course.py. Map notebooks that are not on disk are not built
and are reported loudly; the index lists them without a link.

MathJax (for the one formula in notebook 01) comes from nbconvert's CDN, on pages with math only; offline the TeX
source shows. The build takes 3.5-7 s on a 2-core CPU machine; the site is 6.75 MiB (plotly.min.js 4.6 MiB of it).

Interactive vs static, measured on the 50 plotly figures of notebooks 01-10 (2-core CPU machine):
* interactive: plotly.min.js 4,815,814 B once + the figures' JSON 1,220,861 B = 5.76 MiB on disk;
  gzip-compressed, as a web server sends them: 1,472,154 + 258,256 B = 1.65 MiB; no extra build time.
* static: kaleido 1.5.0 (pip-installed cleanly in a scratch venv, driving /usr/bin/chromium), PNG at 968 px x the
  layout's height: 2,584,371 B = 2.46 MiB (2,381,092 B gzipped: PNG barely compresses), 37 s to render in one
  browser session (5.6 s a figure through plotly.io.to_image, which starts a browser each call). The PNG snapshots
  tools/snapshot_plots.py commits into the notebooks come to 1,990,189 B.
Static is 2.3x lighter on disk but 1.4x heavier over the wire, needs chromium and kaleido to build, and loses
hover values and zoom: the site stays interactive.
"""
from __future__ import annotations

import argparse
import dataclasses
import html
import json
import pathlib
import re
import shutil
import sys
import time

import jinja2
import nbformat
import plotly
from markupsafe import Markup
from nbconvert import HTMLExporter
from nbconvert.preprocessors import Preprocessor
from nbformat.v4 import new_output

from kvlab import course

ROOT = pathlib.Path(__file__).resolve().parents[1]

PLOTLY_MIME = "application/vnd.plotly.v1+json"
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
FIRST_VIEW_MIME = "application/vnd.kvlab.first-view+json"  # kvlab/viz/first_view.py's (importing kvlab.viz loads torch)
PLOTLY_JS = pathlib.Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
LAB_CSS = ("static/index.css", "static/theme-light.css")  # in nbconvert's lab template folder
NOTEBOOK_LINK = re.compile(r"""(\]\(\s*<?|href=["'])(?:\./)?(\d\d_[\w-]+)\.ipynb""")  # a link target, not prose
TEST_MARKER = re.compile(r"^# NBVAL_\w+\n?", re.MULTILINE)
HEADING = re.compile(r"^#{1,6} ", re.MULTILINE)
PROGRESS_BAR = re.compile(r"\d+%\|")  # tqdm's text form: "measuring:   0%|          | 0/8"
MATH = re.compile(r"\$[^$\n]+\$|\\\(|\\\[")

WIDGET_NOTE = ("Interactive widget: run the notebook in JupyterLab to use it; "
               "it needs the Python kernel, which this page does not have.")
WIDGET_NOTE_WITH_VIEW = "Interactive widget: run the notebook in JupyterLab to use it; its first view is shown {where}."
PROGRESS_NOTE = "Progress bar: it fills while the cell runs in JupyterLab."
FIRST_VIEW_CAPTION = "The widget's first view (run the notebook to move it):"

EXTRA_CSS = """
.kvlab-nav { display: flex; gap: 1.5em; padding: 8px 16px; font-family: var(--jp-ui-font-family, sans-serif);
             border-bottom: 1px solid #ddd; background: #fafafa; }
.kvlab-nav:last-child { border-top: 1px solid #ddd; border-bottom: none; }
.kvlab-nav .kvlab-next { margin-left: auto; }
.kvlab-note, .kvlab-first-view { padding: 6px 12px; border-left: 4px solid #3b6ea5; background: #f2f6fa;
                                 font-style: italic; }
.jp-Collapser { display: none; }
a.anchor-link { visibility: hidden; text-decoration: none; padding-left: 0.3em; }
:hover > a.anchor-link { visibility: visible; }
.jp-InputArea, .jp-InputArea-editor { overflow: hidden; }
"""

PAGE_TEMPLATE = """{%- extends 'index.html.j2' -%}
{%- macro nav(page) -%}
<nav class="kvlab-nav"><a class="kvlab-index" href="index.html">Course map</a>
{%- if page.prev %}<a class="kvlab-prev" rel="prev" href="{{ page.prev.href }}">&larr; {{ page.prev.label }}</a>{% endif %}
{%- if page.next %}<a class="kvlab-next" rel="next" href="{{ page.next.href }}">{{ page.next.label }} &rarr;</a>{% endif %}
</nav>
{%- endmacro -%}
{% block html_head_js_requirejs %}
{%- if resources.kvlab.has_figures %}<script src="plotly.min.js"></script>{% endif -%}
{% endblock html_head_js_requirejs %}
{% block notebook_css %}<link rel="stylesheet" href="lab.css">{% endblock notebook_css %}
{% block html_head_js_mathjax %}{% if resources.kvlab.has_math %}{{ super() }}{% endif %}{% endblock %}
{% block html_head_js_mermaidjs %}{% endblock %}
{% block jupyter_widgets %}{% endblock %}
{% block body_header %}{{ super() }}{{ nav(resources.kvlab) }}{% endblock body_header %}
{% block body_footer %}{{ nav(resources.kvlab) }}{{ super() }}{% endblock body_footer %}
"""

INDEX_TEMPLATE = jinja2.Template("""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1.0">
<title>kvlab: the KV cache, run for real</title>
<style>
body { font-family: sans-serif; max-width: 70em; margin: 2em auto; padding: 0 1em; line-height: 1.45; }
table { border-collapse: collapse; } td, th { border-bottom: 1px solid #ddd; padding: 6px 10px; text-align: left; }
.missing { color: #a00; }
</style>
</head>
<body>
<h1>kvlab: the KV cache, run for real</h1>
<p>The lab's notebooks with the outputs of their last run: read them here, run them in JupyterLab
(<code>make lab</code>) to move the widgets and measure on your own machine.</p>
<h2 id="course-map">Course map</h2>
<table>
<tr><th>#</th><th>notebook</th><th>the question</th><th>measured live</th></tr>
{%- for nb in notebooks %}
<tr><td>{{ "%02d" % nb.number }}</td><td>{{ link(nb.file, nb.title) }}</td>
    <td>{{ nb.question }}</td><td>{{ nb.measures }}</td></tr>
{%- endfor %}
</table>
<h2 id="paths">Paths</h2>
{%- for path in paths %}
<h3 id="path-{{ loop.index }}">{{ path.name }} ({{ path.minutes }} min)</h3>
<p>For {{ path.audience }}.</p>
<ol>
{%- for file, what in path.stops %}
<li>{{ link(file) }}: {{ what }}</li>
{%- endfor %}
</ol>
{%- endfor %}
</body>
</html>
""", autoescape=True)


@dataclasses.dataclass
class Site:
    folder: pathlib.Path
    pages: list[str]  # notebook files built, in course order
    missing: list[str]  # map notebooks not on disk
    seconds: float

    @property
    def bytes(self) -> int:
        return sum(p.stat().st_size for p in self.folder.rglob("*") if p.is_file())


class ForReaders(Preprocessor):
    """Links to other notebooks point at their pages; nbval's markers leave the code cells."""

    def preprocess_cell(self, cell, resources, index):
        if cell.cell_type == "markdown":
            cell.source = NOTEBOOK_LINK.sub(r"\1\2.html", cell.source)
        elif cell.cell_type == "code":
            cell.source = TEST_MARKER.sub("", cell.source)
            for output in cell.get("outputs", []):  # HTML a cell displayed (notebook 00's map, 11's ledger)
                if "text/html" in output.get("data", {}):
                    output["data"]["text/html"] = NOTEBOOK_LINK.sub(r"\1\2.html", output["data"]["text/html"])
        return cell, resources


class WidgetNotes(Preprocessor):
    """Each widget output (a widget view, its text form, perhaps its first view) becomes its first view's figures
    under a caption, or else a note: there is no kernel to draw it. Runs before PlotlyFigures, which draws them."""

    def preprocess(self, nb, resources):
        replaced = {}  # (cell, output) index → the outputs that take its place; decided before anything moves
        for index, cell in enumerate(nb.cells):
            for k, output in enumerate(cell.get("outputs", [])):
                data = output.get("data", {})
                if WIDGET_MIME in data and set(data) <= {WIDGET_MIME, FIRST_VIEW_MIME, "text/plain"}:
                    figures = data.get(FIRST_VIEW_MIME, {}).get("figures", [])
                    replaced[index, k] = (first_view_outputs(figures) if figures
                                          else [html_output(self.note(nb.cells, index, data), "kvlab-note")])
        for index, cell in enumerate(nb.cells):
            if "outputs" in cell:
                cell.outputs = [new for k, output in enumerate(cell.outputs)
                                for new in replaced.get((index, k), [output])]
        return nb, resources

    @staticmethod
    def note(cells, index: int, data: dict) -> str:
        if PROGRESS_BAR.search(data.get("text/plain", "")):
            return PROGRESS_NOTE
        where = first_view(cells, index)
        return WIDGET_NOTE_WITH_VIEW.format(where=where) if where else WIDGET_NOTE


def html_output(text: str, css_class: str) -> nbformat.NotebookNode:
    return new_output("display_data", data={"text/html": f'<p class="{css_class}">{html.escape(text)}</p>'})


def first_view_outputs(figures: list[dict]) -> list[nbformat.NotebookNode]:
    """The caption, then each figure as an ordinary plotly output."""
    return [html_output(FIRST_VIEW_CAPTION, "kvlab-first-view"),
            *(new_output("display_data", data={PLOTLY_MIME: figure}) for figure in figures)]


def first_view(cells, index: int) -> str | None:
    """"above" or "below" if the nearest output of the same section, before or after cell `index`, is a plotly
    figure (the widget's first view, drawn without a kernel); None otherwise."""
    for step, where in ((1, "below"), (-1, "above")):
        j = index + step
        while 0 <= j < len(cells):
            cell = cells[j]
            if cell.cell_type == "markdown" and HEADING.search(cell.source):
                break  # a new section
            if cell.cell_type == "code" and cell.get("outputs"):
                if any(PLOTLY_MIME in output.get("data", {}) for output in cell.outputs):
                    return where
                break
            j += step
    return None


class PlotlyFigures(Preprocessor):
    """Each plotly figure becomes a div and a `Plotly.newPlot` call (plotly.js itself is loaded once a page)."""

    def preprocess(self, nb, resources):
        count = 0
        for cell in nb.cells:
            for output in cell.get("outputs", []):
                figure = output.get("data", {}).get(PLOTLY_MIME)
                if figure is not None:
                    count += 1
                    output.data = {"text/html": figure_html(figure, f"figure-{count}")}
                    output.metadata = {}
        resources["kvlab"]["has_figures"] = count > 0
        return nb, resources


def figure_html(figure: dict, div_id: str) -> str:
    spec = {"data": figure.get("data", []), "layout": figure.get("layout", {}),
            "config": {"responsive": True, **figure.get("config", {})}}
    script_safe = json.dumps(spec, separators=(",", ":")).replace("<", "\\u003c")  # "<" only occurs inside strings
    return (f'<div id="{div_id}" class="kvlab-figure"></div>\n'
            f'<script>(function (f) {{ Plotly.newPlot("{div_id}", f.data, f.layout, f.config); }})'
            f'({script_safe});</script>')


def make_exporter() -> HTMLExporter:
    exporter = HTMLExporter(template_name="lab", raw_template=PAGE_TEMPLATE)
    for preprocessor in (ForReaders, WidgetNotes, PlotlyFigures):
        exporter.register_preprocessor(preprocessor(), enabled=True)
    return exporter


def lab_css(exporter: HTMLExporter) -> str:
    for folder in map(pathlib.Path, exporter.template_paths):
        if all((folder / name).is_file() for name in LAB_CSS):
            return "\n".join((folder / name).read_text() for name in LAB_CSS) + EXTRA_CSS
    raise FileNotFoundError(f"nbconvert's lab template CSS ({', '.join(LAB_CSS)}) not in {exporter.template_paths}")


def page_name(notebook_file: str) -> str:
    return notebook_file.removesuffix(".ipynb") + ".html"


def page_label(entry: course.Notebook) -> str:
    return f"{entry.number:02d} · {entry.title}"


def build_site(out: pathlib.Path, notebook_dir: pathlib.Path = course.NOTEBOOK_DIR,
               notebooks: tuple[course.Notebook, ...] = course.NOTEBOOKS,
               paths: tuple[course.Path, ...] = course.PATHS) -> Site:
    """Write the site into `out`: index.html, one page per map notebook found in `notebook_dir`, lab.css and
    (if any page has a figure) plotly.min.js. What an earlier build wrote there is removed first."""
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    for stale in [*out.glob("*.html"), out / "plotly.min.js", out / "lab.css"]:
        stale.unlink(missing_ok=True)
    built = [entry for entry in notebooks if (notebook_dir / entry.file).is_file()]
    exporter = make_exporter()
    (out / "lab.css").write_text(lab_css(exporter))
    any_figures = False
    for i, entry in enumerate(built):
        prev, next_ = (built[i - 1] if i > 0 else None), (built[i + 1] if i + 1 < len(built) else None)
        any_figures |= write_page(exporter, notebook_dir / entry.file, out / page_name(entry.file),
                                  page_label(entry), prev, next_)
    if any_figures:
        shutil.copyfile(PLOTLY_JS, out / "plotly.min.js")
    write_index(out / "index.html", notebooks, paths, {entry.file for entry in built})
    return Site(out, [entry.file for entry in built], [entry.file for entry in notebooks if entry not in built],
                time.perf_counter() - started)


def write_page(exporter: HTMLExporter, notebook: pathlib.Path, page: pathlib.Path, title: str,
               prev: course.Notebook | None, next_: course.Notebook | None) -> bool:
    """One notebook's page; True if it has a plotly figure."""
    nb = nbformat.read(notebook, as_version=4)
    nb.metadata["title"] = title
    nav = {side: {"href": page_name(entry.file), "label": page_label(entry)}
           for side, entry in (("prev", prev), ("next", next_)) if entry is not None}
    has_math = any(cell.cell_type == "markdown" and MATH.search(cell.source) for cell in nb.cells)
    resources = {"kvlab": {**nav, "has_math": has_math}, "metadata": {"name": notebook.stem}}
    body, resources = exporter.from_notebook_node(nb, resources=resources)
    page.write_text(body)
    return resources["kvlab"]["has_figures"]


def write_index(page: pathlib.Path, notebooks, paths, built: set[str]) -> None:
    by_file = {entry.file: entry for entry in notebooks}

    def link(file: str, label: str | None = None) -> Markup:
        label = label or (page_label(by_file[file]) if file in by_file else file)
        if file in built:
            return Markup('<a href="{}">{}</a>').format(page_name(file), label)
        return Markup('{} <span class="missing">(not written yet)</span>').format(label)

    page.write_text(INDEX_TEMPLATE.render(notebooks=notebooks, paths=paths, link=link))


def report(site: Site) -> None:
    """What was built, loudly what was not, the size and the time."""
    for file in site.pages:
        print(f"built {page_name(file)}")
    if site.missing:
        print(f"\n!!! MISSING: {len(site.missing)} notebook(s) of the course map (kvlab/course.py) are not in "
              f"notebooks/, so they have no page: {', '.join(site.missing)}\n", file=sys.stderr)
    print(f"{site.folder}: {len(site.pages)} notebook pages + index, {site.bytes / 2**20:.2f} MiB, "
          f"built in {site.seconds:.1f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("site", nargs="?", type=pathlib.Path, default=ROOT / "site", help="output folder (site/)")
    report(build_site(parser.parse_args().site))
    return 0


if __name__ == "__main__":
    sys.exit(main())
