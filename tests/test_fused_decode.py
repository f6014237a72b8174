"""The fused CPU decode (kernels/cpu_decode_layer: a layer a C++ call) against its references: the Python forward
(LlamaModel.fused_decode = False) on the real model and on odd shapes, and decode_layer_reference (plain torch)
on random layers, pools and tables.

Stated bounds: bit for bit with the Python forward on the paged caches (same kernels, same operation order);
over a contiguous cache the Python forward attends with SDPA, so there the logits may differ by attention's
summation order: at most CONTIGUOUS_LOGIT_BOUND, and the greedy tokens not at all.
"""
from __future__ import annotations

import pytest
import torch

from kvlab.cache import make_cache
from kvlab.engine import generate
from kvlab.kernels import cpu_decode_layer
from kvlab.kernels.cpu_gemv import BLOCK_BYTES, dequantize_reference
from kvlab.model.config import LlamaConfig
from kvlab.model.llama import LayerWeights, LlamaModel
from kvlab.model.projection import Projection

pytestmark = pytest.mark.skipif(not cpu_decode_layer.available(), reason="kvlab's C++ CPU kernels did not build")

CONTIGUOUS_LOGIT_BOUND = 1e-3  # float32 logits of magnitude ~10-30; attention's order moves them by ~1e-5 here


def random_blocks(rows: int, cols: int, block_format: str, g: torch.Generator) -> torch.Tensor:
    """Valid GGML blocks [rows, cols / 32 · bytes]: small random fp16 scales (and Q4_1 minimums), random codes."""
    count = rows * cols // 32
    top = 0.002 if block_format == "Q8_0" else 0.02  # weights within about ±0.25, as a trained layer's are
    scales = (torch.rand(count, 1, generator=g) * top + top / 20).half().view(torch.uint8)  # [count, 2]
    if block_format == "Q8_0":
        codes = torch.randint(-127, 128, (count, 32), generator=g, dtype=torch.int8).view(torch.uint8)
        return torch.cat([scales, codes], dim=1).reshape(rows, -1)
    minimums = (torch.rand(count, 1, generator=g) * -0.1).half().view(torch.uint8)
    nibbles = torch.randint(0, 256, (count, 16), generator=g, dtype=torch.uint8)
    return torch.cat([scales, minimums, nibbles], dim=1).reshape(rows, -1)


def odd_model(num_heads: int, num_kv_heads: int, head_dim: int, ffn: int, block_format: str | None,
              seed: int = 0, num_layers: int = 2) -> LlamaModel:
    """A random Llama of odd sizes (tests only): float32 weights, or GGML blocks and their exact float32 weights."""
    cfg = LlamaConfig(name="odd", num_layers=num_layers, hidden_size=num_heads * head_dim, ffn_size=ffn,
                      num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=head_dim, vocab_size=50,
                      context_len=128, rope_base=10000.0, rms_eps=1e-5, tied_embeddings=True, bos_token_id=1,
                      eos_token_id=2)
    g = torch.Generator().manual_seed(seed)

    def weight(rows: int, cols: int) -> Projection:
        if block_format is None:
            return Projection(torch.randn(rows, cols, generator=g) / cols ** 0.5)
        blocks = random_blocks(rows, cols, block_format, g)
        return Projection(dequantize_reference(blocks, block_format), blocks, block_format)

    hidden = cfg.hidden_size
    layers = [LayerWeights(attn_norm=1 + 0.1 * torch.randn(hidden, generator=g),
                           wqkv=weight((num_heads + 2 * num_kv_heads) * head_dim, hidden),
                           wo=weight(hidden, hidden), ffn_norm=1 + 0.1 * torch.randn(hidden, generator=g),
                           w_gate_up=weight(2 * ffn, hidden), w_down=weight(hidden, ffn)) for _ in range(num_layers)]
    embed = torch.randn(cfg.vocab_size, hidden, generator=g)
    return LlamaModel(cfg, embed, layers, torch.ones(hidden), Projection(embed))


