"""The docs site that `make docs` builds (tools/build_docs.py): the committed notebooks as static pages.

Unit tests (no browser) on the real site, built once for the module into a temporary folder, and on a small
made-up course (three tiny notebooks and a map entry without its notebook): plotly.js ships once and every page
with a figure loads it, each figure becomes a `Plotly.newPlot` and its PNG snapshot is dropped, a widget's first view
(kvlab.viz.first_view) becomes live figures under a caption where the widget was, other widget outputs become notes,
the previous / next links follow the course map, links to notebooks point at pages, missing map notebooks are
reported and listed without a link.

The browser test (marked `browser`) opens the index and every page of both sites over file:// in headless Chromium
and checks
what a reader sees: every plotly figure drawn (class js-plotly-plot, an svg, at least one trace), no broken image,
no JavaScript error, every internal link and anchor resolving. The only request allowed out of the site is for
MathJax, from the CDN that nbconvert's template names (answered here with an empty script: no network needed).
Needs Debian's chromium (.ci/run installs it) and the `playwright` package (test extra); without chromium it
skips, except under CI (env CI set), where it fails.
"""
from __future__ import annotations

import importlib.util
import pathlib
import sys
import urllib.parse

import bs4
import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from browser_driver import ARTIFACTS, browser_page, require_chromium
from kvlab import course

ROOT = pathlib.Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("build_docs", ROOT / "tools" / "build_docs.py")
build_docs = sys.modules["build_docs"] = importlib.util.module_from_spec(_spec)  # tools/ is not a package
_spec.loader.exec_module(build_docs)

MATHJAX_CDN = "https://cdnjs.cloudflare.com/ajax/libs/mathjax/"
FIGURE = {"data": [{"type": "bar", "x": ["a", "b"], "y": [1, 2]}], "layout": {"height": 300}}
WIDGET_VIEW = {"model_id": "0123", "version_major": 2, "version_minor": 0}
FIRST_VIEW_FIGURE = {"data": [{"type": "scatter", "name": "first-view-trace", "y": [3, 1, 2]}], "layout": {}}
PNG_1PX = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="


def read(page: pathlib.Path) -> bs4.BeautifulSoup:
    return bs4.BeautifulSoup(page.read_text(), "html.parser")


def plotly_loads(soup: bs4.BeautifulSoup) -> int:
    return len(soup.find_all("script", src="plotly.min.js"))


def notes(soup: bs4.BeautifulSoup) -> list[str]:
    return [p.get_text() for p in soup.select("p.kvlab-note")]


def captions(soup: bs4.BeautifulSoup) -> list[str]:
    return [p.get_text() for p in soup.select("p.kvlab-first-view")]


def navs(soup: bs4.BeautifulSoup) -> list[dict[str, str]]:
    """Each navigation bar of a page as {"index" | "prev" | "next": href}."""
    return [{a["class"][0].removeprefix("kvlab-"): a["href"] for a in nav.find_all("a")}
            for nav in soup.select("nav.kvlab-nav")]


def expected_nav(pages: list[str], i: int) -> dict[str, str]:
    nav = {"index": "index.html"}
    if i > 0:
        nav["prev"] = build_docs.page_name(pages[i - 1])
    if i + 1 < len(pages):
        nav["next"] = build_docs.page_name(pages[i + 1])
    return nav


def outputs_of(notebook: pathlib.Path) -> list[dict]:
    nb = nbformat.read(notebook, as_version=4)
    return [output for cell in nb.cells if cell.cell_type == "code" for output in cell.outputs]


def is_widget(output: dict) -> bool:
    """A widget view, its text form, perhaps its first view: nothing a page could draw without a kernel."""
    data = output.get("data", {})
    return build_docs.WIDGET_MIME in data and set(data) <= {build_docs.WIDGET_MIME, build_docs.FIRST_VIEW_MIME,
                                                            "text/plain"}


def first_view_figures(output: dict) -> list[dict]:
    return output["data"].get(build_docs.FIRST_VIEW_MIME, {}).get("figures", []) if is_widget(output) else []


def figures_drawn(output: dict) -> int:
    """The plotly figures an output becomes on its page: itself, or its widget's first view."""
    return int(build_docs.PLOTLY_MIME in output.get("data", {})) + len(first_view_figures(output))


# ---------------------------------------------------------------- the real site

@pytest.fixture(scope="module")
def site(tmp_path_factory):
    return build_docs.build_site(tmp_path_factory.mktemp("docs") / "site")


