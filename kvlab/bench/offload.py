"""Offloading K/V to a tier below the block pool, measured on the real model beside CLAIMS.md 17: "tokens generated
earlier in a long sequence are accessed less frequently than recent ones", so older blocks can move to CPU memory
"or even NVMe" and be fetched back, "a small amount of latency for significant memory savings".

1. tier bandwidth — batched puts and gets of K/V blocks (one copy + a CRC-32 per block each way) to a memory-mapped
   file (left in the page cache, and flushed with msync to the device), to host memory, and on CUDA from the GPU to
   pinned host memory and back: GB/s beside the device's own copy bandwidth.
2. swap vs recompute — one sequence of L real tokens in a paged pool: its prefill (what recomputing it costs)
   against swapping its blocks out to the tier and back in (checked bit for bit), and the length from which
   swapping is the cheaper way back (crossover).
3. prefix hit TTFT — one request whose prompt starts with a shared prefix, served by the engine cold, with the
   prefix's blocks still in the pool, and with them evicted to the tier and loaded back.
4. memory pressure — the same chat-trace requests through one small pool, preempting by recompute or by swap, and
   through a pool large enough for no preemption: throughput, TTFT, tokens recomputed, MiB swapped, and how many
   sequences hold K/V at once (running + swapped out).
5. the premise — decode attention reads every cached token at every step: one decode step with its whole context
   in the pool, the same step when the older half must first be fetched from the tier (every step), and swapping
   an idle request out and in once.
Times are wall-clock medians after a warm-up, each beside the bytes it moved. The claim beside the numbers and
the printed report: kvlab.bench.offload_report.
"""
from __future__ import annotations

import os
import pathlib
import statistics
import time
from dataclasses import asdict

import torch

from .. import traces
from ..cache import BlockTier, blocks_for, make_cache, swap_in, swap_out
from ..engine import Engine, Request, serve
from ..engine.offload import measure_tier_bandwidth
from ..engine.runner import forward_pass, sync
from .offload_report import CLAIM, claims, failures, print_report  # noqa: F401 (re-exported: this module's API)
from .results import RESULTS, merge_sizes, save_result
from .roofs import device_label, measure_copy_bandwidth
from .serve import _clean, _cpu_seconds
from .timers import median_seconds

CPU_SIZES = dict(tier_mib=64, lengths=(16, 64, 256, 1024), prefix_tokens=512, num_requests=16, num_blocks=24,
                 max_num_seqs=8, max_num_batched_tokens=256, prompt_mean=48, output_mean=48, context=1024, repeats=3)
GPU_SIZES = dict(tier_mib=1024, lengths=(256, 1024, 4096, 16384), prefix_tokens=8192, num_requests=128,
                 num_blocks=512, max_num_seqs=64, max_num_batched_tokens=2048, prompt_mean=161, output_mean=338,
                 context=16384, repeats=5)
READS_NOTE = ("a get right after a put reads the OS page cache, not the device, unless memory pressure evicted the "
              "pages: the engine's swap-ins run at page-cache speed; the flushed writes are what reaching the device "
              "costs.")


def default_sizes(device) -> dict:
    return dict(GPU_SIZES if torch.device(device).type == "cuda" else CPU_SIZES)


def default_tier_kind(device) -> str:
    return "pinned" if torch.device(device).type == "cuda" else "file"