def lockstep_logits(model, cache_name: str, prompts: list[list[int]], steps: int, **options):
    """Prefill, then `steps` greedy decode steps, through the fused path and the Python forward on two caches in
    lockstep (both decode the fused path's tokens). Returns per step the two logits [B, vocab], and the caches."""
    caches = {}
    for fused in (True, False):
        caches[fused] = make_cache(cache_name, model.config, model.device, model.dtype, max_batch=len(prompts),
                                   max_len=max(map(len, prompts)) + steps + 1, **options)
        for seq_id, prompt in enumerate(prompts):
            caches[fused].add_sequence(seq_id, len(prompt) + steps + 1)

    def step(fused: bool, tokens: list[list[int]]) -> torch.Tensor:
        cache, width = caches[fused], max(map(len, tokens))
        cache.begin_step(list(range(len(tokens))), [len(t) for t in tokens], tokens)
        model.fused_decode = fused
        ids = torch.tensor([t + [0] * (width - len(t)) for t in tokens])
        logits = model.forward(ids, cache)
        cache.end_step()
        return logits

    default, real, calls = model.fused_decode, cpu_decode_layer.decode_layer, []

    def counted(*args, **kwargs):
        calls.append(model.fused_decode)
        return real(*args, **kwargs)

    pairs = []
    cpu_decode_layer.decode_layer = counted
    try:
        tokens = [list(p) for p in prompts]
        for _ in range(steps + 1):
            pair = step(True, tokens), step(False, tokens)
            pairs.append(pair)
            tokens = [[t] for t in pair[0].argmax(-1).tolist()]
    finally:
        model.fused_decode, cpu_decode_layer.decode_layer = default, real
    # the fused side ran every decode step as one call a layer, the reference side never: not one path twice
    assert calls.count(True) >= steps * model.config.num_layers and False not in calls
    return pairs[1:], caches  # the first pair is the prefill, which never takes the fused path


@pytest.mark.parametrize("cache_name", ["paged", "prefix"])
def test_fused_decode_is_bit_for_bit_the_python_forward_on_the_paged_caches(model, tokenizer, cache_name):
    prompts = [tokenizer.encode("The history of the printing press"), tokenizer.encode("Why is the sky blue? It")]
    pairs, caches = lockstep_logits(model, cache_name, prompts, steps=6, block_size=4)
    for fused, plain in pairs:
        assert torch.equal(fused, plain)
    for layer in (0, model.config.num_layers - 1):
        assert torch.equal(caches[True].k_pools[layer], caches[False].k_pools[layer])
        assert torch.equal(caches[True].v_pools[layer], caches[False].v_pools[layer])


def test_fused_decode_over_a_contiguous_cache_stays_within_the_stated_bound(model, tokenizer):
    prompts = [tokenizer.encode("The history of the printing press"), tokenizer.encode("Once upon a time")]
    pairs, caches = lockstep_logits(model, "contiguous", prompts, steps=6)
    for fused, plain in pairs:
        assert (fused - plain).abs().max().item() <= CONTIGUOUS_LOGIT_BOUND
        assert torch.equal(fused.argmax(-1), plain.argmax(-1))
    assert torch.equal(caches[True].v[0], caches[False].v[0])  # V is stored as computed, before any attention


def run_both(model, **generate_args) -> dict[bool, list[list[int]]]:
    """generate()'s tokens with the fused decode and with the Python forward."""
    outputs, default = {}, model.fused_decode
    try:
        for fused in (True, False):
            model.fused_decode = fused
            outputs[fused] = generate(model, stop_at_eos=False, **generate_args).token_ids
    finally:
        model.fused_decode = default
    return outputs


def test_the_real_model_decodes_the_same_tokens_fused_as_in_python_batch_1_and_4(model, tokenizer):
    prompts = ["The history of the printing press", "Hello", "A list of fruits: apple,", "def fib(n):"]
    for batch in (1, 4):
        outputs = run_both(model, tokenizer=tokenizer, prompts=prompts[:batch], max_new_tokens=12, cache="paged")
        assert outputs[True] == outputs[False]


def test_forked_samples_prefix_hits_and_self_drafts_decode_the_same_tokens_fused_as_in_python(model, tokenizer):
    prompt = "The history of the printing press began"
    forked = run_both(model, tokenizer=tokenizer, prompts=prompt, max_new_tokens=10, cache="prefix", num_samples=2,
                      temperature=0.8, seed=3)  # copy-on-write of the shared last block, then two sequences
    assert forked[True] == forked[False]
    drafted = run_both(model, tokenizer=tokenizer, prompts=prompt, max_new_tokens=12, cache="paged",
                       speculative="self")  # the draft model decodes fused too; verification runs the Python path
    assert drafted[True] == drafted[False]


