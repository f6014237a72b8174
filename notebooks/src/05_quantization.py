# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 05 · Quantizing the KV cache: how much memory, how much accuracy, how much time?
#
# **The question.** A common claim: store K and V in 8 or 4 bits instead of 16 and the cache shrinks 2–4× "with
# little accuracy loss" — and decode, which is bound by the bytes it reads, gets faster by the same factor. How much
# memory is really saved once the scales are counted? How much accuracy is really lost, on a real model? And does
# the time follow the bytes?
#
# **The mechanism** (kvlab's `QuantizedPagedCache`, the `"quantized"` layout; the schemes in
# `kvlab/cache/quantization.py`):
# 1. the paged pool of notebook 02, but each block holds **codes** (int8, fp8, 4-bit or 2-bit) plus **float16 scales**;
# 2. K/V are quantized **as they are stored** (the store kernel) and dequantized **inside the decode kernel**, in
#    registers, right after each load — no dequantized copy of the cache ever exists;
# 3. four schemes: **int8** and **fp8** (one scale per token and KV head), **int4** (a scale per group of channels,
#    two codes per byte), and **kivi2** — KIVI's 2-bit scheme: keys quantized *per channel* over each block of
#    tokens, values per token, and each sequence's newest, partly filled block kept in full precision.

# %% tags=["parameters"]
# Parameters (papermill can override any of these: see the README)
DEVICE = "auto"  # "cpu", "cuda" or "auto"
PPL_WINDOWS = 2  # perplexity windows of standard-library docstrings (a GPU run can take 16)
PPL_TOKENS = 192  # tokens per window (GPU: 512)
NEW_TOKENS = 24  # greedy tokens per prompt for the agreement measurement
SPEED_BATCHES = None  # decode benchmark batch sizes; None: [1, 4] on a CPU, [1, 8, 32] on a GPU
SPEED_CONTEXTS = None  # decode benchmark contexts; None: [256, 1024] on a CPU, [4096, 16384, 32768] on a GPU

# %%
# NBVAL_IGNORE_OUTPUT
import glob
import json

import torch
from IPython.display import display

import kvlab
from kvlab.bench import quant_accuracy, quant_speed
from kvlab.bench.quant_capture import capture_kv, full_precision_kv, outlier_channels, strongest_outlier
from kvlab.cache import PagedCache, QuantizedPagedCache, make_scheme
from kvlab.cache.quantization import dequantize_tokens, quantize_tokens
from kvlab.exercises import check_number
from kvlab.viz import mode_banner, show_with_first_view
from kvlab.viz.quant_figures import accuracy_figure, channel_absmax_figure, error_heatmaps, memory_figure
from kvlab.viz.quant_widget import quantization_lab

device = kvlab.pick_device(DEVICE)  # "auto": $KVLAB_DEVICE if set (the tests pin cpu), else CUDA when available
model, tokenizer = kvlab.load_model(device=device)
display(mode_banner(device, model.dtype, "Perplexity, agreement and decode times below are measured on this machine."))

# %% [markdown]
# ## 1 · What one token costs
#
# Every number below is read from a real cache object (`cache.bytes_per_token()`: the codes, the scales and, for
# kivi2, the per-channel key scales that a block of 16 tokens shares), for SmolLM2's 30 layers × 3 KV heads × 64
# channels. The model itself runs in float32 on a CPU, so the unquantized cache is 4 bytes a number there; the
# usual comparison is against bf16.

# %%
cfg = model.config
configs = [("int8", None), ("fp8", None), ("int4", 32), ("int4", 16), ("kivi2", 32)]
full = PagedCache(cfg, "cpu", torch.float32, num_blocks=1, block_size=16).bytes_per_token()
bf16 = PagedCache(cfg, "cpu", torch.bfloat16, num_blocks=1, block_size=16).bytes_per_token()
print(f"{'scheme':<22} {'bytes/token':>11} {'vs bf16':>8} {'tokens in 1 GiB':>16}")
print(f"{'float32 (no quant.)':<22} {full:>11,} {full / bf16:>7.2f}× {2**30 // full:>16,}")
print(f"{'bfloat16 (no quant.)':<22} {bf16:>11,} {1:>7.2f}× {2**30 // bf16:>16,}")
for name, group in configs:
    cache = QuantizedPagedCache(cfg, "cpu", torch.float32, num_blocks=1, block_size=16, scheme=name, group_size=group)
    label = f"{name} (group {cache.scheme.group_size})"
    print(f"{label:<22} {cache.bytes_per_token():>11,} {cache.bytes_per_token() / bf16:>7.2f}× "
          f"{2**30 // cache.bytes_per_token():>16,}")

