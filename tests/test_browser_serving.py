"""The serving lab in a real browser: JupyterLab + headless Chromium (Playwright), run all, step, replay by slider.

What tests/test_serving_figures.py cannot see: that the lab renders in JupyterLab and that its own controls (the
step button, the replay slider, the pool text box and the run button) reach the kernel and redraw the plots. The
test copies notebooks/ to a temporary folder, starts JupyterLab on it, opens NOTEBOOK (its lab cell is
`lab = ServingLab(model, tokenizer); lab`, which serves the requests once on the real model) with only its
parameters, setup and lab cells kept (nbval runs the whole notebook), runs all cells and
waits for the lab's Gantt chart to show the replay at step 0 (its "now" line at the end of step 0, x = 0.5, and
the step label "Step 0 ..."), screenshots the lab (test-artifacts/serving_lab_step0.png), presses step and waits
for the line and the label to reach step 1 (serving_lab_step1.png), then moves the replay slider with the keyboard
(its noUiSlider handle focused, ArrowRight) until its readout says TARGET_STEP, and waits for the Gantt line,
the label, the pool's title and the faded cells of the Gantt chart to follow (serving_lab_replayed.png). Last, it
types a bad pool size and presses run: a red message, no traceback, and the replay stays where it was. Then it
sets the pool to 8 blocks and preempt-by to swap and runs again: the tier plot must draw blocks in the tier and as
many swaps in as out (serving_lab_swapped.png). It fails
on any traceback, and on any anywidget error in the page's console (a plot whose widget never initialised).

The plots' data is read from the DOM (each plotly div's `data` and `layout`), so the check covers what the
browser drew, not the kernel's copy of the figures.

Needs Debian's chromium (`apt-get install chromium`; .ci/run installs it) and the `playwright` package (test
extra). Without chromium the test skips — except under CI (env CI set), where it fails.
"""
from __future__ import annotations

import pathlib
import re
import time

import pytest

from browser_driver import (ARTIFACTS, JupyterLab, browser_page, dismiss_popups, error_outputs, lab_for_test,
                            open_and_run_all, repo_notebook, require_chromium, running_prompts, screenshot_widget)

pytestmark = pytest.mark.browser

NOTEBOOK = "08_continuous_batching.ipynb"
LAB_CELLS = ("lab = ServingLab(model",)  # and the parameters and setup cells: nbval runs the rest
WIDGET = ".kvlab-serving-lab"
GANTT = f"{WIDGET} .js-plotly-plot.kvlab-serving-gantt"
POOL = f"{WIDGET} .js-plotly-plot.kvlab-serving-pool"
LABEL = ".kvlab-serving-step-label"
MESSAGE = ".kvlab-serving-message"
SLIDER = ".kvlab-serving-slider"
STEP_BUTTON = "button.kvlab-serving-step"
RUN_BUTTON = "button.kvlab-serving-run"
POOL_TEXT = ".kvlab-serving-pool-blocks input"
SWAP_BUTTON = ".kvlab-serving-preemption button:has-text('swap')"
TIER = f"{WIDGET} .js-plotly-plot.kvlab-serving-tier"
SWAP_RUN_TIMEOUT_S = 120  # the lab serves its requests again on the real model, through 8 blocks
RUN_TIMEOUT_S = 300  # run-all of the lab's cells on a 2-core CPU: model load, then the lab's first run
# on the wall clock before the lab, then the lab's first run
CHANGE_TIMEOUT_S = 30  # one replayed step redraws five plots in the kernel; no model runs
TARGET_STEP = 4  # where the slider takes the replay
SLIDER_TRIES = 12


@pytest.fixture
def notebook_path() -> pathlib.Path:
    return repo_notebook(NOTEBOOK)


@pytest.fixture
def chromium(notebook_path) -> str:
    return require_chromium()


@pytest.fixture
def lab(tmp_path_factory, notebook_path, chromium):
    """JupyterLab on a clean copy of notebooks/; afterwards nothing it started may be left running."""
    with lab_for_test(tmp_path_factory, notebook_path, "serving_lab", "serving_lab_jupyter_server.log",
                      code_cells=LAB_CELLS) as server:
        yield server


