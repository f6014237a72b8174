"""kvlab.serve on the real model: under continuous batching, chunked prefill and forced preemption, every request
gets the greedy tokens generate gives it alone — which equal HF's (tests/test_oracle.py) — and the metrics add up."""
from __future__ import annotations

import math

import pytest

import kvlab
from kvlab import Request, StepClock
from kvlab.cache import blocks_for

PROMPTS = ["The history of the printing press", "Once upon a time, in a quiet village by the sea,",
           "def fibonacci(n):", "A KV cache stores"]
NEW = [14, 9, 12, 6]
BS = 8


@pytest.fixture(scope="module")
def alone(model, tokenizer):
    return [kvlab.generate(model, tokenizer, p, max_new_tokens=n, stop_at_eos=False).token_ids[0]
            for p, n in zip(PROMPTS, NEW)]


def requests(arrivals=(0.0, 0.0, 1.0, 2.0)):
    return [Request(p, n, arrival_s=t) for p, n, t in zip(PROMPTS, NEW, arrivals)]


def tight_pool(tokenizer) -> int:
    """A pool a few blocks larger than the largest request: four at once must preempt."""
    need = max(blocks_for(len(tokenizer.encode(p)) + n, BS) for p, n in zip(PROMPTS, NEW))
    return need + 2


@pytest.mark.parametrize("layout", ["paged", "prefix"])
def test_chunked_prefill_and_preemption_keep_every_requests_greedy_tokens(model, tokenizer, alone, layout):
    result = kvlab.serve(model, tokenizer, requests(), cache=layout, block_size=BS, num_blocks=tight_pool(tokenizer),
                         max_num_seqs=4, max_num_batched_tokens=6, stop_at_eos=False, clock=StepClock())
    assert result.token_ids == alone
    assert result.num_preemptions > 0, "the tight pool should force a preemption"
    assert any(s.prefill and s.decode for s in result.steps), "a prefill chunk should share a step with decode tokens"
    assert all(s.prefill_tokens + s.decode_tokens <= 6 for s in result.steps)


@pytest.mark.parametrize("layout", ["paged", "prefix"])
def test_requests_swapped_to_the_file_tier_and_back_mid_generation_keep_their_greedy_tokens(model, tokenizer, alone,
                                                                                            layout):
    result = kvlab.serve(model, tokenizer, requests(), cache=layout, block_size=BS, num_blocks=tight_pool(tokenizer),
                         max_num_seqs=4, max_num_batched_tokens=6, stop_at_eos=False, clock=StepClock(),
                         preemption="swap")
    assert result.token_ids == alone
    swapped = [seq for s in result.steps for seq in s.swapped_out]
    assert swapped and sorted(swapped) == sorted(seq for s in result.steps for seq in s.swapped_in)
    assert not any(s.tier_faults for s in result.steps) and result.steps[-1].tier_blocks_used == 0


def test_contiguous_and_none_layouts_run_through_the_same_loop(model, tokenizer, alone):
    for layout, budget in (("contiguous", 6), ("none", 64)):
        result = kvlab.serve(model, tokenizer, requests(), cache=layout, max_num_seqs=2,
                             max_num_batched_tokens=budget, stop_at_eos=False, clock=StepClock())
        assert result.token_ids == alone, layout
        assert result.num_preemptions == 0 and max(len(s.running) for s in result.steps) <= 2


def test_static_batching_gives_the_same_tokens_on_a_different_timeline(model, tokenizer, alone):
    common = dict(cache="paged", max_num_seqs=2, max_num_batched_tokens=64, stop_at_eos=False, clock=StepClock())
    static = kvlab.serve(model, tokenizer, requests((0, 0, 0, 0)), policy="static", **common)
    continuous = kvlab.serve(model, tokenizer, requests((0, 0, 0, 0)), policy="continuous", **common)
    assert static.token_ids == continuous.token_ids == alone
    assert len(continuous.steps) < len(static.steps)
    assert continuous.mean_occupancy() > static.mean_occupancy()


def test_per_request_metrics_follow_the_step_clock(model, tokenizer):
    result = kvlab.serve(model, tokenizer, requests(), cache="paged", max_num_seqs=4, max_num_batched_tokens=512,
                         stop_at_eos=False, clock=StepClock(step_s=0.5))
    late = result.outputs[3]  # arrives at 2.0 s, into a running batch: prefilled in the next step
    assert late.queue_s == 0.0 and late.ttft_s == 0.5
    assert late.itl_s == [0.5] * (NEW[3] - 1) and late.tpot_s == 0.5
    assert [len(o.token_ids) for o in result.outputs] == NEW
    metrics = result.metrics()
    assert metrics["output_tokens"] == sum(NEW) and metrics["ttft_p50_s"] <= metrics["ttft_p99_s"]
    assert math.isclose(metrics["throughput_tok_s"], sum(NEW) / result.duration_s)
    assert 0 < metrics["mean_occupancy"] <= 1 and "tok/s" in result.summary()


