"""The block-table lab's buttons drive a real PagedCache (or PrefixCachedPagedCache), its view redraws from the
cache, bad input is a message."""
from __future__ import annotations

import html
import re

import pytest

import kvlab
from kvlab.cache import PoolExhausted, PrefixCachedPagedCache
from kvlab.memory import format_bytes
from kvlab.model.config import LlamaConfig
from kvlab.viz.block_table_widget import BUTTONS, ERROR_COLOUR, BlockTableLab, block_table_lab
from kvlab.viz.prefix_cache_widget import PrefixCacheLab
from kvlab.viz.paged_figures import pool_figure

TINY = LlamaConfig(name="tiny", num_layers=2, hidden_size=64, ffn_size=128, num_heads=4, num_kv_heads=2, head_dim=16,
                   vocab_size=100, context_len=512, rope_base=10000.0, rms_eps=1e-5, tied_embeddings=True,
                   bos_token_id=1, eos_token_id=2)
BS = 4


def state(cache):
    a = cache.allocator
    return (list(a.free_block_ids), list(a.ref_counts), {s: list(t) for s, t in cache.block_tables.items()},
            dict(cache.lengths))


def press(lab: BlockTableLab, button: str, **values) -> None:
    """Fill the named boxes (request_box="12", steps_box=3, sequence_menu=0), then click the button."""
    for name, value in values.items():
        getattr(lab, name).value = value
    lab.buttons[button].click()


def drawn(lab: BlockTableLab):
    """What the live pool widget shows: cell texts, title, outlined (shared) blocks."""
    return [list(row) for row in lab.pool_view.data[0].text], lab.pool_view.layout.title.text, len(lab.pool_view.layout.shapes)


@pytest.fixture
def lab():
    return BlockTableLab(TINY, num_blocks=16, block_size=BS)


def test_widget_has_the_named_buttons_and_css_classes(lab):
    assert [b.description for b in lab.buttons.values()] == ["Add request", "Decode", "Finish", "Fork", "Reset"]
    assert list(BUTTONS) == list(lab.buttons)
    assert "kvlab-block-table" in lab.widget._dom_classes
    assert "kvlab-pool-status" in lab.status._dom_classes and "kvlab-message" in lab.message._dom_classes
    assert lab.request_box.description == "request"


def test_add_button_prefills_ceil_length_over_block_size_blocks_and_redraws(lab):
    before = drawn(lab)
    press(lab, "Add request", request_box="10")
    assert lab.cache.lengths == {0: 10} and len(lab.cache.block_tables[0]) == 3  # ceil(10 / 4)
    assert lab.cache.allocator.num_used == 3
    after = drawn(lab)
    assert after != before and "3 of 16 blocks in use" in after[1]
    assert after[0][0][2] == "#2<br>2/4" and after[0][0][3] == "#3<br>free"
    assert "3 of 16 blocks used" in lab.status.value and "internal waste 2 slots" in lab.status.value
    assert "added as seq 0" in lab.message.value


def test_decode_adds_n_tokens_and_a_block_only_on_crossing_a_boundary(lab):
    press(lab, "Add request", request_box="3")
    press(lab, "Add request", request_box="8")
    press(lab, "Decode", steps_box=1)
    assert lab.cache.lengths == {0: 4, 1: 9}
    assert [len(lab.cache.block_tables[s]) for s in (0, 1)] == [1, 3]  # 3 → 4 stays in block 1; 8 → 9 crosses
    before = drawn(lab)
    press(lab, "Decode", steps_box=5)
    assert lab.cache.lengths == {0: 9, 1: 14}
    assert [len(lab.cache.block_tables[s]) for s in (0, 1)] == [3, 4]
    assert drawn(lab) != before
    assert "<td>9</td>" in lab.tables_view.value and "<td>14</td>" in lab.tables_view.value  # the tables follow too