# odd shapes: head dims off the vector width, group sizes 1-5, block sizes that split a context unevenly
ODD_SHAPES = [  # num_heads, num_kv_heads, head_dim, ffn, weights
    (6, 2, 12, 100, None),
    (5, 1, 6, 34, None),
    (3, 3, 32, 160, "Q4_1"),
    (4, 2, 40, 96, "Q8_0"),
]


@pytest.mark.parametrize("shape", ODD_SHAPES, ids=lambda s: f"h{s[0]}kv{s[1]}d{s[2]}f{s[3]}-{s[4] or 'F32'}")
def test_fused_decode_equals_the_python_forward_on_odd_shapes(shape):
    model = odd_model(*shape)
    prompts = [[3, 5, 7], [11, 13, 17, 19, 23, 29, 31], [4]]
    pairs, caches = lockstep_logits(model, "paged", prompts, steps=9, block_size=2)
    for fused, plain in pairs:
        assert torch.equal(fused, plain)
    pairs, _ = lockstep_logits(model, "contiguous", prompts, steps=4)
    for fused, plain in pairs:
        torch.testing.assert_close(fused, plain, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape", ODD_SHAPES, ids=lambda s: f"h{s[0]}kv{s[1]}d{s[2]}f{s[3]}-{s[4] or 'F32'}")
def test_decode_layer_matches_its_plain_torch_reference(shape):
    num_heads, num_kv_heads, head_dim, ffn, block_format = shape
    model = odd_model(*shape, seed=1, num_layers=1)
    layer = model.layers[0]
    g = torch.Generator().manual_seed(2)
    batch, num_blocks, block_size = 3, 12, 5
    k_pool = torch.randn(num_blocks, block_size, num_kv_heads, head_dim, generator=g)
    v_pool = torch.randn(num_blocks, block_size, num_kv_heads, head_dim, generator=g)
    tables = torch.tensor([[7, 2, 9, 0], [1, 0, 0, 0], [3, 4, 5, 6]], dtype=torch.int32)
    context_lens = torch.tensor([13, 1, 20], dtype=torch.int32)
    positions = context_lens.long() - 1
    slots = tables.long().gather(1, (positions // block_size)[:, None])[:, 0] * block_size + positions % block_size
    cos, sin = model.cos[positions], model.sin[positions]
    x = torch.randn(batch, model.config.hidden_size, generator=g)
    weights = {"attn_norm": layer.attn_norm, "ffn_norm": layer.ffn_norm,
               **{name: cpu_decode_layer.weight_and_format(p) for name, p in
                  [("wqkv", layer.wqkv), ("wo", layer.wo), ("gate_up", layer.w_gate_up), ("down", layer.w_down)]}}
    pools, k_before, v_before = (k_pool.clone(), v_pool.clone()), k_pool.clone(), v_pool.clone()
    expected = cpu_decode_layer.decode_layer_reference(x, weights, *pools, tables, context_lens, slots, cos, sin,
                                                       num_heads, 1e-5)
    x_before = x.clone()
    got = cpu_decode_layer.decode_layer(x, layer, k_pool, v_pool, tables, context_lens, slots, cos, sin, num_heads,
                                        1e-5)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(k_pool, pools[0], rtol=1e-5, atol=1e-5)  # the new K, RoPE'd, at its slots
    torch.testing.assert_close(v_pool, pools[1], rtol=1e-5, atol=1e-5)  # and V (the products' order differs)
    untouched = torch.ones(num_blocks * block_size, dtype=torch.bool)
    untouched[slots] = False
    rows = num_blocks * block_size
    for pool, before in ((k_pool, k_before), (v_pool, v_before)):  # nothing but the new slots written
        assert torch.equal(pool.view(rows, -1)[untouched], before.view(rows, -1)[untouched])
    assert torch.equal(x, x_before)  # x itself is left as it was


def test_decode_layer_refuses_a_slot_outside_the_pool_and_stores_nothing(model):
    cfg, layer = model.config, model.layers[0]
    k_pool = torch.zeros(2, 4, cfg.num_kv_heads, cfg.head_dim)
    v_pool = torch.zeros_like(k_pool)
    args = (torch.tensor([[0]], dtype=torch.int32), torch.tensor([1], dtype=torch.int32))
    with pytest.raises(ValueError, match=r"slots\[0\] = 8 is outside the pool's 8 slots"):
        cpu_decode_layer.decode_layer(torch.zeros(1, cfg.hidden_size), layer, k_pool, v_pool, *args,
                                      torch.tensor([8]), model.cos[:1], model.sin[:1], cfg.num_heads, cfg.rms_eps)
    assert not k_pool.any() and not v_pool.any()


def test_decode_layer_names_an_unknown_weight_format(model):
    cfg, layer = model.config, model.layers[0]
    pools = torch.zeros(1, 4, cfg.num_kv_heads, cfg.head_dim), torch.zeros(1, 4, cfg.num_kv_heads, cfg.head_dim)
    module = cpu_decode_layer.load_gemv()
    pools_before = pools[0].clone(), pools[1].clone()
    with pytest.raises(ValueError, match="weight format 'Q5_K'"):
        module.decode_layer(torch.zeros(1, cfg.hidden_size), layer.attn_norm, layer.wqkv.weight, "F32",
                            layer.wo.weight, "Q5_K", layer.ffn_norm, layer.w_gate_up.weight, "F32",
                            layer.w_down.weight, "F32", *pools, torch.tensor([[0]], dtype=torch.int32),
                            torch.tensor([1], dtype=torch.int32), torch.tensor([0]), model.cos[:1], model.sin[:1],
                            cfg.num_heads, cfg.num_kv_heads, cfg.rms_eps, 0.125)
    assert torch.equal(pools[0], pools_before[0]) and torch.equal(pools[1], pools_before[1])  # checked before storing


def test_steps_the_fused_path_cannot_take_run_the_python_forward(model, tokenizer, monkeypatch):
    calls = []
    real = cpu_decode_layer.decode_layer
    monkeypatch.setattr(cpu_decode_layer, "decode_layer", lambda *a, **k: calls.append(1) or real(*a, **k))
    generate(model, tokenizer, "Hello", max_new_tokens=3, cache="quantized", stop_at_eos=False)  # codes, not floats
    generate(model, tokenizer, "Hello", max_new_tokens=3, cache="paged", backend="torch", stop_at_eos=False)
    generate(model, tokenizer, ["Hi"] * 17, max_new_tokens=2, cache="paged", stop_at_eos=False)  # over 16 rows
    assert calls == []
    generate(model, tokenizer, "Hello there", max_new_tokens=3, cache="paged", stop_at_eos=False)
    assert len(calls) == 2 * model.config.num_layers  # two decode steps after the prefill


def test_fused_decode_cannot_be_switched_on_where_the_weights_are_not_on_the_kernels():
    model = odd_model(2, 1, 8, 16, None)
    model.layers[1].wo.streams_on_cpu = False  # as a weight on CUDA or in bfloat16 would be
    assert not model.can_fuse_decode
    with pytest.raises(ValueError, match="fused_decode=True needs every weight"):
        model.fused_decode = True
    model.fused_decode = False
    assert model.fused_decode is False


@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (2, 5, 576), (2048, 96), (4, 1000)])
def test_cpu_rms_norm_matches_torch_on_odd_shapes(shape):
    g = torch.Generator().manual_seed(len(shape))
    x, weight = torch.randn(*shape, generator=g) * 3, torch.randn(shape[-1], generator=g)
    got = cpu_decode_layer.load_gemv().rms_norm(x, weight, 1e-5)
    torch.testing.assert_close(got, torch.nn.functional.rms_norm(x, weight.shape, weight, 1e-5), rtol=2e-6, atol=2e-6)


def test_cpu_rms_norm_names_a_weight_of_the_wrong_size():
    with pytest.raises(RuntimeError, match=r"weight must be float32 \[8\] on the CPU, got \[7\]"):
        cpu_decode_layer.load_gemv().rms_norm(torch.ones(2, 8), torch.ones(7), 1e-5)


@pytest.mark.parametrize("cache_name", ["contiguous", "paged"])
def test_a_cache_whose_write_was_replaced_offers_no_decode_view(model, cache_name):
    cache = make_cache(cache_name, model.config, model.device, model.dtype, max_batch=1, max_len=8)
    cache.add_sequence(0, 8)
    cache.begin_step([0], [1], [[5]])
    assert cache.decode_view() is not None
    seen = []
    cache.write = lambda layer, k, v: seen.append(layer)  # a notebook's spy: the fused path would skip it
    assert cache.decode_view() is None
    cache.abort_step()
