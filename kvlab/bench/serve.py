"""Serving the real model by the wall clock: what continuous batching and chunked prefill buy on this device,
beside what is commonly claimed about them (CLAIMS.md 19–21).

1. step cost vs batch — one decode step at batch 1, 2, 4, … (median after warm-up): ms/step and tok/s. Batching
   pays only as far as a step's cost stays flat in the batch: the ratio tok/s(B) / tok/s(1) bounds what any
   scheduler can gain by filling B slots, and it is what makes the next ratio what it is.
2. static vs continuous — the same chat-trace requests (ShareGPT-like long tail, scaled down on a CPU), all at
   once, the same max_num_seqs, every request generating exactly its trace length: output tok/s, TTFT, TPOT, the
   share of slots busy per step (occupancy), KV usage, per-step series. Greedy tokens must be equal.
3. chunked prefill — short requests decoding when a long prompt arrives, and more short ones arriving while it is
   prefilled: the decode stall (ITL) and the TTFTs with a small token budget (chunks) vs one ≥ the prompt.
4. latency vs throughput — the same requests arriving as a Poisson process at rising rates (fractions of the
   capacity measured in 2, a lower bound: its long-tailed last requests run nearly alone): throughput, TTFT
   p50/p99, and whether requests pile up in the engine faster than they leave (backlog_growth), the sign of a
   queue that grows without bound.
Caches are paged without prefix caching, so that only batching differs. Times are wall-clock seconds.
"""
from __future__ import annotations

import math
import os
import pathlib
import statistics
import time

import torch

from .. import traces
from ..engine import generate, percentile, serve
from .results import RESULTS, merge_sizes, save_result
from .roofs import device_label

CPU_SIZES = dict(num_requests=20, max_num_seqs=8, prompt_mean=64, output_mean=64, max_prompt=256, max_output=256,
                 max_num_batched_tokens=256, batches=(1, 2, 4, 8, 16), step_tokens=12, long_prompt=400,
                 short_prompt=24, num_short=4, chunk_budget=64, load_fractions=(0.5, 1.0, 1.5, 2.0))
GPU_SIZES = dict(num_requests=256, max_num_seqs=64, prompt_mean=161, output_mean=338, max_prompt=1024,
                 max_output=1024, max_num_batched_tokens=2048, batches=(1, 4, 16, 64, 128, 256), step_tokens=24,
                 long_prompt=4000, short_prompt=64, num_short=16, chunk_budget=256,
                 load_fractions=(0.5, 1.0, 1.5, 2.0))
BACKLOG_GROWTH = 0.15  # ≥ 15 % of arrivals left piling up: the engine does not keep up (see backlog_growth)
TTFT_TARGET_S = 0.5
CONTENDED = 0.15  # other programs took more than this share of the CPUs during a part: its timings are suspect
CLAIMS = {
    "19a": "Continuous batching raises throughput 5–10× in typical workloads.",
    "19b": "GPU utilisation rises from ~30–50 % (static batching) to ~80–95 % (continuous).",
    "20": "A large batch raises throughput but each request waits longer; TTFT < 500 ms is usually required for chat.",
    "21": "TTFT is dominated by queueing and prefill; tokens/s by the decode step.",
}


def default_sizes(device) -> dict:
    return dict(GPU_SIZES if torch.device(device).type == "cuda" else CPU_SIZES)