def test_finish_returns_the_sequences_blocks(lab):
    press(lab, "Add request", request_box="9")
    press(lab, "Add request", request_box="5")
    assert lab.sequence_menu.value == 0  # the menu offers a running sequence without being touched
    press(lab, "Finish")
    assert lab.running == [1] and lab.cache.allocator.num_used == 2
    assert [value for _, value in lab.sequence_menu.options] == [1] and lab.sequence_menu.value == 1
    assert drawn(lab)[0][0][:3] == ["#0<br>free", "#1<br>free", "#2<br>free"]


def test_fork_shares_full_blocks_with_reference_count_two_and_outlines_them(lab):
    press(lab, "Add request", request_box="10")
    press(lab, "Fork", sequence_menu=0)
    parent, child = lab.cache.block_tables[0], lab.cache.block_tables[1]
    assert child[:2] == parent[:2] and child[2] != parent[2]  # the partly filled block is copied
    assert [lab.cache.allocator.ref_counts[b] for b in parent] == [2, 2, 1]
    texts, title, outlined = drawn(lab)
    assert outlined == 2 and "2 shared" in title and texts[0][0] == "#0<br>4/4 ×2"
    assert lab.tables_view.value.count("kvlab-shared") == 4 and "1 ×2</td>" in lab.tables_view.value  # 2 rows × 2
    press(lab, "Decode", steps_box=1)
    assert lab.cache.lengths == {0: 11, 1: 11} and lab.requests[1].prompt_len == 10


def test_reset_gives_an_empty_pool(lab):
    press(lab, "Add request", request_box="20")
    press(lab, "Reset")
    assert lab.cache.allocator.num_free == 16 and not lab.cache.lengths and not lab.requests
    assert "0 of 16 blocks in use" in drawn(lab)[1] and drawn(lab)[2] == 0
    press(lab, "Add request", request_box="2")
    assert lab.running == [0]


def test_requests_finish_by_themselves_at_their_output_length(lab):
    press(lab, "Add request", request_box="5", max_new_box=3)  # prefill gives token 1, two decode steps 2 and 3
    press(lab, "Add request", request_box="5", max_new_box=0)  # no limit
    assert lab.decode(4) == [0]
    assert lab.running == [1] and lab.cache.lengths[1] == 9 and len(lab.requests[0].new_tokens) == 3


@pytest.mark.parametrize("bad", ["abc", "0", "-3", "2.5", ""])
def test_a_bad_prompt_length_is_a_message_and_changes_nothing(lab, bad):
    press(lab, "Add request", request_box="6")
    before = state(lab.cache)
    press(lab, "Add request", request_box=bad)
    assert f"'{bad}'" in lab.message.value and "#c0392b" in lab.message.value
    assert "Traceback" not in lab.message.value
    assert state(lab.cache) == before


def test_a_request_that_can_never_fit_the_pool_is_refused(lab):
    press(lab, "Add request", request_box="65")  # 17 blocks of 4 > 16
    assert "65" in lab.message.value and "17 blocks" in lab.message.value
    assert state(lab.cache) == ([*range(16)], [0] * 16, {}, {})


def test_pool_exhausted_on_add_names_the_request_and_the_blocks(lab):
    press(lab, "Add request", request_box="60")  # 15 blocks
    before = state(lab.cache)
    press(lab, "Add request", request_box="8")
    assert "'8'" in lab.message.value and "need 2 blocks, 1 of 16 are free" in lab.message.value
    assert state(lab.cache) == before and lab.running == [0]


def test_pool_exhausted_on_decode_names_the_sequences_and_changes_nothing():
    lab = BlockTableLab(TINY, num_blocks=2, block_size=BS)
    press(lab, "Add request", request_box="4")
    press(lab, "Add request", request_box="4")
    before = state(lab.cache)
    press(lab, "Decode", steps_box=1)
    assert "need 2 blocks, 0 of 2 are free" in lab.message.value and "seq 0, 1" in lab.message.value
    assert state(lab.cache) == before
    with pytest.raises(PoolExhausted):
        lab.decode(1)
    assert state(lab.cache) == before


