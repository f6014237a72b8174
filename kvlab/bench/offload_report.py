"""What the offload benchmark (kvlab.bench.offload) prints, and CLAIMS.md 17 beside its measurements."""
from __future__ import annotations

from .serve import CONTENDED

CLAIM = ('"tokens generated earlier in a long sequence are accessed less frequently than recent ones", so older '
         'blocks can move to CPU memory "or even NVMe" and be fetched back, "a small amount of latency for '
         'significant memory savings".')


def claims(report: dict) -> list[dict]:
    """CLAIMS.md 17 beside what was measured, a verdict, and why the two differ."""
    pr, ttft, mp = report["premise"], report["prefix_hit_ttft"], report["memory_pressure"]
    longest, rec, swp = report["swap_vs_recompute"]["rows"][-1], mp["recompute"], mp["swap"]
    measured = (f"a decode step over {pr['context']} tokens: {_ms(pr['step_s'])} with them all in the pool, "
                f"{_ms(pr['step_with_fetch_s'])} when the older half ({pr['fetch_bytes_per_step'] / 2**20:.1f} MiB) is "
                f"fetched from the {pr['tier_kind']} tier first ({pr['slowdown']:.1f}×). An idle {longest['tokens']}-"
                f"token request swapped out and in: {_ms(longest['swap_s'])} vs {_ms(longest['recompute_s'])} to "
                f"recompute it. A {ttft['prefix_tokens']}-token prefix loaded back from the tier: TTFT "
                f"{_ms(ttft['tier_hit_ttft_s'])} vs {_ms(ttft['cold_ttft_s'])} cold and {_ms(ttft['pool_hit_ttft_s'])} "
                f"from the pool. A {swp['num_blocks']}-block pool under pressure: at most {swp['peak_running']} "
                f"sequences ran at once with either mode; swap kept up to {swp['peak_swapped_out']} preempted ones' "
                f"K/V in the tier ({swp['swapped_mib']:.1f} MiB moved) where recompute prefilled "
                f"{rec['recomputed_tokens']} tokens again, at {mp['swap_vs_recompute_throughput']:.2f}× its "
                f"throughput")
    verdict = ("does not hold for a running sequence; holds for idle ones" if pr["slowdown"] > 1.1
               else "holds here: fetching the older half every step costs little beside the step")
    same_room = swp["peak_running"] == rec["peak_running"]
    why = ("decode attention is full attention: every step reads the K/V of every cached token, so 'older tokens "
           "are accessed less often' is true only of tokens whose request is not running (preempted, queued, or a "
           "finished turn's prefix waiting for the next). Moving those costs one copy out and one back at the tier's "
           f"GB/s ({longest['speedup']:.0f}× cheaper than recomputing {longest['tokens']} tokens here); moving a "
           "running request's old blocks costs that copy at every step. "
           + ("The pool still bounds how many sequences run at once: the tier saved their recomputation, not their "
              "room in the pool. " if same_room else "")
           + "Dropping old tokens instead (windowed or sparse attention) changes what the model reads, and with it "
             "the output.")
    return [{"id": "17", "claim": CLAIM, "measured": measured, "verdict": verdict, "why": why}]


def _ms(seconds) -> str:
    return "n/a" if seconds is None else f"{seconds * 1e3:.1f} ms"


