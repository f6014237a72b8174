"""Speculative decoding on the stand-in model (tests/stand_in.py): greedy output equals plain greedy for both
drafters, every k and every layout that can roll back, on ragged batches through a small pool; rollback leaves the
pool and the prefix index as a plain run leaves them, with no block hashed over a rejected draft; sampled output
has plain sampling's distribution (a chi-square test that a wrong acceptance rule fails); bad settings are refused
by name."""
from __future__ import annotations

import pytest
import torch

from kvlab.cache import make_cache
from kvlab.engine import Engine, Request, StepClock
from kvlab.spec import NgramDrafter, accept_greedy, accept_sampled, expected_tokens_per_pass, lookup
from stand_in import STAND_IN, stand_in_model
from test_scheduler import BS, check_block_ownership, random_requests

LAYOUTS = ("contiguous", "paged", "prefix")


@pytest.fixture(scope="module")
def stand_in():
    return stand_in_model()


@pytest.fixture(scope="module")
def burst():
    """Ragged prompts, all at once; outputs long enough that the stand-in repeats itself (n-grams match)."""
    return [Request(r.prompt, 24) for r in random_requests(10, seed=4, shared_prefixes=2, rate=1000.0)]


def engine_for(model, layout, speculative=None, k=4, num_blocks=40, max_num_seqs=4, budget=48, temperature=0.0,
               seed=None, options=None):
    cache = make_cache(layout, STAND_IN, "cpu", torch.float32, max_batch=max_num_seqs, max_len=96,
                       **({"block_size": BS, "num_blocks": num_blocks} if layout != "contiguous" else {}))
    return Engine(model, None, cache, max_num_seqs=max_num_seqs, max_num_batched_tokens=budget, clock=StepClock(),
                  stop_at_eos=False, temperature=temperature, seed=seed, speculative=speculative,
                  num_speculative_tokens=k, speculative_options=options)


def run(engine, requests, after_step=None):
    for request in requests:
        engine.add_request(request)
    while engine.has_unfinished():
        engine.step()
        if after_step is not None:
            after_step(engine)
    return engine.result()


@pytest.fixture(scope="module")
def plain(stand_in, burst):
    return {layout: run(engine_for(stand_in, layout), burst) for layout in LAYOUTS}


SELF = {"draft_layers": [0]}  # the stand-in's first of two layers
TEMPERATURE = 1.5  # the stand-in's softmax is sharp: drafts are accepted often enough to test both paths


CASES = ([("paged", k) for k in range(1, 9)]  # every k on the paged pool, two on the other layouts
         + [(layout, k) for layout in ("contiguous", "prefix") for k in (2, 5)])


@pytest.mark.parametrize("layout, k", CASES)
@pytest.mark.parametrize("drafter, options", [("ngram", None), ("self", SELF)])
def test_greedy_speculation_gives_plain_greedy_tokens(stand_in, burst, plain, layout, drafter, options, k):
    result = run(engine_for(stand_in, layout, drafter, k, options=options), burst)
    assert result.token_ids == plain[layout].token_ids
    stats = result.speculation
    assert stats.proposed > 0 and 0 < stats.accepted < stats.proposed, stats.summary()  # some of each
    assert stats.emitted == sum(len(row.emitted) for s in result.steps for row in s.speculation)
    assert max(len(row.drafted) for s in result.steps for row in s.speculation) <= k


def _check_prefix_state(engine):
    """Every cached token is the sequence's own, and no hashed block reaches past its confirmed tokens."""
    cache = engine.cache
    check_block_ownership(cache)
    for seq in engine.scheduler.running:
        cached = cache.num_cached(seq.seq_id)
        assert cached == len(seq.token_ids) - 1 or not seq.prefilled, "drafts left in the cache after the step"
        assert cache.token_ids[seq.seq_id] == seq.token_ids[:cached]
        assert len(cache.block_hashes[seq.seq_id]) == cached // cache.block_size


