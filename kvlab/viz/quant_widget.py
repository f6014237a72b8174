"""The quantization lab: pick a KV-cache scheme, press measure, and see what it saves and what it costs — live.

Every number is measured on the real model when the button is pressed (kvlab.bench.quant_capture for the K/V,
kvlab.bench.quant_accuracy for perplexity and caches, kvlab.generate for the texts):
* memory: the quantized cache's bytes_per_token(), against the model's dtype and bf16;
* error: |K − K̂| per token and channel for one layer and KV head, next to a scheme to compare with;
* perplexity on a small corpus (stdlib docstrings), against the full-precision cache;
* the same prompt generated greedily through both caches, side by side, the first difference marked.
The full-precision baseline (its K/V, perplexity and text) is measured once, at the first press.
"""
from __future__ import annotations

import html
import time
from dataclasses import dataclass

import ipywidgets as widgets
import plotly.graph_objects as go
import torch

from ..bench.quant_accuracy import (bf16_bytes_per_token, first_difference, full_precision_cache, perplexity,
                                    quantized_cache)
from ..bench.quant_capture import capture_kv, full_precision_kv, scheme_label, strongest_outlier
from ..cache.quantization import DEFAULT_GROUP, GROUP_SIZES, SCHEMES, make_scheme
from ..corpus import perplexity_windows
from ..engine.generate import generate
from ..memory import format_bytes
from .quant_figures import accuracy_figure, channel_absmax_figure, error_heatmaps, memory_figure

DEFAULT_PROMPT = ("The KV cache keeps the keys and values of every earlier token, so that a new token attends to "
                  "them instead of recomputing them. Quantizing the cache")
ERROR_COLOUR = "#c0392b"
DIFF_COLOUR = "#fdebd0"
RUNNING_COLOUR = "#b9770e"


def group_sizes_for(head_dim: int) -> list[int]:
    """The group sizes the schemes accept for heads of head_dim channels (they must divide it)."""
    return [g for g in GROUP_SIZES if head_dim % g == 0]


def group_note(scheme: str, group_size: int, head_dim: int, block_size: int) -> str:
    """What the group size means for `scheme`, in one sentence."""
    whole = group_size == head_dim
    if scheme == "kivi2":
        return (f"kivi2: the group applies to values only (a scale and a minimum per token for each {group_size} "
                f"channels); keys get a scale and a minimum per channel over each block of {block_size} tokens.")
    span = "the whole head" if whole else f"each {group_size} channels"
    default = " (the default)" if group_size == (DEFAULT_GROUP[scheme] or head_dim) else ""
    return f"{scheme}: one float16 scale per token and KV head for {span}{default}."


@dataclass
class Baseline:
    """The full-precision cache's measurements for one prompt and corpus, made once."""
    k: torch.Tensor  # [L, T, Hkv, D] the full-precision run's keys
    v: torch.Tensor  # [L, T, Hkv, D]
    windows: list[list[int]]
    perplexity: float
    token_ids: list[int]  # greedy new tokens
    bytes_per_token: int
    bf16_bytes_per_token: int