def test_every_map_notebook_on_disk_gets_a_page_in_map_order(site):
    on_disk = [nb.file for nb in course.NOTEBOOKS if (course.NOTEBOOK_DIR / nb.file).is_file()]
    assert site.pages == on_disk
    assert site.missing == [nb.file for nb in course.NOTEBOOKS if nb.file not in on_disk]
    assert sorted(p.name for p in site.folder.glob("*.html")) == sorted(
        ["index.html", *(build_docs.page_name(f) for f in on_disk)])


def test_plotly_js_ships_once_and_every_page_with_a_figure_loads_it(site):
    shipped = list(site.folder.rglob("plotly*.js"))
    assert [p.name for p in shipped] == ["plotly.min.js"]
    assert shipped[0].read_bytes() == build_docs.PLOTLY_JS.read_bytes()
    banner = build_docs.PLOTLY_JS.read_text()[:200].split("*/")[0]  # "/** plotly.js v… */": not inlined anywhere
    for file in site.pages:
        page = site.folder / build_docs.page_name(file)
        soup = read(page)
        figures = sum(map(figures_drawn, outputs_of(course.NOTEBOOK_DIR / file)))
        assert len(soup.select("div.kvlab-figure")) == figures, file
        assert page.read_text().count("Plotly.newPlot(") == figures, file
        assert plotly_loads(soup) == (1 if figures else 0), file
        assert banner not in page.read_text(), f"{file} embeds plotly.js"


def test_widget_outputs_become_their_first_view_or_else_a_note(site):
    for file in site.pages:
        page = site.folder / build_docs.page_name(file)
        widgets = [o for o in outputs_of(course.NOTEBOOK_DIR / file) if is_widget(o)]
        with_view = sum(1 for o in widgets if first_view_figures(o))
        assert len(notes(read(page))) == len(widgets) - with_view, file
        assert len(captions(read(page))) == with_view, file
        assert build_docs.WIDGET_MIME not in page.read_text(), file
        assert build_docs.FIRST_VIEW_MIME not in page.read_text(), file


def test_every_page_links_the_index_and_its_neighbours_in_map_order(site):
    for i, file in enumerate(site.pages):
        assert navs(read(site.folder / build_docs.page_name(file))) == [expected_nav(site.pages, i)] * 2, file


def test_index_shows_the_course_map_and_paths_read_from_course_py(site):
    index = read(site.folder / "index.html")
    text = " ".join(index.get_text().split())
    for nb in course.NOTEBOOKS:
        assert nb.title in text and " ".join(nb.question.split()) in text and " ".join(nb.measures.split()) in text
    for path in course.PATHS:
        assert path.name in text and path.audience in text
        for _file, what in path.stops:
            assert what in text
    linked = {a["href"] for a in index.find_all("a")}
    assert linked == {build_docs.page_name(file) for file in site.pages}


# ---------------------------------------------------------------- a made-up course

ALPHA, BETA, GAMMA, MISSING = "01_alpha.ipynb", "02_beta.ipynb", "03_gamma.ipynb", "00_missing.ipynb"
TINY_MAP = tuple(course.Notebook(file, file[3:-6].title(), f"what does {file} ask?", "nothing", ())
                 for file in (MISSING, ALPHA, BETA, GAMMA))
TINY_PATHS = (course.Path("a short path", 10, "testers", ((MISSING, "start"), (BETA, "then beta"))),)


def widget(text: str, first_view: list[dict] | None = None) -> dict:
    data = {build_docs.WIDGET_MIME: WIDGET_VIEW, "text/plain": text}
    if first_view is not None:  # as kvlab.viz.first_view.show_with_first_view writes it
        data[build_docs.FIRST_VIEW_MIME] = {"figures": first_view}
    return new_output("display_data", data=data)


