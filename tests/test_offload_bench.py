"""The offload benchmark at tiny sizes on the real model: every part measured and standard JSON, swaps bit-exact and
moving whole blocks, a prefix loaded back from the tier gives the cold run's tokens, swap preemption recomputes
nothing where recompute preemption does, the crossover helper finds where swapping starts to win; on the chatbot
scenario the tier serves what the pool evicted, with the same tokens."""
from __future__ import annotations

import json
import math

import pytest

from kvlab.bench import offload
from kvlab.bench.__main__ import main
from kvlab.bench.offload_chatbot import chatbot_tier
from kvlab.viz.offload_figures import chatbot_tier_figure

TINY = dict(tier_mib=2, lengths=(16, 40), prefix_tokens=32, num_requests=4, num_blocks=4, max_num_seqs=4,
            max_num_batched_tokens=64, prompt_mean=24, output_mean=12, context=48, repeats=1)


@pytest.fixture(scope="module")
def report(model, tokenizer):
    return offload.run(model, tokenizer, progress=False, **TINY)


def test_report_has_every_part_and_the_claim_and_saves_as_standard_json(report, tmp_path):
    assert {"device", "date", "dtype", "block_bytes", "sizes", "tier_bandwidth", "swap_vs_recompute",
            "prefix_hit_ttft", "memory_pressure", "premise", "claims", "same_tokens", "bit_exact", "runtime_s",
            "part_s", "load_average"} <= set(report)
    assert [c["id"] for c in report["claims"]] == ["17"]
    assert all(c["claim"] == offload.CLAIM and c["measured"] and c["verdict"] and c["why"] for c in report["claims"])
    path = offload.save(report, tmp_path)
    assert path.name.startswith("offload_cpu")
    json.dumps(json.loads(path.read_text()), allow_nan=False)


def test_every_tier_kind_is_measured_with_the_bytes_it_moved(report):
    bw = report["tier_bandwidth"]
    assert [(r["kind"], r["flush"]) for r in bw["rows"]] == [("file", False), ("file", True), ("memory", False)]
    blocks = TINY["tier_mib"] * 2**20 // report["block_bytes"]
    for row in bw["rows"]:
        assert row["bytes"] == blocks * report["block_bytes"]
        assert row["write_gb_s"] == pytest.approx(row["bytes"] / row["write_s"] / 1e9)
        assert row["read_gb_s"] == pytest.approx(row["bytes"] / row["read_s"] / 1e9)
    assert bw["copy_gb_s"] > 0 and "page cache" in bw["reads_note"]


def test_swaps_are_bit_exact_and_move_whole_blocks(report):
    sv, block_bytes = report["swap_vs_recompute"], report["block_bytes"]
    assert [r["tokens"] for r in sv["rows"]] == list(TINY["lengths"])
    for row in sv["rows"]:
        assert row["bit_exact"] is True
        assert row["bytes"] == math.ceil(row["tokens"] / 16) * block_bytes
        assert row["swap_s"] == pytest.approx(row["swap_out_s"] + row["swap_in_s"])
        assert row["speedup"] == pytest.approx(row["recompute_s"] / row["swap_s"])
    assert report["bit_exact"] and sv["crossover_tokens"] == offload.crossover(sv["rows"]) and sv["why"]


def test_a_prefix_loaded_back_from_the_tier_gives_the_cold_runs_tokens(report):
    pt = report["prefix_hit_ttft"]
    assert pt["same_tokens"]
    assert pt["tier_hit_tokens"] == pt["pool_hit_tokens"] == TINY["prefix_tokens"]  # the prefix is 2 whole blocks
    assert pt["tier_read_bytes"] == pt["tier_hit_tokens"] // 16 * report["block_bytes"]
    assert all(pt[f"{run}_ttft_s"] > 0 for run in ("cold", "pool_hit", "tier_hit"))


def test_swap_preemption_recomputes_nothing_and_recompute_preemption_does(report):
    mp = report["memory_pressure"]
    assert mp["same_tokens"]
    assert mp["reference"]["num_preemptions"] == 0 and mp["reference"]["num_blocks"] > TINY["num_blocks"]
    swap, recompute = mp["swap"], mp["recompute"]
    assert swap["num_preemptions"] > 0 and recompute["num_preemptions"] > 0
    assert swap["swapped_mib"] > 0 and swap["recomputed_tokens"] == 0 and swap["tier_faults"] == 0
    assert recompute["recomputed_tokens"] > 0 and recompute["swapped_mib"] == 0
    assert swap["peak_holding_kv"] >= swap["peak_running"]


