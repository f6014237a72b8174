# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 06 · Decode is bandwidth-bound: the roofline, measured on your machine
#
# **The question.** Prefilling a 1,000-token prompt takes about as long as generating a handful of tokens. Why is
# one generated token so expensive, when it is a thousand times less arithmetic? And why does serving many users
# at once make each of them barely slower?
#
# **The mechanism.** Every forward step reads **every weight** of the model once. A prefill step multiplies them by
# T prompt tokens at once — T multiply-adds per weight read; a decode step by one token per sequence — one
# multiply-add per weight read. A device has two ceilings: how many bytes per second its memory delivers (the
# **bandwidth roof**) and how many FLOP per second its arithmetic units do (the **compute roof**). Work with few
# FLOP per byte (low **arithmetic intensity**) hits the first; work with many hits the second. Where the two meet
# is the **ridge point**. This is the *roofline* model (Williams, Waterman & Patterson, 2009).
#
# Nothing below is a formula posing as a measurement: the roofs are measured now (a large copy, a large matmul),
# every point is a timed step of the real SmolLM2-135M (median after a warm-up), and the FLOP and bytes beside it
# are counted from the shapes (`kvlab/bench/roofline.py` says how).

# %% tags=["parameters"]
# Parameters (papermill can override any of these: see the README)
DEVICE = "auto"  # "cpu", "cuda" or "auto"
BATCHES = None  # batch sizes; None: [1, 2, 4, 8] on a CPU, [1, 4, 16, 64] on a GPU
CONTEXTS = None  # decode-attention contexts; None: [128, 512, 2048] on a CPU, [1024, 4096, 16384] on a GPU
PROMPT_LEN = None  # prefill length; None: 128 on a CPU, 1024 on a GPU
NEW_TOKENS = 8  # decode steps per generation in the batch sweep
COMPARE_WITH_HF = True  # CPU only: kvlab's batch-1 decode vs HF transformers generate, same process (~1 min)
HF_TOKENS = 32  # tokens per generation in that comparison and in the llama.cpp one
COMPARE_WITH_LLAMACPP = True  # CPU only: kvlab vs llama.cpp at batch 1, 4, 16 (~30 s) where llama-cpp-python is
# installed (`make bench-deps`); without it, the recorded result

# %%
# NBVAL_IGNORE_OUTPUT
import torch
from IPython.display import display

import kvlab
from kvlab.bench import gemv, roofline
from kvlab.bench.roofs import device_roofs
from kvlab.bench.results import recorded_gpu_runs
from kvlab.exercises import check_number
from kvlab.viz import mode_banner, show_with_first_view
from kvlab.viz.roofline_figures import attention_bandwidth_figure, batch_tradeoff_figure, per_token_figure, roofline_figure
from kvlab.viz.roofline_widget import roofline_lab

device = kvlab.pick_device(DEVICE)  # "auto": $KVLAB_DEVICE if set (the tests pin cpu), else CUDA when available
gpu = device.type == "cuda"
default_batches, default_contexts, default_prompt_len = roofline.default_sizes(device)
batches, contexts, prompt_len = BATCHES or default_batches, CONTEXTS or default_contexts, PROMPT_LEN or default_prompt_len
model, tokenizer = kvlab.load_model(device=device)
# Sections 1–6 read the float32 weights: the textbook case. Section 7 turns on kvlab's CPU default, which reads
# the GGUF file's own 4-/8-bit blocks instead (same weights, same tokens, 5.6× fewer bytes).
model.decode_reads_blocks = False
display(mode_banner(device, model.dtype, "Every time below is measured on this machine, now; the model runs through "
                    "torch (plus kvlab's CPU matrix-vector kernel), not through the Triton interpreter."))

# %% [markdown]
# ## 1 · The two roofs of this device
#
# `device_roofs` measures them once per process: a copy of a buffer far larger than the caches (bytes read +
# written, median of 5) and an n × n matrix product in the model's dtype (2n³ FLOP, median of 5). Their ratio is
# the ridge point: the FLOP a piece of work must do per byte it moves before the arithmetic, not the memory,
# limits it.

# %%
# NBVAL_IGNORE_OUTPUT
roofs = device_roofs(device)
print(f"bandwidth roof: {roofs.copy.gb_per_s:.1f} GB/s (copy of {roofs.copy.bytes_moved / 2 / 2**20:.0f} MiB)")
print(f"compute roof:   {roofs.matmul.flops_per_s / 1e12:.3g} TFLOP/s ({roofs.matmul.dtype} {roofs.matmul.size}² matmul)")
print(f"ridge point:    {roofs.ridge_flop_per_byte:.1f} FLOP per byte")