def tiny_notebooks(folder: pathlib.Path) -> pathlib.Path:
    figure = new_output("display_data", data={build_docs.PLOTLY_MIME: FIGURE, "image/png": PNG_1PX})
    alpha = new_notebook(cells=[
        new_markdown_cell("# Alpha\n\nRead [beta](02_beta.ipynb) first, then [its part 2](02_beta.ipynb#Part-2).\n"
                          "Or open 02_beta.ipynb in JupyterLab."),
        new_code_cell("# NBVAL_IGNORE_OUTPUT\nlab", outputs=[widget("VBox(children=(Button(),))")]),
        new_code_cell("lab.figure().show()", outputs=[figure]),
        new_markdown_cell("And the other lab:"),  # not a heading: same section
        new_code_cell("second_lab", outputs=[widget("HBox(children=(Button(),))")]),
        new_markdown_cell("## Measuring"),
        new_code_cell("run()", outputs=[widget("measuring:   0%|          | 0/8 [00:00<?, ?run/s]")]),
        new_code_cell("other_lab", outputs=[widget("HBox(children=(Dropdown(),))")]),
        new_markdown_cell("## Check yourself"),  # a new section: its figure is not the widget's first view
        new_code_cell("answer_figure()", outputs=[new_output("display_data", data={build_docs.PLOTLY_MIME: FIGURE})]),
    ])
    beta = new_notebook(cells=[new_markdown_cell("# Beta\n\n## Part 2\n\nBack to [alpha](./01_alpha.ipynb).")])
    gamma = new_notebook(cells=[
        new_markdown_cell("# Gamma"),
        new_code_cell("print('ready')\nshow_with_first_view(lab)",
                      outputs=[new_output("stream", name="stdout", text="ready\n"),
                               widget("VBox(children=(FigureWidget(), FigureWidget()))", [FIGURE, FIRST_VIEW_FIGURE])]),
        # no figure yet: a note, and not "its first view is shown above" (the figures above are the other widget's)
        new_code_cell("show_with_first_view(unmeasured_lab)", outputs=[widget("VBox(children=(Button(),))", [])]),
    ])
    for name, nb in ((ALPHA, alpha), (BETA, beta), (GAMMA, gamma)):
        nbformat.write(nb, folder / name)
    return folder


@pytest.fixture(scope="module")
def tiny_site(tmp_path_factory):
    notebooks = tiny_notebooks(tmp_path_factory.mktemp("tiny-notebooks"))
    return build_docs.build_site(tmp_path_factory.mktemp("tiny") / "site", notebooks, TINY_MAP, TINY_PATHS)


def test_links_to_notebooks_in_markdown_point_at_their_pages(tiny_site):
    alpha, beta = read(tiny_site.folder / "01_alpha.html"), read(tiny_site.folder / "02_beta.html")
    hrefs = [a["href"] for a in alpha.select(".jp-MarkdownCell a:not(.anchor-link)")]
    assert hrefs == ["02_beta.html", "02_beta.html#Part-2"]
    assert "open 02_beta.ipynb in JupyterLab" in alpha.get_text()  # prose is not a link
    assert [a["href"] for a in beta.select(".jp-MarkdownCell a:not(.anchor-link)")] == ["01_alpha.html"]
    assert beta.find(id="Part-2") is not None


def test_a_figure_becomes_a_live_plot_and_its_png_snapshot_is_dropped(tiny_site):
    alpha = tiny_site.folder / "01_alpha.html"
    assert alpha.read_text().count("Plotly.newPlot(") == 2
    assert "data:image/png" not in alpha.read_text() and not read(alpha).find_all("img")
    assert plotly_loads(read(alpha)) == 1
    assert plotly_loads(read(tiny_site.folder / "02_beta.html")) == 0  # no figure, no plotly.js
    assert (tiny_site.folder / "plotly.min.js").is_file()


def test_widget_notes_say_where_the_first_view_is_and_tell_progress_bars_apart(tiny_site):
    alpha = read(tiny_site.folder / "01_alpha.html")
    assert notes(alpha) == [build_docs.WIDGET_NOTE_WITH_VIEW.format(where="below"),
                            build_docs.WIDGET_NOTE_WITH_VIEW.format(where="above"),
                            build_docs.PROGRESS_NOTE, build_docs.WIDGET_NOTE]
    assert "NBVAL" not in alpha.get_text()


def test_a_widgets_first_view_becomes_live_figures_under_a_caption_where_the_widget_was(tiny_site):
    gamma = tiny_site.folder / "03_gamma.html"
    soup = read(gamma)
    first_cell = soup.select(".jp-CodeCell")[0]
    in_order = [("caption" if output.select("p.kvlab-first-view") else "figure" if output.select("div.kvlab-figure")
                 else output.get_text().strip()) for output in first_cell.select(".jp-OutputArea-output")]
    assert in_order == ["ready", "caption", "figure", "figure"]
    assert captions(soup) == [build_docs.FIRST_VIEW_CAPTION]
    assert gamma.read_text().count("Plotly.newPlot(") == 2 and "first-view-trace" in gamma.read_text()
    assert plotly_loads(soup) == 1
    assert build_docs.FIRST_VIEW_MIME not in gamma.read_text() and build_docs.WIDGET_MIME not in gamma.read_text()
    assert notes(soup) == [build_docs.WIDGET_NOTE]  # the widget with an empty first view