def test_the_premise_check_times_a_fetch_of_the_older_half_every_step(report):
    pr, block_bytes = report["premise"], report["block_bytes"]
    assert pr["fetch_bytes_per_step"] == math.ceil(TINY["context"] / 16) // 2 * block_bytes
    assert pr["step_s"] > 0 and pr["step_with_fetch_s"] > 0 and pr["idle_swap_s"] > 0
    assert f"{pr['context']} tokens" in pr["verdict"]


def _rows(*pairs):
    return [{"tokens": t, "swap_s": s, "recompute_s": r} for t, s, r in pairs]


@pytest.mark.parametrize("rows, expected", [
    (_rows((16, 1.0, 2.0), (64, 1.0, 3.0), (256, 1.0, 9.0)), 16),  # swap wins everywhere
    (_rows((256, 1.0, 9.0), (16, 2.0, 1.0), (64, 1.0, 3.0)), 64),  # wins from 64 on (rows in any order)
    (_rows((16, 1.0, 2.0), (64, 3.0, 1.0), (256, 1.0, 9.0)), 256),  # a loss at 64: only from 256 on
    (_rows((16, 2.0, 1.0), (64, 1.0, 3.0), (256, 9.0, 1.0)), None),  # loses at the longest: never
    (_rows((16, 1.0, 1.0)), None),  # a tie is no win
])
def test_crossover_is_the_shortest_length_from_which_swapping_always_wins(rows, expected):
    assert offload.crossover(rows) == expected


@pytest.mark.parametrize("same_tokens, bit_exact, needle", [(False, True, "changed greedy tokens"),
                                                             (True, False, "not bit-exact")])
def test_the_cli_fails_when_tokens_changed_or_a_swap_was_not_exact(monkeypatch, same_tokens, bit_exact, needle):
    monkeypatch.setattr("kvlab.load_model", lambda device: (None, None))
    monkeypatch.setattr(offload, "run", lambda model, tokenizer, **sizes: {"same_tokens": same_tokens,
                                                                           "bit_exact": bit_exact})
    monkeypatch.setattr(offload, "print_report", lambda report: None)
    with pytest.raises(SystemExit, match=needle):
        main(["offload", "--no-save"])


@pytest.fixture(scope="module")
def chatbot(model, tokenizer):
    return chatbot_tier(model, tokenizer, chat_requests=2, new_tokens=4)


def test_on_the_chatbot_the_tier_turns_the_pools_partial_hit_into_a_whole_one_with_the_same_tokens(chatbot):
    assert chatbot["same_tokens"]
    (first, other, second), tiered = chatbot["runs"]["pool"]["rows"], chatbot["runs"]["tier"]["rows"]
    assert [r["kind"] for r in tiered] == ["chat", "other", "chat"]
    whole = chatbot["shared_prompt_tokens"] // chatbot["block_size"] * chatbot["block_size"]
    assert tiered[2]["pool_hit_tokens"] + tiered[2]["tier_hit_tokens"] == whole
    assert tiered[2]["tier_hit_tokens"] > 0 and second["tier_hit_tokens"] == 0
    assert 0 < second["pool_hit_tokens"] < whole, "the other request should evict part of the system prompt"
    assert first["pool_hit_tokens"] == tiered[0]["pool_hit_tokens"] == 0, "the warm-up must not seed the cache"


def test_the_chatbot_figure_stacks_each_requests_prompt_by_source(chatbot):
    fig = chatbot_tier_figure(chatbot)
    stacks = {}
    for trace in fig.data:
        if trace.xaxis == "x2":
            stacks.setdefault(trace.offsetgroup, []).append(trace.y)
    for run, group in (("pool", "left"), ("tier", "right")):
        totals = [sum(parts) for parts in zip(*stacks[group])]
        assert totals == [r["prompt_tokens"] for r in chatbot["runs"][run]["rows"]]
    assert sum(1 for t in fig.data if t.xaxis == "x") == 2
