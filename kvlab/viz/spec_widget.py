"""The speculative-decoding lab: choose a drafter, k and a prompt, press run, and replay what each verification
kept, step by step, on the real model.

Run serves the prompt through the engine (kvlab.build_engine, one request, a paged pool) twice — plain greedy
decoding (once per prompt and length, then remembered) and speculative — and checks that the tokens are the same.
The replay shows, up to the chosen step: the drafts of each verification coloured accepted / rejected with the
target's own token, the pool's blocks with those the rejected drafts gave back, and α and tokens per target pass
so far beside the i.i.d. formula. The speedup is decode tokens per second against the plain run's, both measured
here, now. The widget reads the engine's step log; it computes no time itself.
"""
from __future__ import annotations

import html

import ipywidgets as widgets
import plotly.graph_objects as go

from ..checks import positive_int
from ..engine import Request, build_engine
from ..spec import DRAFTERS
from ..spec.prompts import spec_prompts
from .serving_widget import ERROR_COLOUR, PLOT_WIDTH_PX, _show
from .spec_figures import drafts_figure, running_acceptance, running_acceptance_figure, spec_blocks_figure

MAX_K = 8


def decode_tok_s(result) -> float:
    """Tokens after the first ÷ the host time of the steps after the first (the prefill step) — what a user feels
    while the answer streams."""
    decode = result.steps[1:]
    seconds = sum(s.wall_s for s in decode)
    return sum(s.tokens_out for s in decode) / seconds if seconds > 0 else float("nan")


