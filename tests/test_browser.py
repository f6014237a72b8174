"""The block-table widget in a real browser: JupyterLab + headless Chromium (Playwright), run all, click, redraw.

What nbval cannot see: that the widget renders in JupyterLab and that its buttons reach the kernel and redraw the
pool. The test copies notebooks/ to a temporary folder, starts JupyterLab on it, opens NOTEBOOK, runs all cells,
waits for the block-table widget's plot, screenshots it (test-artifacts/block_table_before.png), adds a request
and decodes a step with the widget's own controls, checks that the pool's status and plot changed, screenshots
again (test-artifacts/block_table_after.png), and fails on any traceback in the notebook.

Needs Debian's chromium (`apt-get install chromium`; .ci/run installs it) and the `playwright` package (test
extra). Without chromium the test skips — except under CI (env CI set), where it fails. KVLAB_BROWSER_NOTEBOOK=path
runs it against another notebook that shows the same widget.
"""
from __future__ import annotations

import os
import pathlib
import re
import time

import pytest

from browser_driver import (ARTIFACTS, JupyterLab, browser_page, dismiss_popups, error_outputs, lab_for_test, open_and_run_all,
                            require_chromium, repo_notebook, running_prompts, screenshot_widget)

pytestmark = pytest.mark.browser

NOTEBOOK = "03_fragmentation.ipynb"
WIDGET = ".kvlab-block-table"
PLOT = f"{WIDGET} .js-plotly-plot"
BUTTONS = ("Add request", "Decode", "Finish", "Fork", "Reset")
REQUEST_LENGTH = "20"
RUN_TIMEOUT_S = 300  # run-all on a 2-core CPU machine, model load included
CHANGE_TIMEOUT_S = 30


@pytest.fixture
def notebook_path() -> pathlib.Path:
    override = os.environ.get("KVLAB_BROWSER_NOTEBOOK")
    if override:
        path = pathlib.Path(override).resolve()
        assert path.is_file(), f"KVLAB_BROWSER_NOTEBOOK={override} is not a file"
        return path
    return repo_notebook(NOTEBOOK)


@pytest.fixture
def chromium(notebook_path) -> str:
    return require_chromium()


@pytest.fixture
def lab(tmp_path_factory, notebook_path, chromium):
    """JupyterLab on a clean copy of notebooks/; afterwards nothing it started may be left running."""
    with lab_for_test(tmp_path_factory, notebook_path, "block_table", "browser_jupyter_server.log") as server:
        yield server


def _pool_state(page) -> dict:
    """What the pool shows: the status text, the plot's SVG text and its data, and the message."""
    return page.evaluate(
        """(sel) => {
            const w = document.querySelector(sel);
            const text = (q) => { const e = w.querySelector(q); return e ? e.textContent.trim() : null; };
            const plot = w.querySelector('.js-plotly-plot');
            const svg = [...plot.querySelectorAll('svg')].map(s => s.textContent).join(' | ');
            const data = JSON.stringify((plot.data || []).map(t => [t.z, t.text, t.marker && t.marker.color, t.x, t.y]));
            return {status: text('.kvlab-pool-status'), message: text('.kvlab-message'), svg: svg, data: data};
        }""", WIDGET)


def _pool_changed(a: dict, b: dict) -> bool:
    return a["status"] != b["status"] or a["svg"] != b["svg"] or a["data"] != b["data"]


def _wait_pool_change(page, before: dict, action: str) -> dict:
    deadline = time.monotonic() + CHANGE_TIMEOUT_S
    while time.monotonic() < deadline:
        now = _pool_state(page)
        if _pool_changed(before, now):
            return now
        time.sleep(0.25)
    errors = error_outputs(page)
    pytest.fail(f"the pool did not change within {CHANGE_TIMEOUT_S} s after {action}: status {now['status']!r}, "
                f"message {now['message']!r}" + (f"; tracebacks: {errors}" if errors else ""))


def _wait_for_widget(page, lab: JupyterLab) -> None:
    deadline = time.monotonic() + RUN_TIMEOUT_S
    plot = page.locator(PLOT).first
    while time.monotonic() < deadline:
        lab.remember_descendants()
        if plot.is_visible():
            return
        errors = error_outputs(page)
        if errors:
            pytest.fail("a cell raised before the block-table widget appeared:\n" + "\n\n".join(errors))
        time.sleep(1)
    pytest.fail(f"no visible {PLOT} within {RUN_TIMEOUT_S} s (cells still running: {running_prompts(page)})")


def test_block_table_widget_redraws_in_a_real_browser(lab, chromium, notebook_path):
    with browser_page(chromium, 1000, ARTIFACTS / "block_table_failure.png") as page:
        open_and_run_all(page, lab, notebook_path, RUN_TIMEOUT_S, _wait_for_widget)

        widget = page.locator(WIDGET).first
        widget.scroll_into_view_if_needed()
        for label in BUTTONS:
            assert widget.get_by_role("button", name=label, exact=True).count() >= 1, f"no {label!r} button"
        assert widget.locator(".kvlab-pool-status").count() >= 1, "no .kvlab-pool-status in the widget"
        assert widget.locator(".kvlab-message").count() >= 1, "no .kvlab-message in the widget"
        dismiss_popups(page)
        screenshot_widget(page, widget, ARTIFACTS / "block_table_before.png", settle_s=2)

        before = _pool_state(page)
        request_box = widget.locator('input[type="text"]')  # the request Text box (IntTexts are type=number)
        if request_box.count():
            request_box.first.fill(REQUEST_LENGTH)
            request_box.first.blur()
        widget.get_by_role("button", name="Add request", exact=True).first.click()
        added = _wait_pool_change(page, before, f"'Add request' ({REQUEST_LENGTH} tokens)")
        widget.get_by_role("button", name="Decode", exact=True).first.click()
        decoded = _wait_pool_change(page, added, "'Decode'")

        screenshot_widget(page, widget, ARTIFACTS / "block_table_after.png", settle_s=1)  # after plotly's transition
        used = [re.search(r"(\d+)\s+of\s+(\d+)\s+blocks", s["status"] or "") for s in (before, added, decoded)]
        print("\npool status:", " → ".join(repr(s["status"]) for s in (before, added, decoded)),
              "| blocks used:", [m.group(1) if m else None for m in used])
        assert not error_outputs(page), "a widget callback raised:\n" + "\n\n".join(error_outputs(page))
