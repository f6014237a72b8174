"""The "quantized" layout on the real model: kernels equal the reference, prefill equals decode, honest bytes, clean errors."""
from __future__ import annotations

import pytest
import torch

import kvlab
from kvlab.cache import PagedCache, PoolExhausted, QuantizedPagedCache, make_cache
from kvlab.cache.quantization import SCHEMES

PROMPTS = ["The history of the printing press", "Once upon a time, in a small village by the sea"]


def new_cache(model, scheme, backend="torch", block_size=4, num_blocks=32, max_seqs=4, group_size=None):
    return QuantizedPagedCache(model.config, model.device, model.dtype, num_blocks=num_blocks, block_size=block_size,
                               scheme=scheme, group_size=group_size, backend=backend, max_seqs=max_seqs)


def run_steps(model, cache, prompts_ids, decode_tokens, one_by_one=False):
    """Prefill (whole, or one token at a time) then greedy decode; returns the logits of every step [B, vocab]."""
    batch = len(prompts_ids)
    for seq, ids in enumerate(prompts_ids):
        cache.add_sequence(seq, len(ids) + decode_tokens + 1)
    logits = []
    if one_by_one:
        assert batch == 1
        for token in prompts_ids[0]:
            cache.begin_step([0], [1])
            logits.append(model.forward(torch.tensor([[token]]), cache))
            cache.end_step()
        logits = logits[-1:]
    else:
        width = max(map(len, prompts_ids))
        padded = torch.tensor([ids + [0] * (width - len(ids)) for ids in prompts_ids])
        cache.begin_step(list(range(batch)), [len(ids) for ids in prompts_ids])
        logits.append(model.forward(padded, cache))
        cache.end_step()
    for _ in range(decode_tokens):
        nxt = logits[-1].argmax(-1)  # [B]
        cache.begin_step(list(range(batch)), [1] * batch)
        logits.append(model.forward(nxt[:, None], cache))
        cache.end_step()
    return torch.stack(logits)  # [steps, B, vocab]


@pytest.mark.parametrize("scheme", SCHEMES)
def test_triton_kernels_give_the_reference_logits_on_the_real_model(model, tokenizer, scheme):
    """Ragged batch of 4 and 2 tokens, block size 4 (blocks fill and, with kivi2, get quantized during the run):
    prefill and 2 decode steps through the interpreted store + decode kernels match the torch reference backend.
    Not bit-equal: float noise of 1e-7 upstream can flip a code at a rounding boundary, which moves a value by a
    quantization step — so the tolerance is a percent of the logits, and the greedy tokens must agree."""
    ids = [tokenizer.encode("Once upon a time"), tokenizer.encode("Hello there")]
    assert [len(i) for i in ids] == [4, 2]
    kernel = run_steps(model, new_cache(model, scheme, "triton"), ids, 2)
    reference = run_steps(model, new_cache(model, scheme, "torch"), ids, 2)
    assert (kernel - reference).abs().max() < 1e-2 * reference.abs().max()
    assert torch.equal(kernel.argmax(-1), reference.argmax(-1))


def attend_through(cache, chunks, k, v, q):
    """Feed tokens [T, Hkv|Hq, D] of one sequence to layer 0 in chunks of the given sizes; outputs [T, Hq, D]."""
    cache.add_sequence(0, k.shape[0])
    outputs, start = [], 0
    for size in chunks:
        cache.begin_step([0], [size])
        cache.write(0, k[None, start:start + size], v[None, start:start + size])
        outputs.append(cache.attend(0, q[None, start:start + size])[0])
        cache.end_step()
        start += size
    return torch.cat(outputs)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_prefill_sees_exactly_what_token_by_token_decoding_sees(model, scheme):
    """Each query of a prefill reads the earlier tokens quantized (kivi2: its own block in full precision), so
    the same K/V/Q fed at once, one token per step, or in odd chunks give the same attention outputs. (Through
    the model the two would drift apart: float noise flips codes at rounding boundaries and 30 layers amplify it.)"""
    g = torch.Generator().manual_seed(0)
    cfg = model.config
    k = torch.randn(11, cfg.num_kv_heads, cfg.head_dim, generator=g)  # 11 tokens: blocks of 4, 4 and 3
    k[:, :, 5] += 8.0  # an outlier channel
    v = torch.randn(11, cfg.num_kv_heads, cfg.head_dim, generator=g)
    q = torch.randn(11, cfg.num_heads, cfg.head_dim, generator=g)
    whole = attend_through(new_cache(model, scheme), [11], k, v, q)
    for chunks in ([1] * 11, [3, 1, 5, 2]):
        assert torch.allclose(attend_through(new_cache(model, scheme), chunks, k, v, q), whole, atol=1e-5), chunks
    exact = torch.nn.functional.scaled_dot_product_attention(  # and quantization did change something
        q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), is_causal=True, enable_gqa=True).transpose(0, 1)
    assert not torch.allclose(whole, exact, atol=1e-4)


