# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 09 · Offloading: a slower tier below the pool
#
# **The question.** When the KV cache does not fit, a common answer (CLAIMS.md 17) says older or inactive blocks
# move "to CPU memory or even NVMe storage" and come back when needed — "a small amount of latency for significant
# memory savings", because "tokens generated earlier in a long sequence are accessed less frequently than recent
# ones". Whether that trade pays is a race between two numbers this notebook measures on this machine: the tier's
# bandwidth, and what recomputing the same K/V costs.
#
# **The mechanism.** kvlab puts a **block tier** below the paged pool (`kvlab/cache/tier.py`): on a GPU, pinned host
# memory; on a machine with no GPU, where the pool already lives in host memory, a **memory-mapped file on disk** —
# the "NVMe" tier. It stores fixed-size blocks of bytes and knows nothing of the model; blocks move in one batched
# copy per step (however many requests move), each block with a CRC-32 checked on the way back. Two things use it:
#
# 1. **swap preemption** (`preemption="swap"`): when the pool runs dry, the newest request's blocks are copied to the
#    tier and freed; when it is admitted again they are copied back and it resumes decoding — no recompute.
#    `preemption="auto"` chooses per request from measured costs (`kvlab/engine/offload.py`);
# 2. **an offloaded prefix cache** (`make_cache("prefix", ..., tier=...)`): cached prefix blocks the pool evicts go
#    to the tier by their chain hash, and a later prompt with that prefix loads them back instead of prefilling.
#
# A tier fault — full, a checksum mismatch, the file gone or read-only — is logged and the request is recomputed:
# never a wrong token, never a lost request (`tests/test_swap.py` injects each one).

# %% tags=["parameters"]
# Parameters (papermill can override any of these: see the README)
DEVICE = "auto"  # "cpu", "cuda" or "auto"
LENGTHS = None  # context lengths for swap vs recompute; None: 16, 64, 256 on a CPU, 256 … 16384 on a GPU
PRESSURE_REQUESTS = None  # requests in the memory-pressure run; None: 8 on a CPU, 64 on a GPU
PRESSURE_BLOCKS = None  # the small pool they share, in blocks of 16 tokens; None: 12 on a CPU, 256 on a GPU
CHAT_REQUESTS = None  # chatbot requests (a ~1,100-token system prompt), other traffic between; None: 3 / 12
PREFIX_TOKENS = None  # the shared prefix of the prefix-hit TTFT; None: 128 on a CPU, 2048 on a GPU
PREMISE_CONTEXT = None  # the running sequence whose older half would live in the tier; None: 512 / 8192
TIER_MIB = None  # bytes moved per bandwidth measurement; None: 32 MiB on a CPU, 512 MiB on a GPU
SEED = 0

# %%
# NBVAL_IGNORE_OUTPUT
import torch
from IPython.display import display

import kvlab
from kvlab import Request
from kvlab.bench import offload as offload_bench
from kvlab.bench.offload_chatbot import chatbot_tier
from kvlab.bench.results import recorded_gpu_runs
from kvlab.cache import BlockTier, blocks_for, make_cache
from kvlab.exercises import check_number
from kvlab.viz import mode_banner, show_with_first_view
from kvlab.viz.offload_figures import (chatbot_tier_figure, prefix_ttft_figure, swap_vs_recompute_figure,
                                       tier_bandwidth_figure, tier_traffic_figure)
from kvlab.viz.serving_figures import gantt_figure
from kvlab.viz.serving_widget import ServingLab

device = kvlab.pick_device(DEVICE)  # "auto": $KVLAB_DEVICE if set (the tests pin cpu), else CUDA when available
model, tokenizer = kvlab.load_model(device=device)
on_gpu = device.type == "cuda"
LENGTHS = LENGTHS or ((256, 1024, 4096, 16384) if on_gpu else (16, 64, 256))
PRESSURE_REQUESTS = PRESSURE_REQUESTS or (64 if on_gpu else 8)
PRESSURE_BLOCKS = PRESSURE_BLOCKS or (256 if on_gpu else 12)
CHAT_REQUESTS = CHAT_REQUESTS or (12 if on_gpu else 3)
PREFIX_TOKENS = PREFIX_TOKENS or (2048 if on_gpu else 128)
PREMISE_CONTEXT = PREMISE_CONTEXT or (8192 if on_gpu else 512)
TIER_MIB = TIER_MIB or (512 if on_gpu else 32)
probe = make_cache("paged", model.config, device, model.dtype, 1, 16, block_size=16, num_blocks=1)
BLOCK_BYTES = probe.block_bytes()
tier_here = "pinned host memory" if on_gpu else "a memory-mapped file on disk"
display(mode_banner(device, model.dtype, f"The tier below the pool here: {tier_here}. "
                    "Every time below is measured on this machine, now."))
