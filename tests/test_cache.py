"""Tests for kvlab.cache: the contiguous and "none" layouts against attention written out by hand.

No real model: a tiny hand-built LlamaConfig and seeded random Q/K/V.
"""
from __future__ import annotations

import math

import pytest
import torch

from kvlab.cache import ContiguousCache, NoCache, make_cache
from kvlab.model.config import LlamaConfig

CPU = torch.device("cpu")


def tiny_config(num_heads: int = 4, num_kv_heads: int = 2, num_layers: int = 2, context_len: int = 64) -> LlamaConfig:
    head_dim = 16
    return LlamaConfig(name="tiny", num_layers=num_layers, hidden_size=num_heads * head_dim, ffn_size=128,
                       num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=head_dim, vocab_size=100,
                       context_len=context_len, rope_base=10000.0, rms_eps=1e-5, tied_embeddings=True,
                       bos_token_id=1, eos_token_id=2)


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal GQA attention written out by hand for ONE sequence.

    q: [n, H, D], the queries of the sequence's last n tokens; k, v: [S, Hkv, D], its full K/V history.
    """
    n, num_heads, head_dim = q.shape
    length, num_kv_heads, _ = k.shape
    group = num_heads // num_kv_heads
    k = k.repeat_interleave(group, dim=1)  # [S, H, D]: query head h reads KV head h // group
    v = v.repeat_interleave(group, dim=1)
    scores = torch.einsum("thd,shd->hts", q, k) / math.sqrt(head_dim)  # [H, n, S]
    q_pos = torch.arange(length - n, length)
    allowed = torch.arange(length)[None, :] <= q_pos[:, None]  # [n, S]
    scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.einsum("hts,shd->thd", torch.softmax(scores, dim=-1), v)  # [n, H, D]


class Driver:
    """Runs steps through a cache with random Q/K/V and checks every layer's attention against the reference."""

    def __init__(self, cache, keep_history: bool = True, seed: int = 0):
        self.cache = cache
        self.keep_history = keep_history  # False for NoCache: a step sees only its own tokens
        self.gen = torch.Generator().manual_seed(seed)
        self.history: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}  # (seq, layer) -> K, V
        self.checked = 0

    def forget(self, seq_id: int) -> None:
        for layer in range(self.cache.config.num_layers):
            self.history.pop((seq_id, layer), None)

    def randn(self, *shape) -> torch.Tensor:
        return torch.randn(*shape, generator=self.gen)

    def step(self, seq_ids: list[int], counts: list[int]):
        cfg = self.cache.config
        batch, width = len(seq_ids), max(counts)
        self.cache.begin_step(seq_ids, counts)
        written = []
        for layer in range(cfg.num_layers):
            k = self.randn(batch, width, cfg.num_kv_heads, cfg.head_dim)
            v = self.randn(batch, width, cfg.num_kv_heads, cfg.head_dim)
            q = self.randn(batch, width, cfg.num_heads, cfg.head_dim)
            self.cache.write(layer, k, v)
            out = self.cache.attend(layer, q)
            assert out.shape == q.shape
            for b, (seq_id, n) in enumerate(zip(seq_ids, counts)):
                old_k, old_v = self.history.get((seq_id, layer), (k[b, :0], v[b, :0]))
                if not self.keep_history:
                    old_k, old_v = k[b, :0], v[b, :0]
                full_k, full_v = torch.cat([old_k, k[b, :n]]), torch.cat([old_v, v[b, :n]])
                self.history[(seq_id, layer)] = (full_k, full_v)
                expected = reference_attention(q[b, :n], full_k, full_v)
                torch.testing.assert_close(out[b, :n], expected, atol=1e-5, rtol=0)
                self.checked += 1
            written.append((k, v, q, out))
        self.cache.end_step()
        return written


def contiguous(config=None, max_batch: int = 4, max_len: int = 32, dtype=torch.float32) -> ContiguousCache:
    return ContiguousCache(config or tiny_config(), CPU, dtype, max_batch=max_batch, max_len=max_len)


