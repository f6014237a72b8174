"""Request traces for the serving engine: seeded, long-tailed, with the arrival statistics they claim, real-text
prompts, and files (kvlab JSON, ShareGPT) that give back the very requests written."""
from __future__ import annotations

import json
import math
import statistics

import pytest

import kvlab
from kvlab import traces
from kvlab.engine import percentile
from kvlab.workload import CHAT_PROMPT_MEAN


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in zip(times, times[1:])]


def cv(values: list[float]) -> float:
    return statistics.pstdev(values) / statistics.mean(values)


# --- arrivals and lengths (no tokenizer) ------------------------------------------------------------------------

def test_same_seed_gives_the_same_trace_and_another_seed_another():
    a = traces.chat_requests(None, 50, seed=3, rate_per_s=2.0)
    assert a == traces.chat_requests(None, 50, seed=3, rate_per_s=2.0)
    assert a != traces.chat_requests(None, 50, seed=4, rate_per_s=2.0)


def test_poisson_gaps_average_one_over_the_rate_with_cv_one():
    times = traces.arrival_times(4000, rate_per_s=5.0, arrival="poisson", seed=1)
    assert times[0] == 0.0 and times == sorted(times)
    assert statistics.mean(gaps(times)) == pytest.approx(1 / 5.0, rel=0.05)
    assert cv(gaps(times)) == pytest.approx(1.0, abs=0.08)


def test_gamma_gaps_keep_the_mean_and_burstiness_below_one_spreads_them_more_than_poisson():
    bursty = gaps(traces.arrival_times(4000, rate_per_s=5.0, arrival="gamma", burstiness=0.25, seed=1))
    smooth = gaps(traces.arrival_times(4000, rate_per_s=5.0, arrival="gamma", burstiness=4.0, seed=1))
    poisson = gaps(traces.arrival_times(4000, rate_per_s=5.0, arrival="poisson", seed=1))
    assert statistics.mean(bursty) == pytest.approx(0.2, rel=0.1)
    assert statistics.mean(smooth) == pytest.approx(0.2, rel=0.05)
    assert cv(bursty) == pytest.approx(2.0, rel=0.15) and cv(bursty) > 1.5 * cv(poisson)  # CV = 1/√k
    assert cv(smooth) == pytest.approx(0.5, rel=0.15)


def test_all_at_once_and_an_infinite_rate_put_every_arrival_at_zero():
    assert traces.arrival_times(10, arrival="all-at-once") == [0.0] * 10
    assert traces.arrival_times(10, rate_per_s=math.inf) == [0.0] * 10


def test_the_same_seed_gives_the_same_lengths_at_any_rate_and_scaled_poisson_arrivals():
    slow = traces.chat_requests(None, 30, seed=2, rate_per_s=1.0)
    fast = traces.chat_requests(None, 30, seed=2, rate_per_s=4.0)
    assert [(r.prompt_len, r.max_new_tokens) for r in slow] == [(r.prompt_len, r.max_new_tokens) for r in fast]
    assert all(f.arrival_s == pytest.approx(s.arrival_s / 4) for s, f in zip(slow, fast))


def test_chat_lengths_are_long_tailed_around_the_sharegpt_means():
    lengths = traces.chat_lengths(4000, seed=0, max_prompt=10_000, max_output=10_000)
    prompts, outputs = [p for p, _ in lengths], [o for _, o in lengths]
    assert statistics.mean(prompts) == pytest.approx(CHAT_PROMPT_MEAN, rel=0.1)
    for values in (prompts, outputs):
        assert percentile(values, 99) > 6 * percentile(values, 50)  # log-normal σ = 1: p99 ≈ 10 × median


def test_lengths_are_capped_and_fixed_or_uniform_distributions_follow_their_mean():
    capped = traces.chat_lengths(500, max_prompt=100, max_output=50)
    assert max(p for p, _ in capped) == 100 and max(o for _, o in capped) == 50
    assert set(traces.chat_lengths(20, prompt_mean=32, output_mean=8, distribution="fixed")) == {(32, 8)}
    uniform = traces.chat_lengths(2000, prompt_mean=50, output_mean=20, distribution="uniform")
    assert statistics.mean(p for p, _ in uniform) == pytest.approx(50, rel=0.05)
    assert max(p for p, _ in uniform) <= 99


@pytest.mark.parametrize("kwargs, needle", [
    (dict(rate_per_s=-1.0), "rate_per_s"), (dict(rate_per_s=0), "rate_per_s"), (dict(rate_per_s="fast"), "'fast'"),
    (dict(arrival="uniform"), "'uniform'"), (dict(burstiness=0), "burstiness"), (dict(burstiness=math.nan), "nan"),
    (dict(distribution="normal"), "'normal'"), (dict(num_requests=0), "num_requests"),
    (dict(max_prompt=0), "max_prompt"), (dict(prompt_mean=0), "prompt_mean"), (dict(output_mean=-5), "-5"),
])
def test_bad_values_raise_value_error_naming_them(kwargs, needle):
    args = dict(num_requests=5) | kwargs
    with pytest.raises(ValueError, match=needle):
        traces.chat_requests(None, **args)


# --- real-text prompts --------------------------------------------------------------------------------------------

def test_prompts_are_real_text_of_the_sampled_length_that_encodes_back_to_the_same_ids(tokenizer):
    sized = traces.chat_requests(None, 24, seed=5)
    requests = traces.chat_requests(tokenizer, 24, seed=5)
    corpus = "\n\n".join(doc for _, doc in kvlab.corpus.stdlib_docstrings())
    assert [len(r.prompt) for r in requests] == [s.prompt_len for s in sized]
    assert [r.max_new_tokens for r in requests] == [s.max_new_tokens for s in sized]
    for r in requests:
        assert tokenizer.encode(tokenizer.decode(r.prompt)) == r.prompt
        assert tokenizer.decode(r.prompt[:8]) in corpus
    assert len({tuple(r.prompt[:4]) for r in requests}) == len(requests), "each prompt starts at its own docstring"