print(f"one block of 16 tokens holds {BLOCK_BYTES / 2**10:.0f} KiB of K and V "
      f"({probe.bytes_per_token():,} bytes a token)")

# %% [markdown]
# ## 1 · The tiers, measured
#
# Each tier's write (pool → tier: one batched copy plus a CRC-32 per block) and read (tier → pool, checksums
# verified), against the device's own copy bandwidth. A memory-mapped file's writes may stay in the operating
# system's **page cache** and never reach the disk until later: the first row is what the engine gets by default,
# the second forces every write to the device (`msync`). Reads after a write come from the page cache unless memory
# pressure has pushed the pages out.

# %%
# NBVAL_IGNORE_OUTPUT
bandwidth = offload_bench.tier_bandwidth(device, BLOCK_BYTES, TIER_MIB)
for row in bandwidth["rows"]:
    print(f"{row['tier']:30s} write {row['write_gb_s']:6.2f} GB/s   read {row['read_gb_s']:6.2f} GB/s   "
          f"({row['bytes'] / 2**20:.0f} MiB each way)")
print(f"{'device copy (read + write)':30s} {bandwidth['copy_gb_s']:6.2f} GB/s")
print(bandwidth["reads_note"])
tier_bandwidth_figure(bandwidth).show()

# %% [markdown]
# ## 2 · Swap or recompute? By context length
#
# A preempted request holding L tokens can come back two ways: **recompute** — one prefill of its L tokens — or
# **swap** — ⌈L / 16⌉ blocks out to the tier and back in. Recompute reads every weight of the model once however
# short L is (about 0.5 GB in float32 here), so it has a floor; swapping moves only the request's own K/V. After
# swapping in, the cache's bytes are compared with what it held before: a swap is bit-exact or it is a bug.

# %%
# NBVAL_IGNORE_OUTPUT
crossing = offload_bench.swap_vs_recompute(model, tokenizer, LENGTHS)
for row in crossing["rows"]:
    print(f"{row['tokens']:6d} tokens: recompute {row['recompute_s'] * 1e3:8.2f} ms │ swap out "
          f"{row['swap_out_s'] * 1e3:7.2f} + in {row['swap_in_s'] * 1e3:7.2f} ms for {row['bytes'] / 2**20:7.2f} MiB "
          f"({row['swap_gb_s']:.2f} GB/s) │ swap is {row['speedup']:.1f}× faster │ bit-exact: {row['bit_exact']}")
print("crossover:", crossing["crossover_tokens"], "tokens —", crossing["why"])
swap_vs_recompute_figure(crossing).show()

# %% [markdown]
# ## 3 · Memory pressure: the same requests, preempted by recompute and by swap
#
# The same chat-shaped requests, all at once, through the same small pool — so small that requests must be
# preempted — once with `preemption="recompute"` and once with `preemption="swap"`, beside a reference run with a
# pool large enough for everyone. The greedy tokens must be identical in all three. In the Gantt charts a swapped
# request (×) resumes straight into decode, while a recomputed one first re-prefills (purple).

# %%
# NBVAL_IGNORE_OUTPUT
sizes = offload_bench.pressure_sizes(device, PRESSURE_REQUESTS) | dict(num_blocks=PRESSURE_BLOCKS)
pressure = offload_bench.memory_pressure_results(model, tokenizer, **sizes)
for mode, result in pressure.items():
    print(f"{mode:10s} {result.summary()}")
summary = offload_bench.summarize_pressure(pressure)
print("\nsame tokens in all three runs:", summary["same_tokens"])
for mode in ("recompute", "swap"):
    m = summary[mode]
    print(f"{mode:10s} recomputed {m['recomputed_tokens']:5d} tokens, swapped {m['swapped_mib']:6.2f} MiB, "
          f"requests holding K/V (pool + tier) {m['mean_holding_kv']:.1f} on average, {m['throughput_tok_s']:.1f} tok/s")

# %%
# NBVAL_IGNORE_OUTPUT
gantt_figure(pressure["recompute"]).update_layout(title="recompute: preempted (×), then prefilled again (purple)").show()
gantt_figure(pressure["swap"]).update_layout(title="swap: preempted (×), then copied back and decoding at once").show()
tier_traffic_figure(pressure["swap"]).show()