def test_finish_decode_and_fork_with_nothing_running_are_messages(lab):
    for button in ("Finish", "Fork", "Decode"):
        press(lab, button)
        assert "nothing is running" in lab.message.value


def test_python_api_raises_value_error_naming_the_bad_value(lab):
    with pytest.raises(ValueError, match="'abc'"):
        lab.add_request("abc")
    lab.add_request(4)
    with pytest.raises(ValueError, match="0"):
        lab.decode(0)
    with pytest.raises(ValueError, match="sequence 7"):
        lab.finish(7)
    with pytest.raises(ValueError, match="max new tokens"):
        lab.add_request(4, -1)


def test_headless_figure_and_live_widget_equal_pool_figure_of_the_same_cache():
    lab = block_table_lab(TINY, num_blocks=32, block_size=8, initial_requests=[12, 30, 7])
    lab.fork(1)
    expected = pool_figure(lab.cache)
    assert lab.figure().to_dict() == expected.to_dict()
    shown = lab.pool_view.data[0].to_plotly_json()
    shown.pop("uid")  # the live widget's trace id
    assert shown == expected.data[0].to_plotly_json()
    assert lab.pool_view.layout.title.text == expected.layout.title.text
    assert len(lab.pool_view.layout.shapes) == len(expected.layout.shapes) == 3


def test_factory_prepopulates_the_initial_requests():
    lab = block_table_lab(TINY, initial_requests=[12, 30, 7])
    assert lab.cache.lengths == {0: 12, 1: 30, 2: 7}
    assert [len(lab.cache.block_tables[s]) for s in range(3)] == [2, 4, 1]
    assert "7 of 32 blocks used" in lab.status.value and "49 tokens" in lab.status.value
    assert "internal waste 7 slots" in lab.status.value


def test_model_mode_prefills_and_decodes_the_same_tokens_as_generate(model, tokenizer):
    prompt = "The capital of France is"
    lab = BlockTableLab(model.config, num_blocks=16, block_size=8, model=model, tokenizer=tokenizer)
    press(lab, "Add request", request_box=prompt)
    after_prefill = list(lab.requests[0].token_ids)
    press(lab, "Decode", steps_box=2)
    request = lab.requests[0]
    assert request.token_ids[:len(after_prefill)] == after_prefill and len(request.token_ids) == len(after_prefill) + 2
    expected = kvlab.generate(model, tokenizer, prompt, max_new_tokens=3, cache="paged")
    assert request.new_tokens == expected.token_ids[0]
    assert lab.cache.lengths[0] == request.prompt_len + 2
    assert tokenizer.decode(request.new_tokens) in lab.texts.value.replace("&#x27;", "'")
    press(lab, "Add request", request_box="   ")
    assert "empty" in lab.message.value and lab.running == [0]


# --- prefix layout ---------------------------------------------------------------------------------------------
def prefix_state(cache):
    """Everything a refused action must leave alone in a prefix cache, the LRU order and the statistics included."""
    return (state(cache), cache.allocator.lru_order(), {b: e.hits for b, e in cache.index.by_block.items()},
            cache.stats, len(cache.events))


def events_shown(lab) -> list[str]:
    """The kinds in the event panel, newest first."""
    return re.findall(r"padding:0 4px'>(\w+)</span>", lab.events_view.value)


@pytest.fixture
def prefix_lab():
    return block_table_lab(TINY, num_blocks=16, block_size=BS, layout="prefix")


def test_prefix_lab_has_the_paged_controls_plus_an_event_log_and_a_radix_view(prefix_lab):
    assert isinstance(prefix_lab, PrefixCacheLab) and isinstance(prefix_lab.cache, PrefixCachedPagedCache)
    assert list(prefix_lab.buttons) == list(BUTTONS) and "kvlab-block-table" in prefix_lab.widget._dom_classes
    assert "kvlab-prefix-events" in prefix_lab.events_view._dom_classes
    assert prefix_lab.events_view in prefix_lab.widget.children and prefix_lab.radix_view in prefix_lab.widget.children
    assert "empty" in prefix_lab.radix_view.layout.annotations[0].text
    with pytest.raises(ValueError, match="'radix'"):
        block_table_lab(TINY, layout="radix")