# %% [markdown]
# The scales are not free: int8 with one float16 scale per 64 channels is 66 bytes where bf16 has 128 — 0.52×, not
# 0.50×; int4 with groups of 16 pays 4 scales per head, 0.31× instead of 0.25×. kivi2's keys pay a scale *and* a
# minimum per channel, shared by the block's 16 tokens.
#
# ## 2 · One real key, by hand
#
# Take the keys the model really produces for a prompt and quantize one token's key vector of one head with the
# reference functions: the codes, the float16 scale, and what comes back.

# %%
# NBVAL_IGNORE_OUTPUT
prompt = "The KV cache stores the keys and values of every past token, so decoding reads them instead of recomputing them."
ids = tokenizer.encode(prompt)
k_full, v_full = full_precision_kv(model, ids)  # [L, T, Hkv, D] each, from a full-precision paged cache
layer, head, channel, ratio = strongest_outlier(k_full)
print(f"{len(ids)} tokens. The most lopsided head: layer {layer}, KV head {head} — channel {channel}'s |K| is "
      f"{ratio:.1f}× the median channel's")
x = k_full[layer, 5, head]  # token 5's key in that head: [64]
for name, group in [("int8", None), ("int4", 32)]:
    scheme = make_scheme(name, cfg.head_dim, group)
    codes, scale, minimum = quantize_tokens(scheme, x)
    back = dequantize_tokens(scheme, codes, scale, minimum)
    print(f"\n{scheme.describe()}; scales {scale.float().tolist()}")
    print("  original   ", [round(v, 3) for v in x[:8].tolist()], "…")
    print("  read back  ", [round(v, 3) for v in back[:8].tolist()], "…")
    print(f"  mean |error| {(x - back).abs().mean():.4f}, at channel {channel}: {(x - back)[channel].abs():.4f}")

# %% [markdown]
# One scale serves a whole group, so it is set by the group's largest value. A group that holds an outlier channel
# gets a big scale, and its ordinary channels — most of the information — round to a handful of levels (int4 has 15).
#
# ## 3 · Why keys want per-channel scales
#
# Here is max |K| per channel for that layer and head. If a few channels stand far above the rest, and they do so for
# most tokens, the outliers are a property of the *channel*, not of the token — the KIVI paper's observation about
# keys (values show no such pattern).

# %%
# NBVAL_IGNORE_OUTPUT
channel_absmax_figure(k_full[layer, :, head], where=f"layer {layer}, KV head {head}").show()
print("outlier channels (mean |K| ≥ 6× the median channel's):", outlier_channels(k_full[layer, :, head]))

# %% [markdown]
# A per-token scale is set by the outlier, so the *other* channels of the outlier's group lose their precision in
# every token; a per-channel scale (KIVI's choice for keys) gives the outlier channel its own range and leaves its
# neighbours fine-grained — even at 2 bits. (The outlier itself is coded well by both: it is its group's maximum.) The heatmaps show
# |K − K̂| per token × channel for the same layer and head, read back from real quantized caches after a real
# prefill (kivi2's last, partly filled block is still full precision: zero error there).

# %%
# NBVAL_IGNORE_OUTPUT
captures = [capture_kv(model, tokenizer, ids, name, group, reference=(k_full, v_full))
            for name, group in [("int4", 32), ("kivi2", 32)]]
error_heatmaps(captures, layer, head).show()
for c in captures:
    print(f"{c.label:>12}: mean |K − K̂| in layer {layer}, head {head} = {c.mean_quant_error(layer, head):.4f}")

