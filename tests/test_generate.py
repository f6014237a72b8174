"""Tests for kvlab.generate on the real SmolLM2-135M model (CPU): layouts agree, batching is exact,
sampling is reproducible, EOS stops, the chat template is applied, stats add up, bad input is refused.

Runs shared by several tests are module-scoped fixtures, so the model generates each only once.
"""
from __future__ import annotations

import pytest

import kvlab
from kvlab import generate

PROMPTS = ["The KV cache", "Once upon a time there was a little"]  # 4 and 8 tokens: a ragged batch
NEW = 16
EOS_PROMPT = "What is the capital of France? Answer with one word."  # the model answers and stops early
KV_BYTES_PER_TOKEN = 30 * 2 * 3 * 64 * 4  # layers × (K, V) × kv heads × head_dim × fp32 bytes


@pytest.fixture(scope="module")
def ragged_contiguous(model, tokenizer):
    return generate(model, tokenizer, PROMPTS, max_new_tokens=NEW, cache="contiguous")


@pytest.fixture(scope="module")
def ragged_none(model, tokenizer):
    return generate(model, tokenizer, PROMPTS, max_new_tokens=NEW, cache="none")


@pytest.fixture(scope="module")
def alone(model, tokenizer):
    return [generate(model, tokenizer, p, max_new_tokens=NEW, cache="contiguous") for p in PROMPTS]


@pytest.fixture(scope="module")
def sampled_seed0(model, tokenizer):
    return generate(model, tokenizer, PROMPTS[0], max_new_tokens=NEW, temperature=1.0, seed=0)


@pytest.fixture(scope="module")
def chat_eos(model, tokenizer):
    return generate(model, tokenizer, EOS_PROMPT, max_new_tokens=48, chat=True)


# --- the layouts and batching give the same tokens ------------------------------------------------------

def test_ragged_prompts_really_differ_in_length(tokenizer):
    lengths = [len(tokenizer.encode(p)) for p in PROMPTS]
    assert lengths[0] != lengths[1]


def test_none_and_contiguous_caches_give_identical_greedy_tokens(ragged_contiguous, ragged_none):
    assert ragged_contiguous.finish_reasons == ["length", "length"]
    assert [len(ids) for ids in ragged_contiguous.token_ids] == [NEW, NEW]
    assert ragged_none.token_ids == ragged_contiguous.token_ids
    assert ragged_none.texts == ragged_contiguous.texts
    assert ragged_none.stats.cache == "none" and ragged_contiguous.stats.cache == "contiguous"


def test_ragged_batch_gives_each_prompt_the_tokens_it_gets_alone(ragged_contiguous, alone):
    for index, single in enumerate(alone):
        assert single.stats.batch == 1
        assert ragged_contiguous.prompt_token_ids[index] == single.prompt_token_ids[0]
        assert ragged_contiguous.token_ids[index] == single.token_ids[0]
        assert ragged_contiguous.texts[index] == single.texts[0]
    assert ragged_contiguous.token_ids[0] != ragged_contiguous.token_ids[1]  # rows were not mixed up


def test_text_result_decodes_the_generated_tokens(tokenizer, ragged_contiguous):
    for ids, text in zip(ragged_contiguous.token_ids, ragged_contiguous.texts):
        assert text == tokenizer.decode(ids)
        assert text.strip()


# --- sampling -------------------------------------------------------------------------------------------

def test_same_seed_gives_the_same_sampled_tokens(model, tokenizer, sampled_seed0):
    again = generate(model, tokenizer, PROMPTS[0], max_new_tokens=NEW, temperature=1.0, seed=0)
    assert again.token_ids == sampled_seed0.token_ids


def test_different_seeds_give_different_sampled_tokens(model, tokenizer, sampled_seed0, alone):
    other = generate(model, tokenizer, PROMPTS[0], max_new_tokens=NEW, temperature=1.0, seed=1)
    assert other.token_ids != sampled_seed0.token_ids
    assert sampled_seed0.token_ids != alone[0].token_ids  # temperature 1 really sampled, not argmax