def test_a_second_request_with_the_same_named_prefix_reuses_its_blocks(prefix_lab):
    press(prefix_lab, "Add request", request_box="system:8+4")
    press(prefix_lab, "Add request", request_box="system:8+5")
    cache = prefix_lab.cache
    assert prefix_lab.requests[1].cached_tokens == 8 and cache.stats.hit_tokens == 8
    table_0, table_1 = cache.block_tables[0], cache.block_tables[1]
    assert table_1[:2] == table_0[:2] and table_1[2] != table_0[2]
    assert [cache.allocator.ref_counts[b] for b in table_0[:2]] == [2, 2]
    saved = format_bytes(2 * cache.block_bytes())
    assert f"2 shared blocks save {saved}" in prefix_lab.status.value
    assert "hit rate 32% (8 of 25 prompt tokens)" in prefix_lab.status.value
    assert events_shown(prefix_lab) == ["cached", "hit", "cached", "miss"]  # newest first
    assert "seq 1: 8 of 13 prompt tokens cached" in prefix_lab.events_view.value
    assert f"<td class='kvlab-shared' title='shared by 2 sequences' style='background:#d6eaf8;font-weight:bold'>" \
           f"{table_0[0]} ×2</td>" in prefix_lab.tables_view.value
    assert "8 of 13 prompt tokens from the cache" in prefix_lab.texts.value
    shared_node = prefix_lab.radix_view.data[1].text[0]
    assert shared_node.startswith(f"#{table_0[0]}→{table_0[1]} · 8 tok")
    assert "in use ×2" in shared_node and len(prefix_lab.radix_view.data[1].text) == 3  # shared node, 2 children


def test_a_shorter_request_of_a_named_prefix_reuses_its_whole_blocks(prefix_lab):
    prefix_lab.add_request("system:16")
    assert prefix_lab.add_request("system:9+3") == 1
    assert prefix_lab.requests[1].cached_tokens == 8  # tokens 0–7 of "system"; token 8 shares a block with own tokens


def test_placeholder_ids_never_let_unrelated_requests_hit(prefix_lab):
    for request in ("8", "8", "a:8", "b:8", "a:3+5"):  # "a:3" is no whole block of "a"
        prefix_lab.add_request(request)
    assert prefix_lab.cache.stats.hit_tokens == 0 and "hit" not in events_shown(prefix_lab)
    assert prefix_lab.cache.shared_blocks() == 0


def test_fork_shares_every_block_and_the_next_decode_copies_on_write(prefix_lab):
    press(prefix_lab, "Add request", request_box="system:6")
    press(prefix_lab, "Fork", sequence_menu=0)
    cache = prefix_lab.cache
    assert "shares all 2 blocks" in prefix_lab.message.value and "copy-on-write" in prefix_lab.message.value
    assert cache.block_tables[1] == cache.block_tables[0] and cache.shared_blocks() == 2
    assert drawn(prefix_lab)[0][0][1] == "#1<br>2/4 ×2"  # the partly filled block is shared too
    press(prefix_lab, "Decode", steps_box=1)
    assert cache.stats.cow_copies == 1 and cache.block_tables[1][-1] != cache.block_tables[0][-1]
    assert events_shown(prefix_lab)[0] == "cow" and "1 CoW copies" in prefix_lab.status.value
    assert "font-weight:bold'><span style='background:#b9770e" in prefix_lab.events_view.value  # new: bold
    assert cache.lengths == {0: 7, 1: 7}


