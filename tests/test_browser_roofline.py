"""The roofline lab in a real browser: JupyterLab + headless Chromium (Playwright), run all, slide batch to 2, measure.

What nbval and tests/test_roofline.py cannot see: that the lab renders in JupyterLab and that its own controls (the
"batch" selection slider, the measure button) reach the kernel and redraw the plot. The test copies notebooks/ to a
temporary folder, starts JupyterLab on it, opens NOTEBOOK with only its parameters, setup, roofs and lab cells kept
(nbval runs the whole notebook), runs all cells, waits for the lab's roofline plot and its
first measurement (batch 1: one prefill, one decode and one decode-attention point, described in the message),
screenshots the lab (test-artifacts/roofline_lab_before.png), moves the batch slider to 2 with the keyboard (focus
its noUiSlider handle, ArrowRight, until the readout says 2) and presses measure, waits until the message describes
batch 2 and the decode trace holds a second point labelled batch 2, screenshots again
(test-artifacts/roofline_lab_after.png), then picks "GGUF blocks" on the weights toggle and measures once more: the
new decode point must be labelled so and sit > 5× further right (test-artifacts/roofline_lab_blocks.png). It fails
on any traceback.

The plot's data is read from the DOM (the plotly div's `data`), so the check covers what the browser drew, not the
kernel's copy of the figure. Every press of measure adds one point to each of the prefill, decode and attention
traces; earlier points stay.

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

NOTEBOOK = "06_decode_is_bandwidth_bound.ipynb"
LAB_CELLS = ("roofs = device_roofs(device)", "lab = roofline_lab(")  # and the parameters and setup cells
WIDGET = ".kvlab-roofline-lab"
PLOT = f"{WIDGET} .js-plotly-plot"
MESSAGE = ".kvlab-roofline-message"
RUN_TIMEOUT_S = 300  # run-all of the lab's cells on a 2-core CPU machine: model load, roofs, the lab's first points
CHANGE_TIMEOUT_S = 60  # one press on a CPU: a prefill, a decode step and decode attention at batch 2
KINDS = ("prefill", "decode", "attention")  # the marker traces; one point each per press of measure
ROOFLINE = "roofline (measured)"
BEFORE_BATCH, AFTER_BATCH = "1", "2"  # the notebook's CPU batches are 1, 2, 4, 8; the lab starts at the first
SLIDER_TRIES = 6


@pytest.fixture
def notebook_path() -> pathlib.Path:
    return repo_notebook(NOTEBOOK)


@pytest.fixture
def chromium(notebook_path) -> str:
    return require_chromium()


@pytest.fixture
def lab(tmp_path_factory, notebook_path, chromium):
    """JupyterLab on a clean copy of notebooks/; afterwards nothing it started may be left running."""
    with lab_for_test(tmp_path_factory, notebook_path, "roofline_lab", "roofline_lab_jupyter_server.log",
                      code_cells=LAB_CELLS) as server:
        yield server


def _lab_state(page) -> dict:
    """What the lab shows: its message, the sliders' readouts, and the roofline plot's traces as drawn (name →
    number of points and their text)."""
    return page.evaluate(
        """([sel, msg]) => {
            const w = document.querySelector(sel);
            if (!w) return {message: null, readouts: {}, plots: 0, traces: {}};
            const m = w.querySelector(msg);
            const readouts = {};
            for (const s of w.querySelectorAll('.widget-slider')) {
                const label = s.querySelector('.widget-label'), out = s.querySelector('.widget-readout');
                if (label) readouts[label.textContent.trim()] = out ? out.textContent.trim() : null;
            }
            const plots = [...w.querySelectorAll('.js-plotly-plot')];
            const traces = {};
            for (const t of (plots[0] && plots[0].data) || []) {
                traces[t.name] = {n: (t.x || []).length, text: (t.text || []).map(String), x: [...(t.x || [])].map(Number)};
            }
            return {message: m ? m.textContent.trim() : null, readouts, plots: plots.length, traces};
        }""", [WIDGET, MESSAGE])


def _points(state: dict, kind: str) -> int:
    return state["traces"].get(kind, {}).get("n", 0)


def _describe(state: dict) -> str:
    return (f"message {state['message']!r}, readouts {state['readouts']}, "
            f"traces { {name: t['n'] for name, t in state['traces'].items()} }")


def _wait_for_lab_plot(page, lab: JupyterLab) -> None:
    """The lab's plot is visible and its message describes the first measurement (batch 1)."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    plot = page.locator(PLOT).first
    while time.monotonic() < deadline:
        lab.remember_descendants()
        errors = error_outputs(page)
        if errors:
            pytest.fail("a cell raised before the roofline lab appeared:\n" + "\n\n".join(errors))
        message = _lab_state(page)["message"] or ""
        if plot.is_visible() and f"batch {BEFORE_BATCH}," in message and "FLOP/byte" in message:
            return
        time.sleep(1)
    pytest.fail(f"no visible {PLOT} with a measured batch {BEFORE_BATCH} within {RUN_TIMEOUT_S} s "
                f"(cells still running: {running_prompts(page)})")