# %% [markdown]
# ## 2 · The real model's steps on the roofline
#
# Measured now: a prefill of `prompt_len` tokens (batch 1 and the largest batch), one decode step at every batch
# size, and decode attention alone (the model's 9 query heads over 3 KV heads) at every batch and context.
# Hover over a point for its time, GB/s and GFLOP/s.

# %%
# NBVAL_IGNORE_OUTPUT
report = roofline.run(model, tokenizer, batches, contexts, prompt_len, NEW_TOKENS, progress=True)
roofline.print_roofline(report)
roofline_figure(roofs, roofline.points_of(report), f"Roofline of {report['device']}, {report['dtype']}").show()

# %% [markdown]
# Read the plot from left to right. **Decode at batch 1** sits near 0.5 FLOP/byte in float32 (2 FLOP per 4-byte
# weight): far left of the ridge, on the sloped bandwidth roof — its time is the bytes it reads divided by the
# bandwidth, and more arithmetic units would not make it one bit faster. **Batching decode** moves the point right:
# B sequences share one read of the weights, so the intensity grows about B-fold while the step time barely moves.
# **Prefill** multiplies the weights by every prompt token at once: an intensity of tens to hundreds, right of the ridge, under
# the flat compute roof. **Decode attention** stays left whatever the batch: every sequence has its own K and V,
# so batching adds bytes as fast as it adds FLOP (about 2 FLOP per K/V number read, ×3 for the 3 query heads
# sharing each KV head here).
#
# ## 3 · Per token, prefill is cheap and decode is dear

# %%
# NBVAL_IGNORE_OUTPUT
per_token_figure(roofline.points_of(report, "prefill"), roofline.points_of(report, "decode")).show()
prefill_1 = roofline.points_of(report, "prefill")[0]
decode_1 = roofline.points_of(report, "decode")[0]
print(f"prefill: {prefill_1.seconds_per_token * 1e3:.2f} ms per token; batch-1 decode: "
      f"{decode_1.seconds_per_token * 1e3:.1f} ms per token — {decode_1.seconds_per_token / prefill_1.seconds_per_token:.0f}× dearer")

# %% [markdown]
# ## 4 · Decode attention: how much bandwidth does it reach?
#
# The K/V cache is the one thing decode reads that batching does not share. Its bytes grow with batch × context;
# the time to stream them should too. At small sizes fixed costs (launches, Python, per-call setup) dominate, so
# the achieved GB/s climbs with the bytes until it nears the copy bandwidth.

# %%
# NBVAL_IGNORE_OUTPUT
attention_bandwidth_figure(roofline.points_of(report, "attention"), roofs.copy.gb_per_s).show()

# %% [markdown]
# ## 5 · Batching: throughput for all, latency for each
#
# Real greedy generation (`kvlab.generate`) of `NEW_TOKENS` tokens for B prompts of `prompt_len` tokens. Decode
# tokens/s counts every sequence's tokens. Because a decode step is bandwidth-bound, B sequences cost little more
# than one — throughput climbs almost linearly at first. The first token waits for the whole batch's prefill, which
# is compute-bound: TTFT grows about linearly with B. That is the trade-off a serving engine's scheduler balances.

# %%
# NBVAL_IGNORE_OUTPUT
batch_tradeoff_figure(report["batch_rows"]).show()

# %% [markdown]
# ## 6 · The live roofline lab
#
# Choose a batch, a decode context and a prompt length and press **measure**: the lab times a prefill step, a
# decode step and decode attention alone at those sizes on this device and adds the three points to the plot.
# Earlier points stay, so a few presses draw your own sweep. (On a CPU one press takes a few seconds.)
#
# On a CPU the **weights** toggle picks what the steps read: the float32 weights, or the GGUF file's 4-/8-bit
# blocks (section 7 explains them). Measure the same decode step both ways. The FLOP are the same, the bytes 5.6×
# fewer, so the point moves right: does it move up as much?

# %%
# NBVAL_IGNORE_OUTPUT
lab = roofline_lab(model, roofs, batches=tuple(batches), contexts=tuple(contexts), prompt_lens=(16, 64, prompt_len),
                   batch=batches[0], context=contexts[0], prompt_len=64)
show_with_first_view(lab)