def test_a_step_log_records_usage_and_blocks(model, tokenizer):
    result = kvlab.serve(model, tokenizer, requests(), cache="prefix", block_size=BS, num_blocks=tight_pool(tokenizer),
                         max_num_seqs=4, max_num_batched_tokens=6, stop_at_eos=False, clock=StepClock())
    for step in result.steps:
        assert step.blocks_total == tight_pool(tokenizer) and 0 <= step.blocks_used <= step.blocks_total
        assert math.isclose(step.kv_usage, step.blocks_used / step.blocks_total)
    assert max(s.kv_usage for s in result.steps) > 0.7


def test_generate_prefills_all_prompts_in_one_step_then_decodes(model, tokenizer):
    seen = []
    kvlab.generate(model, tokenizer, PROMPTS[:2], max_new_tokens=3, stop_at_eos=False,
                   on_step=lambda i, cache, running: seen.append((i, tuple(running), dict(cache.lengths))))
    assert [s[1] for s in seen] == [(0, 1)] * 3
    lengths = [len(tokenizer.encode(p)) for p in PROMPTS[:2]]
    assert seen[0][2] == {0: lengths[0], 1: lengths[1]}


@pytest.mark.parametrize("kwargs, needle", [
    (dict(policy="orca"), "orca"), (dict(max_num_seqs=0), "max_num_seqs"),
    (dict(max_num_batched_tokens=-1), "max_num_batched_tokens"), (dict(blok_size=16), "blok_size"),
    (dict(num_blocks=0), "num_blocks"), (dict(num_blocks=2), "may need"), (dict(cache="papged"), "papged"),
    (dict(requests=[{"prompt": "hi", "max_new_tokens": 0}]), "max_new_tokens"),
    (dict(requests=[{"prompt": "hi", "arrival_s": -2}]), "arrival_s"),
    (dict(requests=[{"prompt": "hi", "max_new_tokens": 8200}]), "context"),
    (dict(requests=[]), "empty"),
])
def test_bad_serve_arguments_are_refused_by_name(model, tokenizer, kwargs, needle):
    args = dict(requests=requests(), cache="paged", block_size=BS)
    args.update(kwargs)
    with pytest.raises(ValueError, match=needle):
        kvlab.serve(model, tokenizer, args.pop("requests"), **args)


def test_generate_with_a_pool_too_small_for_the_batch_preempts_instead_of_failing(model, tokenizer, alone):
    result = kvlab.generate(model, tokenizer, PROMPTS, max_new_tokens=14, cache="paged", block_size=BS,
                            num_blocks=tight_pool(tokenizer) + 1, stop_at_eos=False)
    assert [ids[:n] for ids, n in zip(result.token_ids, NEW)] == alone


def test_a_prefix_hit_loaded_back_from_the_tier_gives_the_cold_runs_tokens(model, tokenizer):
    """A, then B filling the whole pool (A's cached blocks are evicted into the tier), then A again: its prompt
    comes back from the tier instead of being recomputed, with the tokens of the cold run."""
    from kvlab.cache import BlockTier, make_cache

    a = "The history of the printing press begins in the fifteenth century, when Johannes Gutenberg in Mainz"
    b = "Photosynthesis is the process by which green plants use sunlight to make food from water and air"
    need = max(blocks_for(len(tokenizer.encode(p)) + 8, BS) for p in (a, b))
    cfg = model.config
    probe = make_cache("prefix", cfg, model.device, model.dtype, 1, 64, block_size=BS, num_blocks=need)
    tier = BlockTier(probe.block_bytes(), capacity_blocks=4 * need, kind="file")
    cache = make_cache("prefix", cfg, model.device, model.dtype, 1, 64, block_size=BS, num_blocks=need, tier=tier)
    engine = kvlab.Engine(model, tokenizer, cache, max_num_seqs=1, clock=StepClock(), stop_at_eos=False)
    for prompt, at in ((a, 0.0), (b, 100.0), (a, 200.0)):
        engine.add_request(Request(prompt, 8, arrival_s=at))
    result = engine.run()
    assert result.outputs[2].token_ids == result.outputs[0].token_ids
    assert result.outputs[2].token_ids == kvlab.generate(model, tokenizer, a, max_new_tokens=8,
                                                         stop_at_eos=False).token_ids[0]
    prompt_blocks = (len(tokenizer.encode(a)) - 1) // BS
    assert cache.stats.tier_hit_tokens == prompt_blocks * BS, "A's whole prompt should come back from the tier"
    assert result.outputs[2].cached_prompt_tokens == prompt_blocks * BS
