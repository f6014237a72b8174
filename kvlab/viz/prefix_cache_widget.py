"""The block-table lab over a prefix cache: shared prompt blocks, reference counts, LRU eviction, copy-on-write.

PrefixCacheLab is BlockTableLab (block_table_widget.py) driving a PrefixCachedPagedCache instead of a PagedCache
(`block_table_lab(layout="prefix")`): requests that share a prompt prefix share its blocks, and the view adds
the cache's hit rate, sharing and evictions, its event log and its radix tree. It reads only the cache's
public state.
"""
from __future__ import annotations

import html
import re

import ipywidgets as widgets
import plotly.graph_objects as go

from ..cache import PoolExhausted, PrefixCachedPagedCache, blocks_for
from ..memory import format_bytes
from .block_table_widget import ERROR_COLOUR, BlockTableLab, _cached_note, _positive_int, _redraw
from .paged_figures import sequence_colour
from .radix_figures import radix_figure

SHARED_REQUEST = re.compile(r"(?P<name>[A-Za-z_][\w-]*):(?P<shared>\d+)(?:\+(?P<own>\d+))?")
EVENT_COLOURS = {"hit": "#1e8449", "miss": "#7f8c8d", "cached": "#2874a6", "merge": "#2874a6", "fork": "#7d3c98", "cow": "#b9770e",
                 "evict": ERROR_COLOUR}
EVENTS_SHOWN = 12


class PrefixCacheLab(BlockTableLab):
    """The lab over a PrefixCachedPagedCache: a prompt's cached blocks are reused, released blocks stay cached
    (evictable, least recently used first), fork shares every block and copies on write. The view adds the
    hit rate, sharing and evictions to the status line, the cache's event log and its radix tree.

    In bookkeeping mode a request says which prompt tokens it shares with others:
        "12"            12 tokens of its own;
        "system:48"     the first 48 tokens of the prefix named "system" (letters, digits, _ and -);
        "system:48+12"  those 48, then 12 of its own.
    Requests hit each other's blocks only through a name ("system:20+4" reuses the whole blocks of the first 20
    tokens of "system:48"); a request's own tokens match nobody else's.
    """

    cache_class = PrefixCachedPagedCache
    request_hint = "length, or name:shared+own, e.g. system:16+5"
    finished_note = "its full blocks stay cached (evictable) until their space is needed"

    def _new_cache(self) -> None:
        super()._new_cache()
        self.prefix_names: dict[str, int] = {}  # prefix name → its placeholder token id (1, 2, …)
        self._last_event_shown = None

    def _parse(self, prompt) -> list[int]:
        """Bookkeeping placeholder ids: a named prefix's tokens are its number (≥ 1), a request's own tokens
        −(seq id + 1), decoded tokens 0 — so only names make blocks match."""
        if self.model is not None:
            return super()._parse(prompt)
        text = str(prompt).strip()
        shared = SHARED_REQUEST.fullmatch(text)
        if shared is None:
            own_ids = super()._parse(prompt)  # a plain length (the error names the request when it is not one)
            return [-(self._next_id + 1)] * len(own_ids)
        name = shared["name"]
        shared_len = _positive_int(shared["shared"], f"the shared length in {text!r}")
        own_len = _positive_int(shared["own"], f"the own length in {text!r}") if shared["own"] is not None else 0
        if shared_len + own_len > self.config.context_len:
            raise ValueError(f"request {text!r} has {shared_len + own_len} tokens, longer than the context of "
                             f"{self.config.context_len}")
        prefix_id = self.prefix_names.setdefault(name, len(self.prefix_names) + 1)
        return [prefix_id] * shared_len + [-(self._next_id + 1)] * own_len

    def _admit(self, seq_id: int, max_tokens: int, token_ids: list[int]) -> int:
        if blocks_for(max_tokens, self.block_size) <= self.num_blocks:  # otherwise add_sequence says it never fits
            self._check_room(token_ids)
        return super()._admit(seq_id, max_tokens, token_ids)

    def _check_room(self, token_ids: list[int]) -> None:
        """PoolExhausted unless the prefill fits — checked before add_sequence, which would count the hit and
        move reused blocks out of the LRU list before the step could fail."""
        cache, allocator = self.cache, self.cache.allocator
        reused = cache.cached_prefix_blocks(token_ids)  # the cache's own matching rule, without side effects
        taken_back = sum(1 for block in reused if allocator.ref_counts[block] == 0)
        needed = blocks_for(len(token_ids), self.block_size) - len(reused)
        available = allocator.num_available - taken_back
        if needed > available:
            raise PoolExhausted(needed, available, allocator.num_blocks)

    def _fork_message(self, child: int) -> str:
        blocks = len(self.cache.block_tables[child])
        if self.cache.lengths[child] % self.block_size == 0:
            return f"new seq {child} shares all {blocks} blocks (all full: nothing will be copied)"
        return (f"new seq {child} shares all {blocks} blocks, the partly filled last one too: the first of them to "
                f"write into it on the next decode gets its own copy (copy-on-write)")

    def status_text(self) -> str:
        cache, stats = self.cache, self.cache.stats
        return " · ".join(self._status_parts() + [
            f"{cache.allocator.num_evictable} cached without owner",
            f"hit rate {stats.hit_rate:.0%} ({stats.hit_tokens} of {stats.prompt_tokens} prompt tokens)",
            f"{cache.shared_blocks()} shared blocks save {format_bytes(cache.saved_bytes())}",
            f"{stats.evicted_blocks} blocks evicted", f"{stats.cow_copies} CoW copies"])

    def radix_tree_figure(self) -> go.Figure:
        """The radix tree of cached prefixes as a plain figure."""
        return radix_figure(self.cache, self.tokenizer)

    def _build_view(self) -> widgets.VBox:
        view = super()._build_view()
        self.events_view = widgets.HTML().add_class("kvlab-prefix-events")
        self.radix_view = go.FigureWidget(self.radix_tree_figure())
        view.children += (self.events_view, self.radix_view)
        return view

    def _refresh(self) -> None:
        super()._refresh()
        self.events_view.value = self._events_html()
        _redraw(self.radix_view, self.radix_tree_figure())

    def _events_html(self) -> str:
        """The latest cache events, newest first; those since the previous action in bold."""
        events = list(self.cache.events)
        seen = next((i for i in reversed(range(len(events))) if events[i] is self._last_event_shown), -1)
        self._last_event_shown = events[-1] if events else None
        rows = []
        for age, event in enumerate(reversed(events[-EVENTS_SHOWN:])):
            weight = "bold" if len(events) - 1 - age > seen else "normal"
            rows.append(f"<li style='font-weight:{weight}'><span style='background:{EVENT_COLOURS[event.kind]};"
                        f"color:white;padding:0 4px'>{event.kind}</span> {html.escape(event.text)}</li>")
        body = f"<ul style='list-style:none;padding-left:0'>{''.join(rows)}</ul>" if rows else " none yet"
        return f"<b>Prefix cache events</b> (newest first; bold: from the last action){body}"

    def _texts_html(self) -> str:
        if self.tokenizer is not None:
            return super()._texts_html()
        rows = []
        for seq_id, request in sorted(self.requests.items()):
            state = "running" if seq_id in self.cache.lengths else "finished"
            rows.append(f"<li><span style='color:{sequence_colour(seq_id)}'>■</span> seq {seq_id} ({state}"
                        f"{_cached_note(request)}): {html.escape(request.label)}</li>")
        return "<ul>" + "".join(rows) + "</ul>"