def _lab_state(page) -> dict:
    """What the lab shows: the step label, the message, the slider's readout, the Gantt chart's "now" line and
    how many of its cells are faded (drawn after the replayed step), the pool's title."""
    return page.evaluate(
        """([widget, gantt, pool, label, message, slider]) => {
            const w = document.querySelector(widget);
            if (!w) return {found: false};
            const text = (sel) => { const e = w.querySelector(sel); return e ? e.textContent.trim() : null; };
            const readout = w.querySelector(slider + ' .widget-readout');
            const g = document.querySelector(gantt), p = document.querySelector(pool);
            const now = g && g.layout ? (g.layout.shapes || []).filter(s => s.name === 'now').map(s => s.x0) : [];
            let faded = 0, cells = 0;
            for (const t of (g && g.data) || []) {
                const o = (t.marker && t.marker.opacity) || [];
                if (Array.isArray(o)) { cells += o.length; faded += o.filter(v => v < 1).length; }
            }
            const title = p && p.layout && p.layout.title ? (p.layout.title.text || '') : '';
            return {found: true, label: text(label), message: text(message),
                    readout: readout ? readout.textContent.trim() : null, now, faded, cells, pool_title: title,
                    traces: ((g && g.data) || []).map(t => t.name)};
        }""", [WIDGET, GANTT, POOL, LABEL, MESSAGE, SLIDER])


def _describe(state: dict) -> str:
    keys = ("label", "message", "readout", "now", "faded", "cells", "pool_title")
    return ", ".join(f"{k} {state.get(k)!r}" for k in keys)


def _shows_step(state: dict, k: int) -> bool:
    return (state.get("found") and (state["label"] or "").startswith(f"Step {k} ")
            and state["now"] == [k + 0.5] and (state["pool_title"] or "").startswith(f"After step {k}:"))


def _watch_console(page) -> list[str]:
    """The page's console errors and uncaught exceptions, as they come (for the failure messages)."""
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"uncaught: {e}"))
    return errors


def _wait_for_lab_plot(page, lab: JupyterLab, console: list[str]) -> None:
    """The lab's Gantt chart is visible and the replay shows step 0 (its first run has finished)."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    gantt = page.locator(GANTT).first
    while time.monotonic() < deadline:
        lab.remember_descendants()
        errors = error_outputs(page)
        if errors:
            pytest.fail("a cell raised before the serving lab appeared:\n" + "\n\n".join(errors))
        if gantt.count() and gantt.is_visible() and _shows_step(_lab_state(page), 0):
            return
        time.sleep(1)
    pytest.fail(f"no visible {GANTT} replaying step 0 within {RUN_TIMEOUT_S} s "
                f"(cells still running: {running_prompts(page)}; {_describe(_lab_state(page))}); "
                f"console errors: {console[-10:]}")


def _wait_for_step(page, k: int, what: str) -> dict:
    deadline = time.monotonic() + CHANGE_TIMEOUT_S
    while time.monotonic() < deadline:
        state = _lab_state(page)
        if _shows_step(state, k):
            return state
        time.sleep(0.25)
    errors = error_outputs(page)
    pytest.fail(f"the lab did not show step {k} within {CHANGE_TIMEOUT_S} s after {what}: {_describe(_lab_state(page))}"
                + (f"; tracebacks: {errors}" if errors else ""))


def _slide_to(page, slider, target: int) -> int:
    """Move the replay slider with the keyboard (its noUiSlider handle focused, arrow keys) until its readout
    shows `target`; return the key presses it took. Retries: a key press can land before the handle has focus."""
    handle = slider.locator(".noUi-handle").first
    readout = slider.locator(".widget-readout")
    presses = 0
    for _attempt in range(SLIDER_TRIES):
        shown = int(readout.inner_text().strip())
        if shown == target:
            return presses
        handle.focus()
        page.keyboard.press("ArrowRight" if shown < target else "ArrowLeft")
        presses += 1
        time.sleep(0.3)
    shown = int(readout.inner_text().strip())
    if shown != target:
        pytest.fail(f"the replay slider shows {shown}, not {target}, after {presses} key presses")
    return presses


def _tier_traffic(page) -> dict:
    """The tier plot's traces as the browser drew them: name → the sum and the largest of its y values."""
    return page.evaluate(
        """(tier) => {
            const t = document.querySelector(tier);  // _fullData: y decoded from any typed-array spec
            const out = {};
            for (const trace of (t && t._fullData) || []) {
                const y = Array.from(trace.y || []).map(Number);
                out[trace.name] = {sum: y.reduce((a, b) => a + b, 0), max: Math.max(0, ...y)};
            }
            return out;
        }""", TIER)


