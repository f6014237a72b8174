"""The serving lab: choose a batching policy, the batch limits, the pool size and a request rate, press run, and
replay what the engine did on the real model, step by step.

Run builds an engine (kvlab.build_engine) over a fresh set of requests and steps it to the end, copying the block
pool's public state after every step (the engine keeps no history of its cache). Then the step button and the
slider replay any step: the Gantt chart with that step marked, the pool after it, the batch it ran, and the
throughput and TTFT so far. The last run of each policy stays for the occupancy comparison (static beside
continuous). Outputs are as long as the requests ask (stop_at_eos=False, like vLLM's benchmark_serving
--ignore-eos), so a run is the same length whatever the model writes. The widget reads the engine's public state;
it computes no time itself.
"""
from __future__ import annotations

import html
import math
import time
from dataclasses import dataclass

import ipywidgets as widgets
import plotly.graph_objects as go

from ..checks import positive_int
from ..engine import POLICIES, Request, StepClock, build_engine
from ..traces import chat_requests
from .offload_figures import tier_traffic_figure
from .paged_figures import pool_figure
from .serving_figures import (describe_metrics, gantt_figure, pool_snapshot, running_metrics,
                              running_metrics_figure, slot_occupancy_figure, step_composition_figure)

ERROR_COLOUR = "#b00020"
PLOT_WIDTH_PX = 900
LAB_PROMPT_MEAN, LAB_MAX_PROMPT = 32, 48  # tokens
LAB_OUTPUT_MEAN, LAB_MAX_OUTPUT = 16, 24
PRESETS = {  # name → control values
    "roomy pool": dict(policy="continuous", max_num_seqs=4, max_num_batched_tokens=64, pool="auto"),
    "small pool: preemption": dict(policy="continuous", max_num_seqs=4, max_num_batched_tokens=64, pool="8"),
    "static batching": dict(policy="static", max_num_seqs=4, max_num_batched_tokens=64, pool="auto"),
    "small pool: swap to the tier": dict(policy="continuous", max_num_seqs=4, max_num_batched_tokens=64, pool="8",
                                         preemption="swap"),
}
PREEMPTIONS = ("recompute", "swap")  # the lab's choice; "auto" needs measured costs (kvlab.engine.offload)


def lab_requests(tokenizer, num_requests: int, rate_per_s: float, seed: int = 0) -> list[Request]:
    """The lab's requests: kvlab.traces.chat_requests — real-text prompts, ShareGPT-shaped (log-normal) lengths,
    Poisson arrivals of `rate_per_s` a second — scaled down to run in seconds on a CPU: prompts of mean 32 tokens
    (at most 48), outputs of mean 16 (at most 24)."""
    return chat_requests(tokenizer, num_requests, seed=seed, rate_per_s=rate_per_s, prompt_mean=LAB_PROMPT_MEAN,
                         output_mean=LAB_OUTPUT_MEAN, max_prompt=LAB_MAX_PROMPT, max_output=LAB_MAX_OUTPUT)


@dataclass(frozen=True)
class Settings:
    policy: str
    max_num_seqs: int
    max_num_batched_tokens: int
    num_blocks: int | None  # None: room for max_num_seqs of the longest request (no preemption)
    rate_per_s: float
    num_requests: int
    preemption: str = "recompute"

    def label(self) -> str:
        pool = "auto pool" if self.num_blocks is None else f"{self.num_blocks} blocks"
        return (f"{self.policy}: {self.max_num_seqs} seqs, budget {self.max_num_batched_tokens}, {pool}, "
                f"{self.rate_per_s:g} req/s, preempt by {self.preemption}")


def parse_pool(text: str) -> int | None:
    """'auto' (or nothing) → None; a whole number → that many blocks (the engine checks it is ≥ 1 and fits)."""
    text = text.strip().lower()
    if text in ("", "auto"):
        return None
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"pool blocks must be a whole number or 'auto', got {text!r}") from None