def print_report(report: dict) -> None:
    load = report["load_average"]
    print(f"Offloading K/V below the pool — SmolLM2-135M on {report['device']}, {report['dtype']}, blocks of "
          f"{report['block_size']} tokens = {report['block_bytes'] / 2**10:.0f} KiB, {report['runtime_s']:.0f} s "
          f"(load average {load['before']:.1f} → {load['after']:.1f} on {load['cpus']} CPUs)")
    busy = {part: share for part, share in report["others_cpu_share"].items() if share > CONTENDED}
    if busy:
        print("WARNING: other programs took " + ", ".join(f"{share:.0%} of the CPUs during {part}" for part, share
                                                         in busy.items()) + ": those timings are inflated")
    bw = report["tier_bandwidth"]
    print(f"\n1. tier bandwidth, {bw['rows'][0]['bytes'] / 2**20:.0f} MiB a batch (device copy: {bw['copy_gb_s']:.1f} "
          f"GB/s, read + write)")
    print(f"{'tier':<30} {'write':>9} {'GB/s':>6} {'read':>9} {'GB/s':>6}  where")
    for r in bw["rows"]:
        print(f"{r['tier']:<30} {_ms(r['write_s']):>9} {r['write_gb_s']:>6.2f} {_ms(r['read_s']):>9} "
              f"{r['read_gb_s']:>6.2f}  {r['where'] or ''}")
    print(f"reads: {bw['reads_note']}")
    sv = report["swap_vs_recompute"]
    print(f"\n2. swap ({sv['tier_kind']} tier) vs recompute, one sequence")
    print(f"{'tokens':>6} {'MiB':>7} {'recompute':>10} {'swap out':>9} {'swap in':>9} {'GB/s':>6} {'speedup':>8} exact")
    for r in sv["rows"]:
        print(f"{r['tokens']:>6} {r['bytes'] / 2**20:>7.2f} {_ms(r['recompute_s']):>10} {_ms(r['swap_out_s']):>9} "
              f"{_ms(r['swap_in_s']):>9} {r['swap_gb_s']:>6.2f} {r['speedup']:>7.0f}× "
              f"{'yes' if r['bit_exact'] else 'NO'}")
    print(f"crossover: {sv['crossover_tokens'] if sv['crossover_tokens'] is not None else 'never'} — {sv['why']}")
    pt = report["prefix_hit_ttft"]
    print(f"\n3. TTFT of a {pt['prompt_tokens']}-token prompt sharing a {pt['prefix_tokens']}-token prefix: cold "
          f"{_ms(pt['cold_ttft_s'])}, pool hit {_ms(pt['pool_hit_ttft_s'])} ({pt['pool_hit_tokens']} tokens), tier hit "
          f"{_ms(pt['tier_hit_ttft_s'])} ({pt['tier_hit_tokens']} tokens, {pt['tier_read_bytes'] / 2**20:.1f} MiB "
          f"read in {_ms(pt['tier_read_s'])}, {pt['tier_written_bytes'] / 2**20:.1f} MiB of other blocks evicted to "
          f"the tier in {_ms(pt['tier_write_s'])}); greedy tokens {'identical' if pt['same_tokens'] else 'DIFFER'}")
    mp, req = report["memory_pressure"], report["memory_pressure"]["requests"]
    print(f"\n4. memory pressure: {req['num']} requests at once (prompt mean {req['prompt_mean']:.0f}, output mean "
          f"{req['output_mean']:.0f}), max_num_seqs {mp['max_num_seqs']}")
    print(f"{'mode':<10} {'blocks':>6} {'tok/s':>6} {'TTFT p50':>9} {'p99':>9} {'preempt':>7} {'recomputed':>10} "
          f"{'swapped':>9} {'swap time':>9} {'running':>7} {'K/V kept: peak':>14} {'mean':>5} {'in tier':>7}")
    for mode in ("reference", "recompute", "swap"):
        m = mp[mode]
        print(f"{mode:<10} {m['num_blocks']:>6} {m['throughput_tok_s']:>6.0f} {_ms(m['ttft_p50_s']):>9} "
              f"{_ms(m['ttft_p99_s']):>9} {m['num_preemptions']:>7} {m['recomputed_tokens']:>10} "
              f"{m['swapped_mib']:>5.1f} MiB {_ms(m['swap_s']):>9} {m['peak_running']:>7} {m['peak_holding_kv']:>14} "
              f"{m['mean_holding_kv']:>5.1f} {m['peak_swapped_out']:>7}")
    print(f"swap / recompute throughput: {mp['swap_vs_recompute_throughput']:.2f}×; greedy tokens "
          + ("identical" if mp["same_tokens"] else "DIFFER"))
    pr = report["premise"]
    print(f"\n5. the premise, {pr['context']} tokens: decode step {_ms(pr['step_s'])}; with the older half fetched "
          f"first {_ms(pr['step_with_fetch_s'])} ({pr['fetch_bytes_per_step'] / 2**20:.1f} MiB in "
          f"{_ms(pr['fetch_s'])}, {pr['fetch_gb_s']:.2f} GB/s); idle swap out + in {_ms(pr['idle_swap_s'])} "
          f"({pr['idle_swap_bytes'] / 2**20:.1f} MiB)")
    print("\nClaim (CLAIMS.md 17) beside the measurements")
    for c in report["claims"]:
        print(f"[{c['id']}] {c['claim']}\n     measured: {c['measured']}\n     verdict: {c['verdict']}\n"
              f"     why: {c['why']}")
    if failures(report):
        print("\nFAILED: " + " and ".join(failures(report)))


def failures(report: dict) -> list[str]:
    """What makes the benchmark fail: a run whose greedy tokens changed, a swap that was not bit-exact."""
    return ([] if report["same_tokens"] else ["a run changed greedy tokens"]) + \
           ([] if report["bit_exact"] else ["a swap was not bit-exact"])