# %% [markdown]
# ## 4 · Accuracy, measured
#
# Two measurements on the real model for each scheme (`kvlab.bench.quant_accuracy`):
# * **perplexity** on windows of standard-library docstrings gathered now (`kvlab.corpus`, nothing downloaded), fed
#   through the quantized cache so that every position sees the earlier tokens exactly as decoding would;
# * **greedy agreement** with the full-precision cache over six fixed prompts: the share of generated tokens that
#   are identical before the first difference.

# %%
# NBVAL_IGNORE_OUTPUT
accuracy = quant_accuracy.run_accuracy(model, tokenizer, configs, num_windows=PPL_WINDOWS, tokens_per_window=PPL_TOKENS,
                                       new_tokens=NEW_TOKENS)
quant_accuracy.print_accuracy(accuracy)
accuracy_figure(accuracy["rows"], accuracy["corpus"]).show()
memory_figure(accuracy["rows"]).show()

# %% [markdown]
# Read the two together. int8 is nearly free. fp8 at the same bytes is a little worse here: its codes are spaced
# logarithmically, which spends precision near zero. 4-bit per token already costs real perplexity on this small
# model, and greedy decoding wanders off within a few tokens. kivi2 stores fewer bits still, yet it follows the
# full-precision text longer than int4, because the newest tokens — the ones the next token attends to most —
# are exact and the keys' outlier channels get their own scales. Perplexity averages over all positions and tells
# a different part of the story: read both numbers, not one.
#
# ## 5 · Time: does decode follow the bytes?
#
# Decode reads every cached byte once per step, so a cache of 0.52× the bytes should take about 0.52× the time —
# if dequantizing in registers is free. `kvlab.bench.quant_speed` times decode attention for each scheme next to
# the same problem unquantized, with the bytes each moved and the GB/s against this device's copy bandwidth.
# On a GPU that is the compiled Triton kernels; on a CPU it is the torch reference paths (gather, dequantize,
# attend), whose times say how costly a dequantized copy is on a CPU — nothing about the kernels.

# %%
# NBVAL_IGNORE_OUTPUT
speed = quant_speed.run(device, batches=SPEED_BATCHES, contexts=SPEED_CONTEXTS)
quant_speed.print_speed(speed)

# %%
# NBVAL_IGNORE_OUTPUT
recorded = [json.load(open(p)) for p in sorted(glob.glob("../benchmarks/results/quant_*.json"))]
recorded = [r for r in recorded if r.get("targets")]  # GPU runs carry their targets
if not recorded:
    print("No GPU run of this benchmark is recorded yet. On a machine with a GPU:\n"
          "    python -m kvlab.bench quant\n"
          "writes benchmarks/results/quant_<gpu>.json, and this cell shows it beside the live numbers.")
for r in recorded:
    print(f"RECORDED on {r['device']}, {r['date']} (not this machine):")
    quant_speed.print_speed(r)


# %% [markdown]
# ## 6 · The kernels, checked live
#
# The Triton store kernel quantizes and the decode kernel dequantizes in registers; on a CPU they run in Triton's
# interpreter. Feed the same random K/V and queries — with an outlier channel, a prefill of 21 tokens (blocks of 8:
# two full, one partial) and one decode step — through a cache on the kernels and a cache on the torch reference.

# %%
def run_layer0(backend, scheme, k, v, q):
    cache = QuantizedPagedCache(cfg, "cpu", torch.float32, num_blocks=8, block_size=8, scheme=scheme, backend=backend,
                                max_seqs=1)
    cache.add_sequence(0, k.shape[0])
    outputs, start = [], 0
    for size in (k.shape[0] - 1, 1):  # a prefill, then one decode step
        cache.begin_step([0], [size])
        cache.write(0, k[None, start:start + size], v[None, start:start + size])
        outputs.append(cache.attend(0, q[None, start:start + size])[0])
        cache.end_step()
        start += size
    return torch.cat(outputs)  # [T, Hq, D]