def test_serving_lab_replays_the_step_chosen_by_its_step_button_and_its_slider_and_draws_swaps(lab, chromium,
                                                                                                notebook_path):
    with browser_page(chromium, 2400, ARTIFACTS / "serving_lab_failure.png") as page:
        console = _watch_console(page)
        wait = lambda page, lab: _wait_for_lab_plot(page, lab, console)  # noqa: E731
        print(f"\nrun all: {open_and_run_all(page, lab, notebook_path, RUN_TIMEOUT_S, wait):.0f} s")

        widget = page.locator(WIDGET).first
        widget.scroll_into_view_if_needed()
        step_button, run_button = widget.locator(STEP_BUTTON), widget.locator(RUN_BUTTON)
        slider = widget.locator(SLIDER)
        assert step_button.count() == 1 and run_button.count() == 1, "no step / run button in the lab"
        assert slider.count() == 1 and widget.locator(MESSAGE).count() == 1

        start = _lab_state(page)
        assert _shows_step(start, 0), _describe(start)
        assert start["readout"] == "0" and start["message"] == "", _describe(start)
        for name in ("decode: one token", "prefill chunk", "finished"):
            assert name in start["traces"], f"no {name!r} trace in the Gantt chart: {start['traces']}"
        assert 0 < start["faded"] < start["cells"], _describe(start)  # everything after step 0 is faded
        dismiss_popups(page)
        screenshot_widget(page, widget, ARTIFACTS / "serving_lab_step0.png")

        clicked = time.monotonic()
        step_button.click()
        one = _wait_for_step(page, 1, "pressing step")
        print(f"step: {time.monotonic() - clicked:.1f} s in the browser; {_describe(one)}")
        assert one["readout"] == "1" and one["faded"] < start["faded"], _describe(one)
        screenshot_widget(page, widget, ARTIFACTS / "serving_lab_step1.png")

        presses = _slide_to(page, slider, TARGET_STEP)
        replayed = _wait_for_step(page, TARGET_STEP, f"{presses} ArrowRight presses on the slider")
        assert replayed["faded"] < one["faded"], _describe(replayed)  # steps 2..4 are no longer faded
        assert replayed["label"] != one["label"] and replayed["pool_title"] != one["pool_title"]
        assert not error_outputs(page), "a widget callback raised:\n" + "\n\n".join(error_outputs(page))
        screenshot_widget(page, widget, ARTIFACTS / "serving_lab_replayed.png")

        pool = widget.locator(POOL_TEXT)
        pool.fill("lots")
        time.sleep(0.5)  # the text reaches the kernel before the click
        run_button.click()
        deadline = time.monotonic() + CHANGE_TIMEOUT_S
        while time.monotonic() < deadline and "pool blocks" not in (_lab_state(page)["message"] or ""):
            time.sleep(0.25)
        refused = _lab_state(page)
        assert re.search(r"pool blocks must be a whole number or 'auto', got 'lots'", refused["message"] or ""), \
            _describe(refused)
        assert _shows_step(refused, TARGET_STEP), _describe(refused)  # the last run's replay stays
        assert not error_outputs(page), "a bad value gave a traceback:\n" + "\n\n".join(error_outputs(page))
        assert not [e for e in console if "anywidget" in e], f"a plot's widget failed in the page: {console}"

        # preempt by swap through 8 blocks: the tier plot fills with blocks and swaps
        before = _tier_traffic(page)
        assert before["swapped out"]["sum"] == 0, before  # the first run preempted by recompute
        pool.fill("8")
        widget.locator(SWAP_BUTTON).click()
        time.sleep(0.5)  # both values reach the kernel before the click
        clicked = time.monotonic()
        run_button.click()
        deadline = time.monotonic() + SWAP_RUN_TIMEOUT_S
        while time.monotonic() < deadline and not _tier_traffic(page).get("swapped out", {}).get("sum"):
            time.sleep(1)
        swapped = _tier_traffic(page)
        print(f"swap run: {time.monotonic() - clicked:.0f} s in the browser; tier plot {swapped}")
        assert swapped["swapped out"]["sum"] > 0 and swapped["swapped back in"]["sum"] == swapped["swapped out"]["sum"], \
            swapped
        assert swapped["in the tier"]["max"] > 0, swapped
        assert not error_outputs(page), "the swap run raised:\n" + "\n\n".join(error_outputs(page))
        screenshot_widget(page, widget, ARTIFACTS / "serving_lab_swapped.png")