def _slide_to(page, slider, readout, target: str) -> int:
    """Move a selection slider with the keyboard (its noUiSlider handle focused, arrow keys) until its readout
    shows `target`; return the key presses it took. Retries: a key press can land before the handle has focus."""
    handle = slider.locator(".noUi-handle").first
    presses = 0
    for _attempt in range(SLIDER_TRIES):
        shown = readout.inner_text().strip()
        if shown == target:
            return presses
        handle.focus()
        # the options are numbers in increasing order: step towards the target
        page.keyboard.press("ArrowRight" if float(shown) < float(target) else "ArrowLeft")
        presses += 1
        time.sleep(0.3)
    shown = readout.inner_text().strip()
    if shown != target:
        pytest.fail(f"the slider's readout shows {shown!r}, not {target!r}, after {presses} key presses")
    return presses


def _wait_for_blocks_point(page, decode_points: int) -> dict:
    """The decode trace holds `decode_points` points, the last one a batch-AFTER_BATCH step on the GGUF blocks."""
    deadline = time.monotonic() + CHANGE_TIMEOUT_S
    while time.monotonic() < deadline:
        now = _lab_state(page)
        decode = now["traces"].get("decode", {"n": 0, "text": []})
        if (decode["n"] == decode_points and "measuring" not in (now["message"] or "")
                and decode["text"][-1].startswith(f"decode, batch {AFTER_BATCH}, context")
                and "GGUF blocks" in decode["text"][-1]):
            return now
        time.sleep(0.25)
    pytest.fail(f"no batch-{AFTER_BATCH} GGUF-blocks decode point within {CHANGE_TIMEOUT_S} s: {_describe(_lab_state(page))}")


def _wait_for_batch(page, before: dict) -> dict:
    """The message describes batch AFTER_BATCH and the decode trace holds one more point, labelled batch
    AFTER_BATCH."""
    deadline = time.monotonic() + CHANGE_TIMEOUT_S
    want = f"decode, batch {AFTER_BATCH}, context"
    while time.monotonic() < deadline:
        now = _lab_state(page)
        decode = now["traces"].get("decode", {"n": 0, "text": []})
        if (f"batch {AFTER_BATCH}," in (now["message"] or "") and "measuring" not in now["message"]
                and decode["n"] == _points(before, "decode") + 1 and decode["text"][-1].startswith(want)):
            return now
        time.sleep(0.25)
    errors = error_outputs(page)
    pytest.fail(f"the lab did not show batch {AFTER_BATCH} within {CHANGE_TIMEOUT_S} s after 'measure': "
                f"{_describe(now)}; decode texts {now['traces'].get('decode', {}).get('text')}"
                + (f"; tracebacks: {errors}" if errors else ""))


