"""kvlab against an outside oracle: HF transformers loading the same GGUF file in float32.

Greedy tokens must be identical for every exact cache layout, batch 1 and ragged batches, and the
last-position logits must agree to 1e-3 relative. The lossy "quantized" layout is held to the oracle by how
far it strays: int8 keeps HF's tokens (but at HF's own near ties), and its logits stay within a few percent.
"""
from __future__ import annotations

import os

import pytest
import torch

import kvlab
from kvlab.cache import EXACT_LAYOUTS, PrefixCachedPagedCache, make_cache

pytestmark = pytest.mark.oracle

NEW_TOKENS = 32
PROMPTS = [  # three lengths: 6, 19 and 53 tokens
    "The history of the printing press",
    "Once upon a time, in a small village by the sea, there lived an old fisherman who",
    "Photosynthesis is the process by which green plants and some other organisms use sunlight to "
    "synthesize foods from carbon dioxide and water. In plants, photosynthesis generally involves the "
    "green pigment chlorophyll and generates oxygen as a by-product. The process happens in two stages. The first stage",
]


@pytest.fixture(scope="module")
def hf_greedy(hf_oracle, tokenizer):
    """HF's greedy continuation of each prompt, run alone (batch 1): the reference tokens."""
    hf_model, _ = hf_oracle
    references = []
    for prompt in PROMPTS:
        ids = torch.tensor([tokenizer.encode(prompt)])
        with torch.no_grad():
            out = hf_model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS,
                                    do_sample=False, eos_token_id=tokenizer.eos_token_id,
                                    pad_token_id=tokenizer.eos_token_id)
        references.append(out[0, ids.shape[1]:].tolist())
    return references


def test_prompts_have_three_different_lengths(tokenizer):
    lengths = [len(tokenizer.encode(p)) for p in PROMPTS]
    assert len(set(lengths)) == 3 and min(lengths) >= 5 and max(lengths) >= 50


def test_hf_reference_runs_the_full_32_tokens(hf_greedy):
    assert all(len(tokens) == NEW_TOKENS for tokens in hf_greedy)


def test_kvlab_tokenizer_matches_hf_tokenizer_on_digit_free_text(hf_oracle, tokenizer):
    # transformers reads this file's tokenizer without the "smollm" rule that splits digits one by one;
    # kvlab follows the file (and llama.cpp). Text without digits must tokenize identically.
    _, hf_tokenizer = hf_oracle
    texts = PROMPTS + ["<|im_start|>user\nHello there!<|im_end|>\n", "  spaces\tand\nnewlines, émigré café"]
    for text in texts:
        assert tokenizer.encode(text) == hf_tokenizer.encode(text, add_special_tokens=False)


def test_kvlab_splits_digits_one_by_one_as_the_file_says(tokenizer):
    digit_ids = [tokenizer.token_id(d) for d in "2024"]
    assert tokenizer.encode("2024") == digit_ids


@pytest.mark.parametrize("cache", EXACT_LAYOUTS)
@pytest.mark.parametrize("prompt_index", range(len(PROMPTS)))
def test_batch1_greedy_tokens_equal_hf(model, tokenizer, hf_greedy, cache, prompt_index):
    result = kvlab.generate(model, tokenizer, PROMPTS[prompt_index], max_new_tokens=NEW_TOKENS, cache=cache)
    assert result.token_ids[0] == hf_greedy[prompt_index]


@pytest.mark.parametrize("cache, options", [("none", {}), ("contiguous", {}), ("paged", {"block_size": 1}),
                                            ("paged", {"block_size": 16}), ("paged", {"block_size": 64})])
def test_ragged_batch_greedy_tokens_equal_hf(model, tokenizer, hf_greedy, cache, options):
    order = [2, 0, 1]  # longest first: padding and row order must not matter
    result = kvlab.generate(model, tokenizer, [PROMPTS[i] for i in order], max_new_tokens=NEW_TOKENS, cache=cache, **options)
    assert result.token_ids == [hf_greedy[i] for i in order]


