"""The serving benchmark at tiny sizes on the real model: every part measured, static and continuous batching give
the same greedy tokens, continuous keeps more slots busy, and the rate sweep rises with the offered rate.

The engine runs on a StepClock here (each step 50 ms of engine time), so that the numbers asserted on do not
depend on what else this machine is running; the step costs of part 1 are wall-clock, as in the benchmark."""
from __future__ import annotations

import json

import pytest

from kvlab import StepClock
from kvlab.bench import serve as serve_bench
from kvlab.bench.__main__ import main

TINY = dict(num_requests=6, max_num_seqs=2, prompt_mean=16, output_mean=8, max_prompt=32, max_output=16,
            max_num_batched_tokens=64, batches=(1, 2), step_tokens=5, long_prompt=64, short_prompt=8, num_short=2,
            chunk_budget=16)
RATES = [2.0, 8.0, 32.0]


@pytest.fixture(scope="module")
def report(model, tokenizer):
    return serve_bench.run(model, tokenizer, rates=RATES, progress=False, make_clock=lambda: StepClock(0.05), **TINY)


def test_report_is_standard_json_with_every_part_and_the_claims(report, tmp_path):
    json.dumps(report, allow_nan=False)
    assert {"device", "date", "dtype", "sizes", "step_cost", "policies", "chunked_prefill", "rate_sweep", "claims",
            "same_tokens", "runtime_s", "load_average", "part_s"} <= set(report)
    assert report["clock"] == "StepClock"
    assert [c["id"] for c in report["claims"]] == ["19a", "19b", "20", "21"]
    assert all(c["claim"] == serve_bench.CLAIMS[c["id"]] and c["measured"] and c["verdict"] and c["why"] for c in report["claims"])
    path = serve_bench.save(report, tmp_path)
    assert path.name.startswith("serve_cpu") and json.loads(path.read_text())["sizes"]["num_requests"] == 6


def test_step_cost_is_measured_at_each_batch(report):
    rows = report["step_cost"]
    assert [r["batch"] for r in rows] == [1, 2]
    assert all(r["step_ms"] > 0 and r["tok_s"] == pytest.approx(r["batch"] / r["step_ms"] * 1e3) for r in rows)
    assert rows[0]["tok_s_vs_batch_1"] == 1.0


def test_static_and_continuous_batching_give_the_same_greedy_tokens(report):
    policies = report["policies"]
    assert policies["same_tokens"] and policies["mismatched_requests"] == [] and report["same_tokens"]


def test_occupancy_and_kv_usage_are_shares_and_continuous_keeps_more_slots_busy(report):
    static, continuous = report["policies"]["static"], report["policies"]["continuous"]
    requests = report["policies"]["requests"]
    for run in (static, continuous):
        series = run["series"]
        assert len(series["end_s"]) == len(series["occupancy"]) == len(series["kv_usage"]) > 0
        assert all(0 <= x <= 1 for x in series["occupancy"] + series["kv_usage"])
        assert 0 < run["mean_occupancy"] <= 1 and 0 < run["mean_kv_usage"] <= 1
        assert run["output_tokens"] == round(requests["output_mean"] * requests["num"])  # each its trace length
    assert continuous["mean_occupancy"] >= static["mean_occupancy"]
    assert continuous["steps"] <= static["steps"]


def test_chunked_prefill_splits_the_long_prompt_and_keeps_the_tokens(report):
    chunked, whole = report["chunked_prefill"]["runs"]
    assert chunked["chunked"] and not whole["chunked"]
    assert chunked["long_prompt_steps"] >= 64 // 16 and whole["long_prompt_steps"] == 1
    assert report["chunked_prefill"]["same_tokens"]


def test_rate_sweep_is_ordered_by_offered_rate_and_throughput_rises_with_it(report):
    sweep = report["rate_sweep"]
    rows = sweep["rows"]
    assert [r["rate_per_s"] for r in rows] == RATES
    assert [r["offered_load"] for r in rows] == sorted(r["offered_load"] for r in rows)
    for slow, fast in zip(rows, rows[1:]):
        assert fast["throughput_tok_s"] >= slow["throughput_tok_s"]
        assert fast["arrival_s"][-1] < slow["arrival_s"][-1]
    assert rows[-1]["throughput_tok_s"] > rows[0]["throughput_tok_s"]
    assert all(len(r["ttft_s"]) == 6 and all(t > 0 for t in r["ttft_s"]) for r in rows)


def test_unknown_size_is_refused_by_name(model, tokenizer):
    with pytest.raises(ValueError, match="num_reqests"):
        serve_bench.run(model, tokenizer, num_reqests=3)


def test_cli_prints_saves_and_fails_loudly_when_tokens_differ(report, monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(serve_bench, "run", lambda model, tokenizer, **sizes: report)
    main(["serve", "--device", "cpu"])
    out = capsys.readouterr().out
    assert "static vs continuous" in out and "[19a]" in out and "saved benchmarks/results/serve_cpu" in out
    assert (tmp_path / "benchmarks" / "results").is_dir()
    monkeypatch.setattr(serve_bench, "run", lambda model, tokenizer, **sizes: report | {"same_tokens": False})
    with pytest.raises(SystemExit, match="FAILED"):
        main(["serve", "--device", "cpu", "--no-save"])