# %% [markdown]
# ## 7 · Decoding at the bandwidth wall on a CPU
#
# If batch-1 decode is bound by reading the weights, then the fastest it can possibly go is
# **bandwidth ÷ bytes per step** — about 540 MB per step for SmolLM2 in float32. There are two ways to get closer:
# stream those bytes faster, or read fewer of them. Here are all 121 matrix-vector products of one step on the
# real weights, three ways:
#
# * torch's `F.linear` on the float32 weights — what HF transformers runs;
# * `kvlab.kernels.cpu_gemv` on the same float32 weights — a short C++ kernel in which each thread streams its own
#   rows of W front to back;
# * the same kernel on the **GGUF file's own blocks**. The file stores every layer as Q4_1: 32 weights in 20
#   bytes (an fp16 scale d, an fp16 offset m, 32 four-bit q; weight = d·q + m), and the embedding as Q8_0. HF
#   dequantizes them to float32 when it loads. kvlab's kernel rebuilds the very same float32 numbers in registers
#   (bit for bit: d·q is exact in float32), from 0.625 bytes a weight instead of 4.

# %%
# NBVAL_IGNORE_OUTPUT
gemv.print_gemv(gemv.run(model))

# %% [markdown]
# **Float32:** same bytes, same arithmetic, different speed. The product is memory-bound, so only the
# *streaming* differs. **Blocks:** 5.6× fewer bytes, but not 5.6× faster. Their GB/s is well under the copy roof:
# on a few CPU cores, unpacking the 4-bit numbers is now the limit, work that the FLOP count does not even
# include. A GPU has far more arithmetic per byte of bandwidth, so there the same trick stays bandwidth-bound.
# That is why quantized weights are the standard way to speed up decode.
#
# Now whole generations, three engines: HF transformers' `generate`, kvlab reading the float32 weights, and kvlab
# reading the blocks (its default on a CPU). They use the same prompt in this same process, with runs alternating,
# and every engine's tokens are compared one by one with HF's:

# %%
# NBVAL_IGNORE_OUTPUT
if gpu or not COMPARE_WITH_HF:
    print("The HF comparison runs on a CPU in float32 (COMPARE_WITH_HF=True); "
          "`python -m kvlab.bench versus-hf` runs it from a shell.")
else:
    from kvlab.bench.versus_hf import compare_with_hf, print_comparison

    model.decode_reads_blocks = model.can_read_blocks  # back to kvlab's CPU default for the comparison
    versus = compare_with_hf(model, tokenizer, "The history of the printing press", new_tokens=HF_TOKENS, runs=3)
    print_comparison(versus)

# %% [markdown]
# HF transformers is a low bar on a CPU. The engine people actually run GGUF files with is **llama.cpp**. Same file,
# same prompt token ids, now at batch 1, 4 and 16, runs alternating: llama.cpp's own batched decode (one
# `llama_decode` of B tokens a step, each sequence its own `seq_id`), kvlab's fused C++ decode (one C++ call a layer,
# `model.fused_decode = True`, its CPU default) and kvlab's readable Python forward (`False`), both of kvlab's
# reading the blocks. Tokens are compared with the Python forward's, which are HF's:

# %%
# NBVAL_IGNORE_OUTPUT
from kvlab.bench.llamacpp_engine import llama_cpp_available
from kvlab.bench.roofs import device_label
from kvlab.bench.versus_llamacpp import compare_with_llamacpp, recorded_comparisons
from kvlab.bench.versus_llamacpp import print_comparison as print_llamacpp_comparison

if not gpu and COMPARE_WITH_LLAMACPP and llama_cpp_available():
    print(f"MEASURED LIVE on {device_label(device)}, now:")
    print_llamacpp_comparison(compare_with_llamacpp(model, tokenizer, "The history of the printing press",
                                                    new_tokens=HF_TOKENS, runs=3, batches=(1, 4, 16)))
else:
    recorded = recorded_comparisons("../benchmarks/results")
    if not recorded:
        print("no recorded llama.cpp result yet: python -m kvlab.bench versus-llamacpp")
    for r in recorded:
        print(f"RECORDED {r['date']} on {r['device']} (not measured now; `make bench-deps` installs llama-cpp-python "
              "to measure it live):")
        print_llamacpp_comparison(r)

# %% [markdown]
# **Same blocks, different arithmetic.** llama.cpp quantizes the *activations* too, to 8 bits (blocks of 32 with a
# scale), and multiplies integers: a 4-bit weight block against an 8-bit activation block is a few fused integer
# dot-product instructions, and no float weight is ever formed. Each step runs as a graph of fused operations.
# kvlab rebuilds the exact float32 weights from the same blocks in registers and keeps the activations in float32,
# so its greedy tokens are HF's, token for token; llama.cpp's may drift (the last column says after how many). The
# price is arithmetic: an unpack and a float multiply-add per weight, where one integer instruction does four times
# as many 8-bit products. Read the *of bound* column: the further an engine sits below its bandwidth bound, the more
# its arithmetic, not its reading, is the limit.