def test_rollback_leaves_the_pool_and_the_prefix_index_as_a_plain_run_does(stand_in, burst, plain):
    roomy = 400  # nothing is evicted: the index ends holding every full block either run computed
    engine = engine_for(stand_in, "prefix", "ngram", 5, num_blocks=roomy)
    result = run(engine, burst, _check_prefix_state)
    assert result.token_ids == plain["prefix"].token_ids
    reference = engine_for(stand_in, "prefix", num_blocks=roomy)
    run(reference, burst)
    assert engine.cache.stats.evicted_blocks == reference.cache.stats.evicted_blocks == 0
    assert set(engine.cache.index.by_hash) == set(reference.cache.index.by_hash), "hashed blocks differ"
    assert engine.cache.blocks_free() == reference.cache.blocks_free() == roomy
    assert result.speculation.blocks_rolled_back > 0, "no draft ever took a block of its own: nothing was tested"


def test_a_paged_pool_holds_only_the_blocks_of_accepted_tokens_after_every_step(stand_in, burst):
    def check(engine):
        check_block_ownership(engine.cache)
        for seq in engine.scheduler.running:
            table, cached = engine.cache.block_tables[seq.seq_id], engine.cache.num_cached(seq.seq_id)
            assert len(table) == -(-cached // BS), f"seq {seq.seq_id}: {len(table)} blocks for {cached} tokens"

    run(engine_for(stand_in, "paged", "self", 6, options=SELF), burst, check)


def test_a_small_pool_preempts_speculating_requests_and_keeps_their_tokens(stand_in, burst, plain):
    result = run(engine_for(stand_in, "paged", "ngram", 6, num_blocks=16, max_num_seqs=4), burst)
    assert result.token_ids == plain["paged"].token_ids
    assert result.num_preemptions > 0


# --- the drafters ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("ids, k, expected", [
    ([1, 2, 3, 9, 1, 2, 3], 2, [9, 1]),  # the 3-gram 1 2 3 occurred before: what followed it
    ([1, 2, 3, 4, 7, 2, 3, 5, 2, 3], 3, [5, 2, 3]),  # the most recent earlier occurrence of 2 3 wins
    ([4, 5, 6], 2, []),  # nothing repeats
    ([7, 7], 4, [7]),  # n = 1: 7 followed 7; the continuation stops at the end
])
def test_prompt_lookup_proposes_what_followed_the_most_recent_earlier_occurrence(ids, k, expected):
    assert lookup(ids, k, 1, 3) == expected


def test_prompt_lookup_tries_the_longest_n_first():
    ids = [5, 1, 2, 8, 3, 2, 9, 1, 2]  # 1 2 → 8 (n = 2) beats 2 → 9 (n = 1, more recent)
    assert lookup(ids, 1, 1, 3) == [8]
    assert lookup(ids, 1, 1, 1) == [9]


# --- acceptance -----------------------------------------------------------------------------------------------

def test_greedy_acceptance_takes_the_matching_prefix_and_the_targets_next_token():
    logits = torch.full((4, 10), -1.0)
    for row, best in enumerate([3, 5, 7, 1]):
        logits[row, best] = 1.0
    assert accept_greedy(logits, [3, 5, 2]) == [3, 5, 7]  # third draft wrong: the target's 7 instead
    assert accept_greedy(logits, [3, 5, 7]) == [3, 5, 7, 1]  # all accepted: the bonus token
    assert accept_greedy(logits[:1], []) == [3]


def _chi_square_p_value(counts: torch.Tensor, probs: torch.Tensor) -> tuple[float, float]:
    """Pearson's statistic of `counts` against `probs` (cells expecting < 5 pooled) and its p-value."""
    n = counts.sum()
    expected = probs.double() * n
    small = expected < 5
    observed = torch.cat([counts[~small].double(), counts[small].double().sum().reshape(1)])
    expected = torch.cat([expected[~small], expected[small].sum().reshape(1)])
    keep = expected > 0
    statistic = float(((observed[keep] - expected[keep]) ** 2 / expected[keep]).sum())
    dof = int(keep.sum()) - 1
    return statistic, float(torch.special.gammaincc(torch.tensor(dof / 2.0), torch.tensor(statistic / 2.0)))