g = torch.Generator().manual_seed(0)
k = torch.randn(22, cfg.num_kv_heads, cfg.head_dim, generator=g)
k[:, :, 3] += 10.0  # an outlier channel
v = torch.randn(22, cfg.num_kv_heads, cfg.head_dim, generator=g)
q = torch.randn(22, cfg.num_heads, cfg.head_dim, generator=g)
for name in ["int8", "fp8", "int4", "kivi2"]:
    difference = (run_layer0("triton", name, k, v, q) - run_layer0("torch", name, k, v, q)).abs().max().item()
    print(f"{name:>6}: Triton kernels vs torch reference, max |difference| {'< 1e-5' if difference < 1e-5 else difference}"
          f" → {'PASS' if difference < 1e-5 else 'FAIL'}")

# %% [markdown]
# ## 7 · The lab
#
# Pick a scheme and a group size (channels per scale, per token; for kivi2 it sets the values' groups — its keys
# always get one scale per channel per block), then **measure**: the memory per token, the error heatmap of the layer and head you choose next to the scheme in
# *compare*, the perplexity change on a small docstring corpus, and the same prompt generated greedily with the
# full-precision cache and with yours, side by side, marked where they first part. Every number is measured on the
# real model when you press the button (a few seconds on a CPU).

# %%
# NBVAL_IGNORE_OUTPUT
lab = quantization_lab(model, tokenizer, scheme="int4", group_size=32, compare="kivi2")
show_with_first_view(lab)

# %% [markdown]
# ## 8 · Check yourself
#
# **1.** int4 with groups of 16 channels: per token and KV head, 64 four-bit codes plus one float16 scale per group,
# for K and for V. How many bytes does one token take over all of SmolLM2's layers and KV heads? (`answer_1`)

# %%
answer_1 = None
check_number("int4 (group 16) bytes per token", answer_1,
             QuantizedPagedCache(cfg, "cpu", torch.float32, 1, 16, scheme="int4", group_size=16).bytes_per_token(), 0.0,
             f"2 (K and V) × {cfg.num_layers} layers × {cfg.num_kv_heads} heads × (32 B of codes + 4 scales × 2 B) = 7,200 B.")

# %% [markdown]
# **2.** An int8 group's largest |value| is 2.54. What code does the value −1.0 get? (`answer_2`; the scale is
# absmax / 127, rounded to float16 first.)

# %%
answer_2 = None
scheme = make_scheme("int8", cfg.head_dim)
group = torch.zeros(cfg.head_dim)
group[0], group[1] = 2.54, -1.0
check_number("int8 code of -1.0", answer_2, float(quantize_tokens(scheme, group)[0][1]), 0.0,
             "scale = fp16(2.54 / 127) = 0.02; code = round(−1.0 / 0.02) = −50.")

# %% [markdown]
# **3.** kivi2 keeps, per block and KV head, a float16 scale and a float16 minimum for each of the 64 key channels.
# With blocks of 64 tokens instead of 16, how many bytes does one token's *key* take per KV head (2-bit codes
# included)? (`answer_3`)

# %%
answer_3 = None
check_number("kivi2 key bytes per token and head, blocks of 64", answer_3, 64 * 2 / 8 + 2 * 64 * 2 / 64, 0.0,
             "16 B of 2-bit codes + (scale + minimum) × 64 channels × 2 B shared by 64 tokens = 16 + 4 = 20 B "
             "(blocks of 16: 32 B). Bigger blocks amortise the scales — and keep more recent tokens in full precision.")

# %% [markdown]
# **4.** (Think, then try it in the lab.) int4 stores twice the bits of kivi2, yet in section 4 it usually parts from the
# full-precision text sooner. Which two differences between the schemes explain that? Set the lab to int4 with
# groups of 16 and compare: which of the two does a smaller group address?
#
# ## What we saw
# * The memory saving is real but smaller than the bit count says: scales cost 3–25 % on top of the codes.
# * int8 keeps the model's greedy tokens; 4-bit and 2-bit cost measurable perplexity on a 135M-parameter model —
#   small models are known to be more sensitive than large ones, so check on yours.
# * Keys have outlier channels, so per-channel key scales (KIVI) beat per-token scales at fewer bits.
# * Decode reads codes and scales and dequantizes in registers: the time can follow the bytes only on a device
#   where the kernel is compiled — see the recorded GPU panel, or run `python -m kvlab.bench quant` on one.