def test_tiny_top_p_keeps_only_the_top_token_and_equals_greedy(model, tokenizer, alone):
    nucleus = generate(model, tokenizer, PROMPTS[0], max_new_tokens=NEW, temperature=1.0, top_p=1e-6, seed=1)
    assert nucleus.token_ids == alone[0].token_ids


# --- stopping ---------------------------------------------------------------------------------------------

def test_chat_answer_stops_at_eos(tokenizer, chat_eos):
    ids = chat_eos.token_ids[0]
    assert chat_eos.finish_reasons == ["eos"]
    assert len(ids) < 48
    assert ids[-1] == tokenizer.eos_token_id
    assert tokenizer.eos_token_id not in ids[:-1]
    assert "<|im_end|>" not in chat_eos.texts[0]
    assert "Paris" in chat_eos.texts[0]


def test_stop_at_eos_false_generates_exactly_max_new_tokens_past_the_eos(model, tokenizer, chat_eos):
    eos_at = len(chat_eos.token_ids[0]) - 1
    wanted = eos_at + 3
    result = generate(model, tokenizer, EOS_PROMPT, max_new_tokens=wanted, chat=True, stop_at_eos=False)
    ids = result.token_ids[0]
    assert len(ids) == wanted
    assert result.finish_reasons == ["length"]
    assert ids[: eos_at + 1] == chat_eos.token_ids[0]  # it went on past the EOS the other run stopped at
    assert ids[eos_at] == tokenizer.eos_token_id
    assert result.stats.new_tokens == wanted


# --- chat template and token-id input ------------------------------------------------------------------

def test_chat_applies_the_template(tokenizer, chat_eos):
    prompt_ids = chat_eos.prompt_token_ids[0]
    start = tokenizer.encode("<|im_start|>")
    assert start == [tokenizer.token_id("<|im_start|>")]  # a single special token, not split
    assert prompt_ids[: len(start)] == start
    decoded = tokenizer.decode(prompt_ids, skip_special_tokens=False)
    assert "<|im_start|>assistant" in decoded
    assert EOS_PROMPT in decoded
    assert prompt_ids == tokenizer.encode(tokenizer.apply_chat_template(EOS_PROMPT))


def test_token_id_prompts_give_the_same_result_as_text(model, tokenizer, ragged_contiguous):
    id_prompts = [tokenizer.encode(p) for p in PROMPTS]
    result = generate(model, tokenizer, id_prompts, max_new_tokens=NEW, cache="contiguous")
    assert result.prompt_token_ids == ragged_contiguous.prompt_token_ids == id_prompts
    assert result.token_ids == ragged_contiguous.token_ids
    assert result.texts == ragged_contiguous.texts


def test_a_single_list_of_token_ids_is_one_prompt(model, tokenizer, alone):
    ids = tokenizer.encode(PROMPTS[0])
    result = generate(model, tokenizer, ids, max_new_tokens=4)
    assert result.prompt_token_ids == [ids]
    assert result.stats.batch == 1
    assert result.token_ids == [alone[0].token_ids[0][:4]]  # greedy: a shorter run is a prefix


# --- stats ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("which", ["ragged_contiguous", "ragged_none"])
def test_stats_count_prefill_and_decode_steps(request, which):
    result = request.getfixturevalue(which)
    stats = result.stats
    produced = sum(len(ids) for ids in result.token_ids)
    assert stats.batch == 2
    assert stats.prompt_tokens == sum(len(p) for p in result.prompt_token_ids) == 12
    assert stats.new_tokens == produced == 2 * NEW
    assert stats.ttft_s > 0
    assert stats.decode_s > 0
    # the first token of every sequence comes from the prefill step; decode_tokens counts the rest
    assert stats.decode_tokens == produced - stats.batch
    decode_steps = max(len(ids) for ids in result.token_ids) - 1
    assert len(stats.step_times_s) == decode_steps == NEW - 1
    assert all(t > 0 for t in stats.step_times_s)
    assert stats.decode_s == pytest.approx(sum(stats.step_times_s))
    assert len(stats.kv_bytes_read_per_step) == decode_steps
    longest_prompt = max(len(p) for p in result.prompt_token_ids)
    assert stats.step_context_lens == [longest_prompt + i for i in range(1, NEW)]