def test_prefix_cache_gives_hf_tokens_cold_and_warm_on_a_ragged_batch(model, tokenizer, hf_greedy):
    """The second run serves every prompt but its last (partly cached) block from the first run's blocks."""
    cache = PrefixCachedPagedCache(model.config, model.device, model.dtype, num_blocks=64, block_size=4)
    order = [2, 0, 1]
    prompts = [PROMPTS[i] for i in order]
    cold = kvlab.generate(model, tokenizer, prompts, max_new_tokens=NEW_TOKENS, cache=cache)
    warm = kvlab.generate(model, tokenizer, prompts, max_new_tokens=NEW_TOKENS, cache=cache)
    assert cold.token_ids == warm.token_ids == [hf_greedy[i] for i in order]
    assert cold.stats.cached_prompt_tokens == 0
    assert warm.stats.cached_prompt_tokens == sum((len(tokenizer.encode(p)) - 1) // 4 * 4 for p in prompts)  # 52+4+16


@pytest.mark.parametrize("cache, speculative, k", [("paged", "ngram", 4), ("prefix", "ngram", 2),
                                                   ("contiguous", "ngram", 7), ("paged", "self", 3)])
def test_speculative_decoding_gives_hf_greedy_tokens_on_a_ragged_batch(model, tokenizer, hf_greedy, cache,
                                                                       speculative, k):
    order = [2, 0, 1]
    result = kvlab.generate(model, tokenizer, [PROMPTS[i] for i in order], max_new_tokens=NEW_TOKENS, cache=cache,
                            speculative=speculative, num_speculative_tokens=k)
    assert result.token_ids == [hf_greedy[i] for i in order]
    stats = result.stats.speculation
    assert stats.proposed > 0 and stats.passes > 0, stats.summary()


def test_hf_left_padded_batch_agrees_with_kvlab_ragged_batch(model, tokenizer, hf_oracle):
    hf_model, _ = hf_oracle
    encoded = [tokenizer.encode(p) for p in PROMPTS]
    width = max(map(len, encoded))
    pad = tokenizer.eos_token_id
    ids = torch.tensor([[pad] * (width - len(e)) + e for e in encoded])
    mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded])
    with torch.no_grad():
        out = hf_model.generate(ids, attention_mask=mask, max_new_tokens=NEW_TOKENS, do_sample=False,
                                eos_token_id=pad, pad_token_id=pad)
    ours = kvlab.generate(model, tokenizer, PROMPTS, max_new_tokens=NEW_TOKENS, cache="contiguous")
    assert [row[width:].tolist() for row in out] == ours.token_ids


@pytest.mark.parametrize("cache", EXACT_LAYOUTS)
@pytest.mark.parametrize("prompt_index", range(len(PROMPTS)))
def test_last_position_logits_agree_with_hf(model, tokenizer, hf_oracle, cache, prompt_index):
    hf_model, _ = hf_oracle
    ids = tokenizer.encode(PROMPTS[prompt_index])
    with torch.no_grad():
        reference = hf_model(torch.tensor([ids])).logits[0, -1].float()  # [vocab]
    kv = make_cache(cache, model.config, model.device, model.dtype, max_batch=1, max_len=len(ids))
    kv.add_sequence(0, len(ids))
    kv.begin_step([0], [len(ids)], [ids])  # the prefix layout hashes full blocks by their token ids
    ours = model.forward(torch.tensor([ids]), kv)[0]  # [vocab]
    kv.end_step()
    relative = (ours - reference).abs().max() / reference.abs().max()
    assert relative < 1e-3, f"max relative difference {relative:.2e}"


