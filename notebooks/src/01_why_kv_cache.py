# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 01 · Why generation needs a KV cache
#
# **The question.** A language model writes one token at a time. To choose token *t + 1*, every layer lets the
# new token *attend* to all *t* tokens before it: it compares its **query** with their **keys** and mixes their
# **values**. Where do those *t* keys and values come from?
#
# * **Recompute them** every step — step *t* runs the whole model over all *t* tokens again, or
# * **keep them** — the *KV cache*: each step runs the model over one new token and reads the stored K/V.
#
# This notebook runs both on a real model (SmolLM2-135M-Instruct, loaded from its GGUF file by kvlab's own
# loader), shows what the cache really holds, checks that both paths write the same text, measures the time of
# every step live, and prices the cache in memory for models you have heard of.

# %% tags=["parameters"]
# Parameters (papermill can override any of these: see the README)
DEVICE = "auto"  # "cpu", "cuda" or "auto"
SWEEP_LENGTHS = None  # generated lengths to tabulate; None → [16, 32, 64, 96] on a CPU, [128, 256, 512, 1024] on a GPU
REPEATS = 2  # timed runs per path (after one warm-up); each step's median is shown
NEW_TOKENS = 24  # tokens generated in the with/without-cache comparison
PROMPT = "The history of the printing press"

# %%
# NBVAL_IGNORE_OUTPUT
import torch
from IPython.display import display

import kvlab
from kvlab import memory
from kvlab.bench import device_label, measure_cache_vs_recompute, measure_copy_bandwidth
from kvlab.cache import make_cache
from kvlab.exercises import check_number
from kvlab.viz import kv_memory_figure, mode_banner, speedup_figure, step_time_figure
from kvlab.viz.memory_widget import memory_calculator

device = kvlab.pick_device(DEVICE)  # "auto": $KVLAB_DEVICE if set (the tests pin cpu), else CUDA when available
use_cuda = device.type == "cuda"
lengths = SWEEP_LENGTHS or ([128, 256, 512, 1024] if use_cuda else [16, 32, 64, 96])

model, tokenizer = kvlab.load_model(device=device)
display(mode_banner(device, model.dtype, f"{device_label(device)}; model loaded from {model.load_source} in {model.load_seconds:.1f} s."))

# %% [markdown]
# ## The mechanism, on the real model
#
# SmolLM2-135M is a Llama-architecture model with **grouped-query attention** (GQA): several query heads
# share one key/value head, so the cache holds fewer heads than attention uses.

# %%
cfg = model.config
print(f"{cfg.num_layers} layers, hidden size {cfg.hidden_size}")
print(f"{cfg.num_heads} query heads share {cfg.num_kv_heads} KV heads (groups of {cfg.group_size}), head dim {cfg.head_dim}")

# %% [markdown]
# Run the prompt through the model once (the **prefill**) with a contiguous cache: one slab per layer for K and
# one for V, shaped `[batch, max_len, kv_heads, head_dim]` and reserved up front. These are the tensors the
# model's attention wrote — not a drawing of them.

# %%
ids = tokenizer.encode(PROMPT)
cache = make_cache("contiguous", cfg, model.device, model.dtype, max_batch=1, max_len=len(ids) + 8)
cache.add_sequence(0, len(ids) + 8)
cache.begin_step([0], [len(ids)])
logits = model.forward(torch.tensor([ids], device=model.device), cache)
cache.end_step()

print("prompt tokens:", [tokenizer.token_text(t) for t in ids])
print("K of layer 0:", tuple(cache.k[0].shape), "= [batch, max_len, kv_heads, head_dim];", len(cache.k), "layers × (K, V)")
print(f"filled: {cache.num_cached(0)} of {cache.max_len} token slots")
print(f"one token costs 2 (K,V) × {cfg.num_layers} layers × {cfg.num_kv_heads} heads × {cfg.head_dim} × "
      f"{cache.k[0].element_size()} B = {cache.bytes_per_token():,} B")
print("next token:", repr(tokenizer.token_text(int(logits.argmax()))))

# %% [markdown]
# **Why keeping them is allowed.** Attention is *causal*: token *i* only looks at tokens ≤ *i*. So the K and V of
# a token depend only on the tokens before it, and never change once computed. Check it: run the model from
# scratch on a longer text and compare the keys of the first tokens with the ones already cached.

# %%
longer = ids + tokenizer.encode(" began in Germany around 1440")
fresh = make_cache("contiguous", cfg, model.device, model.dtype, max_batch=1, max_len=len(longer))
fresh.add_sequence(0, len(longer))
fresh.begin_step([0], [len(longer)])
model.forward(torch.tensor([longer], device=model.device), fresh)
fresh.end_step()