def test_a_cached_decode_step_reads_the_weights_once_as_the_files_blocks(ragged_contiguous, model):
    stats = ragged_contiguous.stats  # 2 rows a step: the CPU kernel on the GGUF blocks (where it built)
    assert stats.weight_bytes_read_per_step == [model.weight_bytes(rows=2)] * (NEW - 1)
    assert 500e6 < model.dense_weight_bytes() < 600e6
    if model.can_read_blocks:
        assert 90e6 < stats.weight_bytes_per_step < 100e6
    else:  # KVLAB_CPU_GEMV=0 or no compiler: float32 through F.linear
        assert stats.weight_bytes_per_step == model.dense_weight_bytes()


def test_a_recomputing_step_reads_the_float32_weights_for_its_layers(ragged_none, model):
    stats = ragged_none.stats  # every step runs both whole sequences (padded to the longest) through the layers
    assert stats.weight_bytes_read_per_step == [model.weight_bytes(rows=2 * c, head_rows=2) for c in stats.step_context_lens]
    assert all(read > 0.8 * model.dense_weight_bytes() for read in stats.weight_bytes_read_per_step)  # lm_head: blocks


def test_contiguous_kv_bytes_read_per_step_is_batch_times_context_times_bytes_per_token(ragged_contiguous):
    stats = ragged_contiguous.stats
    longest_prompt = max(len(p) for p in ragged_contiguous.prompt_token_ids)
    # decode step i (1-based) attends over the longest sequence's prompt + i tokens, for both rows
    expected = [2 * (longest_prompt + i) * KV_BYTES_PER_TOKEN for i in range(1, NEW)]
    assert stats.kv_bytes_read_per_step == expected
    assert stats.kv_bytes_read_per_step == [2 * c * KV_BYTES_PER_TOKEN for c in stats.step_context_lens]
    mean_kv = sum(expected) / len(expected)
    assert stats.bytes_read_per_decode_step == pytest.approx(stats.weight_bytes_per_step + mean_kv)
    assert stats.bytes_read_per_decode_step > stats.weight_bytes_per_step


def test_none_cache_reads_no_kv_bytes(ragged_none):
    stats = ragged_none.stats
    assert stats.kv_bytes_read_per_step == [0] * (NEW - 1)
    assert stats.bytes_read_per_decode_step == stats.weight_bytes_per_step


def test_kv_bytes_read_shrink_when_a_sequence_finishes(tokenizer, chat_eos, model):
    # a 2-prompt chat batch where one answer stops early: later steps read K/V for one row only
    result = generate(model, tokenizer, [EOS_PROMPT, "Write a long story about a dragon."], max_new_tokens=12,
                      chat=True)
    stats = result.stats
    short, long_ = (len(ids) for ids in result.token_ids)
    assert result.finish_reasons[0] == "eos" and short < long_ == 12
    assert result.token_ids[0] == chat_eos.token_ids[0]
    assert stats.decode_tokens == short + long_ - 2
    assert len(stats.kv_bytes_read_per_step) == len(stats.step_context_lens) == long_ - 1
    for i, (read, context) in enumerate(zip(stats.kv_bytes_read_per_step, stats.step_context_lens), start=1):
        # decode step i runs the sequences that produce a token there (those with more than i tokens)
        running = [s for s, ids in enumerate(result.token_ids) if len(ids) > i]
        assert running == ([0, 1] if i < short else [1])
        assert context == max(len(result.prompt_token_ids[s]) + i for s in running)
        assert read == len(running) * context * KV_BYTES_PER_TOKEN