def test_roofline_lab_measures_batch_2_chosen_on_its_own_slider_and_adds_the_points(lab, chromium, notebook_path):
    with browser_page(chromium, 2000, ARTIFACTS / "roofline_lab_failure.png") as page:
        print(f"\nrun all: {open_and_run_all(page, lab, notebook_path, RUN_TIMEOUT_S, _wait_for_lab_plot):.0f} s")

        widget = page.locator(WIDGET).first
        widget.scroll_into_view_if_needed()
        assert widget.locator(MESSAGE).count() == 1, f"no {MESSAGE} in the lab"
        sliders = {name: widget.locator(".widget-slider").filter(
            has=page.locator(".widget-label").filter(has_text=re.compile(rf"^\s*{name}\s*$")))
            for name in ("batch", "context", "prompt")}
        for name, slider in sliders.items():
            assert slider.count() == 1, f"no '{name}' slider in the lab"
        batch_slider = sliders["batch"]
        batch_readout = batch_slider.locator(".widget-readout")
        # not get_by_role(name="measure", exact=True): the button's icon puts a glyph in its accessible name
        measure = widget.locator("button.widget-button").filter(has_text=re.compile(r"^\s*measure\s*$"))
        clear = widget.locator("button.widget-button").filter(has_text=re.compile(r"^\s*clear points\s*$"))
        assert measure.count() == 1, "no 'measure' button in the lab"
        assert clear.count() == 1, "no 'clear points' button in the lab"

        before = _lab_state(page)
        assert before["plots"] == 1, f"expected one plot (the roofline) in the lab: {_describe(before)}"
        assert ROOFLINE in before["traces"], _describe(before)
        for kind in KINDS:
            assert _points(before, kind) == 1, f"expected one {kind} point after run-all: {_describe(before)}"
        assert before["traces"]["decode"]["text"][0].startswith(f"decode, batch {BEFORE_BATCH}, context"), \
            before["traces"]["decode"]["text"]
        assert f"decode, batch {BEFORE_BATCH}, context" in before["message"], _describe(before)
        assert "FLOP/byte" in before["message"], _describe(before)
        assert before["readouts"].get("batch") == BEFORE_BATCH, _describe(before)
        dismiss_popups(page)
        screenshot_widget(page, widget, ARTIFACTS / "roofline_lab_before.png")

        presses = _slide_to(page, batch_slider, batch_readout, AFTER_BATCH)
        time.sleep(0.5)  # the slider's value reaches the kernel before the click
        clicked = time.monotonic()
        measure.click()
        after = _wait_for_batch(page, before)
        print(f"batch slider → {AFTER_BATCH} in {presses} key press(es); measure batch {AFTER_BATCH}: "
              f"{time.monotonic() - clicked:.1f} s in the browser; {_describe(after)}")

        for kind in KINDS:
            assert _points(after, kind) == 2, f"expected two {kind} points after measure: {_describe(after)}"
        decode_texts = after["traces"]["decode"]["text"]
        assert decode_texts[0].startswith(f"decode, batch {BEFORE_BATCH}, context"), decode_texts  # kept
        assert after["traces"]["attention"]["text"][-1].startswith(
            f"decode attention, batch {AFTER_BATCH}, context"), after["traces"]["attention"]["text"]
        assert f"decode, batch {AFTER_BATCH}, context" in after["message"], _describe(after)
        assert "FLOP/byte" in after["message"] and f"batch {BEFORE_BATCH}," not in after["message"], \
            _describe(after)
        assert after["readouts"].get("batch") == AFTER_BATCH, _describe(after)
        assert not error_outputs(page), "a widget callback raised:\n" + "\n\n".join(error_outputs(page))
        screenshot_widget(page, widget, ARTIFACTS / "roofline_lab_after.png")

        # the weights toggle: the same batch-2 decode step reading the file's blocks lands further right
        from kvlab.kernels.cpu_gemv import load_gemv

        if load_gemv() is None:  # KVLAB_CPU_GEMV=0 or no compiler: the notebook's model has no blocks, no toggle
            return
        blocks = widget.locator("button.widget-toggle-button").filter(has_text=re.compile(r"^\s*GGUF blocks\s*$"))
        assert blocks.count() == 1, "no 'GGUF blocks' toggle in the lab (the notebook runs on a CPU)"
        blocks.click()
        time.sleep(0.5)  # the toggle's value reaches the kernel before the click
        measure.click()
        third = _wait_for_blocks_point(page, _points(after, "decode") + 1)
        xs = third["traces"]["decode"]["x"]
        assert xs[-1] > 5 * xs[-2], f"a blocks decode step should have > 5x the float32 one's FLOP/byte: {xs}"
        assert "GGUF blocks" in third["message"], _describe(third)
        assert not error_outputs(page), "a widget callback raised:\n" + "\n\n".join(error_outputs(page))
        screenshot_widget(page, widget, ARTIFACTS / "roofline_lab_blocks.png")