def _timed(fn, device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def _paged(model, num_blocks: int, block_size: int):
    return make_cache("paged", model.config, model.device, model.dtype, 1, num_blocks * block_size,
                      block_size=block_size, num_blocks=num_blocks)


# --- 1. tier bandwidth -------------------------------------------------------------------------------------------

def _filesystem(path: str) -> str:
    """The type of the file system holding `path` (the longest mount point above it), '?' where unknown."""
    try:
        mounts = [line.split()[1:3] for line in open("/proc/mounts")]
    except OSError:
        return "?"
    above = [(len(m), kind) for m, kind in mounts if os.path.realpath(path).startswith(m.rstrip("/") + "/")]
    return max(above)[1] if above else "?"


def tier_bandwidth(device, block_bytes: int, total_mib: int, repeats: int = 5) -> dict:
    """Write (put: copy + checksum, + msync when flushed) and read (get: copy + checksum check) GB/s of each tier
    kind, n = total_mib / block_bytes blocks in one batch each way; medians after a warm-up round."""
    device = torch.device(device)
    copy = measure_copy_bandwidth(device)
    n = max(1, total_mib * 2**20 // block_bytes)
    kinds = [("file (page cache)", "file", False), ("file (flushed to the device)", "file", True),
             ("host memory", "memory", False)]
    if device.type == "cuda":
        kinds.append(("pinned host memory", "pinned", False))  # GPU → pinned and back
    rows = []
    for name, kind, flush in kinds:
        with BlockTier(block_bytes, capacity_blocks=n, kind=kind, flush=flush) as tier:
            write_gb_s, read_gb_s = measure_tier_bandwidth(tier, block_bytes, n, repeats,
                                                           device=device if kind == "pinned" else "cpu")
            where = f"{os.path.dirname(tier.path)} ({_filesystem(tier.path)})" if tier.path else None
        nbytes = n * block_bytes
        rows.append({"tier": name, "kind": kind, "flush": flush, "where": where, "blocks": n, "bytes": nbytes,
                     "write_s": nbytes / write_gb_s / 1e9, "read_s": nbytes / read_gb_s / 1e9,
                     "write_gb_s": write_gb_s, "read_gb_s": read_gb_s})
    return {"copy_gb_s": copy.gb_per_s, "copy_bytes": copy.bytes_moved, "block_bytes": block_bytes, "rows": rows,
            "copy_note": "copy GB/s counts read + write bytes of a device-to-device copy; tier GB/s count the bytes "
                         "moved one way", "reads_note": READS_NOTE}


# --- 2. swap vs recompute ----------------------------------------------------------------------------------------

def crossover(rows: list[dict]) -> int | None:
    """The smallest measured length from which swapping is faster at every longer measured length (None: never)."""
    found = None
    for row in sorted(rows, key=lambda r: r["tokens"], reverse=True):
        if row["swap_s"] >= row["recompute_s"]:
            break
        found = row["tokens"]
    return found


def swap_vs_recompute(model, tokenizer, lengths, repeats: int = 3, tier_kind: str | None = None,
                      block_size: int = 16) -> dict:
    """Per length L: the median prefill of L tokens (recompute) vs swap_out + swap_in of its ceil(L/bs) blocks."""
    device, kind = model.device, tier_kind or default_tier_kind(model.device)
    cache = _paged(model, blocks_for(max(lengths), block_size), block_size)
    tier = BlockTier(cache.block_bytes(), capacity_blocks=cache.allocator.num_blocks, kind=kind)
    rows = []
    for length in sorted(lengths):
        ids, blocks = traces.text_ids(tokenizer, length), blocks_for(length, block_size)
        prefills, outs, ins = [], [], []
        for _ in range(repeats + 1):
            if 0 in cache.lengths:
                cache.free_sequence(0)
            cache.add_sequence(0, length)
            prefills.append(_timed(lambda: forward_pass(model, cache, [0], [ids]), device))
        held = cache.export_blocks(cache.block_tables[0][:blocks])  # [blocks, block_bytes] uint8, a copy
        exact, holder = True, []
        for _ in range(repeats + 1):
            outs.append(_timed(lambda: holder.append(swap_out(cache, 0, tier)), device))
            swapped = holder.pop()
            for pool in cache.k_pools + cache.v_pools:  # the freed blocks' K/V is gone: a no-op swap_in would show
                pool.zero_()
            ins.append(_timed(lambda: swap_in(cache, 0, length, swapped, tier), device))
            exact &= torch.equal(cache.export_blocks(cache.block_tables[0][:blocks]), held)
        cache.free_sequence(0)
        row = {"tokens": length, "blocks": blocks, "bytes": blocks * cache.block_bytes(),
               "recompute_s": statistics.median(prefills[1:]), "swap_out_s": statistics.median(outs[1:]),
               "swap_in_s": statistics.median(ins[1:]), "bit_exact": bool(exact)}
        row["swap_s"] = row["swap_out_s"] + row["swap_in_s"]
        row["swap_gb_s"] = 2 * row["bytes"] / row["swap_s"] / 1e9  # out and in
        row["speedup"] = row["recompute_s"] / row["swap_s"]
        rows.append(row)
    tier.close()
    found = crossover(rows)
    return {"tier_kind": kind, "block_size": block_size, "rows": rows, "crossover_tokens": found,
            "why": _crossover_why(model, rows, found, kind)}


def _crossover_why(model, rows, found, kind) -> str:
    short, long = rows[0], rows[-1]
    weights_gb = model.weight_bytes(rows=short["tokens"], head_rows=1) / 1e9
    said = (f"recomputing {short['tokens']} tokens took {short['recompute_s'] * 1e3:.1f} ms (every forward reads "
            f"all the weights, {weights_gb:.2f} GB here) while swapping their {short['bytes'] / 2**20:.2f} MiB to the "
            f"{kind} tier and back took {short['swap_s'] * 1e3:.2f} ms; at {long['tokens']} tokens "
            f"{long['recompute_s'] * 1e3:.0f} ms vs {long['swap_s'] * 1e3:.1f} ms ({long['swap_gb_s']:.1f} GB/s)")
    if found == short["tokens"]:
        return f"swapping won at every measured length: {said}."
    if found is None:
        return f"recomputing won at the longest measured length: {said}."
    return (f"swapping wins from {found} tokens on: {said}; short contexts recompute cheaply and a transfer has a "
            f"fixed cost of its own.")


# --- 3. prefix hit TTFT ------------------------------------------------------------------------------------------

def _prefix_engine(model, tokenizer, num_blocks: int, block_size: int, budget: int, tier=None) -> Engine:
    cache = make_cache("prefix", model.config, model.device, model.dtype, 1, num_blocks * block_size,
                       block_size=block_size, num_blocks=num_blocks, tier=tier)
    return Engine(model, tokenizer, cache, max_num_seqs=1, max_num_batched_tokens=budget, stop_at_eos=False)


def _serve_now(engine: Engine, ids: list[int], new_tokens: int):
    """One request arriving now on the engine's wall clock, served to its end → its RequestOutput."""
    engine.add_request(Request(ids, new_tokens, arrival_s=engine.clock.now()))
    return engine.run().outputs[-1]


def prefix_hit_ttft(model, tokenizer, prefix_tokens: int, suffix_tokens: int = 8, repeats: int = 3,
                    block_size: int = 16, new_tokens: int = 8) -> dict:
    """TTFT of prefix + suffix (a) cold, (b) after prefix + another suffix left the prefix's blocks in the pool,
    (c) after a filler prompt that needs the whole pool evicted them to a tier below it: the hit loads them back,
    and makes room for them by evicting the filler's blocks to the tier in turn (both timed, as the engine runs)."""
    prefix = traces.text_ids(tokenizer, prefix_tokens)
    prompt = prefix + traces.text_ids(tokenizer, suffix_tokens, 11, bos=False)
    other = prefix + traces.text_ids(tokenizer, suffix_tokens, 23, bos=False)
    need = blocks_for(len(prompt) + new_tokens, block_size)
    filler = traces.text_ids(tokenizer, need * block_size - new_tokens, 37)
    budget = max(len(prompt), len(filler))

    def engine(blocks: int, tier=None) -> Engine:
        return _prefix_engine(model, tokenizer, blocks, block_size, budget, tier)

    _serve_now(engine(need), prompt, new_tokens)  # warm-up
    runs = {"cold": [], "pool": [], "tier": []}
    for _ in range(repeats):
        runs["cold"].append(_serve_now(engine(2 * need), prompt, new_tokens))
        pooled = engine(2 * need)
        _serve_now(pooled, other, new_tokens)
        runs["pool"].append(_serve_now(pooled, prompt, new_tokens))
        tier = BlockTier(pooled.cache.block_bytes(), capacity_blocks=4 * need, kind=default_tier_kind(model.device))
        tiered = engine(need, tier)
        for ids in (other, filler):  # the filler needs the whole pool: the prefix's blocks go down to the tier
            _serve_now(tiered, ids, new_tokens)
        read_before = asdict(tier.stats)
        runs["tier"].append(_serve_now(tiered, prompt, new_tokens))
        tier_hit_tokens = tiered.cache.stats.tier_hit_tokens
        loaded = {k: v - read_before[k] for k, v in asdict(tier.stats).items()}
        tier.close()
    tokens = {o.token_ids == runs["cold"][0].token_ids for outs in runs.values() for o in outs}
    return {"prefix_tokens": len(prefix), "prompt_tokens": len(prompt), "new_tokens": new_tokens,
            "pool_blocks": need, "tier_kind": default_tier_kind(model.device),
            **{f"{name}_ttft_s": statistics.median(o.ttft_s for o in outs)
               for name, outs in (("cold", runs["cold"]), ("pool_hit", runs["pool"]), ("tier_hit", runs["tier"]))},
            "pool_hit_tokens": runs["pool"][-1].cached_prompt_tokens,
            "tier_hit_tokens": tier_hit_tokens,
            "tier_read_bytes": loaded["bytes_read"], "tier_read_s": loaded["read_s"],
            "tier_written_bytes": loaded["bytes_written"], "tier_write_s": loaded["write_s"],
            "same_tokens": tokens == {True}}


# --- 4. memory pressure ------------------------------------------------------------------------------------------

def memory_pressure_results(model, tokenizer, num_requests, num_blocks, max_num_seqs, max_num_batched_tokens,
                            prompt_mean, output_mean, seed=0, block_size: int = 16) -> dict:
    """{"reference": a pool with room for everything, "recompute" / "swap": `num_blocks` blocks} ServeResults of
    the same chat-trace requests, all at once; the swap run's tier statistics in result.config["tier_stats"]."""
    cap = num_blocks * block_size // 2  # a request must fit the pool by itself
    requests = traces.chat_requests(tokenizer, num_requests, seed=seed, arrival="all-at-once", prompt_mean=prompt_mean,
                                    output_mean=output_mean, max_prompt=cap, max_output=cap)
    engine = dict(cache="paged", block_size=block_size, max_num_seqs=max_num_seqs,
                  max_num_batched_tokens=max_num_batched_tokens, stop_at_eos=False)
    results = {"reference": serve(model, tokenizer, requests, **engine),
               "recompute": serve(model, tokenizer, requests, num_blocks=num_blocks, preemption="recompute", **engine)}
    tier_blocks = sum(blocks_for(len(r.prompt) + r.max_new_tokens, block_size) for r in requests)
    with BlockTier(_paged(model, 1, block_size).block_bytes(), capacity_blocks=tier_blocks,
                   kind=default_tier_kind(model.device)) as tier:
        results["swap"] = serve(model, tokenizer, requests, num_blocks=num_blocks, preemption="swap", swap_tier=tier,
                                **engine)
        results["swap"].config["tier_stats"] = asdict(tier.stats)
    return results


def _holding_kv(result) -> dict:
    """Sequences whose K/V is kept after each step — running in the pool, or swapped out to the tier: the most,
    the mean over steps, and the most swapped out at once."""
    swapped, held, most_swapped = set(), [], 0
    for step in result.steps:
        swapped = (swapped | set(step.swapped_out)) - set(step.swapped_in)
        held.append(len(step.running) + len(swapped))
        most_swapped = max(most_swapped, len(swapped))
    return {"peak_holding_kv": max(held), "mean_holding_kv": statistics.mean(held), "peak_swapped_out": most_swapped}


def _recomputed_tokens(result) -> int:
    """Prefill tokens beyond each sequence's first prefill of its prompt (re-prefills after a preemption)."""
    prefilled = {}
    for step in result.steps:
        for seq_id, count in step.prefill:
            prefilled[seq_id] = prefilled.get(seq_id, 0) + count
    return sum(prefilled.get(o.seq_id, 0) - (len(o.prompt_token_ids) - o.cached_prompt_tokens) for o in result.outputs)


def memory_pressure(model, tokenizer, num_requests, num_blocks, max_num_seqs, max_num_batched_tokens, prompt_mean,
                    output_mean, seed=0) -> dict:
    """memory_pressure_results summed up per mode: throughput, TTFT, preemptions, tokens recomputed, MiB swapped
    (out + in) and its time, and how many sequences kept their K/V (running, or swapped out to the tier)."""
    return summarize_pressure(memory_pressure_results(model, tokenizer, num_requests, num_blocks, max_num_seqs,
                                                      max_num_batched_tokens, prompt_mean, output_mean, seed))


def pressure_sizes(device, num_requests: int | None = None) -> dict:
    """memory_pressure's arguments at this device's default sizes (a notebook may change the number of requests)."""
    sizes = default_sizes(device)
    keys = ("num_requests", "num_blocks", "max_num_seqs", "max_num_batched_tokens", "prompt_mean", "output_mean")
    chosen = {k: sizes[k] for k in keys}
    if num_requests is not None:
        chosen["num_requests"] = num_requests
    return chosen


def summarize_pressure(results: dict) -> dict:
    """memory_pressure_results' runs, summed up per mode (see memory_pressure)."""
    num_requests, max_num_seqs = len(results["reference"].outputs), results["reference"].max_num_seqs
    modes = {}
    for mode, result in results.items():
        m, stats = result.metrics(), result.config.get("tier_stats", {})
        moved = stats.get("bytes_written", 0) + stats.get("bytes_read", 0)
        swap_s = stats.get("write_s", 0.0) + stats.get("read_s", 0.0)
        modes[mode] = {"num_blocks": result.num_blocks, "throughput_tok_s": m["throughput_tok_s"],
                       "ttft_p50_s": m["ttft_p50_s"], "ttft_p99_s": m["ttft_p99_s"], "duration_s": m["duration_s"],
                       "num_preemptions": m["num_preemptions"], "recomputed_tokens": _recomputed_tokens(result),
                       "swapped_mib": moved / 2**20, "swap_s": swap_s,
                       "swap_gb_s": moved / swap_s / 1e9 if swap_s else None,
                       "peak_running": max(len(s.running) for s in result.steps), **_holding_kv(result),
                       "tier_faults": sum(len(s.tier_faults) for s in result.steps)}
    tokens = [r.token_ids for r in results.values()]
    prompts = [len(o.prompt_token_ids) for o in results["reference"].outputs]
    return {"requests": {"num": num_requests, "prompt_mean": statistics.mean(prompts), "prompt_max": max(prompts),
                         "output_mean": statistics.mean(len(t) for t in tokens[0])},
            "max_num_seqs": max_num_seqs, "block_size": results["swap"].block_size, **modes,
            "swap_vs_recompute_throughput": modes["swap"]["throughput_tok_s"] / modes["recompute"]["throughput_tok_s"],
            "same_tokens": all(t == tokens[0] for t in tokens)}


# --- 5. the premise ----------------------------------------------------------------------------------------------

def premise_check(model, tokenizer, context: int, block_size: int = 16, repeats: int = 5) -> dict:
    """A decode step over `context` cached tokens, the same step after fetching the older half of its blocks back
    from the tier (what a running sequence with offloaded old tokens pays every step), and one idle swap out + in."""
    device, kind = model.device, default_tier_kind(model.device)
    max_tokens = context + 4 * (repeats + 2)
    cache = _paged(model, blocks_for(max_tokens, block_size), block_size)
    cache.add_sequence(0, max_tokens)
    ids = traces.text_ids(tokenizer, context)
    forward_pass(model, cache, [0], [ids])
    old = cache.block_tables[0][: blocks_for(context, block_size) // 2]  # the older half
    with BlockTier(cache.block_bytes(), capacity_blocks=cache.allocator.num_blocks, kind=kind) as tier:
        slots = tier.put(cache.export_blocks(old))

        def step():
            forward_pass(model, cache, [0], [[ids[-1]]])  # one decode token (any id: only time counts)

        step_s = median_seconds(step, device, warmup=1, repeats=repeats)
        fetch_s = median_seconds(lambda: cache.import_blocks(old, tier.get(slots)), device, warmup=1, repeats=repeats)
        with_fetch_s = median_seconds(lambda: (cache.import_blocks(old, tier.get(slots)), step()), device, warmup=1,
                                      repeats=repeats)
        tier.free(slots)

        def idle_swap():
            swapped = swap_out(cache, 0, tier)
            swap_in(cache, 0, max_tokens, swapped, tier)

        idle_s = median_seconds(idle_swap, device, warmup=1, repeats=repeats)
    fetch_bytes, idle_bytes = len(old) * cache.block_bytes(), 2 * len(cache.block_tables[0]) * cache.block_bytes()
    slower = with_fetch_s / step_s
    verdict = (f"a decode step over {context} tokens reads all of them (full attention: the oldest as often as the "
               f"newest); fetching the older half ({fetch_bytes / 2**20:.1f} MiB) from the {kind} tier before every "
               f"step made it {slower:.2f}× as long ({step_s * 1e3:.1f} → {with_fetch_s * 1e3:.1f} ms), while "
               f"swapping an idle request's whole context out and in once ({idle_bytes / 2**20:.1f} MiB moved) took "
               f"{idle_s * 1e3:.1f} ms: " + ("offloading saves memory for requests that are not running, not for the "
                                            "old tokens of a running one" if slower > 1.1 else
                                            "here even the per-step fetch costs little beside the step"))
    return {"context": context, "tier_kind": kind, "step_s": step_s, "step_with_fetch_s": with_fetch_s,
            "fetch_s": fetch_s, "fetch_bytes_per_step": fetch_bytes, "fetch_gb_s": fetch_bytes / fetch_s / 1e9,
            "idle_swap_s": idle_s, "idle_swap_bytes": idle_bytes, "slowdown": slower, "verdict": verdict}


# --- the whole benchmark -----------------------------------------------------------------------------------------

def run(model, tokenizer, progress: bool = True, **sizes) -> dict:
    """Every part of the module docstring at `sizes` (default_sizes(model.device), overridden by keyword)."""
    start, load_before = time.perf_counter(), os.getloadavg()[0]
    sizes = merge_sizes(default_sizes(model.device), sizes)
    say = print if progress else (lambda *a, **k: None)
    repeats, block_size = sizes["repeats"], 16
    block_bytes = _paged(model, 1, block_size).block_bytes()
    report = {"device": device_label(model.device), "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__,
              "dtype": str(model.dtype).replace("torch.", ""), "block_size": block_size, "block_bytes": block_bytes,
              "sizes": {k: list(v) if isinstance(v, tuple) else v for k, v in sizes.items()}}
    part_s, others, mark = {}, {}, (time.perf_counter(), *_cpu_seconds())
    parts = [("tier_bandwidth", lambda: tier_bandwidth(model.device, block_bytes, sizes["tier_mib"], repeats + 2)),
             ("swap_vs_recompute", lambda: swap_vs_recompute(model, tokenizer, sizes["lengths"], repeats)),
             ("prefix_hit_ttft", lambda: prefix_hit_ttft(model, tokenizer, sizes["prefix_tokens"], repeats=repeats)),
             ("memory_pressure", lambda: memory_pressure(model, tokenizer, sizes["num_requests"], sizes["num_blocks"],
                                                         sizes["max_num_seqs"], sizes["max_num_batched_tokens"],
                                                         sizes["prompt_mean"], sizes["output_mean"])),
             ("premise", lambda: premise_check(model, tokenizer, sizes["context"], repeats=repeats + 2))]
    for name, measure in parts:
        say(f"{name.replace('_', ' ')} …", flush=True)
        report[name] = measure()
        now = (time.perf_counter(), *_cpu_seconds())
        part_s[name] = now[0] - mark[0]
        if None not in now + mark:  # CPU time other programs took, as a share of every core over the part
            others[name] = ((now[1] - mark[1]) - (now[2] - mark[2])) / (part_s[name] * os.cpu_count())
        mark = now
    report["claims"] = claims(report)
    report["same_tokens"] = report["prefix_hit_ttft"]["same_tokens"] and report["memory_pressure"]["same_tokens"]
    report["bit_exact"] = all(r["bit_exact"] for r in report["swap_vs_recompute"]["rows"])
    report["runtime_s"], report["part_s"], report["others_cpu_share"] = time.perf_counter() - start, part_s, others
    report["load_average"] = {"before": load_before, "after": os.getloadavg()[0], "cpus": os.cpu_count()}
    return _clean(report)


def save(report: dict, folder: pathlib.Path = RESULTS) -> pathlib.Path:
    """benchmarks/results/offload_<device>.json"""
    return save_result("offload", report, folder)
