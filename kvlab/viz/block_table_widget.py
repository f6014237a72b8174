"""A live block-table lab: add requests, decode, finish and fork on a real PagedCache, and watch its pool.

The lab drives kvlab.cache.PagedCache through its public contract (add_sequence, begin_step/end_step,
free_sequence, fork) and draws only what the cache exposes, with the figures of paged_figures. Two modes:
* bookkeeping (no model): a request is a prompt length; steps allocate blocks and count tokens, no K/V is written;
* model (model + tokenizer): a request is prompt text, prefilled and decoded greedily by the real model.
A request keeps its token ids; the last one is the next token, cached by the step that feeds it (as in
kvlab.generate). In bookkeeping mode the ids are placeholders: only their count matters.

PrefixCacheLab (prefix_cache_widget.py) is the same lab over a PrefixCachedPagedCache (`block_table_lab(layout="prefix")`).
"""
from __future__ import annotations

import functools
import html
from dataclasses import dataclass

import ipywidgets as widgets
import plotly.graph_objects as go
import torch

from ..cache import PagedCache, PoolExhausted
from ..engine.generate import forward_step, prepare_prompts
from .paged_figures import block_fills, pool_figure, sequence_colour

ERROR_COLOUR = "#c0392b"
SHARED_CELL_COLOUR = "#d6eaf8"
BUTTONS = ("Add request", "Decode", "Finish", "Fork", "Reset")


@dataclass
class Request:
    token_ids: list[int]  # prompt + generated; the last one is not cached until the next step feeds it
    prompt_len: int
    max_new_tokens: int | None  # None: until the pool or the model's context runs out (or EOS, model mode)
    cached_tokens: int = 0  # prompt tokens the cache already held when the request came (a prefix hit)
    label: str = ""  # the request as it was written

    @property
    def new_tokens(self) -> list[int]:
        return self.token_ids[self.prompt_len:]


def _cached_note(request: Request) -> str:
    if not request.cached_tokens:
        return ""
    return f", {request.cached_tokens} of {request.prompt_len} prompt tokens from the cache"


def _positive_int(value, what: str) -> int:
    text = str(value).strip()
    if isinstance(value, bool) or not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    return int(text)


def _redraws(method):
    """A public action refreshes the view afterwards, whether it succeeded or not."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        finally:
            self._refresh()
    return wrapper


def _redraw(view: go.FigureWidget, fresh: go.Figure) -> None:
    """Show `fresh` (the same traces as `view`, in order) in the live widget: traces and changing layout replaced."""
    assert [t.type for t in view.data] == [t.type for t in fresh.data], "a redraw keeps the figure's traces"
    with view.batch_update():
        for shown, trace in zip(view.data, fresh.data):
            trace = trace.to_plotly_json()
            trace.pop("type")
            shown.update(trace, overwrite=True)
        view.layout.update(title=fresh.layout.title, height=fresh.layout.height, shapes=fresh.layout.shapes,
                           annotations=fresh.layout.annotations, xaxis=fresh.layout.xaxis, overwrite=True)


def _block_cell(cache, block: int | None) -> str:
    """One block id of a block table; a block that several sequences hold is shaded and marked ×refs."""
    if block is None:
        return "<td></td>"
    refs = cache.allocator.ref_counts[block]
    if refs < 2:
        return f"<td>{block}</td>"
    return (f"<td class='kvlab-shared' title='shared by {refs} sequences' style='background:{SHARED_CELL_COLOUR};"
            f"font-weight:bold'>{block} ×{refs}</td>")


def block_tables_html(cache) -> str:
    """Each sequence's block table as an HTML table: logical block j → physical block id (shared ones marked)."""
    seq_ids = sorted(cache.block_tables)
    width = max((len(cache.block_tables[s]) for s in seq_ids), default=0)
    head = "".join(f"<th>logical {j}</th>" for j in range(width))
    rows = []
    for s in seq_ids:
        table = cache.block_tables[s]
        cells = "".join(_block_cell(cache, table[j] if j < len(table) else None) for j in range(width))
        rows.append(f'<tr><td style="background:{sequence_colour(s)};color:white">seq {s}</td>'
                    f"<td>{cache.lengths.get(s, 0)}</td><td>{len(table)}</td>{cells}</tr>")
    return (f"<b>Block tables</b> (physical block ids; token t sits in slot table[t // {cache.block_size}] × "
            f"{cache.block_size} + t % {cache.block_size})<table class='kvlab-block-tables'><tr><th>sequence</th>"
            f"<th>tokens</th><th>blocks</th>{head}</tr>{''.join(rows)}</table>")