# --- ContiguousCache: where K/V land ------------------------------------------------------------------

def test_contiguous_writes_land_at_slab_row_and_position_and_padding_is_never_written():
    cfg = tiny_config()
    cache = contiguous(cfg, max_batch=3, max_len=16)
    cache.add_sequence(10, 16)
    cache.add_sequence(20, 16)
    rows = {s: cache.row_of[s] for s in (10, 20)}
    assert sorted(rows.values()) == sorted(set(rows.values())) and all(0 <= r < 3 for r in rows.values())
    expected_k = [torch.zeros_like(t) for t in cache.k]
    expected_v = [torch.zeros_like(t) for t in cache.v]
    gen = torch.Generator().manual_seed(1)

    def step(counts: list[int], start: list[int]):
        cache.begin_step([10, 20], counts)
        width = max(counts)
        for layer in range(cfg.num_layers):
            # padding slots hold large non-zero values: if any were written, the slab would show it
            k = torch.full((2, width, cfg.num_kv_heads, cfg.head_dim), 1e3)
            v = torch.full((2, width, cfg.num_kv_heads, cfg.head_dim), -1e3)
            for b, (seq_id, n) in enumerate(zip([10, 20], counts)):
                k[b, :n] = torch.randn(n, cfg.num_kv_heads, cfg.head_dim, generator=gen)
                v[b, :n] = torch.randn(n, cfg.num_kv_heads, cfg.head_dim, generator=gen)
                row = rows[seq_id]
                expected_k[layer][row, start[b]: start[b] + n] = k[b, :n]
                expected_v[layer][row, start[b]: start[b] + n] = v[b, :n]
            cache.write(layer, k, v)
        cache.end_step()

    step([5, 2], [0, 0])  # ragged prefill: row of 20 must stay zero from position 2 on
    step([1, 1], [5, 2])  # decode
    step([1, 3], [6, 3])  # ragged again, now the longer one is second
    for layer in range(cfg.num_layers):
        assert torch.equal(cache.k[layer], expected_k[layer])
        assert torch.equal(cache.v[layer], expected_v[layer])
    assert cache.k[0][rows[20], 6:].abs().sum() == 0 and cache.k[0][rows[10], 7:].abs().sum() == 0
    assert cache.lengths == {10: 7, 20: 6}


def test_contiguous_write_stores_each_layer_separately():
    cfg = tiny_config()
    cache = contiguous(cfg, max_batch=1, max_len=8)
    cache.add_sequence(0, 8)
    cache.begin_step([0], [3])
    k0, v0 = torch.ones(1, 3, 2, 16), torch.full((1, 3, 2, 16), 2.0)
    k1, v1 = torch.full((1, 3, 2, 16), 3.0), torch.full((1, 3, 2, 16), 4.0)
    cache.write(0, k0, v0)
    cache.write(1, k1, v1)
    cache.end_step()
    assert torch.equal(cache.k[0][0, :3], k0[0]) and torch.equal(cache.v[0][0, :3], v0[0])
    assert torch.equal(cache.k[1][0, :3], k1[0]) and torch.equal(cache.v[1][0, :3], v1[0])


# --- ContiguousCache: attention over the cached history ------------------------------------------------

@pytest.mark.parametrize("num_heads,num_kv_heads", [(4, 2), (4, 4), (4, 1)], ids=["gqa", "mha-group-1", "mqa"])
def test_contiguous_attend_over_ragged_batch_matches_hand_written_causal_attention(num_heads, num_kv_heads):
    cache = contiguous(tiny_config(num_heads, num_kv_heads), max_batch=2, max_len=16)
    cache.add_sequence(0, 16)
    cache.add_sequence(1, 16)
    driver = Driver(cache)
    driver.step([0, 1], [5, 1])  # ragged prefill (second sequence is a single token)
    for _ in range(3):
        driver.step([0, 1], [1, 1])  # decode
    driver.step([0, 1], [1, 4])  # a ragged multi-token step after decoding
    assert cache.lengths == {0: 9, 1: 8}
    assert driver.checked == 5 * 2 * cache.config.num_layers