def test_text_ids_gives_exactly_the_tokens_asked_for_even_past_the_corpus_length(tokenizer):
    for n in (1, 7, 300, 30_000):
        ids = traces.text_ids(tokenizer, n, start=3)
        assert len(ids) == n and tokenizer.encode(tokenizer.decode(ids)) == ids


# --- files --------------------------------------------------------------------------------------------------------

def test_json_trace_round_trip_keeps_token_ids_lengths_and_arrivals(tokenizer, tmp_path):
    requests = traces.chat_requests(tokenizer, 12, seed=1, rate_per_s=3.0)
    requests.append(kvlab.Request("A text prompt", 5, arrival_s=9.5))
    path = traces.save_trace(tmp_path / "trace.json", requests)
    data = json.loads(path.read_text())
    assert data["format"] == "kvlab-trace" and data["version"] == 1 and data["requests"][-1]["output_len"] == 5
    assert traces.load_trace(path) == requests


def test_a_trace_of_lengths_only_needs_a_tokenizer_to_get_its_prompts(tokenizer, tmp_path):
    sized = traces.chat_requests(None, 6, seed=2)
    path = traces.save_trace(tmp_path / "lengths.json", sized)
    assert "prompt_len" in json.loads(path.read_text())["requests"][0]
    with pytest.raises(ValueError, match="trace entry 0.*needs a tokenizer"):
        traces.load_trace(path)
    loaded = traces.load_trace(path, tokenizer)
    assert [(len(r.prompt), r.max_new_tokens, r.arrival_s) for r in loaded] == \
        [(s.prompt_len, s.max_new_tokens, s.arrival_s) for s in sized]


@pytest.mark.parametrize("content, needle", [
    ({"format": "kvlab-trace", "version": 2, "requests": []}, "version 2"),
    ({"format": "kvlab-trace", "version": 1, "requests": [{"prompt": "hi", "output_len": 3, "arrival_s": 0},
                                                          {"prompt": "hi", "arrival_s": 0}]}, "trace entry 1"),
    ([{"prompt": "hi", "output_len": 0, "arrival_s": 0}], "trace entry 0.*max_new_tokens"),
    ([{"prompt": [], "output_len": 2, "arrival_s": 0}], "trace entry 0.*empty"),
    ([{"prompt": "hi", "output_len": 2, "arrival_s": -1}], "trace entry 0.*arrival_s"),
    ([], "no list of requests"),
])
def test_bad_trace_files_raise_value_error_naming_the_entry(tmp_path, content, needle):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ValueError, match=needle):
        traces.load_trace(path)


def test_sharegpt_round_trip_keeps_token_ids_output_lengths_and_arrivals(tokenizer, tmp_path):
    requests = traces.chat_requests(tokenizer, 12, seed=4, rate_per_s=2.0, max_output=300)
    path = traces.save_sharegpt(tmp_path / "sharegpt.json", requests, tokenizer)
    data = json.loads(path.read_text())
    turns = data[0]["conversations"]
    assert [t["from"] for t in turns] == ["human", "gpt"] and isinstance(data[0]["id"], str)
    assert len(tokenizer.encode(turns[1]["value"])) == requests[0].max_new_tokens  # vLLM counts the reply's tokens
    assert traces.load_sharegpt(path, tokenizer) == requests


def test_sharegpt_loader_skips_one_turn_conversations_caps_outputs_and_draws_missing_arrivals(tokenizer, tmp_path):
    reply = tokenizer.decode(traces.text_ids(tokenizer, 40, bos=False))
    data = [{"id": "a", "conversations": [{"from": "human", "value": "Only a question"}]},
            {"id": "b", "conversations": [{"from": "human", "value": "Why is the sky blue?"},
                                          {"from": "gpt", "value": reply}, {"from": "human", "value": "More"}]},
            {"id": "c", "conversations": [{"from": "human", "value": "Name a prime."}, {"from": "gpt", "value": "7"}]}]
    path = tmp_path / "sharegpt.json"
    path.write_text(json.dumps(data))
    loaded = traces.load_sharegpt(path, tokenizer, max_output=16, rate_per_s=2.0, seed=0)
    assert [r.prompt for r in loaded] == [tokenizer.encode("Why is the sky blue?"), tokenizer.encode("Name a prime.")]
    assert [r.max_new_tokens for r in loaded] == [16, 1]
    assert [r.arrival_s for r in loaded] == traces.arrival_times(2, rate_per_s=2.0, seed=0)


@pytest.mark.parametrize("entry, needle", [
    ({"id": "x", "turns": []}, "entry 1 has no 'conversations'"),
    ({"id": "x", "conversations": [{"from": "human", "value": ""}, {"from": "gpt", "value": "ok"}]}, "entry 1.*empty"),
    ({"id": "x", "conversations": [{"from": "human"}, {"from": "gpt", "value": "ok"}]}, "entry 1 \\(x\\)"),
])
def test_bad_sharegpt_entries_raise_value_error_naming_the_entry(tokenizer, tmp_path, entry, needle):
    good = {"id": "g", "conversations": [{"from": "human", "value": "Hello"}, {"from": "gpt", "value": "Hi there"}]}
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([good, entry]))
    with pytest.raises(ValueError, match=needle):
        traces.load_sharegpt(path, tokenizer)