class BlockTableLab:
    """Buttons over a real PagedCache; `add_request`, `decode`, `finish`, `fork`, `reset` are the same actions
    in Python (they raise ValueError / PoolExhausted, the buttons show those as a message)."""

    cache_class = PagedCache
    request_hint = "prompt length, e.g. 12"  # the request box's placeholder in bookkeeping mode
    finished_note = "its blocks are back in the pool"

    def __init__(self, config=None, num_blocks: int = 32, block_size: int = 8, model=None, tokenizer=None,
                 device=None, dtype: torch.dtype | None = None, columns: int = 16):
        if (model is None) != (tokenizer is None):
            raise ValueError("model mode needs both a model and a tokenizer (neither: bookkeeping mode)")
        self.config = config if config is not None else model.config
        self.model, self.tokenizer = model, tokenizer
        self.device = torch.device(device or (model.device if model is not None else "cpu"))
        self.dtype = dtype or (model.dtype if model is not None else torch.float32)
        self.num_blocks, self.block_size, self.columns = num_blocks, block_size, columns
        self._new_cache()
        self.widget = self._build_view()
        self._refresh()

    # --- the actions --------------------------------------------------------------------------------
    @property
    def running(self) -> list[int]:
        return sorted(self.cache.lengths)

    @_redraws
    def add_request(self, prompt, max_new_tokens: int | None = None) -> int:
        """Prefill a request (a length, or text in model mode); returns its sequence id. On PoolExhausted the
        cache is as it was. max_new_tokens None or 0: no limit."""
        token_ids = self._parse(prompt)
        limit = _positive_int(max_new_tokens, "max new tokens") if max_new_tokens else None
        seq_id = self._next_id
        max_tokens = min(len(token_ids) + (limit or 0), self.config.context_len)
        try:
            cached = self._admit(seq_id, max_tokens, token_ids)  # ValueError: it could never fit the pool
            self.requests[seq_id] = Request(token_ids, len(token_ids), limit, cached, str(prompt))
            self._step([seq_id])
        except BaseException as error:
            if seq_id in self.cache.lengths:
                self.cache.free_sequence(seq_id)  # gives back any block a failed step took
            self.requests.pop(seq_id, None)
            if isinstance(error, PoolExhausted):
                error.add_note(f"(the request of {len(token_ids)} prompt tokens was not added)")
            raise
        self._next_id += 1
        self._finish_done()
        return seq_id

    @_redraws
    def decode(self, steps: int = 1) -> list[int]:
        """Up to `steps` steps of one token for every running sequence; returns the ids that finished."""
        steps = _positive_int(steps, "decode steps")
        if not self.running:
            raise ValueError("nothing is running: add a request first")
        finished = []
        for index in range(steps):
            running = self.running
            if not running:
                break
            try:
                self._step(running)
            except PoolExhausted as error:
                error.add_note(f"at decode step {index + 1} of {steps}, {self._who_needs_a_block(running)}")
                raise
            finished += self._finish_done()
        return finished

    @_redraws
    def finish(self, seq_id: int | None) -> None:
        """Free a running sequence: its blocks return to the pool (shared ones when their last owner goes)."""
        self._check_running(seq_id, "finish")
        self.cache.free_sequence(seq_id)

    @_redraws
    def fork(self, seq_id: int | None) -> int:
        """A new sequence continuing `seq_id`: full blocks shared, the partly filled last one copied (prefix
        layout: shared too, until one of them writes into it)."""
        self._check_running(seq_id, "fork")
        child = self._next_id
        self.cache.fork(seq_id, child)  # PoolExhausted (no block for the copy) changes nothing
        parent = self.requests[seq_id]
        self.requests[child] = Request(list(parent.token_ids), parent.prompt_len, parent.max_new_tokens,
                                       label=f"fork of seq {seq_id}")
        self._next_id += 1
        return child

    @_redraws
    def reset(self) -> None:
        """A fresh, empty PagedCache with the same settings."""
        self._new_cache()

    # --- mechanics -----------------------------------------------------------------------------------
    def _new_cache(self) -> None:
        self.cache = self.cache_class(self.config, self.device, self.dtype, num_blocks=self.num_blocks,
                                      block_size=self.block_size, backend="torch")
        self.requests: dict[int, Request] = {}
        self._next_id = 0

    def _admit(self, seq_id: int, max_tokens: int, token_ids: list[int]) -> int:
        """Start the sequence in the cache; returns how many of its prompt tokens the cache already holds."""
        return self.cache.add_sequence(seq_id, max_tokens, token_ids)

    def _parse(self, prompt) -> list[int]:
        """A prompt length → placeholder ids (bookkeeping mode); prompt text → its token ids (model mode)."""
        if self.model is None:
            length = _positive_int(prompt, "prompt length")
            if length > self.config.context_len:
                raise ValueError(f"prompt length {length} is longer than the context of {self.config.context_len}")
            return [0] * length
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"the prompt text is empty: {prompt!r}")
        return prepare_prompts(self.tokenizer, prompt, False, self.config.context_len, self.config.vocab_size)[0]

    def _step(self, seq_ids: list[int]) -> None:
        """One step through the real cache: each sequence feeds its uncached tokens (the prompt, then one)."""
        tokens = {s: self.requests[s].token_ids for s in seq_ids}
        if self.model is None:
            new_ids = [tokens[s][self.cache.num_cached(s):] for s in seq_ids]
            self.cache.begin_step(seq_ids, [len(ids) for ids in new_ids], new_ids)
            self.cache.end_step()
            next_ids = [0] * len(seq_ids)
        else:
            logits, _, _ = forward_step(self.model, self.cache, tokens, seq_ids)  # [B, vocab]
            next_ids = logits.argmax(dim=-1).tolist()  # greedy
        for seq_id, token in zip(seq_ids, next_ids):
            tokens[seq_id].append(token)

    def _finish_done(self) -> list[int]:
        """Free the sequences that reached their limit, the model's context, or EOS (model mode)."""
        done = [s for s in self.running if self._is_done(self.requests[s])]
        for seq_id in done:
            self.cache.free_sequence(seq_id)
        return done

    def _is_done(self, request: Request) -> bool:
        at_limit = request.max_new_tokens is not None and len(request.new_tokens) >= request.max_new_tokens
        at_eos = self.tokenizer is not None and request.token_ids[-1] == self.tokenizer.eos_token_id
        return at_limit or at_eos or len(request.token_ids) >= self.config.context_len

    def _who_needs_a_block(self, running: list[int]) -> str:
        """Which sequences a decode step must give a block: those crossing into a new one, and those about to
        write into a partly filled block that others hold too (copy-on-write, prefix layout)."""
        crossing = [s for s in running if self.cache.num_cached(s) % self.block_size == 0]
        ref_counts = self.cache.allocator.ref_counts
        copying = [s for s in running if s not in crossing and ref_counts[self.cache.block_tables[s][-1]] > 1]
        parts = [f"seq {', '.join(map(str, crossing))} cross into a new block"] if crossing else []
        if copying:
            parts.append(f"seq {', '.join(map(str, copying))} write into a shared block (copy-on-write)")
        return " and ".join(parts)

    def _fork_message(self, child: int) -> str:
        return f"new seq {child} shares its full blocks"

    def _check_running(self, seq_id, action: str) -> None:
        if not self.running:
            raise ValueError(f"nothing is running: there is no sequence to {action}")
        if seq_id not in self.cache.lengths:
            raise ValueError(f"sequence {seq_id!r} is not running (running: {', '.join(map(str, self.running))})")

    # --- the view ------------------------------------------------------------------------------------
    def figure(self) -> go.Figure:
        """The pool as a plain figure (for an executed notebook without a widget front end)."""
        return pool_figure(self.cache, self.columns)

    def status_text(self) -> str:
        shared = sum(1 for refs in self.cache.allocator.ref_counts if refs > 1)
        return " · ".join(self._status_parts() + ([f"{shared} shared blocks"] if shared else []))

    def _status_parts(self) -> list[str]:
        allocator = self.cache.allocator
        waste = sum(self.block_size - fill for _, fill in block_fills(self.cache).values())
        return [f"{allocator.num_used} of {allocator.num_blocks} blocks used", f"{len(self.running)} sequences",
                f"{sum(self.cache.lengths.values())} tokens", f"internal waste {waste} slots"]

    def _build_view(self) -> widgets.VBox:
        self.request_box = widgets.Text(description="request",
                                        placeholder="prompt text" if self.model else self.request_hint)
        self.max_new_box = widgets.IntText(value=0, description="max new")  # 0: no limit
        self.steps_box = widgets.IntText(value=1, description="N")
        self.sequence_menu = widgets.Dropdown(description="sequence", options=[])
        self.buttons = {name: widgets.Button(description=name) for name in BUTTONS}
        for name, button in self.buttons.items():
            button.on_click(lambda _, name=name: self._press(name))
        self.message = widgets.HTML().add_class("kvlab-message")
        self.status = widgets.HTML().add_class("kvlab-pool-status")
        self.texts = widgets.HTML()
        self.pool_view = go.FigureWidget(self.figure())
        self.tables_view = widgets.HTML(block_tables_html(self.cache))  # HTML: a plotly Table's first render drops text
        b = self.buttons
        rows = [widgets.HBox([self.request_box, self.max_new_box, b["Add request"]]),
                widgets.HBox([self.steps_box, b["Decode"], self.sequence_menu, b["Finish"], b["Fork"], b["Reset"]])]
        return widgets.VBox(rows + [self.message, self.status, self.pool_view, self.tables_view, self.texts]
                            ).add_class("kvlab-block-table")

    def _refresh(self) -> None:
        _redraw(self.pool_view, self.figure())
        self.tables_view.value = block_tables_html(self.cache)
        self.status.value = f"<b>{html.escape(self.status_text())}</b>"
        selected, running = self.sequence_menu.value, self.running
        self.sequence_menu.options = [(f"seq {s} · {self.cache.lengths[s]} tokens", s) for s in running]
        self.sequence_menu.value = selected if selected in running else (running[0] if running else None)
        self.texts.value = self._texts_html()

    def _texts_html(self) -> str:
        if self.tokenizer is None:
            return ""
        rows = []
        for seq_id, request in sorted(self.requests.items()):
            state = "running" if seq_id in self.cache.lengths else "finished"
            prompt = html.escape(self.tokenizer.decode(request.token_ids[:request.prompt_len]))
            new = html.escape(self.tokenizer.decode(request.new_tokens))
            rows.append(f"<li><span style='color:{sequence_colour(seq_id)}'>■</span> seq {seq_id} ({state}"
                        f"{_cached_note(request)}): {prompt}<b>{new}</b></li>")
        return "<ul>" + "".join(rows) + "</ul>"

    def _say(self, text: str, colour: str = "inherit") -> None:
        self.message.value = f"<span style='color:{colour}'>{html.escape(text, quote=False)}</span>"

    def _press(self, name: str) -> None:
        """A button press: the action's outcome in the message area; a refused action as a red message."""
        text, steps, seq_id = self.request_box.value, self.steps_box.value, self.sequence_menu.value
        context, action = {
            "Add request": (f"request {text!r}",
                            lambda: f"added as seq {self.add_request(text, self.max_new_box.value)}"),
            "Decode": (f"decode {steps}", lambda: f"done; finished: {self.decode(steps) or 'none'}"),
            "Finish": (f"finish seq {seq_id}", lambda: self.finish(seq_id) or self.finished_note),
            "Fork": (f"fork seq {seq_id}", lambda: self._fork_message(self.fork(seq_id))),
            "Reset": ("reset", lambda: self.reset() or "a fresh, empty pool"),
        }[name]
        try:
            self._say(f"{context}: {action()}")
        except (ValueError, PoolExhausted) as error:
            self._say(" ".join([f"{context}: {error}"] + getattr(error, "__notes__", [])), ERROR_COLOUR)

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)


def block_table_lab(config=None, num_blocks: int = 32, block_size: int = 8, model=None, tokenizer=None,
                    initial_requests=(), layout: str = "paged", **options) -> BlockTableLab:
    """A BlockTableLab (layout="paged") or PrefixCacheLab (layout="prefix"), pre-populated with
    `initial_requests`: prompts (lengths, text in model mode, "name:shared+own" in a bookkeeping prefix lab)
    or (prompt, max_new_tokens) pairs."""
    from .prefix_cache_widget import PrefixCacheLab

    labs = {"paged": BlockTableLab, "prefix": PrefixCacheLab}
    if layout not in labs:
        raise ValueError(f"unknown lab layout {layout!r}; choose one of {', '.join(labs)}")
    lab = labs[layout](config, num_blocks, block_size, model=model, tokenizer=tokenizer, **options)
    for request in initial_requests:
        prompt, max_new_tokens = request if isinstance(request, tuple) else (request, None)
        lab.add_request(prompt, max_new_tokens)
    return lab