def _first_tokens(rule, p, q, drafts, draws=20_000):
    """The first emitted token's counts over `draws` verifications; drafts drawn from q each time (the rule's
    premise), or the fixed `drafts` when q is one-hot on them (prompt lookup)."""
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(p.shape[1], dtype=torch.int64)
    for _ in range(draws):
        if q is not None:
            drafts = torch.multinomial(q.double(), 1, generator=g).squeeze(-1).tolist()
        counts[rule(p, q, drafts, g)[0]] += 1
    return counts


def _wrong_rule(p, q, drafts, g):  # on a rejection, draws from p instead of the residual max(0, p − q)
    x = drafts[0]
    q_x = q[0, x] if q is not None else 1.0
    if torch.rand((), generator=g, dtype=torch.float64) * q_x < p[0, x]:
        return [x]
    return [int(torch.multinomial(p[0].double(), 1, generator=g))]


@pytest.mark.parametrize("one_hot", [False, True])
def test_sampled_acceptance_keeps_the_target_distribution_and_a_wrong_rule_fails_the_same_test(one_hot):
    g = torch.Generator().manual_seed(1)
    vocab = 12
    p = torch.softmax(torch.randn(3, vocab, generator=g) * 1.5, dim=-1)  # target: 2 drafts + the bonus row
    q = torch.softmax(torch.randn(2, vocab, generator=g) * 1.5, dim=-1)  # the drafter's own distribution
    drafts = [int(q[0].argmax()), int(q[1].argmax())]  # prompt lookup's fixed proposal (q one-hot on it)
    q = None if one_hot else q
    statistic, p_value = _chi_square_p_value(_first_tokens(accept_sampled, p, q, drafts), p[0])
    assert p_value > 1e-3, f"chi-square {statistic:.1f}: the first token is not distributed as p (p = {p_value:.2g})"
    wrong_statistic, wrong_p = _chi_square_p_value(_first_tokens(_wrong_rule, p, q, drafts), p[0])
    assert wrong_p < 1e-6, f"the test cannot tell a wrong rule (chi-square {wrong_statistic:.1f}, p = {wrong_p:.2g})"
    print(f"\nchi-square {statistic:.1f} (p = {p_value:.2f}); the wrong rule: {wrong_statistic:.0f} (p = {wrong_p:.1g})")


@pytest.mark.parametrize("drafter, options", [("ngram", None), ("self", SELF)])
def test_speculative_sampling_gives_the_second_token_plain_samplings_distribution(stand_in, drafter, options):
    """The second token (the first one a verification emits) over 2,000 sampled sequences, against its exact
    marginal Σ_t1 p(t1) p(t2 | t1) from the model's softmax."""
    prompt = list(range(3, 64)) * 2  # every ordinary token occurs before: prompt lookup always drafts
    engine = engine_for(stand_in, "paged", drafter, 3, num_blocks=2000, max_num_seqs=500, budget=30_000,
                        temperature=TEMPERATURE, seed=5, options=options)
    result = run(engine, [Request(prompt, 4)] * 2000)  # step 2 drafts up to 2 tokens past the first
    stats = result.speculation
    assert stats.proposed > 1000 and stats.accepted > 100 and stats.proposed - stats.accepted > 100, stats.summary()
    counts = torch.bincount(torch.tensor([ids[1] for ids in result.token_ids]), minlength=STAND_IN.vocab_size)
    statistic, p_value = _chi_square_p_value(counts, _second_token_marginal(stand_in, prompt))
    assert p_value > 1e-3, f"chi-square {statistic:.1f} (p = {p_value:.2g}): not plain sampling's distribution"


