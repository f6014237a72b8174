"""Give every plotly figure in the executed notebooks its PNG snapshot, so that JupyterLab opens them unmodified.

JupyterLab's plotly renderer (the jupyterlab-plotly extension) shows a figure's saved "image/png" when it has one.
When it has none, it draws the figure and writes a PNG of it back into the output, and JupyterLab marks the
notebook as modified the moment it opens. papermill's outputs carry no PNG; this adds one to each plotly output
that lacks it, drawn by plotly.js (the plotly package's own bundle) in headless Chromium at the size the renderer
would use in a 1400-px-wide window, and recompressed (zlib level 9: a quarter smaller than the browser's own
encoding, pixel for pixel the same). Running it again changes nothing. GitHub's notebook view shows these PNGs too.

(Hovering a figure in JupyterLab still swaps in the live plot, and the renderer then saves a PNG at the reader's
own width: that marks the notebook as modified, by the extension's design.)

    python tools/snapshot_plots.py notebooks/[0-9]*.ipynb     # needs chromium and playwright (the test extra)
"""
from __future__ import annotations

import base64
import json
import pathlib
import shutil
import struct
import sys
import zlib

import nbformat
import plotly

PLOTLY_MIME = "application/vnd.plotly.v1+json"
WIDTH_PX = 968  # the renderer's width in JupyterLab 4.6, 1400-px window, file browser open (measured)
DEFAULT_HEIGHT_PX = 360  # jupyterlab-plotly's height for a figure whose layout sets none
PLOTLY_JS = pathlib.Path(plotly.__file__).parent / "package_data" / "plotly.min.js"

RENDER_JS = """async ([figure, width, height]) => {
    const div = document.createElement('div');
    div.style.width = width + 'px';
    document.body.replaceChildren(div);
    const layout = Object.assign({}, figure.layout || {}, {height: (figure.layout || {}).height || height});
    const gd = await Plotly.react(div, figure.data || [], layout, figure.config || {});
    const url = await Plotly.toImage(gd, {format: 'png', width: div.offsetWidth, height: div.offsetHeight});
    Plotly.purge(div);
    return url.split(',')[1];
}"""


def find_chromium() -> str | None:
    return "/usr/bin/chromium" if pathlib.Path("/usr/bin/chromium").is_file() else shutil.which("chromium")


def recompress_png(png: bytes) -> bytes:
    """The same image with its pixel data deflated at zlib's level 9 in one IDAT chunk (filters kept as drawn)."""
    chunks, pos = [], 8  # after the 8-byte PNG signature: (length, type, data, CRC) chunks
    while pos < len(png):
        (length,) = struct.unpack(">I", png[pos:pos + 4])
        chunks.append((png[pos + 4:pos + 8], png[pos + 8:pos + 8 + length]))
        pos += 12 + length
    pixels = zlib.compress(zlib.decompress(b"".join(data for kind, data in chunks if kind == b"IDAT")), 9)
    out, wrote_pixels = [png[:8]], False
    for kind, data in chunks:
        if kind == b"IDAT":
            if wrote_pixels:
                continue
            kind, data, wrote_pixels = b"IDAT", pixels, True
        out.append(struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data)))
    return b"".join(out)


def outputs_without_snapshot(notebook) -> list[dict]:
    return [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
            if PLOTLY_MIME in output.get("data", {}) and "image/png" not in output["data"]]


def snapshot(paths: list[str], chromium: str) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.set_content("<!DOCTYPE html><html><body></body></html>")  # standards mode: the div is as tall as its plot
        page.add_script_tag(path=str(PLOTLY_JS))
        for path in paths:
            notebook = nbformat.read(path, as_version=4)
            missing = outputs_without_snapshot(notebook)
            for output in missing:
                figure = json.loads(json.dumps(output["data"][PLOTLY_MIME]))  # plain dicts for the page
                png = base64.b64decode(page.evaluate(RENDER_JS, [figure, WIDTH_PX, DEFAULT_HEIGHT_PX]))
                assert png.startswith(b"\x89PNG"), f"{path}: plotly.js drew no PNG"
                output["data"]["image/png"] = base64.b64encode(recompress_png(png)).decode("ascii")
            if missing:
                nbformat.write(notebook, path)
            print(f"{path}: {len(missing)} plotly figure(s) given a PNG snapshot")
        browser.close()


if __name__ == "__main__":
    chromium = find_chromium()
    if chromium is None:
        sys.exit("tools/snapshot_plots.py needs chromium (apt-get install chromium): without the snapshots "
                 "JupyterLab marks these notebooks as modified on opening")
    snapshot(sys.argv[1:], chromium)