class ServingLab:
    """Controls for the policy, max_num_seqs, the token budget (max_num_batched_tokens), the pool (blocks, or
    'auto'), the request rate and the number of requests; run, step and a replay slider. `run()` is the run
    button in Python (ValueError for a bad control value; the button shows it as a message); `show_step(k)`
    the slider. After a run: `result` (ServeResult), `snapshots` (the pool after each step, None without a
    pool) and `runs` (policy → (label, ServeResult), the last run of each).

    requests_fn(num_requests, rate_per_s) → list[Request]; default: lab_requests. step_s: None runs on the
    wall clock (real times on this machine), a number on a StepClock (every step costs step_s: the same
    schedule on every machine)."""

    def __init__(self, model, tokenizer, requests_fn=None, policy: str = "continuous", max_num_seqs: int = 4,
                 max_num_batched_tokens: int = 64, num_blocks: int | None = None, rate_per_s: float = 4.0,
                 num_requests: int = 10, block_size: int = 16, cache: str = "paged", step_s: float | None = None,
                 seed: int = 0, run: bool = True):
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}; choose one of {', '.join(POLICIES)}")
        self.model, self.tokenizer = model, tokenizer
        self.requests_fn = requests_fn or (lambda n, rate: lab_requests(tokenizer, n, rate, seed=seed))
        self.block_size, self.cache, self.step_s = block_size, cache, step_s
        if step_s is not None:
            StepClock(step_s)  # ValueError now for a bad step
        self.result = None
        self.snapshots: list = []
        self.runs: dict[str, tuple[str, object]] = {}
        self.settings: Settings | None = None
        self._replaying = False
        self._drawn = None  # the result the views show
        self.widget = self._build_view(policy, max_num_seqs, max_num_batched_tokens, num_blocks, rate_per_s,
                                       num_requests)
        if run:
            self.run()

    # --- actions -----------------------------------------------------------------------------------------
    def run(self):
        """Serve a fresh set of requests with the controls' settings, copying the pool after every step; then
        show step 0. Raises ValueError (nothing changes) for a bad setting."""
        settings = self.read_settings()
        requests = self.requests_fn(settings.num_requests, settings.rate_per_s)
        clock = StepClock(self.step_s) if self.step_s is not None else None
        engine = build_engine(self.model, self.tokenizer, requests, cache=self.cache, num_blocks=settings.num_blocks,
                              block_size=self.block_size, max_num_seqs=settings.max_num_seqs,
                              max_num_batched_tokens=settings.max_num_batched_tokens, policy=settings.policy,
                              stop_at_eos=False, clock=clock, preemption=settings.preemption)
        total = sum(r.max_new_tokens for r in requests)
        self.progress.max, self.progress.value = total, 0
        self.progress.layout.visibility = "visible"
        snapshots, tokens, started = [], 0, time.perf_counter()
        self._set_busy(True)
        try:
            while engine.has_unfinished():
                record = engine.step()
                snapshots.append(pool_snapshot(engine.cache))
                tokens += record.tokens_out
                self.progress.value = tokens
                self._status(f"serving: step {record.index}, {tokens} of {total} tokens, "
                             f"{sum(1 for s in engine.sequences if s.finish_reason)} of {len(requests)} finished")
        finally:
            engine.abandon()  # after an error, the cache holds nothing
            self._set_busy(False)
        result = engine.result()
        self.result, self.snapshots, self.settings = result, snapshots, settings
        self.runs[settings.policy] = (settings.label(), result)
        took_s = time.perf_counter() - started
        self._status(f"ran {len(requests)} requests in {len(result.steps)} steps ({took_s:.1f} s here): "
                     f"{result.summary()}", colour="inherit")
        self._hold(lambda: setattr(self.slider, "max", len(result.steps) - 1))
        self._hold(lambda: setattr(self.slider, "value", 0))
        self._draw_run()
        self.show_step(0)
        return result

    def step(self) -> int:
        """The step button: replay the next step (stays on the last one)."""
        if self.result is None:
            raise ValueError("nothing to replay yet: press run")
        self.slider.value = min(self.slider.value + 1, self.slider.max)  # observe → show_step
        return self.slider.value

    def show_step(self, k: int) -> None:
        """Draw the replay at the end of step k: Gantt line, pool, batch, running metrics."""
        result = self.result
        if result is None:
            raise ValueError("nothing to replay yet: press run")
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < len(result.steps):
            raise ValueError(f"the run has steps 0 to {len(result.steps) - 1}, not {k!r}")
        if self.slider.value != k:
            self._hold(lambda: setattr(self.slider, "value", k))
        record = result.steps[k]
        budget = result.max_num_batched_tokens
        self.step_label.value = (f"<b>{html.escape(describe_step(record))}</b><br>"
                                 f"{html.escape(describe_metrics(running_metrics(result, k)))}")
        gantt = gantt_figure(result, upto_step=k)
        batch = step_composition_figure(record, budget)
        snapshot = self.snapshots[k]
        if snapshot is not None:
            pool = pool_figure(snapshot)
            pool.update_layout(title=f"After step {k}: {pool.layout.title.text}")
        else:
            pool = go.Figure(layout=dict(template="plotly_white", height=120,
                                         title=f"the {result.cache!r} layout has no block pool"))
        same_run, self._drawn = self._drawn is result, result
        if same_run and self._on_screen():  # the replay moved: edit what moves, in place
            _show(self.gantt_view, gantt, whole=False, trace_keys=("marker.opacity",))
            _show(self.batch_view, batch)
            _show(self.pool_view, pool, whole=False)
            _move_now(self.metrics_view, k)
            _move_now(self.occupancy_view, k)
            _move_now(self.tier_view, k)
            return
        figures = (gantt, batch, pool, running_metrics_figure(result, upto_step=k),
                   slot_occupancy_figure({label: run for label, run in self.runs.values()}, upto_step=k),
                   tier_traffic_figure(result, upto_step=k))
        if self._on_screen():
            for view, fig in zip(self._views(), figures):
                _show(view, fig)
        else:  # nothing displays the plots yet: new widgets with the whole figures, no edits for a front end to replay
            self._create_views(figures)

    def read_settings(self) -> Settings:
        """The controls' values, checked (ValueError names the first bad one)."""
        policy = self.policy.value
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}")
        max_num_seqs = positive_int("max_num_seqs", self.max_num_seqs.value)
        budget = positive_int("token budget (max_num_batched_tokens)", self.budget.value)
        num_blocks = parse_pool(self.pool.value)
        if num_blocks is not None:
            positive_int("pool blocks", num_blocks)
        rate = self.rate.value
        if not (math.isfinite(rate) and rate > 0):
            raise ValueError(f"the request rate must be a number of requests per second > 0, got {rate!r}")
        num_requests = positive_int("number of requests", self.num_requests.value)
        preemption = self.preemption.value
        if preemption not in PREEMPTIONS:
            raise ValueError(f"unknown preemption {preemption!r}")
        return Settings(policy, max_num_seqs, budget, num_blocks, float(rate), num_requests, preemption)

    def apply_preset(self, name: str) -> None:
        values = PRESETS[name]
        self.policy.value = values["policy"]
        self.max_num_seqs.value = values["max_num_seqs"]
        self.budget.value = values["max_num_batched_tokens"]
        self.pool.value = values["pool"]
        self.preemption.value = values.get("preemption", "recompute")

    # --- the view ----------------------------------------------------------------------------------------
    def _build_view(self, policy, max_num_seqs, budget, num_blocks, rate_per_s, num_requests) -> widgets.VBox:
        style = {"description_width": "120px"}
        layout = widgets.Layout(width="230px")
        self.preset = widgets.Dropdown(options=["(choose)"] + list(PRESETS), value="(choose)", description="preset",
                                       style=style, layout=widgets.Layout(width="330px"))
        self.preset.add_class("kvlab-serving-preset")
        self.policy = widgets.ToggleButtons(options=list(POLICIES), value=policy, description="policy",
                                            style={"button_width": "105px"})
        self.policy.add_class("kvlab-serving-policy")
        self.preemption = widgets.ToggleButtons(options=list(PREEMPTIONS), value="recompute", description="preempt by",
                                                style={"button_width": "105px"},
                                                tooltips=["free its blocks; prefill it again later",
                                                          "copy its blocks to the tier below the pool; copy back later"])
        self.preemption.add_class("kvlab-serving-preemption")
        self.max_num_seqs = widgets.IntText(value=max_num_seqs, description="max_num_seqs", style=style, layout=layout)
        self.budget = widgets.IntText(value=budget, description="token budget", style=style, layout=layout)
        self.pool = widgets.Text(value="auto" if num_blocks is None else str(num_blocks), description="pool blocks",
                                 style=style, layout=layout)
        self.rate = widgets.FloatText(value=rate_per_s, description="rate (req/s)", style=style, layout=layout)
        self.num_requests = widgets.IntText(value=num_requests, description="requests", style=style, layout=layout)
        for control, name in ((self.max_num_seqs, "max-num-seqs"), (self.budget, "budget"), (self.pool, "pool-blocks"),
                              (self.rate, "rate"), (self.num_requests, "num-requests")):
            control.add_class(f"kvlab-serving-{name}")
        self.run_button = widgets.Button(description="run", button_style="primary", icon="play")
        self.run_button.add_class("kvlab-serving-run")
        self.progress = widgets.IntProgress(value=0, min=0, max=1, layout=widgets.Layout(width="300px",
                                                                                          visibility="hidden"))
        self.progress.add_class("kvlab-serving-progress")
        self.status = widgets.HTML().add_class("kvlab-serving-status")
        self.message = widgets.HTML().add_class("kvlab-serving-message")
        self.step_button = widgets.Button(description="step", icon="step-forward", disabled=True)
        self.step_button.add_class("kvlab-serving-step")
        self.slider = widgets.IntSlider(value=0, min=0, max=0, description="replay step", disabled=True,
                                        continuous_update=False, style={"description_width": "90px"},
                                        layout=widgets.Layout(width="600px"))
        self.slider.add_class("kvlab-serving-slider")
        self.step_label = widgets.HTML().add_class("kvlab-serving-step-label")
        # the plots: made by the first run, with their first figures (see _create_views)
        self.gantt_view = self.batch_view = self.pool_view = self.metrics_view = self.occupancy_view = None
        self.tier_view = None
        self.plots = widgets.VBox([]).add_class("kvlab-serving-plots")

        self.preset.observe(lambda change: self._preset_chosen(change["new"]), names="value")
        self.run_button.on_click(lambda _: self._press(self.run))
        self.step_button.on_click(lambda _: self._press(self.step))
        self.slider.observe(lambda change: self._slid(change["new"]), names="value")
        self._status("press run: the engine serves the requests on the real model, then replay it step by step",
                     colour="inherit")
        controls = widgets.VBox([
            widgets.HBox([self.preset, self.policy]),
            self.preemption,
            widgets.HBox([widgets.VBox([self.max_num_seqs, self.budget]), widgets.VBox([self.pool, self.rate]),
                          widgets.VBox([self.num_requests, self.run_button])]),
            widgets.HBox([self.progress, self.status]),
        ]).add_class("kvlab-serving-controls")
        replay = widgets.HBox([self.step_button, self.slider]).add_class("kvlab-serving-replay")
        lab = widgets.VBox([controls, self.message, replay, self.step_label, self.plots])
        return lab.add_class("kvlab-serving-lab")

    def _create_views(self, figures) -> None:
        """The six plots, each made with its first figure: the front end receives the whole figure when the
        widget is created, not as edits to a placeholder (each FigureWidget model also carries plotly's ~5 MB
        front-end module, so they are made once, when there is something to draw)."""
        views = []
        for fig, name in zip(figures, ("gantt", "batch", "pool", "metrics", "occupancy", "tier")):
            view = go.FigureWidget(fig)
            view.layout.width = PLOT_WIDTH_PX
            view.add_class(f"kvlab-serving-{name}")
            views.append(view)
        (self.gantt_view, self.batch_view, self.pool_view, self.metrics_view, self.occupancy_view,
         self.tier_view) = views
        self.plots.children = views

    def _views(self) -> tuple:
        return (self.gantt_view, self.batch_view, self.pool_view, self.metrics_view, self.occupancy_view,
                self.tier_view)

    def _on_screen(self) -> bool:
        """Whether a front end shows the plots (a FigureWidget counts its views). Plots made and edited before
        any view exists can render wrongly — plotly's front end replays the edits onto the first state — so
        until one is shown, a new figure makes new widgets."""
        return self.gantt_view is not None and any(view._view_count for view in self._views())

    def _draw_run(self) -> None:
        replayable = self.result is not None and len(self.result.steps) > 0
        self.step_button.disabled = self.slider.disabled = not replayable

    def _preset_chosen(self, name: str) -> None:
        if name in PRESETS:
            self.apply_preset(name)

    def _slid(self, k: int) -> None:
        if not self._replaying:
            self._press(lambda: self.show_step(k))

    def _hold(self, action) -> None:
        """Change the slider without replaying (the caller draws)."""
        self._replaying = True
        try:
            action()
        finally:
            self._replaying = False

    def _set_busy(self, busy: bool) -> None:
        self.run_button.disabled = busy
        self.step_button.disabled = self.slider.disabled = busy or self.result is None

    def _status(self, text: str, colour: str = "#b9770e") -> None:
        self.status.value = f"<span style='color:{colour}'>{html.escape(text)}</span>"

    def _press(self, action) -> None:
        """A button or the slider: a refused setting as a red message, never a traceback."""
        self.message.value = ""
        try:
            action()
        except ValueError as error:
            self.message.value = f"<span style='color:{ERROR_COLOUR}'>{html.escape(str(error))}</span>"
            if action == self.run:
                self._status("not run", colour="inherit")
                self.progress.layout.visibility = "hidden"

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)