class QuantizationLab:
    """Scheme, group size and comparison scheme menus, a layer slider, a KV head choice and a measure button
    over the real model. `measure(...)` is the button in Python; it raises ValueError for a bad choice (the
    button shows it as a message). After a measurement: `cache` (the quantized cache generation ran through),
    `capture`, `compare_capture` (KVCapture), `result` (a run_accuracy-shaped row) and `history` (one row per
    scheme and group measured, for the trade-off figure)."""

    def __init__(self, model, tokenizer, prompt: str = DEFAULT_PROMPT, scheme: str = "int4", group_size: int = 32,
                 compare: str = "kivi2", layer: int | None = None, head: int | None = None, new_tokens: int = 24,
                 ppl_windows: int = 2, ppl_tokens: int = 128, block_size: int = 16):
        self.model, self.tokenizer, self.config = model, tokenizer, model.config
        self.prompt_ids = tokenizer.encode(prompt)
        if not self.prompt_ids:
            raise ValueError("the prompt is empty")
        self.new_tokens, self.block_size = new_tokens, block_size
        self.ppl_windows, self.ppl_tokens = ppl_windows, ppl_tokens
        self.group_options = group_sizes_for(self.config.head_dim)
        self._check(scheme, group_size)
        self._check(compare, None)
        self.baseline: Baseline | None = None
        self.cache = self.capture = self.compare_capture = self.result = None
        self.history: dict[str, dict] = {}  # label → row, in the order first measured
        self._pick_layer = layer is None  # the first capture chooses the layer with the strongest outlier channel
        self._hold_redraw = False
        self.widget = self._build_view(scheme, group_size, compare, layer or 0, head or 0)

    # --- actions -----------------------------------------------------------------------------------------
    def measure(self, scheme: str | None = None, group_size: int | None = None, compare: str | None = None) -> dict:
        """Measure `scheme` with `group_size` (default: the menus' choices; given ones are set in the menus)."""
        scheme = self.scheme_menu.value if scheme is None else scheme
        group_size = self.group_buttons.value if group_size is None else group_size
        compare = self.compare_menu.value if compare is None else compare
        self._check(scheme, group_size)
        self._check(compare, None)
        self.scheme_menu.value, self.group_buttons.value, self.compare_menu.value = scheme, group_size, compare
        start = time.perf_counter()
        label = scheme_label(scheme, group_size)
        self.measure_button.disabled = True
        try:
            if self.baseline is None:
                self._status(f"once: the full-precision baseline (prefill, perplexity on {self._corpus()}, "
                             f"{self.new_tokens} greedy tokens)…")
                self.baseline = self._measure_baseline()
            reference = (self.baseline.k, self.baseline.v)
            self._status(f"1/3 prefilling the prompt through a {label} cache and a {compare} cache…")
            capture = capture_kv(self.model, self.tokenizer, self.prompt_ids, scheme, group_size, self.block_size,
                                 reference=reference)
            same = make_scheme(compare, self.config.head_dim) == capture.scheme
            compare_capture = capture if same else capture_kv(self.model, self.tokenizer, self.prompt_ids, compare,
                                                              None, self.block_size, reference=reference)
            self._status(f"2/3 perplexity through {label} on {self._corpus()}…")
            ppl = perplexity(self.model, self.baseline.windows,
                             lambda n: quantized_cache(self.model, scheme, group_size, n, block_size=self.block_size))
            self._status(f"3/3 generating {self.new_tokens} tokens through {label}…")
            cache = quantized_cache(self.model, scheme, group_size, len(self.prompt_ids) + self.new_tokens,
                                    block_size=self.block_size)
            ids = generate(self.model, self.tokenizer, [self.prompt_ids], max_new_tokens=self.new_tokens,
                           stop_at_eos=False, cache=cache).token_ids[0]
        finally:
            self.measure_button.disabled = False
        self.cache, self.capture, self.compare_capture = cache, capture, compare_capture  # all or nothing
        self.result = self._row(scheme, group_size, ppl, ids)
        self.history[label] = self.result
        if self._pick_layer:
            self._pick_layer = False
            layer, head, _, _ = strongest_outlier(self.baseline.k)
            self._hold_redraw = True  # _refresh draws once, below
            try:
                self.layer_slider.value, self.head_buttons.value = layer, head
            finally:
                self._hold_redraw = False
        self._refresh()
        self._status(f"measured {label} in {time.perf_counter() - start:.1f} s", colour="inherit")
        return self.result

    # --- measurements ------------------------------------------------------------------------------------
    def _check(self, scheme, group_size) -> None:
        make_scheme(scheme, self.config.head_dim, group_size, device=self.model.device)  # ValueError names the problem

    def _corpus(self) -> str:
        return f"{self.ppl_windows} × {self.ppl_tokens} tokens of stdlib docstrings"

    def _measure_baseline(self) -> Baseline:
        model = self.model
        k, v = full_precision_kv(model, self.prompt_ids, self.block_size)
        windows = perplexity_windows(self.tokenizer, self.ppl_windows, self.ppl_tokens)
        ppl = perplexity(model, windows, lambda n: full_precision_cache(model, n, block_size=self.block_size))
        cache = full_precision_cache(model, len(self.prompt_ids) + self.new_tokens, block_size=self.block_size)
        ids = generate(model, self.tokenizer, [self.prompt_ids], max_new_tokens=self.new_tokens, stop_at_eos=False,
                       cache=cache).token_ids[0]
        return Baseline(k, v, windows, ppl, ids, cache.bytes_per_token(), bf16_bytes_per_token(model.config))

    def _row(self, scheme: str, group_size: int, ppl: float, ids: list[int]) -> dict:
        """One row shaped like kvlab.bench.quant_accuracy.run_accuracy's, over this lab's one prompt."""
        base, bytes_per_token = self.baseline, self.cache.bytes_per_token()
        first = first_difference(ids, base.token_ids)
        return {"scheme": scheme, "group_size": group_size, "bytes_per_token": bytes_per_token,
                "memory_vs_model_dtype": bytes_per_token / base.bytes_per_token,
                "memory_vs_bf16": bytes_per_token / base.bf16_bytes_per_token, "perplexity": ppl,
                "perplexity_delta": ppl - base.perplexity, "agreement": first / self.new_tokens,
                "identical_prompts": int(first == self.new_tokens), "first_difference": [first], "token_ids": ids}

    def _baseline_row(self) -> dict:
        base = self.baseline
        return {"scheme": f"{str(self.model.dtype).replace('torch.', '')} (none)", "group_size": None,
                "bytes_per_token": base.bytes_per_token, "memory_vs_model_dtype": 1.0,
                "memory_vs_bf16": base.bytes_per_token / base.bf16_bytes_per_token, "perplexity": base.perplexity,
                "perplexity_delta": 0.0, "agreement": 1.0, "identical_prompts": 1,
                "first_difference": [self.new_tokens], "token_ids": base.token_ids}

    # --- the view ----------------------------------------------------------------------------------------
    def heatmap_figure(self) -> go.Figure:
        return error_heatmaps([self.capture, self.compare_capture], self.layer_slider.value, self.head_buttons.value)

    def absmax_figure(self) -> go.Figure:
        layer, head = self.layer_slider.value, self.head_buttons.value
        return channel_absmax_figure(self.baseline.k[layer, :, head], where=f"Layer {layer}, KV head {head}")

    def _build_view(self, scheme: str, group_size: int, compare: str, layer: int, head: int) -> widgets.VBox:
        cfg = self.config
        self.scheme_menu = widgets.Dropdown(options=list(SCHEMES), value=scheme, description="scheme")
        self.group_buttons = widgets.ToggleButtons(options=self.group_options, value=group_size,
                                                   description="group size", style={"button_width": "48px"})
        self.compare_menu = widgets.Dropdown(options=list(SCHEMES), value=compare, description="compare with",
                                             style={"description_width": "initial"})
        self.measure_button = widgets.Button(description="measure", button_style="primary", icon="play")
        self.measure_button.on_click(lambda _: self._press())
        self.group_help = widgets.HTML().add_class("kvlab-group-note")
        self.layer_slider = widgets.IntSlider(value=layer, min=0, max=cfg.num_layers - 1, description="layer")
        self.head_buttons = widgets.ToggleButtons(options=list(range(cfg.num_kv_heads)), value=head,
                                                  description="KV head", style={"button_width": "36px"})
        self.status = widgets.HTML().add_class("kvlab-quant-status")
        self.message = widgets.HTML().add_class("kvlab-message")
        self.memory_text = widgets.HTML().add_class("kvlab-quant-memory")
        self.memory_view = go.FigureWidget(_placeholder("memory per token"))
        self.error_view = go.FigureWidget(_placeholder("quantization error per token and channel"))
        self.absmax_view = go.FigureWidget(_placeholder("max |K| per channel"))
        self.perplexity_text = widgets.HTML().add_class("kvlab-quant-perplexity")
        self.texts = widgets.HTML().add_class("kvlab-quant-texts")
        self.accuracy_view = go.FigureWidget(_placeholder("measured so far: memory against accuracy"))
        self.scheme_menu.observe(lambda change: self._default_group(change["new"]), names="value")
        for control in (self.scheme_menu, self.group_buttons):
            control.observe(lambda _: self._update_note(), names="value")
        for control in (self.layer_slider, self.head_buttons):
            control.observe(lambda _: self._redraw_layer(), names="value")
        self._update_note()
        self._status("press measure: every number is measured on the real model (a few seconds on a CPU)",
                     colour="inherit")
        return widgets.VBox([
            widgets.HBox([self.scheme_menu, self.group_buttons]), self.group_help,
            widgets.HBox([self.compare_menu, self.measure_button]), self.status, self.message,
            self.memory_text, self.memory_view, self.perplexity_text, self.texts,
            widgets.HBox([self.layer_slider, self.head_buttons]), self.error_view, self.absmax_view,
            self.accuracy_view,
        ]).add_class("kvlab-quant-lab")

    def _default_group(self, scheme: str) -> None:
        """A new scheme starts at its usual group: the whole head for int8 / fp8, 32 channels for int4 / kivi2."""
        self.group_buttons.value = make_scheme(scheme, self.config.head_dim).group_size

    def _update_note(self) -> None:
        self.group_help.value = html.escape(group_note(self.scheme_menu.value, self.group_buttons.value,
                                                       self.config.head_dim, self.block_size))

    def _redraw_layer(self) -> None:
        if self.capture is not None and not self._hold_redraw:
            _show(self.error_view, self.heatmap_figure())
            _show(self.absmax_view, self.absmax_figure())

    def _refresh(self) -> None:
        row, base, cfg = self.result, self.baseline, self.config
        kivi = (" (+ the newest, partly filled block of each sequence in full precision)"
                if self.cache.scheme.keeps_recent else "")
        self.memory_text.value = (
            f"<b>{html.escape(scheme_label(row['scheme'], row['group_size']))}: {row['bytes_per_token']:,} bytes "
            f"per token</b> (K + V, {cfg.num_layers} layers, codes and scales){kivi} = "
            f"{row['memory_vs_model_dtype']:.2f}× {str(self.model.dtype).replace('torch.', '')} "
            f"({base.bytes_per_token:,}), {row['memory_vs_bf16']:.2f}× bf16 ({base.bf16_bytes_per_token:,}); "
            f"a 32k-token context: {format_bytes(row['bytes_per_token'] * 32768)} instead of "
            f"{format_bytes(base.bf16_bytes_per_token * 32768)} in bf16")
        _show(self.memory_view, memory_figure([self._baseline_row(), row]))
        self.perplexity_text.value = (
            f"Perplexity on {self._corpus()}: <b>{base.perplexity:.3f}</b> full precision → "
            f"<b>{row['perplexity']:.3f}</b> {html.escape(scheme_label(row['scheme'], row['group_size']))} "
            f"(<b>{row['perplexity_delta']:+.3f}</b>)")
        self.texts.value = self._texts_html()
        self._redraw_layer()
        _show(self.accuracy_view, accuracy_figure(list(self.history.values()), corpus=self._corpus()))

    def _texts_html(self) -> str:
        """The prompt's two greedy continuations side by side; from the first differing token on, highlighted."""
        row, full = self.result, self.baseline.token_ids
        mine, first = row["token_ids"], row["first_difference"][0]
        verdict = (f"identical for all {self.new_tokens} tokens" if first == self.new_tokens else
                   f"identical for the first {first} of {self.new_tokens} tokens, then they differ (highlighted)")
        decode = self.tokenizer.decode

        def column(ids: list[int]) -> str:
            same, differ = html.escape(decode(ids[:first])), html.escape(decode(ids[first:]))
            marked = f"<span class='kvlab-diff' style='background:{DIFF_COLOUR}'>{differ}</span>" if differ else ""
            return f"<td style='vertical-align:top;white-space:pre-wrap;width:50%'>{same}{marked}</td>"

        prompt = html.escape(decode(self.prompt_ids))
        label = html.escape(scheme_label(row["scheme"], row["group_size"]))
        return (f"<b>Greedy continuations</b> of <i>{prompt}</i>: {verdict}"
                f"<table class='kvlab-quant-texts' style='width:100%'><tr><th>full precision</th><th>{label}</th></tr>"
                f"<tr>{column(full)}{column(mine)}</tr></table>")

    def _status(self, text: str, colour: str = RUNNING_COLOUR) -> None:
        self.status.value = f"<span style='color:{colour}'>{html.escape(text)}</span>"

    def _press(self) -> None:
        """The measure button: the outcome in the status line; a refused choice as a red message."""
        self.message.value = ""
        try:
            self.measure()
        except ValueError as error:
            self.message.value = f"<span style='color:{ERROR_COLOUR}'>{html.escape(str(error))}</span>"
            self._status("not measured", colour="inherit")

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)


def _placeholder(title: str) -> go.Figure:
    return go.Figure(layout=dict(template="plotly_white", height=120, title=f"{title}: press measure"))


def _show(view: go.FigureWidget, fresh: go.Figure) -> None:
    """Show `fresh` in the live widget: traces updated in place when they have the same kinds, else replaced."""
    if [t.type for t in view.data] != [t.type for t in fresh.data]:
        view.data = ()
        view.add_traces(list(fresh.data))
    else:
        with view.batch_update():
            for shown, trace in zip(view.data, fresh.data):
                trace = trace.to_plotly_json()
                trace.pop("type")
                shown.update(trace, overwrite=True)
    view.layout = fresh.layout


def quantization_lab(model, tokenizer, prompt: str = DEFAULT_PROMPT, scheme: str = "int4", group_size: int = 32,
                     compare: str = "kivi2", measure: bool = True, **options) -> QuantizationLab:
    """A QuantizationLab, measured once with its first choices (measure=False: wait for the button)."""
    lab = QuantizationLab(model, tokenizer, prompt, scheme, group_size, compare, **options)
    if measure:
        lab.measure()
    return lab