class SpecLab:
    """Controls for the drafter ("ngram" | "self"), k (1–8), the prompt (kvlab.spec.prompts) and the tokens to
    generate; run, step and a replay slider. `run()` is the run button (ValueError for a bad value, shown as a
    message by the button); `show_step(k)` the slider. After a run: `result` (the speculative ServeResult),
    `plain` (the plain run's), `speedup`."""

    def __init__(self, model, tokenizer, drafter: str = "ngram", k: int = 4, prompt: str = "quote a passage",
                 new_tokens: int = 32, draft_layers=None, run: bool = True):
        self.model, self.tokenizer = model, tokenizer
        self.prompts = spec_prompts(tokenizer)
        if prompt not in self.prompts:
            raise ValueError(f"unknown prompt {prompt!r}; choose one of {', '.join(self.prompts)}")
        self.draft_layers = draft_layers
        self.result = self.plain = None
        self.speedup = float("nan")
        self._plain_runs: dict = {}
        self._replaying = False
        self.views = None
        self.widget = self._build_view(drafter, k, prompt, new_tokens)
        if run:
            self.run()

    # --- actions -----------------------------------------------------------------------------------------
    def run(self):
        drafter, k, prompt, new_tokens = self.read_settings()
        kind, text = self.prompts[prompt]
        self._busy(True)
        try:
            self.status.value = f"plain greedy decoding of {new_tokens} tokens …"
            plain = self._plain(prompt, text, new_tokens)
            self.status.value = f"{drafter} drafts, k = {k} …"
            options = {"draft_layers": self.draft_layers} if drafter == "self" and self.draft_layers else None
            result = self._serve(text, new_tokens, speculative=drafter, num_speculative_tokens=k,
                                 speculative_options=options)
        finally:
            self._busy(False)
        self.result, self.plain, self.k = result, plain, k
        self.speedup = decode_tok_s(result) / decode_tok_s(plain)
        same = result.token_ids == plain.token_ids
        stats = result.speculation
        self._hold(lambda: setattr(self.slider, "max", len(result.steps) - 1))
        self._hold(lambda: setattr(self.slider, "value", len(result.steps) - 1))
        self.step_button.disabled = self.slider.disabled = False
        self.show_step(len(result.steps) - 1)
        self.status.value = html.escape(  # last: a finished status means the plots were sent
            f"{prompt} ({kind}): {stats.summary()} · decode {decode_tok_s(result):.1f} tok/s against plain "
            f"{decode_tok_s(plain):.1f} tok/s = {self.speedup:.2f}× · same tokens as plain greedy: {same}")
        return result

    def step(self) -> int:
        if self.result is None:
            raise ValueError("nothing to replay yet: press run")
        self.slider.value = min(self.slider.value + 1, self.slider.max)  # observe → show_step
        return self.slider.value

    def show_step(self, k: int) -> None:
        result = self.result
        if result is None:
            raise ValueError("nothing to replay yet: press run")
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < len(result.steps):
            raise ValueError(f"the run has steps 0 to {len(result.steps) - 1}, not {k!r}")
        if self.slider.value != k:
            self._hold(lambda: setattr(self.slider, "value", k))
        so_far = running_acceptance(result.steps, k)
        rows = [r for r in result.steps[k].speculation]
        now = "; ".join(f"drafted {len(r.drafted)}, accepted {r.accepted}, emitted {len(r.emitted)}, "
                        f"{r.blocks_rolled_back} block(s) given back" for r in rows) or "no verification"
        self.step_label.value = html.escape(
            f"Step {k}: {now} · so far {so_far['accepted']} of {so_far['proposed']} drafts accepted over "
            f"{so_far['passes']} target passes")
        figures = (drafts_figure(result.steps, self.tokenizer, upto_step=k),
                   spec_blocks_figure(result.steps, upto_step=k),
                   running_acceptance_figure(result.steps, self.k, upto_step=k))
        if self.views is None:
            self.views = [go.FigureWidget(fig) for fig in figures]
            for view, name in zip(self.views, ("drafts", "blocks", "acceptance")):
                view.layout.width = PLOT_WIDTH_PX
                view.add_class(f"kvlab-spec-{name}")
            self.plots.children = self.views
        else:
            for view, fig in zip(self.views, figures):
                _show(view, fig)

    def read_settings(self) -> tuple[str, int, str, int]:
        drafter = self.drafter.value
        if drafter not in DRAFTERS:
            raise ValueError(f"unknown drafter {drafter!r}; choose one of {', '.join(DRAFTERS)}")
        k = positive_int("k", self.k_slider.value)
        if k > MAX_K:
            raise ValueError(f"k must be at most {MAX_K} here, got {k}")
        new_tokens = positive_int("tokens to generate", self.new_tokens.value)
        return drafter, k, self.prompt.value, new_tokens

    # --- helpers -----------------------------------------------------------------------------------------
    def _serve(self, text: str, new_tokens: int, **speculation):
        engine = build_engine(self.model, self.tokenizer, [Request(text, new_tokens)], cache="paged", max_num_seqs=1,
                              stop_at_eos=False, **speculation)
        try:
            return engine.run()
        finally:
            engine.abandon()

    def _plain(self, prompt: str, text: str, new_tokens: int):
        key = (prompt, new_tokens)
        if key not in self._plain_runs:
            self._serve(text, min(new_tokens, 4))  # warm-up
            self._plain_runs[key] = self._serve(text, new_tokens)
        return self._plain_runs[key]

    def _build_view(self, drafter, k, prompt, new_tokens) -> widgets.VBox:
        self.drafter = widgets.ToggleButtons(options=list(DRAFTERS), value=drafter, description="drafter",
                                             tooltips=["prompt lookup: what followed the last n tokens before",
                                                       "self-draft: some of the model's own layers"])
        self.drafter.add_class("kvlab-spec-drafter")
        self.k_slider = widgets.IntSlider(value=k, min=1, max=MAX_K, description="k (drafts)",
                                          continuous_update=False)
        self.k_slider.add_class("kvlab-spec-k")
        self.prompt = widgets.Dropdown(options=list(self.prompts), value=prompt, description="prompt",
                                       layout=widgets.Layout(width="330px"))
        self.prompt.add_class("kvlab-spec-prompt")
        self.new_tokens = widgets.IntText(value=new_tokens, description="tokens", layout=widgets.Layout(width="180px"))
        self.new_tokens.add_class("kvlab-spec-tokens")
        self.run_button = widgets.Button(description="run", button_style="primary", icon="play")
        self.run_button.add_class("kvlab-spec-run")
        self.status = widgets.HTML("press run: plain decoding, then speculative, on the real model").add_class(
            "kvlab-spec-status")
        self.message = widgets.HTML().add_class("kvlab-spec-message")
        self.step_button = widgets.Button(description="step", icon="step-forward", disabled=True)
        self.step_button.add_class("kvlab-spec-step")
        self.slider = widgets.IntSlider(value=0, min=0, max=0, description="replay step", disabled=True,
                                        continuous_update=False, layout=widgets.Layout(width="600px"))
        self.slider.add_class("kvlab-spec-slider")
        self.step_label = widgets.HTML().add_class("kvlab-spec-step-label")
        self.plots = widgets.VBox([]).add_class("kvlab-spec-plots")
        self.run_button.on_click(lambda _: self._press(self.run))
        self.step_button.on_click(lambda _: self._press(self.step))
        self.slider.observe(lambda change: self._slid(change["new"]), names="value")
        controls = widgets.VBox([widgets.HBox([self.drafter, self.k_slider]),
                                 widgets.HBox([self.prompt, self.new_tokens, self.run_button]), self.status])
        replay = widgets.HBox([self.step_button, self.slider])
        return widgets.VBox([controls, self.message, replay, self.step_label, self.plots]).add_class("kvlab-spec-lab")

    def _press(self, action) -> None:
        self.message.value = ""
        try:
            action()
        except ValueError as error:
            self.message.value = f"<span style='color:{ERROR_COLOUR}'>{html.escape(str(error))}</span>"

    def _slid(self, k: int) -> None:
        if not self._replaying:
            self._press(lambda: self.show_step(k))

    def _hold(self, action) -> None:
        self._replaying = True
        try:
            action()
        finally:
            self._replaying = False

    def _busy(self, busy: bool) -> None:
        self.run_button.disabled = busy
        self.step_button.disabled = self.slider.disabled = busy or self.result is None

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)
