# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 07 · MHA, GQA, MQA: fewer KV heads, fewer bytes, faster decode
#
# **The question.** Llama-2-7B keeps 32 K/V heads per layer, Llama-3-8B keeps 8 for the same 32 query heads, and
# some models keep only 1. SmolLM2-135M keeps 3 for its 9 query heads. What does that buy — and does the time of a
# decode step really follow?
#
# **The mechanism.** In multi-head attention (MHA) every query head has its own key and value head. In
# **grouped-query attention** (GQA, Ainslie et al. 2023) a *group* of query heads shares one K/V head; with one
# group for all heads it is **multi-query attention** (MQA, Shazeer 2019). The cache stores K/V heads only, so
#
#     K/V bytes per token = 2 (K and V) × layers × KV heads × head dim × bytes per number
#
# Decode attention reads every cached K/V byte once per step. A GQA-native kernel reads each K/V head once for its
# whole group of query heads (notebook 02's Triton kernel does; so does the CPU path here), so the bytes shrink with
# the KV heads while the FLOP stay those of the query heads: the arithmetic intensity grows by the group size.
# If decode attention is bandwidth-bound (notebook 06), its time should shrink with the bytes.

# %% tags=["parameters"]
# Parameters (papermill can override any of these: see the README)
DEVICE = "auto"  # "cpu", "cuda" or "auto"
BATCH = None  # sequences in the decode step; None: 4 on a CPU, 8 on a GPU
CONTEXT = None  # tokens per sequence; None: 2048 on a CPU, 16384 on a GPU
BLOCK_SIZE = 16  # tokens per KV block (the GPU path runs the paged kernel)

# %%
# NBVAL_IGNORE_OUTPUT
import dataclasses

import torch
from IPython.display import display

import kvlab
from kvlab.bench import gqa
from kvlab.cache import PagedCache
from kvlab.cache.attention import attend_reference
from kvlab.bench.results import recorded_gpu_runs
from kvlab.exercises import check_number
from kvlab.kernels import paged_decode_attention
from kvlab.memory import kv_bytes_per_token, with_kv_heads
from kvlab.viz import mode_banner
from kvlab.viz.gqa_figures import bytes_per_token_figure, gqa_figure

device = kvlab.pick_device(DEVICE)  # "auto": $KVLAB_DEVICE if set (the tests pin cpu), else CUDA when available
model, tokenizer = kvlab.load_model(device=device)
cfg = model.config
display(mode_banner(device, model.dtype, "Decode times below are measured on this machine: compiled Triton kernel on a "
                    "GPU, torch grouped matmuls on a CPU (the Triton interpreter would say nothing about speed)."))

# %% [markdown]
# ## 1 · What one token costs, read from real caches
#
# The same SmolLM2 shape (30 layers, 9 query heads, head dim 64) with 9, 3 and 1 K/V heads: a real `PagedCache` of
# each says how many bytes one token takes in bf16. Then the same for a Llama-3-8B-like shape (32 layers, 32 query
# heads, head dim 128), from the shape arithmetic of `kvlab.memory`.

# %%
rows = []
for label, kv_heads in [("MHA", 9), ("GQA 3:1 (SmolLM2)", 3), ("MQA", 1)]:
    shape = dataclasses.replace(cfg, num_kv_heads=kv_heads)
    cache = PagedCache(shape, "cpu", torch.bfloat16, num_blocks=1, block_size=16)
    rows.append((f"SmolLM2 shape, {label}", cache.bytes_per_token()))
for label, kv_heads in [("MHA", 32), ("GQA 4:1", 8), ("MQA", 1)]:
    rows.append((f"Llama-3-8B shape, {label}", int(kv_bytes_per_token(with_kv_heads("Llama-3-8B", kv_heads)))))
for label, nbytes in rows:
    print(f"{label:<30} {nbytes:>9,} B per token   {2**30 // nbytes:>9,} tokens per GiB")

# %%
# NBVAL_IGNORE_OUTPUT
bytes_per_token_figure(rows).show()

# %% [markdown]
# SmolLM2's 3:1 grouping stores a third of what MHA would: 23,040 B per token instead of 69,120 — three times the
# context, or three times the batch, in the same memory.
#
# ## 2 · The same decode step, three ways: bytes and time side by side
#
# `kvlab.bench.gqa` builds one decode-attention problem — same batch, context, query heads and head dim — with K/V
# heads = query heads (MHA), query heads / 4 (GQA) and 1 (MQA), plus SmolLM2's own 9:3, and times one step of each
# (median after a warm-up). On a GPU: the compiled paged kernel, bf16, Llama-3-8B-like heads. On a CPU: grouped
# matmuls over a contiguous cache, float32, 16 query heads of dim 64.

# %%
# NBVAL_IGNORE_OUTPUT
report = gqa.run(device, batch=BATCH, context=CONTEXT, block_size=BLOCK_SIZE)  # None: gqa.run's defaults
gqa.print_gqa(report)
gqa_figure(report).show()