def _clean(value):
    """NaN → None, recursively: the JSON stays standard."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


# --- 1. step cost ------------------------------------------------------------------------------------------------

def step_costs(model, tokenizer, batches, new_tokens: int = 12, prompt_len: int = 32, warmup: int = 2) -> list[dict]:
    """Median wall seconds of one decode step at each batch (paged cache, short prompts, steps after `warmup`)."""
    generate(model, tokenizer, [traces.text_ids(tokenizer, prompt_len)], max_new_tokens=4, cache="paged")
    rows = []
    for batch in batches:
        prompts = [traces.text_ids(tokenizer, prompt_len, i) for i in range(batch)]
        stats = generate(model, tokenizer, prompts, max_new_tokens=new_tokens, cache="paged", stop_at_eos=False).stats
        step_s = statistics.median(stats.step_times_s[warmup:] or stats.step_times_s)
        rows.append({"batch": batch, "step_ms": step_s * 1e3, "tok_s": batch / step_s})
    for row in rows:
        row["tok_s_vs_batch_1"] = row["tok_s"] / rows[0]["tok_s"]
    return rows


def tok_s_at(rows: list[dict], batch: float) -> float:
    """tok/s at a (mean) batch, step cost interpolated linearly between the measured batches."""
    points = [(r["batch"], r["step_ms"]) for r in rows]
    batch = min(max(batch, points[0][0]), points[-1][0])
    for (b0, c0), (b1, c1) in zip(points, points[1:]):
        if b0 <= batch <= b1:
            return batch / ((c0 + (c1 - c0) * (batch - b0) / (b1 - b0)) / 1e3)
    return points[0][0] / (points[0][1] / 1e3)


# --- 2. static vs continuous ----------------------------------------------------------------------------------

def _serve(model, tokenizer, requests, make_clock=None, **options):
    """serve() with every request generating exactly its max_new_tokens, by the wall clock (the engine starts its
    own once the cache is made) unless make_clock() gives another (a StepClock: the same numbers on every run)."""
    clock = make_clock() if make_clock is not None else None
    return serve(model, tokenizer, requests, cache="paged", stop_at_eos=False, clock=clock, **options)


def _series(steps, max_points: int = 120) -> dict:
    stride = max(1, math.ceil(len(steps) / max_points))
    kept = steps[::stride]
    return {"stride": stride, "end_s": [round(s.end_s, 4) for s in kept],
            "occupancy": [round(s.occupancy, 4) for s in kept], "kv_usage": [round(s.kv_usage, 4) for s in kept],
            "waiting": [len(s.waiting) for s in kept]}


def _policy_run(result) -> dict:
    steps = result.steps
    queued = [s for s in steps if s.waiting]
    return result.metrics() | {
        "mean_batch": sum(s.num_scheduled for s in steps) / len(steps),
        "occupancy_while_queued": sum(s.occupancy for s in queued) / len(queued) if queued else None,
        "series": _series(steps)}


def compare_policies(model, tokenizer, requests, max_num_seqs: int, max_num_batched_tokens: int,
                     make_clock=None) -> dict:
    runs, tokens = {}, {}
    for policy in ("static", "continuous"):
        result = _serve(model, tokenizer, requests, max_num_seqs=max_num_seqs,
                        max_num_batched_tokens=max_num_batched_tokens, policy=policy, make_clock=make_clock)
        runs[policy], tokens[policy] = _policy_run(result), result.token_ids
    mismatched = [i for i, (a, b) in enumerate(zip(tokens["static"], tokens["continuous"])) if a != b]
    prompts = [len(r.prompt) for r in requests]
    outputs = [r.max_new_tokens for r in requests]
    return runs | {
        "requests": {"num": len(requests), "prompt_mean": statistics.mean(prompts), "prompt_max": max(prompts),
                     "output_mean": statistics.mean(outputs), "output_p50": percentile(outputs, 50),
                     "output_p99": percentile(outputs, 99), "output_max": max(outputs)},
        "throughput_ratio": runs["continuous"]["throughput_tok_s"] / runs["static"]["throughput_tok_s"],
        "same_tokens": not mismatched, "mismatched_requests": mismatched}


# --- 3. chunked prefill ------------------------------------------------------------------------------------------

def chunked_prefill(model, tokenizer, long_prompt: int, short_prompt: int, num_short: int, chunk_budget: int,
                    decode_step_s: float, make_clock=None) -> dict:
    """`num_short` early requests decode; the long prompt arrives after ~4 of their steps; `num_short` late ones
    arrive a fifth of its prefill later (stuck behind it). Budget `chunk_budget` (chunks) vs ≥ everything.
    The early ones generate long enough to decode through all of the long prompt's chunks."""
    long_ids = traces.text_ids(tokenizer, long_prompt, 7)
    prefill_s = generate(model, tokenizer, [long_ids], max_new_tokens=1, cache="paged").stats.ttft_s
    long_at = 4 * decode_step_s + 0.05
    late_at = long_at + prefill_s / 5
    early_tokens = 2 * (math.ceil(long_prompt / max(1, chunk_budget - num_short)) + 4)
    early = [traces.text_ids(tokenizer, short_prompt, i) for i in range(num_short)]
    late = [traces.text_ids(tokenizer, short_prompt, 40 + i) for i in range(num_short)]
    requests = ([{"prompt": p, "max_new_tokens": early_tokens, "arrival_s": 0.0} for p in early]
                + [{"prompt": long_ids, "max_new_tokens": 4, "arrival_s": long_at}]
                + [{"prompt": p, "max_new_tokens": 8, "arrival_s": late_at} for p in late])
    unchunked = long_prompt + 2 * num_short * short_prompt
    runs, tokens = [], []
    for budget in (chunk_budget, unchunked):
        result = _serve(model, tokenizer, requests, max_num_seqs=2 * num_short + 1, max_num_batched_tokens=budget,
                        make_clock=make_clock)
        outs = result.outputs
        early_itl = [gap for o in outs[:num_short] for gap in o.itl_s]
        late_ttft = [o.ttft_s for o in outs[num_short + 1:]]
        runs.append({"max_num_batched_tokens": budget, "chunked": budget < long_prompt,
                     "long_prompt_steps": sum(1 for s in result.steps if any(i == num_short for i, _ in s.prefill)),
                     "long_ttft_s": outs[num_short].ttft_s,
                     "late_ttft_p50_s": percentile(late_ttft, 50), "late_ttft_p99_s": percentile(late_ttft, 99),
                     "early_itl_p50_s": percentile(early_itl, 50), "early_itl_p99_s": percentile(early_itl, 99),
                     "early_itl_max_s": max(early_itl), "throughput_tok_s": result.throughput_tok_s})
        tokens.append(result.token_ids)
    return {"scenario": {"long_prompt": long_prompt, "short_prompt": short_prompt, "num_early": num_short,
                         "num_late": num_short, "early_tokens": early_tokens, "long_arrival_s": long_at,
                         "late_arrival_s": late_at, "long_prefill_alone_s": prefill_s},
            "runs": runs, "same_tokens": tokens[0] == tokens[1]}