def test_filling_the_pool_evicts_the_least_recently_used_cached_block():
    lab = block_table_lab(TINY, num_blocks=4, block_size=BS, layout="prefix")
    press(lab, "Add request", request_box="a:8", max_new_box=1)  # prefill, one token, done: its blocks stay cached
    assert lab.running == [] and "LRU 0" in drawn(lab)[0][0][1] and "LRU 1" in drawn(lab)[0][0][0]
    assert "2 cached without owner" in lab.status.value
    assert "evicted next" in lab.radix_view.data[1].text[0]
    press(lab, "Add request", request_box="12", max_new_box=0)  # 3 blocks: 2 free + 1 evicted
    assert "added as seq 1" in lab.message.value
    assert events_shown(lab)[:3] == ["cached", "evict", "miss"]
    assert "evicted least recently used block 1" in lab.events_view.value
    assert "1 blocks evicted" in lab.status.value and lab.cache.allocator.lru_order() == [0]
    assert drawn(lab)[0][0][0] == "#0<br>LRU 0"


def test_pool_exhausted_on_a_prefix_hit_changes_nothing_not_even_the_lru_order():
    lab = block_table_lab(TINY, num_blocks=5, block_size=BS, layout="prefix",
                          initial_requests=[("a:8", 1), "x:8"])  # a's two blocks cached, x runs on two more
    before = prefix_state(lab.cache)
    press(lab, "Add request", request_box="a:8+9")  # would reuse a's 2 blocks, then needs 3 more of 1
    assert "need 3 blocks, 1 of 5 are free" in lab.message.value and ERROR_COLOUR in lab.message.value
    assert "'a:8+9'" in lab.message.value and prefix_state(lab.cache) == before
    with pytest.raises(PoolExhausted):
        lab.add_request("a:8+9")
    assert prefix_state(lab.cache) == before and lab.running == [1]


@pytest.mark.parametrize("bad", ["system:0+3", "system:8+0", "sys tem:8", ":8", "system:8+", "8+3"])
def test_a_bad_shared_request_is_a_message_and_changes_nothing(prefix_lab, bad):
    prefix_lab.add_request("system:8")
    before = prefix_state(prefix_lab.cache)
    press(prefix_lab, "Add request", request_box=bad)
    assert repr(bad) in html.unescape(prefix_lab.message.value) and ERROR_COLOUR in prefix_lab.message.value
    assert prefix_state(prefix_lab.cache) == before


def test_finish_in_prefix_mode_keeps_the_full_blocks_cached(prefix_lab):
    press(prefix_lab, "Add request", request_box="system:9")
    press(prefix_lab, "Finish", sequence_menu=0)
    assert "stay cached" in prefix_lab.message.value
    assert prefix_lab.cache.allocator.num_evictable == 2 and prefix_lab.cache.allocator.num_used == 0
    press(prefix_lab, "Reset")
    assert not prefix_lab.cache.events and "none yet" in prefix_lab.events_view.value
    assert "empty" in prefix_lab.radix_view.layout.annotations[0].text


def test_model_mode_prefix_hit_gives_the_same_greedy_tokens_as_a_standalone_run(model, tokenizer):
    shared = "You are a geography tutor. Answer every question in one short sentence, and name the country."
    first, second = shared + " What is the capital of France?", shared + " What is the capital of Japan?"
    lab = block_table_lab(model.config, num_blocks=16, block_size=8, model=model, tokenizer=tokenizer,
                          layout="prefix")
    press(lab, "Add request", request_box=first, max_new_box=3)
    press(lab, "Add request", request_box=second, max_new_box=3)
    press(lab, "Decode", steps_box=2)
    request = lab.requests[1]
    assert request.cached_tokens >= 16 and lab.cache.stats.hit_tokens == request.cached_tokens  # ≥ 2 blocks hit
    assert "hit" in events_shown(lab)
    assert f"seq 1: {request.cached_tokens} of {request.prompt_len} prompt tokens cached" in lab.events_view.value
    expected = kvlab.generate(model, tokenizer, second, max_new_tokens=3, cache="paged")
    assert request.new_tokens == expected.token_ids[0]
    assert "prompt tokens from the cache" in lab.texts.value