def test_contiguous_attend_on_a_one_token_sequence_returns_its_value_per_query_head():
    cfg = tiny_config(num_heads=4, num_kv_heads=2)
    cache = contiguous(cfg, max_batch=1, max_len=4)
    cache.add_sequence(0, 4)
    written = Driver(cache).step([0], [1])
    for k, v, q, out in written:
        # one key: softmax is exactly 1, so every query head returns its KV head's value
        expected = v[0, 0].repeat_interleave(cfg.group_size, dim=0)  # [H, D]
        torch.testing.assert_close(out[0, 0], expected, atol=1e-6, rtol=0)


def test_contiguous_attend_of_one_sequence_is_unaffected_by_its_batch_neighbour():
    # the same sequence alone and next to another (longer) one gives the same attention output
    cfg = tiny_config()
    alone = contiguous(cfg, max_batch=1, max_len=16)
    alone.add_sequence(0, 16)
    shared = contiguous(cfg, max_batch=2, max_len=16)
    shared.add_sequence(0, 16)
    shared.add_sequence(1, 16)
    gen = torch.Generator().manual_seed(3)
    k, v, q = (torch.randn(1, 3, n, 16, generator=gen) for n in (2, 2, 4))
    k_other, v_other, q_other = (torch.randn(1, 7, n, 16, generator=gen) for n in (2, 2, 4))

    alone.begin_step([0], [3])
    alone.write(0, k, v)
    out_alone = alone.attend(0, q)
    pad = lambda t: torch.cat([t, torch.full((1, 4, *t.shape[2:]), 7.0)], dim=1)  # noqa: E731
    shared.begin_step([0, 1], [3, 7])
    shared.write(0, torch.cat([pad(k), k_other]), torch.cat([pad(v), v_other]))
    out_shared = shared.attend(0, torch.cat([pad(q), q_other]))
    torch.testing.assert_close(out_shared[0, :3], out_alone[0], atol=1e-6, rtol=0)


# --- NoCache -------------------------------------------------------------------------------------------

def test_nocache_keeps_nothing_between_steps():
    cache = NoCache(tiny_config(), CPU, torch.float32)
    cache.add_sequence(0, 32)
    cache.add_sequence(1, 32)
    driver = Driver(cache, keep_history=False)
    driver.step([0, 1], [5, 2])
    assert cache.num_cached(0) == 0 and cache.num_cached(1) == 0
    assert cache.used_bytes() == 0 and cache.reserved_bytes() == 0
    driver.step([0, 1], [6, 3])  # the engine feeds the whole sequence again
    assert cache.num_cached(0) == 0 and cache.num_cached(1) == 0


@pytest.mark.parametrize("num_heads,num_kv_heads", [(4, 2), (4, 4), (4, 1)], ids=["gqa", "mha-group-1", "mqa"])
def test_nocache_attend_matches_hand_written_attention_over_the_step_tokens_only(num_heads, num_kv_heads):
    cache = NoCache(tiny_config(num_heads, num_kv_heads), CPU, torch.float32)
    for s in range(3):
        cache.add_sequence(s, 32)
    driver = Driver(cache, keep_history=False)
    driver.step([0, 1, 2], [5, 1, 3])
    driver.step([0, 1, 2], [6, 2, 4])
    assert driver.checked == 2 * 3 * cache.config.num_layers