# %% [markdown]
# ## 4 · The offloaded prefix cache: a chatbot's system prompt, evicted and loaded back
#
# The chatbot scenario of notebook 04: every request is the same ~1,100-token system prompt (instructions and tool
# definitions) plus a different question. Between two chat requests comes other traffic — the RAG scenario's
# requests, with their own instructions and documents — and the prefix-caching pool has room for about one request.
# Each other request evicts the tail of the system prompt's blocks (a sequence's tail goes first, its head is likelier
# to be shared). The same requests, one at a time, twice:
#
# * **pool only** — a chat request reuses the head blocks still in the pool and prefills the rest again;
# * **pool + tier** — the evicted blocks went to the tier below the pool, still named by their chain hash, and the
#   chat request loads them back. (So does the second RAG request, which shares its documents with the first.)
#
# The prefix cache's statistics say how many prompt tokens each tier served.

# %%
# NBVAL_IGNORE_OUTPUT
chat = chatbot_tier(model, tokenizer, CHAT_REQUESTS)
print(f"pool: {chat['pool_blocks']} blocks of {chat['block_size']} tokens; the chat requests share "
      f"{chat['shared_prompt_tokens']} prompt tokens\n")
print(f"{'request':44s} {'prompt':>6s} │ {'pool only: TTFT, hit':>22s} │ {'pool + tier: TTFT, pool + tier hit':>36s}")
for alone, tiered in zip(chat["runs"]["pool"]["rows"], chat["runs"]["tier"]["rows"]):
    print(f"{alone['kind'] + ': ' + alone['label'][:36]:44s} {alone['prompt_tokens']:6d} │ "
          f"{alone['ttft_s'] * 1e3:8.0f} ms {alone['pool_hit_tokens']:5d} tok │ "
          f"{tiered['ttft_s'] * 1e3:8.0f} ms {tiered['pool_hit_tokens']:5d} + {tiered['tier_hit_tokens']:5d} tok")
print("\nsame tokens with and without the tier:", chat["same_tokens"])
chatbot_tier_figure(chat).show()

# %% [markdown]
# The same mechanism with one prompt and nothing else in the way, so that the three ways a prefix can be served
# sit side by side: **cold** (nothing cached), **a pool hit** (the prefix's blocks still in the pool), and **a tier
# hit** (a filler prompt that needed the whole pool evicted them to the tier, and they are loaded back).

# %%
# NBVAL_IGNORE_OUTPUT
hits = offload_bench.prefix_hit_ttft(model, tokenizer, PREFIX_TOKENS)
print(f"{hits['prefix_tokens']}-token prefix: TTFT cold {hits['cold_ttft_s'] * 1e3:.1f} ms, pool hit "
      f"{hits['pool_hit_ttft_s'] * 1e3:.1f} ms, tier hit {hits['tier_hit_ttft_s'] * 1e3:.1f} ms "
      f"({hits['tier_hit_tokens']} tokens loaded back from the tier); same tokens: {hits['same_tokens']}")
prefix_ttft_figure(hits).show()

# %% [markdown]
# ## 5 · The claim's premise: are older tokens really read less often?
#
# Not by a running sequence. Full attention reads **every** cached token at **every** decode step (notebook 06
# measured that read). If the older half of a running sequence's blocks lived in the tier, each step would have to
# fetch them back — every step, not once. What the tier is good for is a request that is *not* running: preempted,
# or idle between turns of a conversation. The numbers:

# %%
# NBVAL_IGNORE_OUTPUT
premise = offload_bench.premise_check(model, tokenizer, PREMISE_CONTEXT)
print(f"a {premise['context']}-token sequence: one decode step {premise['step_s'] * 1e3:.1f} ms with all its K/V in "
      f"the pool; {premise['step_with_fetch_s'] * 1e3:.1f} ms if its older half "
      f"({premise['fetch_bytes_per_step'] / 2**20:.1f} MiB) came back from the tier first — every step; swapping the "
      f"whole request out and in once while it is idle: {premise['idle_swap_s'] * 1e3:.1f} ms")
print("verdict:", premise["verdict"])