def test_cached_keys_equal_hf_past_key_values(model, tokenizer, hf_oracle):
    """The K/V kvlab's contiguous cache holds are the ones transformers caches (same head layout)."""
    hf_model, _ = hf_oracle
    ids = tokenizer.encode(PROMPTS[1])
    with torch.no_grad():
        past = hf_model(torch.tensor([ids]), use_cache=True).past_key_values
    kv = make_cache("contiguous", model.config, model.device, model.dtype, max_batch=1, max_len=len(ids))
    kv.add_sequence(0, len(ids))
    kv.begin_step([0], [len(ids)])
    model.forward(torch.tensor([ids]), kv)
    kv.end_step()
    for layer in (0, model.config.num_layers - 1):
        hf_k = past.layers[layer].keys[0].transpose(0, 1)  # [heads, T, D] → [T, heads, D]
        hf_v = past.layers[layer].values[0].transpose(0, 1)
        torch.testing.assert_close(kv.k[layer][0, : len(ids)], hf_k, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(kv.v[layer][0, : len(ids)], hf_v, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
                    reason="the oracle model is on the CPU; a CUDA machine runs CPU tensors only under TRITON_INTERPRET=1")
def test_paged_triton_kernels_give_hf_tokens_on_a_ragged_batch(model, tokenizer, hf_greedy):
    """The Triton path end to end: store, prefill and decode kernels (interpreted on a CPU, compiled on CUDA).
    Interpreted kernels are slow, so this run is short: the first 6 tokens of the two shorter prompts."""
    result = kvlab.generate(model, tokenizer, PROMPTS[:2], max_new_tokens=6, cache="paged", block_size=4, backend="triton")
    assert result.token_ids == [hf_greedy[0][:6], hf_greedy[1][:6]]


INT8_NEAR_TIE = 0.01  # a top-2 logit gap under 1 % of the largest logit: int8's error (~0.5 %) may decide it


@pytest.mark.parametrize("prompt_index", range(len(PROMPTS)))
def test_int8_quantized_cache_keeps_hf_greedy_tokens(model, tokenizer, hf_oracle, hf_greedy, prompt_index):
    """int8 keeps HF's tokens except where HF itself nearly tied: if the tokens part, the first token that differs
    must be one where HF's best two logits lie within INT8_NEAR_TIE of each other (prompt 2's sixth token is such a
    near tie, 0.09 in 23: it flips on some CPUs, whose float sums round the K/V to other int8 levels). A broken
    quantizer parts at a clear choice and fails."""
    hf_model, _ = hf_oracle
    result = kvlab.generate(model, tokenizer, PROMPTS[prompt_index], max_new_tokens=NEW_TOKENS, cache="quantized",
                            scheme="int8")
    ours, reference = result.token_ids[0], hf_greedy[prompt_index]
    if ours == reference:
        return
    parted = next(i for i, (a, b) in enumerate(zip(ours, reference)) if a != b)
    ids = torch.tensor([tokenizer.encode(PROMPTS[prompt_index]) + reference[:parted]])
    with torch.no_grad():
        logits = hf_model(ids).logits[0, -1].float()  # [vocab]
    best, second = logits.topk(2).values.tolist()
    gap = (best - second) / logits.abs().max().item()
    assert gap < INT8_NEAR_TIE, (f"int8 parted from HF at token {parted} ({ours[parted]} vs {reference[parted]}) "
                                 f"where HF's top-2 gap is {gap:.2%} of its largest logit, not a near tie")


@pytest.mark.parametrize("scheme, tolerance", [("int8", 0.02), ("fp8", 0.05), ("int4", 0.3), ("kivi2", 0.3)])
def test_quantized_last_position_logits_stay_near_hf(model, tokenizer, hf_oracle, scheme, tolerance):
    """Not exact, by design — but bounded, with more bits closer (int8 measured ~0.5 %, int4 ~10 %)."""
    hf_model, _ = hf_oracle
    ids = tokenizer.encode(PROMPTS[2])
    with torch.no_grad():
        reference = hf_model(torch.tensor([ids])).logits[0, -1].float()
    kv = make_cache("quantized", model.config, model.device, model.dtype, max_batch=1, max_len=len(ids), scheme=scheme)
    kv.add_sequence(0, len(ids))
    kv.begin_step([0], [len(ids)])
    ours = model.forward(torch.tensor([ids]), kv)[0]
    kv.end_step()
    relative = (ours - reference).abs().max() / reference.abs().max()
    assert 1e-5 < relative < tolerance, f"{scheme}: max relative difference {relative:.2e}"