def describe_step(record) -> str:
    """What one step did, in one line."""
    parts = []
    if record.decode:
        parts.append(f"decoded seq {', '.join(map(str, record.decode))}")
    if record.prefill:
        parts.append("prefilled " + ", ".join(f"seq {s} ({n} tokens)" for s, n in record.prefill))
    for name, seqs in (("admitted", record.admitted), ("preempted", record.preempted),
                       ("swapped out", record.swapped_out), ("swapped in", record.swapped_in),
                       ("finished", record.finished)):
        if seqs:
            parts.append(f"{name} seq {', '.join(map(str, seqs))}")
    return (f"Step {record.index} (t {record.start_s:.2f}–{record.end_s:.2f} s): " + "; ".join(parts)
            + f" · {len(record.running)} running, {len(record.waiting)} waiting after it")


def _show(view: go.FigureWidget, fresh: go.Figure, whole: bool = True, trace_keys=None) -> None:
    """Show `fresh` in the live widget: traces updated in place when they have the same kinds (only their
    `trace_keys` when given: the Gantt chart of one run changes only marker.opacity), else replaced; the
    whole layout, or (whole=False, the same run replayed at another step) only its title, shapes and
    annotations — the template is not sent again."""
    if [t.type for t in view.data] != [t.type for t in fresh.data]:
        if view.data:
            view.data = ()
        view.add_traces(list(fresh.data))
    else:
        with view.batch_update():
            for shown, trace in zip(view.data, fresh.data):
                if trace_keys is not None:  # property paths, e.g. "marker.opacity"
                    for key in trace_keys:
                        shown[key] = trace[key]
                    continue
                trace = trace.to_plotly_json()
                trace.pop("type")
                shown.update(trace, overwrite=True)
    if whole:
        view.layout = fresh.layout
        view.layout.width = PLOT_WIDTH_PX
    else:
        with view.batch_update():
            view.layout.title = fresh.layout.title
            view.layout.shapes = fresh.layout.shapes
            view.layout.annotations = fresh.layout.annotations


def _move_now(view: go.FigureWidget, x: float) -> None:
    """Move the figure's "now" lines (serving_figures draws them) to x."""
    with view.batch_update():
        for shape in view.layout.shapes:
            if shape.name == "now":
                shape.x0 = shape.x1 = x