# %% [markdown]
# **The claim beside the measurement.** "A small amount of latency for significant memory savings" holds for the
# blocks of requests that are *not running* — preempted, idle, or a prefix no running request is using — and this
# machine's numbers say how small the latency is. It does not hold for the older tokens of a running sequence under
# full attention: they are read at every step. (Sparse or windowed attention, which really does read old tokens
# less, is a different model.)
#
# ## 6 · The lab: watch blocks move between the tiers
#
# The serving lab of notebook 08, now with **preempt by: recompute | swap**. The preset *small pool: swap to the
# tier* serves chat requests through 8 blocks; the last plot shows, step by step, the blocks in the pool, the blocks
# in the tier, and the requests swapped out and back in. Switch to *recompute* and run again: the same tokens, the
# purple re-prefills back in the Gantt chart.

# %%
# NBVAL_IGNORE_OUTPUT
lab = ServingLab(model, tokenizer, run=False)
lab.apply_preset("small pool: swap to the tier")
lab.run()
show_with_first_view(lab)

# %% [markdown]
# ## 7 · Recorded on a GPU
#
# On a GPU the tier is pinned host memory behind PCIe (or NVLink-C2C on a Grace Hopper machine), recompute is far
# cheaper per token, and the crossover moves. `python -m kvlab.bench offload` on a GPU machine writes
# `benchmarks/results/offload_<gpu>.json`; this cell shows any such recording, clearly labelled.

# %%
# NBVAL_IGNORE_OUTPUT
recorded = recorded_gpu_runs("offload", "../benchmarks/results")
if not recorded:
    print("No GPU run of this benchmark is recorded yet. On a machine with a GPU:\n"
          "    python -m kvlab.bench offload\n"
          "writes benchmarks/results/offload_<gpu>.json, and this cell then shows it beside the live numbers.")
for r in recorded:
    print(f"RECORDED on {r['device']}, {r['date']} (not this machine):")
    offload_bench.print_report(r)

# %% [markdown]
# ## Check yourself
#
# **1.** SmolLM2 in float32 keeps 46,080 bytes of K and V per token. How many bytes does swapping out a request
# holding 1,000 tokens move, with blocks of 16 tokens? (`answer_1`)

# %%
answer_1 = None
check_number("bytes swapped out for 1,000 tokens", answer_1, blocks_for(1000, 16) * 16 * 46_080, 0.01,
             "whole blocks move: ⌈1000 / 16⌉ = 63 blocks × 16 tokens × 46,080 B = 46,448,640 B (44.3 MiB) — the "
             "last block's 8 empty slots move too.")

# %% [markdown]
# **2.** At 2 GB/s each way, how long do the swap out and the swap in of question 1 take together, in milliseconds?
# (`answer_2`)

# %%
answer_2 = None
check_number("swap out + in at 2 GB/s (ms)", answer_2, 2 * 46_448_640 / 2e9 * 1e3, 0.02,
             "46.4 MB out and 46.4 MB back: 2 × 46.4e6 / 2e9 s = 46 ms — against recomputing 1,000 tokens, which on "
             "this CPU takes over a second.")

# %% [markdown]
# **3.** Llama-3-8B in bf16 keeps 131,072 bytes of K/V per token. A running sequence holds 8,192 tokens and its older
# half lives in host memory behind PCIe at 25 GB/s. How many milliseconds does fetching that half add **to every
# decode step**? (`answer_3`)

# %%
answer_3 = None
check_number("fetch of the older half per decode step (ms)", answer_3, 4096 * 131_072 / 25e9 * 1e3, 0.02,
             "4,096 tokens × 131,072 B = 537 MB per step / 25 GB/s = 21.5 ms — more than a whole decode step on an "
             "H100 (~10 ms). Full attention reads old tokens every step: offload idle requests, not running ones.")

# %% [markdown]
# **4.** (Think, then try it in the lab.) Why does swap preemption help most when a request is preempted *late* in
# its output, and what happens to a swapped request's blocks if the tier file is deleted while it waits?
#
# ## What we saw
# * The tier is a place to put K/V that is *not being read*: a preempted or idle request, an evicted prefix.
# * Swapping moves only the request's own K/V; recomputing re-reads every weight. On this CPU swap wins at every
#   length measured; on a GPU recompute is cheaper per token and the crossover moves (see the recorded panel).
# * A prefix evicted to the tier comes back faster than a cold prefill, and slower than a pool hit. On the
#   chatbot with other traffic between its requests, the tier turns a partial hit (the head the pool kept) into a
#   whole one.
# * Under memory pressure, swap and recompute give the same tokens; swap turns re-prefill work into copies.
# * "Older tokens are accessed less often" is false for a running sequence under full attention.