def test_nocache_step_does_not_see_the_previous_steps_keys():
    # a step's attention must equal attention over only its own tokens, not the previous step's
    cfg = tiny_config()
    cache = NoCache(cfg, CPU, torch.float32)
    cache.add_sequence(0, 32)
    gen = torch.Generator().manual_seed(5)
    first = [torch.randn(1, 4, h, 16, generator=gen) for h in (2, 2)]
    cache.begin_step([0], [4])
    cache.write(0, *first)
    cache.end_step()
    k, v, q = (torch.randn(1, 2, h, 16, generator=gen) for h in (2, 2, 4))
    cache.begin_step([0], [2])
    cache.write(0, k, v)
    out = cache.attend(0, q)
    cache.end_step()
    torch.testing.assert_close(out[0], reference_attention(q[0], k[0], v[0]), atol=1e-5, rtol=0)


# --- errors and state after errors ---------------------------------------------------------------------

def test_contiguous_add_sequence_longer_than_max_len_raises_value_error_naming_the_length():
    cache = contiguous(max_batch=2, max_len=16)
    with pytest.raises(ValueError, match=r"\b17\b.*max_len=16"):
        cache.add_sequence(0, 17)
    assert cache.lengths == {} and len(cache.free_rows) == 2  # no row was taken


def test_contiguous_step_growing_past_max_len_raises_and_leaves_the_state_unchanged():
    cache = contiguous(max_batch=2, max_len=8)
    cache.add_sequence(0, 8)
    cache.add_sequence(1, 8)
    driver = Driver(cache)
    driver.step([0, 1], [6, 2])
    with pytest.raises(ValueError, match=r"\b9\b.*max_len=8"):
        cache.begin_step([0, 1], [3, 1])  # sequence 0 would hold 6 + 3 = 9
    assert cache.current_step is None
    assert cache.lengths == {0: 6, 1: 2}
    driver.step([0, 1], [2, 1])  # the next valid step still works and attends correctly
    assert cache.lengths == {0: 8, 1: 3}


def test_contiguous_more_sequences_than_max_batch_raises_value_error():
    cache = contiguous(max_batch=2, max_len=8)
    cache.add_sequence(0, 8)
    cache.add_sequence(1, 8)
    with pytest.raises(ValueError, match=r"\b2\b"):
        cache.add_sequence(2, 8)
    assert set(cache.lengths) == {0, 1}


def test_adding_the_same_sequence_twice_raises_value_error():
    cache = contiguous()
    cache.add_sequence(3, 8)
    with pytest.raises(ValueError, match=r"\b3\b"):
        cache.add_sequence(3, 8)


@pytest.mark.parametrize("kwargs", [dict(max_batch=0, max_len=8), dict(max_batch=1, max_len=0),
                                    dict(max_batch=1, max_len=65)])
def test_contiguous_constructor_rejects_bad_sizes(kwargs):
    with pytest.raises(ValueError):
        ContiguousCache(tiny_config(context_len=64), CPU, torch.float32, **kwargs)


def test_make_cache_unknown_name_raises_value_error_containing_the_name():
    with pytest.raises(ValueError, match="paged-ish"):
        make_cache("paged-ish", tiny_config(), CPU, torch.float32, max_batch=1, max_len=8)


def test_make_cache_builds_each_known_layout():
    none = make_cache("none", tiny_config(), CPU, torch.float32, max_batch=2, max_len=8)
    contig = make_cache("contiguous", tiny_config(), CPU, torch.float32, max_batch=2, max_len=8)
    assert isinstance(none, NoCache) and none.name == "none"
    assert isinstance(contig, ContiguousCache) and (contig.max_batch, contig.max_len) == (2, 8)


@pytest.mark.parametrize("make", [lambda: contiguous(), lambda: NoCache(tiny_config(), CPU, torch.float32)],
                         ids=["contiguous", "none"])
def test_begin_step_with_zero_new_tokens_raises_and_leaves_the_state_unchanged(make):
    cache = make()
    cache.add_sequence(0, 8)
    cache.add_sequence(1, 8)
    with pytest.raises(ValueError, match=r"\b0\b"):
        cache.begin_step([0, 1], [2, 0])
    assert cache.current_step is None and cache.lengths == {0: 0, 1: 0}
    Driver(cache, keep_history=isinstance(cache, ContiguousCache)).step([0, 1], [2, 1])