# %% [markdown]
# If decode attention were purely bandwidth-bound, each blue bar would equal its grey one. Read the GB/s column
# before the bars: on a GPU the compiled kernel streams every variant near the copy bandwidth, and the pairs match
# (see the recorded panel). On a CPU they match only roughly, and the gaps are worth understanding:
# * **the BLAS path changes with the group.** MHA's scores are matrix-*vector* products (one query row per K/V
#   head); a group of 4 query heads makes them small matrix-*matrix* products, which MKL runs with other kernels
#   that do not always stream K and V as fast. In our runs on a 2-core EPYC, GQA's 0.25× bytes took between 0.27×
#   and about 0.5× of MHA's time from one run to the next — a shared machine's memory system is noisy too;
# * **fixed costs** — Python calls and the softmax over batch × query heads × context scores, which does not shrink
#   with the KV heads — weigh more as the bytes shrink: MQA's bar sits furthest above its grey one;
# * on a CPU a small cache may stay in the last-level cache (32 MiB here), faster than memory.
#
# The direction is unmistakable all the same: fewer KV heads, fewer bytes, less time.
#
# ## 3 · Is the GQA-native kernel right? Checked live
#
# The paged decode kernel of notebook 02 reads each K/V head once for its group. Here it runs (compiled on a GPU,
# Triton's interpreter on a CPU) against the plain-torch reference for group sizes 1 (MHA), 3 (SmolLM2) and 9 (MQA),
# with an odd context that is not a multiple of the block size.

# %%
g = torch.Generator().manual_seed(7)
for num_kv_heads in (9, 3, 1):
    context_len, block = 21, 8
    k = torch.randn(1, context_len, num_kv_heads, 64, generator=g)
    v = torch.randn(1, context_len, num_kv_heads, 64, generator=g)
    q = torch.randn(1, 9, 64, generator=g)
    blocks = -(-context_len // block)
    pool_k = torch.zeros(blocks, block, num_kv_heads, 64)
    pool_v = torch.zeros(blocks, block, num_kv_heads, 64)
    pool_k.view(-1, num_kv_heads, 64)[:context_len] = k[0]
    pool_v.view(-1, num_kv_heads, 64)[:context_len] = v[0]
    table = torch.arange(blocks, dtype=torch.int32)[None]
    lens = torch.tensor([context_len], dtype=torch.int32)
    out = paged_decode_attention(q.to(device), pool_k.to(device), pool_v.to(device), table.to(device), lens.to(device))
    ref = attend_reference(q[:, None], k, v, torch.tensor([[context_len - 1]]), torch.tensor([context_len]))[:, 0]
    error = (out.float().cpu() - ref).abs().max().item()
    print(f"group size {9 // num_kv_heads}: max |kernel − reference| = {'< 1e-4' if error < 1e-4 else error} →",
          "PASS" if error < 1e-4 else "FAIL")

# %% [markdown]
# ## 4 · Recorded on a GPU
#
# `python -m kvlab.bench gqa` on a GPU machine runs the compiled kernel at Llama-3-8B-like shapes (32 query heads,
# head dim 128, bf16, context 16K) and writes `benchmarks/results/gqa_<gpu>.json`; this cell shows any such
# recording, clearly labelled, beside the live CPU numbers above.

# %%
# NBVAL_IGNORE_OUTPUT
recorded = recorded_gpu_runs("gqa", "../benchmarks/results")
if not recorded:
    print("No GPU run of this benchmark is recorded yet. On a machine with a GPU:\n"
          "    python -m kvlab.bench gqa\n"
          "writes benchmarks/results/gqa_<gpu>.json, and this cell then shows it beside the live numbers.")
for r in recorded:
    print(f"RECORDED on {r['device']}, {r['date']} (not this machine):")
    gqa.print_gqa(r)
    gqa_figure(r, f"RECORDED on {r['device']}, {r['date']}").show()

# %% [markdown]
# ## Check yourself
#
# **1.** How many bytes does one token take in a bf16 cache of the Llama-3-8B shape with GQA (32 layers, 8 K/V heads,
# head dim 128)? (`answer_1`)

# %%
answer_1 = None
check_number("Llama-3-8B GQA bf16 bytes per token", answer_1, 2 * 32 * 8 * 128 * 2, 0.0,
             "2 (K and V) × 32 layers × 8 KV heads × 128 × 2 bytes = 131,072 B — a quarter of MHA's 524,288.")

# %% [markdown]
# **2.** With 32 query heads, MQA reads what fraction of MHA's K/V bytes in a decode step? (`answer_2`)

# %%
answer_2 = None
check_number("MQA bytes / MHA bytes, 32 query heads", answer_2, 1 / 32, 0.01,
             "the query heads do not enter the K/V bytes: 1 K/V head instead of 32.")

# %% [markdown]
# **3.** Arithmetic intensity of decode attention in float32, per K/V number read, for SmolLM2's 3 query heads per
# K/V head? Count 2 FLOP (multiply, add) per query head for QKᵀ on each key number and the same for PV on each value
# number; ignore the softmax. (`answer_3`, in FLOP per byte)

# %%
answer_3 = None
check_number("decode attention FLOP per byte, group of 3, float32", answer_3, 2 * 3 / 4, 0.05,
             "each K or V number (4 bytes) is used by the 3 query heads of its group, 2 FLOP each: 6 FLOP per 4 bytes. "
             "Still far left of any ridge point: GQA makes decode attention cheaper, not compute-bound.")

# %% [markdown]
# **4.** (Think.) If MQA reads so much less, why did Llama-3 settle on 8 K/V heads rather than 1? What does the model
# lose when 32 query heads must share one key and one value per token — and why does GQA recover most of it? (The
# GQA paper uptrains MHA checkpoints into GQA; try reading its quality table.)
#
# ## What we saw
# * The cache stores K/V heads only: GQA's 4:1 and SmolLM2's 3:1 cut the bytes per token by 4× and 3×, MQA by the
#   number of query heads.
# * Decode attention's time follows its bytes (measured here and, on a GPU, in the recorded panel), minus fixed costs
#   that matter more as the bytes shrink.
# * A GQA-native kernel is what makes the saving real: it reads each K/V head once for its whole group.
