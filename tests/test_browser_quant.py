"""The quantization lab in a real browser: JupyterLab + headless Chromium (Playwright), run all, pick int8, measure.

What nbval and tests/test_quant_widget.py cannot see: that the lab renders in JupyterLab and that its own controls
(the scheme <select>, the group-size toggle buttons, the measure button) reach the kernel and redraw the panels. The
test copies notebooks/ to a temporary folder, starts JupyterLab on it, opens NOTEBOOK with only its parameters, setup
and lab cells kept (nbval runs the whole notebook), runs all cells, waits for the lab's plots, checks the first
measurement (int4 g32: 6,480 bytes per token for SmolLM2), screenshots the lab (test-artifacts/quant_lab_before.png),
chooses int8 with its default group (the whole head, 64 channels) and presses measure, waits until the memory panel
shows int8's 11,880 bytes per token and the error heatmap's data changed, screenshots again (test-
artifacts/quant_lab_after.png), and fails on any traceback.

Choosing int8 moves the group-size buttons to int8's usual group (the whole head); the test clicks 64 anyway, to
use that control too (int8 with groups of 32 would be 12,240 bytes per token: two scales per token and head).

Needs Debian's chromium (`apt-get install chromium`; .ci/run installs it) and the `playwright` package (test
extra). Without chromium the test skips — except under CI (env CI set), where it fails.
"""
from __future__ import annotations

import pathlib
import re
import time

import pytest

from browser_driver import (ARTIFACTS, JupyterLab, browser_page, dismiss_popups, error_outputs, lab_for_test, open_and_run_all,
                            require_chromium, repo_notebook, running_prompts, screenshot_widget)

pytestmark = pytest.mark.browser

NOTEBOOK = "05_quantization.ipynb"
LAB_CELLS = ("lab = quantization_lab(",)  # and the parameters and setup cells: nbval runs the rest
WIDGET = ".kvlab-quant-lab"
PLOT = f"{WIDGET} .js-plotly-plot"
RUN_TIMEOUT_S = 300  # run-all of the lab's cells on a 2-core CPU machine: model load, the lab's baseline
CHANGE_TIMEOUT_S = 60  # one measurement on a CPU: two captures, perplexity, 24 greedy tokens
# SmolLM2-135M: K + V × 30 layers × 3 KV heads × (64 channels of codes + float16 scales), bytes per token
BEFORE = ("int4 g32", "6,480")  # 32 B of 4-bit codes + 2 scales × 2 B = 36 B per head and token
AFTER = ("int8 g64", "11,880")  # 64 B of 8-bit codes + 1 scale × 2 B = 66 B per head and token


@pytest.fixture
def notebook_path() -> pathlib.Path:
    return repo_notebook(NOTEBOOK)


@pytest.fixture
def chromium(notebook_path) -> str:
    return require_chromium()


@pytest.fixture
def lab(tmp_path_factory, notebook_path, chromium):
    """JupyterLab on a clean copy of notebooks/; afterwards nothing it started may be left running."""
    with lab_for_test(tmp_path_factory, notebook_path, "quant_lab", "quant_lab_jupyter_server.log",
                      code_cells=LAB_CELLS) as server:
        yield server


def _lab_state(page) -> dict:
    """What the lab shows: its text panels, and the error heatmap's (the plot with heatmap traces) data and
    subplot titles as drawn in the SVG."""
    return page.evaluate(
        """(sel) => {
            const w = document.querySelector(sel);
            if (!w) return {status: null, message: null, memory: null, perplexity: null, texts: null, plots: 0,
                            heatmap: null, heatmap_titles: []};
            const text = (q) => { const e = w.querySelector(q); return e ? e.textContent.trim() : null; };
            const plots = [...w.querySelectorAll('.js-plotly-plot')];
            const heat = plots.find(p => (p.data || []).some(t => t.type === 'heatmap'));
            return {
                status: text('.kvlab-quant-status'), message: text('.kvlab-message'),
                memory: text('.kvlab-quant-memory'), perplexity: text('.kvlab-quant-perplexity'),
                texts: text('.kvlab-quant-texts'), plots: plots.length,
                heatmap: heat ? JSON.stringify(heat.data.map(t => [t.type, t.z])) : null,
                heatmap_titles: heat ? [...heat.querySelectorAll('.annotation-text')].map(a => a.textContent) : [],
            };
        }""", WIDGET)


def _describe(state: dict) -> str:
    return (f"status {state['status']!r}, message {state['message']!r}, memory {state['memory']!r}, "
            f"heatmap titles {state['heatmap_titles']}")