@pytest.mark.parametrize("make", [lambda: contiguous(), lambda: NoCache(tiny_config(), CPU, torch.float32)],
                         ids=["contiguous", "none"])
def test_unknown_sequence_id_raises_key_error(make):
    cache = make()
    cache.add_sequence(0, 8)
    with pytest.raises(KeyError):
        cache.begin_step([0, 42], [1, 1])
    assert cache.current_step is None and cache.lengths == {0: 0}
    with pytest.raises(KeyError):
        cache.free_sequence(42)
    with pytest.raises(KeyError):
        cache.num_cached(42)


def test_begin_step_with_mismatched_counts_raises_value_error():
    cache = contiguous()
    cache.add_sequence(0, 8)
    with pytest.raises(ValueError):
        cache.begin_step([0], [1, 1])
    with pytest.raises(ValueError):
        cache.begin_step([], [])
    assert cache.current_step is None


def test_contiguous_freed_row_is_reused_and_stale_kv_does_not_leak_into_attention():
    cache = contiguous(max_batch=2, max_len=16)
    cache.add_sequence(0, 16)
    cache.add_sequence(1, 16)
    driver = Driver(cache)
    driver.step([0, 1], [9, 3])  # sequence 0 fills 9 slots of its row
    row0 = cache.row_of[0]
    cache.free_sequence(0)
    driver.forget(0)
    assert 0 not in cache.lengths and row0 in cache.free_rows
    cache.add_sequence(2, 16)  # the only free row is the one just released
    assert cache.row_of[2] == row0
    # the new sequence is shorter than the stale data in its row: attention must see only its own tokens
    driver.step([2, 1], [4, 1])
    driver.step([2, 1], [1, 1])
    assert cache.lengths == {1: 5, 2: 5}


# --- byte accounting -------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype,size", [(torch.float32, 4), (torch.bfloat16, 2), (torch.float16, 2)])
def test_contiguous_reserved_bytes_is_two_slabs_per_layer(dtype, size):
    cfg = tiny_config(num_heads=4, num_kv_heads=2, num_layers=2)
    cache = contiguous(cfg, max_batch=3, max_len=20, dtype=dtype)
    expected = 2 * cfg.num_layers * 3 * 20 * cfg.num_kv_heads * cfg.head_dim * size
    assert cache.reserved_bytes() == expected == 2 * 2 * 3 * 20 * 2 * 16 * size
    assert cache.bytes_per_token() == 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * size
    cache.add_sequence(0, 20)
    assert cache.reserved_bytes() == expected  # reserved up front, independent of use


def test_contiguous_used_bytes_is_tokens_cached_times_bytes_per_token():
    cfg = tiny_config()
    cache = contiguous(cfg, max_batch=2, max_len=16)
    per_token = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * 4
    assert cache.bytes_per_token() == per_token == 512
    cache.add_sequence(0, 16)
    cache.add_sequence(1, 16)
    assert cache.used_bytes() == 0
    driver = Driver(cache)
    driver.step([0, 1], [5, 2])
    assert cache.used_bytes() == 7 * per_token
    driver.step([0, 1], [1, 1])
    assert cache.used_bytes() == 9 * per_token
    cache.free_sequence(1)
    assert cache.used_bytes() == 6 * per_token


def test_contiguous_kv_bytes_read_is_batch_times_longest_sequence_times_bytes_per_token():
    cfg = tiny_config()
    cache = contiguous(cfg, max_batch=2, max_len=16)
    cache.add_sequence(0, 16)
    cache.add_sequence(1, 16)
    driver = Driver(cache)
    driver.step([0, 1], [5, 2])
    step = cache.begin_step([0, 1], [1, 1])  # lengths after this step: 6 and 3
    assert cache.kv_bytes_read(step) == 2 * 6 * cache.bytes_per_token()
    cache.abort_step()
    assert cache.current_step is None and cache.lengths == {0: 5, 1: 2}