def test_quantization_changes_the_logits_and_more_bits_change_them_less(model, tokenizer):
    ids = [tokenizer.encode(PROMPTS[1])]
    exact = PagedCache(model.config, model.device, model.dtype, num_blocks=32, block_size=4)
    reference = run_steps(model, exact, ids, 0)
    errors = {s: (run_steps(model, new_cache(model, s), ids, 0) - reference).abs().max().item() for s in SCHEMES}
    assert 0 < errors["int8"] < errors["int4"]
    assert errors["int8"] < 0.1 * reference.abs().max()


def test_bytes_per_token_counts_exactly_the_pool_tensors(model):
    for scheme in SCHEMES:
        cache = new_cache(model, scheme, num_blocks=8, block_size=16)
        pool_bytes = sum(t.numel() * t.element_size() for p in cache.pools for t in p.block_tensors())
        assert cache.bytes_per_token() * 8 * 16 == pool_bytes, scheme
        assert cache.pool_bytes() == pool_bytes + cache.recent_bytes()
    exact = PagedCache(model.config, model.device, torch.bfloat16, num_blocks=8, block_size=16)
    assert new_cache(model, "int8", block_size=16).bytes_per_token() / exact.bytes_per_token() == pytest.approx(66 / 128)


def test_the_layout_never_hands_out_a_dequantized_copy(model):
    with pytest.raises(NotImplementedError, match="never makes a dequantized copy"):
        new_cache(model, "int8").gather(0)


def test_generate_runs_every_scheme_and_int8_keeps_the_full_precision_tokens(model, tokenizer):
    exact = kvlab.generate(model, tokenizer, PROMPTS, max_new_tokens=16, cache="paged", stop_at_eos=False).token_ids
    for scheme in SCHEMES:
        result = kvlab.generate(model, tokenizer, PROMPTS, max_new_tokens=16, cache="quantized", scheme=scheme,
                                stop_at_eos=False)
        assert [len(t) for t in result.token_ids] == [16, 16]
        if scheme == "int8":
            assert result.token_ids == exact


def test_parallel_samples_fork_the_recent_block_too(model, tokenizer):
    """Greedy samples of one prompt are identical to a single run: the fork copied codes, scales and, for
    kivi2, the full-precision recent block."""
    for scheme in ("int4", "kivi2"):
        single = kvlab.generate(model, tokenizer, PROMPTS[1], max_new_tokens=8, cache="quantized", scheme=scheme)
        forked = kvlab.generate(model, tokenizer, PROMPTS[1], max_new_tokens=8, cache="quantized", scheme=scheme,
                                num_samples=3)
        assert forked.token_ids == single.token_ids * 3


def test_running_out_of_recent_slots_names_the_limit_and_changes_nothing(model):
    cache = new_cache(model, "kivi2", max_seqs=2)
    cache.add_sequence(0, 8)
    cache.add_sequence(1, 8)
    free_blocks, slots = cache.allocator.num_available, dict(cache.recent_slots)
    with pytest.raises(ValueError, match="max_seqs=2"):
        cache.add_sequence(2, 8)
    assert 2 not in cache.lengths and 2 not in cache.block_tables
    assert cache.recent_slots == slots and cache.allocator.num_available == free_blocks
    cache.free_sequence(0)
    cache.add_sequence(2, 8)  # the freed slot is reused
    assert cache.recent_slots[2] == slots[0]


def test_a_step_that_does_not_fit_leaves_the_cache_unchanged(model, tokenizer):
    cache = new_cache(model, "kivi2", num_blocks=3, block_size=4)
    cache.add_sequence(0, 12)
    cache.add_sequence(1, 12)
    used = cache.allocator.num_used
    with pytest.raises(PoolExhausted):
        cache.begin_step([0, 1], [8, 8])  # needs 4 blocks, the pool has 3
    assert cache.allocator.num_used == used and cache.current_step is None
    assert cache.lengths == {0: 0, 1: 0}


@pytest.mark.parametrize("options, message", [
    ({"scheme": "int3"}, "'int3'"), ({"scheme": "int4", "group_size": 48}, "group_size 48"),
    ({"scheme": "int4", "group_size": 128}, "does not divide head_dim 64"), ({"scheme": "int8", "max_seqs": 0}, "max_seqs"),
])
def test_bad_options_raise_a_clear_error(model, options, message):
    with pytest.raises(ValueError, match=message):
        make_cache("quantized", model.config, model.device, model.dtype, max_batch=1, max_len=32, **options)


def test_fp8_on_a_device_without_float8_names_the_device(model, monkeypatch):
    import kvlab.cache.quantization as quantization

    monkeypatch.setattr(quantization, "supports_float8", lambda device: False)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    with pytest.raises(ValueError, match="fp8 needs float8 support.*compute capability 8.0"):
        make_cache("quantized", model.config, model.device, model.dtype, max_batch=1, max_len=32, scheme="fp8")