# --- 4. latency vs throughput -----------------------------------------------------------------------------------

def _slope(xs, ys) -> float | None:
    """Least-squares slope of ys against xs; None when the xs do not spread."""
    mx, my = statistics.mean(xs), statistics.mean(ys)
    spread = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / spread if spread else None


def backlog_growth(result, rate_per_s: float) -> float | None:
    """How fast requests pile up, as a share of the arrival rate: the slope of the number in the engine (running +
    arrived and waiting) against time over the second half of the arrival window, over the rate. About 0 when the
    engine keeps up, about 1 − capacity / rate when it does not (the first half is left out: it fills up)."""
    arrivals = sorted(o.arrival_s for o in result.outputs)
    mid, last = arrivals[len(arrivals) // 2], arrivals[-1]
    points = [(s.end_s, len(s.running) + len(s.waiting)) for s in result.steps if mid <= s.end_s <= last]
    slope = _slope(*zip(*points)) if len(points) >= 3 else None
    return None if slope is None else slope / rate_per_s


def rate_sweep(model, tokenizer, rates, capacity_req_s: float, trace: dict, max_num_seqs: int,
               max_num_batched_tokens: int, make_clock=None) -> dict:
    """The trace's requests as a Poisson process at each rate (requests per second), continuous batching."""
    rows = []
    for rate in sorted(rates):
        requests = traces.chat_requests(tokenizer, rate_per_s=rate, **trace)
        result = _serve(model, tokenizer, requests, max_num_seqs=max_num_seqs,
                        max_num_batched_tokens=max_num_batched_tokens, make_clock=make_clock)
        outs, m = result.outputs, result.metrics()
        arrivals, ttft = [o.arrival_s for o in outs], [o.ttft_s for o in outs]
        growth = backlog_growth(result, rate)
        rows.append({"rate_per_s": rate, "offered_load": rate / capacity_req_s,
                     "throughput_tok_s": m["throughput_tok_s"], "ttft_p50_s": m["ttft_p50_s"],
                     "ttft_p99_s": m["ttft_p99_s"], "tpot_p50_s": m["tpot_p50_s"], "e2e_p50_s": m["e2e_p50_s"],
                     "mean_occupancy": m["mean_occupancy"], "backlog_growth": growth,
                     "queue_grows": None if growth is None else growth >= BACKLOG_GROWTH,
                     "ttft_slope": _slope(arrivals, ttft),
                     "queue_share_of_ttft": statistics.mean(o.queue_s for o in outs) / statistics.mean(ttft),
                     "max_in_engine": max(len(s.running) + len(s.waiting) for s in result.steps),
                     "max_waiting": max(len(s.waiting) for s in result.steps),
                     "arrival_s": [round(a, 3) for a in arrivals], "ttft_s": [round(t, 4) for t in ttft],
                     "e2e_s": [round(o.e2e_s, 4) for o in outs]})
    growing = [r["rate_per_s"] for r in rows if r["queue_grows"]]
    meeting = [r["rate_per_s"] for r in rows if r["ttft_p99_s"] < TTFT_TARGET_S]
    return {"capacity_req_s": capacity_req_s, "rows": rows,
            "queue_grows_from_rate_per_s": growing[0] if growing else None,
            "max_rate_ttft_p99_under_target": max(meeting) if meeting else None, "ttft_target_s": TTFT_TARGET_S}


# --- the claims beside the measurements -------------------------------------------------------------------------

def _claims(report: dict) -> list[dict]:
    """Each claim of CLAIMS.md 19–21 beside what was measured here, a verdict, and why the two differ."""
    rows, pol, sweep, chunk = report["step_cost"], report["policies"], report["rate_sweep"], report["chunked_prefill"]
    full = next((r for r in rows if r["batch"] == report["sizes"]["max_num_seqs"]), rows[-1])
    static, cont, ratio = pol["static"], pol["continuous"], pol["throughput_ratio"]
    low, high = sweep["rows"][0], sweep["rows"][-1]
    unchunked = chunk["runs"][-1]
    cost = (f"a decode step costs {rows[0]['step_ms']:.0f} ms at batch 1 and {full['step_ms']:.0f} ms at batch "
            f"{full['batch']} here: {full['batch']} busy slots give {full['tok_s_vs_batch_1']:.1f}× the tokens/s "
            f"of one, and no scheduler can gain more than that by filling them")
    best = sweep["max_rate_ttft_p99_under_target"]
    return [
        {"id": "19a", "claim": CLAIMS["19a"],
         "measured": f"{ratio:.2f}× (continuous {cont['throughput_tok_s']:.0f} vs static "
                     f"{static['throughput_tok_s']:.0f} output tok/s, max_num_seqs {full['batch']})",
         "verdict": "holds here" if ratio >= 5 else "smaller here" if ratio >= 2 else "far smaller here",
         "why": f"{cost}. Static batching ran {static['mean_batch']:.1f} sequences a step on average, continuous "
                f"{cont['mean_batch']:.1f}; the step cost alone turns that into {pol['ratio_from_step_cost']:.2f}×. "
                f"The 5–10× figures are GPU figures, where a step costs about the same at batch 1 and 64, against "
                f"static baselines that keep computing finished sequences (here a finished one leaves the batch "
                f"and the step gets cheaper)."},
        {"id": "19b", "claim": CLAIMS["19b"],
         "measured": f"slot occupancy {_pct(static['mean_occupancy'])} static → {_pct(cont['mean_occupancy'])} "
                     f"continuous; {_pct(static['occupancy_while_queued'])} → {_pct(cont['occupancy_while_queued'])} "
                     f"while requests wait",
         "verdict": _occupancy_verdict(static["mean_occupancy"], cont["occupancy_while_queued"]),
         "why": "occupancy is the share of the max_num_seqs slots that compute each step, the 'utilisation' the "
                "claim means; static leaves a finished request's slot empty until its whole batch ends, continuous "
                "refills it the next step. Both drain at the end of a finite trace (the long-tailed last requests "
                "run nearly alone), which pulls the whole-run means down. A busy slot is not a busy chip: on this "
                "CPU every step already keeps both cores busy."},
        {"id": "20", "claim": CLAIMS["20"],
         "measured": f"batch {full['batch']} vs 1: {full['tok_s_vs_batch_1']:.1f}× the tokens/s, each token "
                     f"{full['step_ms'] / rows[0]['step_ms']:.1f}× slower; TTFT p99 {_ms(low['ttft_p99_s'])} at "
                     f"{low['rate_per_s']:.2f} req/s (load {low['offered_load']:.1f}), {_ms(high['ttft_p99_s'])} at "
                     f"{high['rate_per_s']:.2f} req/s (load {high['offered_load']:.1f})",
         "verdict": (f"TTFT p99 < {TTFT_TARGET_S * 1e3:.0f} ms up to {best:.2f} req/s" if best is not None
                     else f"TTFT p99 ≥ {TTFT_TARGET_S * 1e3:.0f} ms at every swept rate"),
         "why": f"{cost}. TTFT is a prompt's prefill plus its wait for a slot and a step; past the capacity "
                f"(~{sweep['capacity_req_s']:.2f} req/s measured with all requests at once, a lower bound) requests pile up "
                + (f"(from {sweep['queue_grows_from_rate_per_s']:.2f} req/s in this sweep)"
                   if sweep["queue_grows_from_rate_per_s"] is not None else "(not within this sweep)")
                + " and TTFT grows with the queue."},
        {"id": "21", "claim": CLAIMS["21"],
         "measured": f"queueing is {_pct(low['queue_share_of_ttft'])} of the mean TTFT at load "
                     f"{low['offered_load']:.1f}, {_pct(high['queue_share_of_ttft'])} at {high['offered_load']:.1f}; a "
                     f"short request behind a {chunk['scenario']['long_prompt']}-token prompt waits "
                     f"{_ms(unchunked['late_ttft_p50_s'])} (the prompt's prefill alone: "
                     f"{_ms(chunk['scenario']['long_prefill_alone_s'])}); continuous TPOT p50 {_ms(cont['tpot_p50_s'])} "
                     f"vs a {full['step_ms']:.0f} ms batch-{full['batch']} decode step",
         "verdict": "holds" if high["queue_share_of_ttft"] > low["queue_share_of_ttft"] else "partly",
         "why": "below capacity TTFT is mostly prefill (its own, or a long prompt's ahead of it), above it more "
                "and more waiting; TPOT is the decode step of the batch a request shares, plus the prefill "
                "chunks run beside it."},
    ]


def _occupancy_verdict(static: float, continuous_queued: float | None) -> str:
    static_ok, continuous_ok = 0.3 <= static <= 0.5, (continuous_queued or 0) >= 0.8
    return {(True, True): "holds for slots", (True, False): "the static half holds",
            (False, True): "the continuous half holds", (False, False): "differs here"}[static_ok, continuous_ok]


def _pct(x) -> str:
    return "n/a" if x is None else f"{x:.0%}"


def _grows(x) -> str:
    return "n/a" if x is None else "grows" if x else "flat"


def _ms(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x * 1e3:.0f} ms"


# --- the whole benchmark -----------------------------------------------------------------------------------------

def _cpu_seconds() -> tuple[float | None, float]:
    """(busy CPU seconds of the whole machine so far, from /proc/stat — None where there is none; CPU seconds of
    this process so far): their difference over a part is what other programs took from it."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(x) for x in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None, time.process_time()
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK"), time.process_time()


def run(model, tokenizer, seed: int = 0, rates=None, progress: bool = True, make_clock=None, **sizes) -> dict:
    """Every part of the module docstring at `sizes` (default_sizes(model.device), overridden by keyword);
    rates: request rates for the sweep (default: load_fractions × the measured capacity). make_clock: None, the
    wall clock (the benchmark), or a factory of the engine's clock for parts 2–4 (a test's StepClock)."""
    start, load_before = time.perf_counter(), os.getloadavg()[0]
    sizes = merge_sizes(default_sizes(model.device), sizes)
    say = print if progress else (lambda *a, **k: None)
    trace = dict(num_requests=sizes["num_requests"], seed=seed, prompt_mean=sizes["prompt_mean"],
                 output_mean=sizes["output_mean"], max_prompt=sizes["max_prompt"], max_output=sizes["max_output"])
    engine = dict(max_num_seqs=sizes["max_num_seqs"], max_num_batched_tokens=sizes["max_num_batched_tokens"],
                  make_clock=make_clock)
    part_s, others, mark = {}, {}, (time.perf_counter(), *_cpu_seconds())

    def done(part: str) -> None:
        nonlocal mark
        now = (time.perf_counter(), *_cpu_seconds())
        part_s[part] = now[0] - mark[0]
        if None not in now + mark:  # CPU time others took, as a share of every core over the part
            others[part] = ((now[1] - mark[1]) - (now[2] - mark[2])) / (part_s[part] * os.cpu_count())
        mark = now

    say("step cost vs batch …", flush=True)
    rows = step_costs(model, tokenizer, sizes["batches"], sizes["step_tokens"])
    done("step_cost")
    say("static vs continuous …", flush=True)
    requests = traces.chat_requests(tokenizer, arrival="all-at-once", **trace)
    policies = compare_policies(model, tokenizer, requests, **engine)
    policies["ratio_from_step_cost"] = (tok_s_at(rows, policies["continuous"]["mean_batch"])
                                        / tok_s_at(rows, policies["static"]["mean_batch"]))
    done("policies")
    say("chunked prefill …", flush=True)
    short_step_s = next(r["step_ms"] for r in rows if r["batch"] >= min(sizes["num_short"], rows[-1]["batch"])) / 1e3
    chunked = chunked_prefill(model, tokenizer, sizes["long_prompt"], sizes["short_prompt"], sizes["num_short"],
                              sizes["chunk_budget"], short_step_s, make_clock)
    done("chunked_prefill")
    capacity = len(requests) / policies["continuous"]["duration_s"]
    rates = rates or [round(f * capacity, 3) for f in sizes["load_fractions"]]
    say(f"request rates {', '.join(f'{r:g}' for r in sorted(rates))} req/s …", flush=True)
    sweep = rate_sweep(model, tokenizer, rates, capacity, trace, **engine)
    done("rate_sweep")
    report = {"device": device_label(model.device), "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__,
              "dtype": str(model.dtype).replace("torch.", ""),
              "clock": "wall" if make_clock is None else type(make_clock()).__name__, "cache": "paged", "seed": seed,
              "sizes": {k: list(v) if isinstance(v, tuple) else v for k, v in sizes.items()},
              "step_cost": rows, "policies": policies, "chunked_prefill": chunked, "rate_sweep": sweep}
    report["claims"] = _claims(report)
    report["same_tokens"] = policies["same_tokens"] and chunked["same_tokens"]
    report["runtime_s"], report["part_s"], report["others_cpu_share"] = time.perf_counter() - start, part_s, others
    report["load_average"] = {"before": load_before, "after": os.getloadavg()[0], "cpus": os.cpu_count()}
    return _clean(report)


def print_report(report: dict) -> None:
    s = report["sizes"]
    load = report["load_average"]
    print(f"Serving SmolLM2-135M on {report['device']} — {report['dtype']}, {report['cache']} cache, clock {report['clock']}, "
          f"{report['runtime_s']:.0f} s (load average {load['before']:.1f} → {load['after']:.1f} on {load['cpus']} CPUs)")
    busy = {part: share for part, share in report["others_cpu_share"].items() if share > CONTENDED}
    if busy:
        print("WARNING: other programs took " + ", ".join(f"{share:.0%} of the CPUs during {part}" for part, share
                                                         in busy.items()) + ": those timings are inflated")
    print("\n1. one decode step vs batch")
    print(f"{'batch':>6} {'ms/step':>8} {'tok/s':>7} {'× batch 1':>9}")
    for r in report["step_cost"]:
        print(f"{r['batch']:>6} {r['step_ms']:>8.1f} {r['tok_s']:>7.0f} {r['tok_s_vs_batch_1']:>8.1f}×")
    pol, req = report["policies"], report["policies"]["requests"]
    print(f"\n2. static vs continuous, max_num_seqs {s['max_num_seqs']}: {req['num']} requests at once, prompt mean "
          f"{req['prompt_mean']:.0f} (max {req['prompt_max']}), output mean {req['output_mean']:.0f} (p50 "
          f"{req['output_p50']:.0f}, max {req['output_max']})")
    print(f"{'policy':<11} {'tok/s':>6} {'TTFT p50':>9} {'p99':>7} {'TPOT p50':>9} {'p99':>7} {'occupancy':>9} "
          f"{'while queued':>12} {'KV used':>7}")
    for name in ("static", "continuous"):
        m = pol[name]
        print(f"{name:<11} {m['throughput_tok_s']:>6.0f} {_ms(m['ttft_p50_s']):>9} {_ms(m['ttft_p99_s']):>7} "
              f"{_ms(m['tpot_p50_s']):>9} {_ms(m['tpot_p99_s']):>7} {m['mean_occupancy']:>9.0%} "
              f"{_pct(m['occupancy_while_queued']):>12} {m['mean_kv_usage']:>7.0%}")
    print(f"continuous / static throughput: {pol['throughput_ratio']:.2f}×; greedy tokens "
          + ("identical" if pol["same_tokens"] else f"DIFFER for requests {pol['mismatched_requests']}"))
    ch = report["chunked_prefill"]
    sc = ch["scenario"]
    print(f"\n3. chunked prefill: {sc['num_early']} short requests decoding, a {sc['long_prompt']}-token prompt at "
          f"{sc['long_arrival_s']:.2f} s (prefill alone {_ms(sc['long_prefill_alone_s'])}), {sc['num_late']} short "
          f"ones at {sc['late_arrival_s']:.2f} s")
    print(f"{'budget':>7} {'chunks':>6} {'long TTFT':>9} {'late TTFT p50':>13} {'p99':>7} {'early ITL p99':>13} "
          f"{'max':>7}")
    for r in ch["runs"]:
        print(f"{r['max_num_batched_tokens']:>7} {r['long_prompt_steps']:>6} {_ms(r['long_ttft_s']):>9} "
              f"{_ms(r['late_ttft_p50_s']):>13} {_ms(r['late_ttft_p99_s']):>7} {_ms(r['early_itl_p99_s']):>13} "
              f"{_ms(r['early_itl_max_s']):>7}")
    sw = report["rate_sweep"]
    print(f"\n4. Poisson arrivals, continuous batching; capacity measured in 2 (a lower bound): "
          f"{sw['capacity_req_s']:.2f} req/s")
    print(f"{'req/s':>6} {'load':>5} {'tok/s':>6} {'TTFT p50':>9} {'p99':>7} {'e2e p50':>8} {'in engine':>9} "
          f"{'backlog growth':>14} {'queue':>6} {'queued share':>12}")
    for r in sw["rows"]:
        print(f"{r['rate_per_s']:>6.2f} {r['offered_load']:>5.2f} {r['throughput_tok_s']:>6.0f} "
              f"{_ms(r['ttft_p50_s']):>9} {_ms(r['ttft_p99_s']):>7} {_ms(r['e2e_p50_s']):>8} "
              f"{r['max_in_engine']:>9} {_pct(r['backlog_growth']):>14} {_grows(r['queue_grows']):>6} "
              f"{_pct(r['queue_share_of_ttft']):>12}")
    print("\nClaims (CLAIMS.md 19–21) beside the measurements")
    for c in report["claims"]:
        print(f"[{c['id']}] {c['claim']}\n     measured: {c['measured']}\n     verdict: {c['verdict']}\n"
              f"     why: {c['why']}")
    if not report["same_tokens"]:
        print("\nFAILED: batching or chunking changed greedy tokens (see above)")


def save(report: dict, folder: pathlib.Path = RESULTS) -> pathlib.Path:
    """benchmarks/results/serve_<device>.json"""
    return save_result("serve", report, folder)