def _second_token_marginal(model, prompt) -> torch.Tensor:
    from kvlab.engine.runner import forward_pass

    vocab = STAND_IN.vocab_size
    cache = make_cache("contiguous", STAND_IN, "cpu", torch.float32, max_batch=vocab + 1, max_len=len(prompt) + 2)
    cache.add_sequence(0, len(prompt) + 1)
    first = torch.softmax(forward_pass(model, cache, [0], [prompt])[0][0] / TEMPERATURE, dim=-1)  # [V]
    for t in range(vocab):
        cache.add_sequence(t + 1, len(prompt) + 2)
    logits = forward_pass(model, cache, list(range(1, vocab + 1)), [prompt + [t] for t in range(vocab)])[0]
    return (first[:, None] * torch.softmax(logits / TEMPERATURE, dim=-1)).sum(0)  # Σ_t1 p(t1) p(t2 | t1)


def test_the_iid_formula_for_tokens_per_pass():
    assert expected_tokens_per_pass(0.0, 4) == 1.0
    assert expected_tokens_per_pass(1.0, 4) == 5.0
    assert expected_tokens_per_pass(0.5, 2) == pytest.approx(1.75)


# --- bad input ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, needle", [
    (dict(speculative="magic"), "unknown speculative drafter 'magic'"),
    (dict(speculative="ngram", k=0), "num_speculative_tokens must be a whole number in 1..255, got 0"),
    (dict(speculative="ngram", k=256), "got 256"),
    (dict(speculative="ngram", options={"min_n": 3, "max_n": 2}), "min_n=3 is larger than max_n=2"),
    (dict(speculative="ngram", options={"min_n": 0}), "min_n must be a whole number ≥ 1, got 0"),
    (dict(speculative="self", options={"draft_layers": []}), "draft layers is empty"),
    (dict(speculative="self", options={"draft_layers": [0, 2]}), "draft layer 2 is outside the model's layers 0..1"),
    (dict(speculative="self", options={"draft_layers": [1, 0]}), "distinct and in order"),
    (dict(speculative="ngram", options={"layers": [0]}), "unknown speculative options ['layers']"),
    (dict(options={"min_n": 2}), "need speculative='ngram' or 'self'"),
])
def test_bad_speculation_settings_are_refused_by_name(stand_in, kwargs, needle):
    with pytest.raises(ValueError) as error:
        engine_for(stand_in, "paged", kwargs.get("speculative"), kwargs.get("k", 4), options=kwargs.get("options"))
    assert needle in str(error.value)


@pytest.mark.parametrize("layout", ["none", "quantized"])
def test_speculation_over_a_layout_that_cannot_roll_back_is_refused(stand_in, layout):
    cache = make_cache(layout, STAND_IN, "cpu", torch.float32, max_batch=2, max_len=64)
    with pytest.raises(ValueError, match=f"the '{layout}' layout cannot"):
        Engine(stand_in, None, cache, speculative="ngram")


def test_rollback_refuses_to_cut_into_a_hashed_block_or_past_the_end(stand_in):
    cache = make_cache("prefix", STAND_IN, "cpu", torch.float32, max_batch=1, max_len=64, block_size=4,
                       num_blocks=8)
    engine = Engine(stand_in, None, cache, max_num_seqs=1, stop_at_eos=False, clock=StepClock())
    engine.add_request(Request(list(range(3, 13)), 2))
    engine.step()  # 10 prompt tokens: blocks 0 and 1 hashed
    with pytest.raises(ValueError, match="its first 8 tokens are in hashed blocks; cannot roll back to 7"):
        cache.rollback(0, 7)
    with pytest.raises(ValueError, match="holds 10 tokens: cannot roll back to 11"):
        cache.rollback(0, 11)
    assert cache.rollback(0, 9) == 0 and cache.num_cached(0) == 9


def test_ngram_drafter_refuses_bad_n():
    with pytest.raises(ValueError, match="max_n must be a whole number ≥ 1, got 'x'"):
        NgramDrafter(1, "x")