def _wait_for_lab_plots(page, lab: JupyterLab) -> None:
    """The lab's plots are visible and its first measurement (int4 g32) is in the memory panel."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    plot = page.locator(PLOT).first
    while time.monotonic() < deadline:
        lab.remember_descendants()
        errors = error_outputs(page)
        if errors:
            pytest.fail("a cell raised before the quantization lab appeared:\n" + "\n\n".join(errors))
        if plot.is_visible() and BEFORE[0] in (_lab_state(page)["memory"] or ""):
            return
        time.sleep(1)
    pytest.fail(f"no visible {PLOT} with a measured {BEFORE[0]} within {RUN_TIMEOUT_S} s "
                f"(cells still running: {running_prompts(page)})")


def _wait_for_int8(page, before: dict) -> dict:
    """The memory panel names int8 g64 with its bytes per token, the status says it was measured, and the error
    heatmap's data differs from `before`'s."""
    deadline = time.monotonic() + CHANGE_TIMEOUT_S
    while time.monotonic() < deadline:
        now = _lab_state(page)
        if (now["memory"] != before["memory"] and f"{AFTER[0]}: {AFTER[1]} bytes per token" in (now["memory"] or "")
                and f"measured {AFTER[0]}" in (now["status"] or "") and now["heatmap"] != before["heatmap"]):
            return now
        if now["message"]:
            break  # the lab refused the choice
        time.sleep(0.25)
    errors = error_outputs(page)
    pytest.fail(f"the lab did not show {AFTER[0]} within {CHANGE_TIMEOUT_S} s after 'measure': {_describe(now)}, "
                f"heatmap data changed: {now['heatmap'] != before['heatmap']}"
                + (f"; tracebacks: {errors}" if errors else ""))


def test_quant_lab_measures_int8_chosen_in_its_own_menu_and_redraws_memory_and_heatmap(lab, chromium, notebook_path):
    # tall, so that the whole lab (seven panels) fits in the notebook's scroll area for the screenshots
    with browser_page(chromium, 3000, ARTIFACTS / "quant_lab_failure.png") as page:
        print(f"\nrun all: {open_and_run_all(page, lab, notebook_path, RUN_TIMEOUT_S, _wait_for_lab_plots):.0f} s")

        widget = page.locator(WIDGET).first
        widget.scroll_into_view_if_needed()
        for cls in ("kvlab-quant-status", "kvlab-quant-memory", "kvlab-quant-perplexity", "kvlab-quant-texts",
                    "kvlab-message"):
            assert widget.locator(f".{cls}").count() >= 1, f"no .{cls} in the lab"
        scheme_menu = widget.get_by_label("scheme", exact=True)  # a Dropdown: <label for=…> + <select>
        group_buttons = widget.locator(".widget-toggle-buttons", has_text="group size")
        # not get_by_role(name="measure", exact=True): the button's play icon puts a glyph in its accessible name
        measure = widget.locator("button.widget-button").filter(has_text=re.compile(r"^\s*measure\s*$"))
        assert scheme_menu.count() == 1, "no 'scheme' <select> in the lab"
        assert group_buttons.count() == 1, "no 'group size' toggle buttons in the lab"
        assert measure.count() == 1, "no 'measure' button in the lab"

        before = _lab_state(page)
        assert before["plots"] == 4, f"expected 4 plots in the lab (memory, error, max |K|, accuracy): {before}"
        assert before["heatmap"] is not None, "no plot with heatmap traces in the lab"
        assert f"{BEFORE[0]}: {BEFORE[1]} bytes per token" in before["memory"], _describe(before)
        assert f"measured {BEFORE[0]}" in before["status"] and not before["message"], _describe(before)
        assert any(BEFORE[0] in title for title in before["heatmap_titles"]), _describe(before)
        assert scheme_menu.input_value() == "int4"
        dismiss_popups(page)
        screenshot_widget(page, widget, ARTIFACTS / "quant_lab_before.png")

        scheme_menu.select_option("int8")
        group_buttons.get_by_role("button", name="64", exact=True).click()  # int8's default: the whole head
        time.sleep(0.5)  # the menus' values reach the kernel before the click
        clicked = time.monotonic()
        measure.click()
        after = _wait_for_int8(page, before)
        print(f"measure int8 g64: {time.monotonic() - clicked:.1f} s in the browser; "
              f"memory {before['memory'][:40]!r} → {after['memory'][:40]!r}; status {after['status']!r}")

        assert BEFORE[1] not in after["memory"].split(" bytes per token")[0], after["memory"]
        assert AFTER[0] in after["perplexity"] and AFTER[0] in after["texts"], _describe(after)
        assert any(AFTER[0] in title for title in after["heatmap_titles"]), _describe(after)
        assert not after["message"], _describe(after)
        assert scheme_menu.input_value() == "int8"
        assert not error_outputs(page), "a widget callback raised:\n" + "\n\n".join(error_outputs(page))
        screenshot_widget(page, widget, ARTIFACTS / "quant_lab_after.png")