def close_enough(a, b):  # float32: element by element; bfloat16 rounds every op, so compare the size of the difference
    if model.dtype == torch.float32:
        return torch.allclose(a, b, atol=1e-4)
    return bool((a.float() - b.float()).norm() / b.float().norm() < 2e-2)


for layer in (0, cfg.num_layers // 2, cfg.num_layers - 1):
    same_k = close_enough(fresh.k[layer][0, : len(ids)], cache.k[layer][0, : len(ids)])
    same_v = close_enough(fresh.v[layer][0, : len(ids)], cache.v[layer][0, : len(ids)])
    print(f"layer {layer:2d}: K of the first {len(ids)} tokens unchanged: {same_k}; V unchanged: {same_v}")

# %% [markdown]
# ## Same prompt, with and without the cache
#
# `kvlab.generate` runs the real generation loop through a cache layout. With `cache="none"` it keeps nothing
# and feeds the whole sequence every step; with `cache="contiguous"` it feeds one token per step. Greedy
# decoding must give the same tokens either way — the cache is an optimisation, not an approximation.

# %%
with_cache = kvlab.generate(model, tokenizer, PROMPT, max_new_tokens=NEW_TOKENS, cache="contiguous")
without_cache = kvlab.generate(model, tokenizer, PROMPT, max_new_tokens=NEW_TOKENS, cache="none")
print(PROMPT + with_cache.texts[0])
print("identical tokens with and without the cache:", with_cache.token_ids == without_cache.token_ids)

# %%
# NBVAL_IGNORE_OUTPUT
for result in (without_cache, with_cache):
    print(result.stats.summary())

# %% [markdown]
# ## Measure it: time per step against sequence length
#
# Both paths generate the same tokens (EOS ignored) from the same prompt. Every decode step is timed; each
# point is the median over `REPEATS` runs after a warm-up run. What to expect:
#
# * **no cache** — step *t* pushes *t* tokens through all 30 layers: its time grows with the length;
# * **with the cache** — every step pushes one token, reads all the weights once (the dominant cost for a small
#   model) and reads *t* × the bytes per token of cached K/V: nearly flat.

# %%
# NBVAL_IGNORE_OUTPUT
peak = measure_copy_bandwidth(device)
run = measure_cache_vs_recompute(model, tokenizer, PROMPT, new_tokens=max(lengths), repeats=REPEATS, progress=True)
print(f"peak measured on this device: copy {peak.gb_per_s:.1f} GB/s (read + write of {peak.bytes_moved / 1e6:.0f} MB)")
step_time_figure(run).show()

# %% [markdown]
# Each timing beside the bytes it moved. A cached decode step must read every weight once plus the cached K/V
# of the whole sequence: *bytes = weight bytes + length × bytes per token*. Divided by the step time, that is
# the bandwidth the step achieved, next to the copy bandwidth measured above on the same device. (The no-cache
# step does *t* times the arithmetic: it is limited by compute, not bytes.) On a CPU the cached step reads the
# weights as the GGUF file stores them, 4-bit blocks of about 97 MB, rebuilt to float32 in registers
# (notebook 06 shows why). The no-cache step does the same while its sequence is at most 16 tokens long; past that
# its layers multiply many rows at once and read the 538 MB of float32 weights (its lm_head, one row, still reads
# 8-bit blocks). The "MB read per decode step" printed for it above is the mean over its steps.

# %%
# NBVAL_IGNORE_OUTPUT
fast, slow = run.paths["contiguous"], run.paths["none"]
print(f"{'generated':>9} {'seq len':>7} | {'no cache':>9} | {'cached':>8} {'bytes read':>11} {'GB/s':>6} {'of peak':>7} | {'total speedup':>13}")
for n in lengths:
    step = n - 1  # decode step that produces token n (token 1 comes from the prefill)
    moved = fast.bytes_read(step - 1) if step > 0 else fast.weight_bytes_read[0]
    t_fast, t_slow = fast.step_s[step - 1], slow.step_s[step - 1]
    gbps = moved / t_fast / 1e9
    print(f"{n:>9} {fast.context_lens[step - 1]:>7} | {t_slow * 1e3:>7.1f}ms | {t_fast * 1e3:>6.1f}ms {moved / 1e6:>8.1f} MB "
          f"{gbps:>6.1f} {gbps / peak.gb_per_s:>7.0%} | {run.speedup_at(step):>12.1f}×")

# %%
# NBVAL_IGNORE_OUTPUT
speedup_figure(run).show()

# %% [markdown]
# ### What we measure, and why it is not "10–20×"
#
# A well-known interview answer says the KV cache makes generation 10–20× faster. The plot says what such a
# number leaves out: **the speedup is not a constant, it grows with the length generated**. Without a cache, step
# *t* costs about *t* single-token passes of work, so *n* steps cost ~*n²/2* of them; with a cache they cost ~*n*.
# Their ratio rises roughly linearly with *n* until the cached step itself starts to grow (the K/V read).
# It also depends on the device: a GPU processes the *t* tokens of a no-cache step in parallel, so short
# sequences cost it almost nothing extra and the speedup only appears at longer lengths. A speedup quoted without
# a length and a device is not a measurement. The cell below states ours.

# %%
# NBVAL_IGNORE_OUTPUT
for n in lengths:
    print(f"generating {n:>5} tokens on {device_label(device)}: measured {run.speedup_at(n - 1):5.1f}× faster with the cache")

# %% [markdown]
# ## The price: memory
#
# The cache holds, for every token, one key and one value vector per KV head per layer:
#
# $$\text{bytes} = 2 \times \text{layers} \times \text{kv\_heads} \times \text{head\_dim} \times \text{bytes per element} \times \text{tokens} \times \text{batch}$$
#
# For Llama-3-8B in bfloat16 that is 2 × 32 × 8 × 128 × 2 B = 128 KiB per token. A widely shared table prints
# 0.03 / 0.13 / 0.50 / 2.00 GB for 2K / 8K / 32K / 128K tokens. Compare:

# %%
shared_table_gb = {2048: 0.03, 8192: 0.13, 32768: 0.50, 131072: 2.00}
one_kv_head = memory.with_kv_heads("Llama-3-8B", 1, name="Llama-3-8B with 1 KV head")
print(f"{'tokens':>8} | {'formula':>8} | {'shared table':>12} | {'ratio':>5} | {'if it had 1 KV head':>19}")
for tokens, claimed in shared_table_gb.items():
    ours = memory.kv_cache_bytes("Llama-3-8B", tokens, dtype="bfloat16")
    mqa = memory.kv_cache_bytes(one_kv_head, tokens, dtype="bfloat16")
    print(f"{tokens:>8,} | {memory.format_bytes(ours):>8} | {claimed:>9.2f} GB | {ours / memory.GiB / claimed:>4.1f}× | {mqa / memory.GiB:>15.3f} GiB")

# %% [markdown]
# The table is **8× too small**: 0.25 / 1 / 4 / 16 GiB is right. Its numbers are what the formula gives with
# *one* KV head instead of eight — as if Llama-3-8B used multi-query attention. That is exactly why GQA
# exists: with 32 query heads and a full set of 32 KV heads (MHA) the 128K cache would be 64 GiB; GQA's 8 heads
# make it 16 GiB; MQA's single head would make it 2 GiB.
#
# Explore it: pick a model, a context, a batch and a precision.

# %%
# NBVAL_IGNORE_OUTPUT
memory_calculator(model="Llama-3-8B", context_len=8192, batch=1, dtype="bfloat16")

# %%
# NBVAL_IGNORE_OUTPUT
kv_memory_figure("Llama-3-8B", batch=1, dtype="bfloat16", highlight=8192).show()

# %% [markdown]
# ## Check yourself
#
# 1. A server runs **Llama-2-13B** (40 layers, 40 KV heads, head dim 128, bfloat16) with **8** requests of
#    **4,096** tokens each. How many GB (10⁹ bytes) of KV cache does it hold? Put your answer below.

# %%
my_answer_gb = None  # e.g. 12.5

check_number(
    "KV cache of Llama-2-13B, batch 8, 4096 tokens, bfloat16, in GB:",
    my_answer_gb,
    memory.kv_cache_bytes("Llama-2-13B", 4096, batch=8, dtype="bfloat16") / 1e9,
    rel_tolerance=0.05,
    why="2 × 40 layers × 40 heads × 128 × 2 B = 819,200 B per token; × 4096 tokens × 8 requests ≈ 26.8 GB — "
        "more than the 26 GB of its bfloat16 weights.",
)

# %% [markdown]
# 2. In the measurement above, the cached step's time barely moves with length, yet it is not free. Using the
#    table's *bytes read* column: which term dominates it for SmolLM2 at 128 tokens — the weights or the K/V?
#    At what length would the K/V read equal the weight read? *(Hint: a cached step on a CPU reads the weights
#    as 4-bit blocks, ≈ 97 MB; K/V = 46,080 B per token in float32.)* Answer: about 97e6 / 46,080 ≈ 2,100
#    tokens, well inside this model's 8,192-token context. Were the weights read as float32 (538 MB), it would
#    take ≈ 11,700 tokens, longer than the context. At short lengths decode is dominated by reading weights;
#    with long contexts and large batches, by reading the cache. Notebook 07 measures that wall.