def test_prev_and_next_skip_missing_notebooks(tiny_site):
    assert tiny_site.pages == [ALPHA, BETA, GAMMA]
    for i, file in enumerate(tiny_site.pages):
        assert navs(read(tiny_site.folder / build_docs.page_name(file))) == [expected_nav(tiny_site.pages, i)] * 2


def test_missing_map_notebooks_are_reported_loudly_and_listed_without_a_link(tiny_site, capsys):
    assert tiny_site.missing == [MISSING]
    build_docs.report(tiny_site)
    err = capsys.readouterr().err
    assert "MISSING" in err and MISSING in err
    index = read(tiny_site.folder / "index.html")
    assert "00_missing.html" not in {a["href"] for a in index.find_all("a")}
    assert index.get_text().count("(not written yet)") == 2  # in the map and on the path


# ---------------------------------------------------------------- in a browser

PAGE_STATE_JS = """() => ({
    figures: [...document.querySelectorAll('div.kvlab-figure')].map(d => ({
        id: d.id,
        plot: d.classList.contains('js-plotly-plot'),
        svg: !!d.querySelector('.main-svg'),
        traces: (d._fullData || []).length,
        drawn: d.querySelectorAll('.main-svg g.trace, .main-svg g.hm, .main-svg g.table').length})),
    brokenImages: [...document.images].filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src.slice(0, 80)),
    hrefs: [...document.querySelectorAll('a[href]')].map(a => a.getAttribute('href')),
    ids: [...document.querySelectorAll('[id]')].map(e => e.id),
})"""
FIGURES_DRAWN_JS = """() => [...document.querySelectorAll('div.kvlab-figure')]
    .every(d => d.classList.contains('js-plotly-plot') && d.querySelector('.main-svg'))"""


@pytest.mark.browser
@pytest.mark.parametrize("which", ["site", "tiny_site"])  # the tiny one has widgets' first views
def test_every_page_renders_its_figures_and_links_without_errors(which, request):
    site = request.getfixturevalue(which)
    chromium = require_chromium()
    pages = ["index.html", *(build_docs.page_name(file) for file in site.pages)]
    errors, outside, ids, links = [], [], {}, []

    def route(route):
        if route.request.url.startswith(MATHJAX_CDN):
            route.fulfill(status=200, content_type="text/javascript", body="")
        else:
            outside.append(route.request.url)
            route.abort()

    with browser_page(chromium, 900, ARTIFACTS / "docs_site_failure.png") as page:
        page.on("console", lambda msg: msg.type == "error" and errors.append(f"{page.url}: {msg.text}"))
        page.on("pageerror", lambda exc: errors.append(f"{page.url}: {exc}"))
        page.route(lambda url: not url.startswith("file:"), route)
        for name in pages:
            page.goto((site.folder / name).as_uri(), wait_until="load")
            page.wait_for_function(FIGURES_DRAWN_JS, timeout=30_000)
            state = page.evaluate(PAGE_STATE_JS)
            for figure in state["figures"]:
                assert figure["plot"] and figure["svg"] and figure["traces"] > 0 and figure["drawn"] > 0, (name, figure)
            assert not state["brokenImages"], (name, state["brokenImages"])
            ids[name] = set(state["ids"])
            links += [(name, href) for href in state["hrefs"]]
    assert not errors, errors
    assert not outside, f"requests outside the site: {outside}"
    assert len(links) > 2 * len(site.pages)  # the navigation bars at least
    for name, href in links:
        parsed = urllib.parse.urlsplit(href)
        if parsed.scheme or parsed.netloc:
            continue  # an external link
        target = urllib.parse.unquote(parsed.path) or name
        assert (site.folder / target).is_file(), f"{name}: link to {href}: no such file"
        if parsed.fragment and target.endswith(".html"):  # a browser tries the fragment as written, then decoded
            found = {parsed.fragment, urllib.parse.unquote(parsed.fragment)} & ids.get(target, set())
            assert found, f"{name}: link to {href}: no such id"