# --- bad input --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,needle", [
    (dict(cache="paged-ish"), "paged-ish"),
    (dict(max_new_tokens=0), "0"),
    (dict(max_new_tokens=-3), "-3"),
    (dict(temperature=-1), "-1"),
    (dict(top_p=0), "0"),
    (dict(top_p=1.5), "1.5"),
], ids=["cache-name", "max-new-0", "max-new-neg", "temperature-neg", "top-p-0", "top-p-1.5"])
def test_bad_arguments_raise_value_error_naming_the_value(model, tokenizer, kwargs, needle):
    with pytest.raises(ValueError) as info:
        generate(model, tokenizer, "Hello", **{"max_new_tokens": 4, **kwargs})
    assert needle in str(info.value)


def test_empty_prompt_list_raises_value_error(model, tokenizer):
    with pytest.raises(ValueError, match="empty"):
        generate(model, tokenizer, [], max_new_tokens=4)


def test_empty_string_prompt_raises_value_error_naming_the_prompt(model, tokenizer):
    with pytest.raises(ValueError, match=r"prompt 1 is empty"):
        generate(model, tokenizer, ["Hello", ""], max_new_tokens=4)
    with pytest.raises(ValueError, match="empty"):
        generate(model, tokenizer, "", max_new_tokens=4)


def test_prompt_longer_than_the_context_raises_value_error_naming_both_lengths(model, tokenizer):
    assert model.config.context_len == 8192
    with pytest.raises(ValueError) as info:
        generate(model, tokenizer, [1] * 8193, max_new_tokens=4)
    assert "8193" in str(info.value) and "8192" in str(info.value)


@pytest.mark.parametrize("bad_id", [49152, -1])
def test_token_id_outside_the_vocabulary_is_a_value_error_naming_it(model, tokenizer, bad_id):
    with pytest.raises(ValueError, match=str(bad_id)):
        kvlab.generate(model, tokenizer, [[1, 2, bad_id]], max_new_tokens=2)


def test_boolean_max_new_tokens_is_rejected(model, tokenizer):
    with pytest.raises(ValueError, match="True"):
        kvlab.generate(model, tokenizer, "Hi", max_new_tokens=True)


# --- parallel sampling (num_samples): one prefill, then forks ---------------------------------------------------
def test_parallel_samples_are_identical_whether_fork_copies_at_once_or_on_write(model, tokenizer):
    options = dict(max_new_tokens=8, temperature=0.9, seed=3, num_samples=3, block_size=4)
    eager = generate(model, tokenizer, PROMPTS, cache="paged", **options)
    on_write = generate(model, tokenizer, PROMPTS, cache="prefix", **options)
    assert eager.token_ids == on_write.token_ids
    assert len(eager.token_ids) == 6 and eager.prompt_token_ids[2] == eager.prompt_token_ids[0]
    assert len({tuple(ids) for ids in eager.token_ids[:3]}) > 1  # the samples of one prompt differ


def test_greedy_parallel_samples_equal_a_single_run_and_copy_the_shared_block_on_write(model, tokenizer):
    from kvlab.cache import PrefixCachedPagedCache

    cache = PrefixCachedPagedCache(model.config, model.device, model.dtype, num_blocks=32, block_size=16)
    forked = generate(model, tokenizer, PROMPTS[0], max_new_tokens=6, num_samples=2, cache=cache)
    alone = generate(model, tokenizer, PROMPTS[0], max_new_tokens=6, cache="contiguous")
    assert forked.token_ids == [alone.token_ids[0]] * 2
    assert cache.stats.cow_copies == 1  # the 4-token prompt's block: shared by the fork, copied by its first write
    assert not cache.lengths and cache.allocator.num_used == 0  # generate freed both samples


def test_parallel_sampling_on_a_layout_that_cannot_fork_is_refused(model, tokenizer):
    with pytest.raises(ValueError, match="num_samples=2.*'contiguous'"):
        generate(model, tokenizer, PROMPTS[0], max_new_tokens=2, num_samples=2, cache="contiguous")
    with pytest.raises(ValueError, match="num_samples must be a positive integer, got 0"):
        generate(model, tokenizer, PROMPTS[0], max_new_tokens=2, num_samples=0)