# %% [markdown]
# ## 8 · Recorded on a GPU
#
# On a GPU the same measurements use bf16, the compiled Triton kernels and sizes 10–100× larger; the ridge point
# is in the hundreds of FLOP per byte, so decode sits even further left. `python -m kvlab.bench roofline` on a GPU
# machine writes `benchmarks/results/roofline_<gpu>.json`; this cell shows any such recording, clearly labelled.

# %%
# NBVAL_IGNORE_OUTPUT
recorded = recorded_gpu_runs("roofline", "../benchmarks/results")
if not recorded:
    print("No GPU run of this benchmark is recorded yet. On a machine with a GPU:\n"
          "    python -m kvlab.bench roofline\n"
          "writes benchmarks/results/roofline_<gpu>.json, and this cell then shows it beside the live numbers.")
for r in recorded:
    print(f"RECORDED on {r['device']}, {r['date']} (not this machine):")
    roofline.print_roofline(r)
    roofline_figure(roofline.roofs_of(r), roofline.points_of(r), f"RECORDED on {r['device']}, {r['date']}").show()

# %% [markdown]
# ## Check yourself
#
# **1.** In float32, how many FLOP does a batch-1 decode step do per byte of weights it reads? (`answer_1`)

# %%
answer_1 = None
check_number("FLOP per weight byte, batch-1 decode, float32", answer_1, 0.5, 0.05,
             "each weight (4 bytes) is used once: one multiply and one add = 2 FLOP per 4 bytes.")

# %% [markdown]
# **2.** Using the bandwidth roof measured in section 1 and the float32 weight bytes `model.dense_weight_bytes()`,
# what is the fastest batch-1 decode could possibly run on this machine reading float32 weights, in tokens per
# second? (`answer_2`; ignore the small K/V reads)

# %%
answer_2 = None
check_number("bandwidth bound on batch-1 decode, tokens/s", answer_2, roofs.copy.gb_per_s * 1e9 / model.dense_weight_bytes(),
             0.1, "every step reads every weight once: bandwidth ÷ weight bytes per step.")

# %% [markdown]
# **3.** At about which batch size does a decode step of this model reach the ridge point of this device? (`answer_3`;
# the intensity of a decode step grows about linearly with the batch, from question 1's value.)

# %%
answer_3 = None
element = torch.empty((), dtype=model.dtype).element_size()
check_number("batch at which decode reaches the ridge", answer_3, roofs.ridge_flop_per_byte * element / 2, 0.25,
             f"intensity ≈ 2 · B / {element} FLOP per byte (weights shared by the batch; K/V ignored), set equal to "
             "the ridge point. Past it, a bigger batch costs time — before it, it is almost free.")

# %% [markdown]
# **4.** A Q4_1 block holds 32 weights in 20 bytes. How many FLOP per byte of weights does batch-1 decode do when it
# reads those blocks instead of float32? (`answer_4`)

# %%
answer_4 = None
check_number("FLOP per weight byte, batch-1 decode, Q4_1 blocks", answer_4, 2 * 32 / 20, 0.05,
             "32 weights × 2 FLOP per 20 bytes = 3.2: 6.4× question 1's. That is still left of the ridge here, yet the "
             "blocks kernel stays well under the bandwidth roof: unpacking is work the FLOP count leaves out.")

# %% [markdown]
# **5.** (Think, then measure it in the lab.) Decode attention's points do not move right when you raise the batch,
# unlike the decode step's. Why not — and what would have to change in the model for them to move right? (Hint:
# notebook 07.)
#
# ## What we saw
# * The roofs are measured, and every point is a timed step of the real model: decode sits on the bandwidth slope,
#   prefill under the compute roof.
# * Per token, decode costs an order of magnitude more than prefill — the same weights read for one token instead
#   of many.
# * Batching is almost free for decode throughput until the intensity nears the ridge; it costs the first token.
# * At batch 1 the bound is bandwidth ÷ weight bytes. An engine gets closer by streaming better: kvlab's kernel
#   reads the same float32 bytes 2–3× as fast as `F.linear`. Or it reads fewer bytes: the file's 4-/8-bit blocks are
#   5.6× smaller, and then unpacking them is what limits a CPU. Against HF transformers, on the same tokens,
#   kvlab decoded ~3× as fast on float32 weights and 6.8–8.2× as fast on the blocks, with each layer of a decode
#   step one C++ call; against llama.cpp on the same file about as fast at batch 1 (0.9–1.1×) and 1.2–1.9× at
#   batch 4 and 16. Those are our runs on a shared 2-core EPYC; the comparisons above are this run's.
