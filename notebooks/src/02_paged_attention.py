# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 02 · Paged attention: a KV cache without reserved rows
#
# **The question.** Notebook 01's contiguous cache gives every request one row of `max_len` slots per layer,
# reserved before the request has produced a single token. A server cannot know how long an answer will be, so
# `max_len` is the worst case — often the model's whole context. How much of that memory ever holds a token?
# The PagedAttention paper (Kwon et al., 2023, the vLLM paper) names three ways it is lost:
#
# * **reserved** — slots held for tokens a request has not produced yet: empty now, filled later (maybe);
# * **internal fragmentation** — slots that are never filled, because the request stops before `max_len`;
# * **external fragmentation** — free memory cut into pieces between reservations, none large enough for the
#   next request's `max_len` row.
#
# The paged layout stores K/V in small fixed-size **blocks** taken from one shared pool only when a sequence
# crosses a block boundary, and returned when it finishes. The only waste left is the unfilled tail of each
# sequence's last block. This notebook runs both layouts on the real model (SmolLM2-135M-Instruct), draws what
# each cache really holds, checks that both write the same tokens, runs kvlab's Triton kernels (and, on a CPU, its
# C++ decode kernel) on the real model and against their reference, and measures what paging costs at decode: the
# paged kernel's time next to SDPA's over a contiguous cache and next to the device's copy bandwidth.

# %% tags=["parameters"]
# Parameters (papermill can override any of these: see the README)
DEVICE = "auto"  # "cpu", "cuda" or "auto"
BLOCK_SIZE = 16  # tokens per KV block (a power of two)
NEW_TOKENS = 24  # tokens generated per prompt
PROMPTS = [
    "The history of the printing press",
    "Once upon a time, in a small village at the edge of a great forest, there lived",
    "The printing press changed Europe in many ways: books became cheaper, ideas travelled faster, and scholars "
    "in distant cities could finally read the same texts. Historians still argue about",
]
KERNEL_CONTEXTS = [37, 100, 250]  # prefill lengths for the kernel-vs-reference check (interpreter on a CPU)
BENCH_BATCHES = None  # decode benchmark batches; None → [1, 4, 16] on a CPU, [1, 16, 64] on a GPU
BENCH_CONTEXTS = None  # decode benchmark contexts; None → [256, 1024] on a CPU, [1024, 8192, 32768] on a GPU

# %%
# NBVAL_IGNORE_OUTPUT
import copy

import torch
from IPython.display import display

import kvlab
import kvlab.kernels as kernels  # on a machine without CUDA this switches Triton's interpreter on
from kvlab.bench import decode, device_label, median_seconds
from kvlab.cache import PagedCache, blocks_for, make_cache
from kvlab.exercises import check_number
from kvlab.viz import (block_tables_figure, decode_bandwidth_figure, mode_banner, occupancy_figure, paging_cost_figure,
                       pool_figure, reservation_figure, snapshot)
from kvlab.viz.paged_figures import holding_fraction

device = kvlab.pick_device(DEVICE)  # "auto": $KVLAB_DEVICE if set (the tests pin cpu), else CUDA when available
use_cuda = device.type == "cuda"
bench_batches = BENCH_BATCHES or ([1, 16, 64] if use_cuda else [1, 4, 16])
bench_contexts = BENCH_CONTEXTS or ([1024, 8192, 32768] if use_cuda else [256, 1024])
mid_step, last_step = NEW_TOKENS // 2, NEW_TOKENS - 1

model, tokenizer = kvlab.load_model(device=device)
paged_backend = PagedCache.default_backend(device)  # what cache="paged" runs here
paged_path = {"triton": "compiled Triton kernels",
              "cpu": "kvlab's C++ decode kernel, blocks read in place (Triton kernels: interpreter, small checks only)",
              "torch": "the torch gather path: the C++ kernel is not built here (Triton: interpreter, checks only)",
              }[paged_backend]
display(mode_banner(device, model.dtype, f"{device_label(device)}; model loaded from {model.load_source} in "
                    f"{model.load_seconds:.1f} s; paged cache through {paged_path}."))

# %% [markdown]
# ## The picture: the same three requests in two layouts
#
# Three prompts of different lengths, greedy, `NEW_TOKENS` tokens each (EOS ignored, so all three run to the
# end). `kvlab.generate` sizes the contiguous cache the way a simple server would: every row gets
# `max_len = longest prompt + max_new_tokens` slots. The paged cache gets a pool with room for the same worst
# case, and hands blocks out on demand.
#
# `generate` calls `on_step(step_index, cache, running)` after every step and frees the sequences when it
# returns, so the hook keeps a copy of each real cache (tensors and bookkeeping) as it stands at the last step.

# %%
frozen = {}  # cache name -> a copy of the real cache at the last step


def keep_last_step(step_index, cache, running):
    if step_index == last_step:
        frozen[cache.name] = copy.deepcopy(cache)


contiguous = kvlab.generate(model, tokenizer, PROMPTS, max_new_tokens=NEW_TOKENS, cache="contiguous",
                            stop_at_eos=False, on_step=keep_last_step)
paged = kvlab.generate(model, tokenizer, PROMPTS, max_new_tokens=NEW_TOKENS, cache="paged", block_size=BLOCK_SIZE,
                       stop_at_eos=False, on_step=keep_last_step)
for prompt, ids, text in zip(PROMPTS, contiguous.prompt_token_ids, contiguous.texts):
    print(f"[{len(ids):>3} prompt tokens] …{prompt[-40:]}{text!r}")

# %%
# NBVAL_IGNORE_OUTPUT
reservation_figure(frozen["contiguous"], frozen["paged"]).show()

# %%
slab, pool = frozen["contiguous"], frozen["paged"]
held = sum(slab.lengths.values())
print(f"at step {last_step} the caches hold {held} tokens ({sorted(slab.lengths.values())} per sequence)")
print(f"contiguous: {slab.max_batch} rows × max_len {slab.max_len} = {slab.max_batch * slab.max_len} slots; "
      f"{holding_fraction(slab):.0%} hold a token")
print(f"paged:      {pool.allocator.num_used} blocks × {pool.block_size} = {pool.allocator.num_used * pool.block_size} "
      f"slots; {holding_fraction(pool):.0%} hold a token; {pool.allocator.num_free} of {pool.allocator.num_blocks} "
      f"blocks free for any request")
context = model.config.context_len
print(f"a server reserving the whole context ({context:,} tokens) per row: {held / (slab.max_batch * context):.1%} hold a token")

# %% [markdown]
# The contiguous rows are as long as the *longest* request could become, so the shorter requests' rows are
# partly empty (red), and each row keeps its empty slots until the request ends — no other request can use
# them. The paged pool was allocated up front too (a pool is one tensor per layer), but its free blocks belong
# to nobody: whichever request crosses a block boundary next takes one. What a sequence holds and does not use
# is at most `BLOCK_SIZE − 1` slots (orange): the tail of its last block.
#
# ## The mechanism: blocks, block tables, slots
#
# * The pool, per layer: `k_pools[layer]`, `v_pools[layer]`, each `[num_blocks, block_size, kv_heads, head_dim]`.
#   The same block id indexes every layer, so one allocation covers a token in all 30 layers.
# * A **block table** per sequence: logical block *j* (its tokens *j·bs … j·bs + bs − 1*) → physical block id.
# * Token *t* of a sequence is stored at **slot = table[t // bs] × bs + t % bs** of the flattened pool
#   `[num_blocks · block_size, kv_heads, head_dim]`. Attention gathers a sequence's blocks through its table.
#
# Run the three prompts again through the paged cache and record the pool at every step with `snapshot`
# (a plain dict). The figures below are drawn from the live cache in the hook, at a middle step and the last one.
# On a CPU whole generations use the paged cache's **cpu** path: new tokens' K/V are scattered by slot, the
# prompt is attended over its gathered blocks, and every decode step runs kvlab's C++ kernel, which reads each
# block where it lies through the block table. The Triton kernels run in Triton's interpreter, for the small
# checks further down (and for reading them: they are the GPU path). On a GPU the same call runs them compiled.

# %%
snapshots, drawn = [], {}


def record(step_index, cache, running):
    snapshots.append(snapshot(step_index, cache, running))
    if step_index in (mid_step, last_step):
        drawn[step_index] = (pool_figure(cache, columns=8), block_tables_figure(cache))


recorded = kvlab.generate(model, tokenizer, PROMPTS, max_new_tokens=NEW_TOKENS, cache="paged", block_size=BLOCK_SIZE,
                          stop_at_eos=False, on_step=record)

# %%
# NBVAL_IGNORE_OUTPUT
for figure in drawn[mid_step]:
    figure.update_layout(title_text=f"step {mid_step}: " + figure.layout.title.text).show()

# %%
# NBVAL_IGNORE_OUTPUT
for figure in drawn[last_step]:
    figure.update_layout(title_text=f"step {last_step}: " + figure.layout.title.text).show()

# %% [markdown]
# Blocks are handed out in the order sequences need them, so a sequence's blocks are not adjacent in the pool:
# the block table is what makes them one sequence. Over the whole generation, the blocks in use climb in steps
# while the tokens stored climb smoothly; the gap between them (shaded) is the unfilled tails of the last blocks,
# never more than one block per sequence.

# %%
# NBVAL_IGNORE_OUTPUT
occupancy_figure(snapshots, BLOCK_SIZE).show()

# %%
last = snapshots[-1]
print(f"step {last['step']}: {last['used_blocks']} of {last['pool_blocks']} blocks in use")
for seq_id, table in last["tables"].items():
    tokens = last["tokens"][seq_id]
    tail = tokens - (len(table) - 1) * BLOCK_SIZE
    print(f"seq {seq_id}: {tokens:>3} tokens → blocks {table}  (last block holds {tail}/{BLOCK_SIZE})")
print("identical tokens to the contiguous cache:", recorded.token_ids == contiguous.token_ids)

# %% [markdown]
# Check the slot formula on the real tensors: take one token of the longest sequence, find its slot through the
# paged cache's block table, and compare the K and V stored there with the contiguous cache's K and V of the same
# token (its row, its position), in every layer.

# %%
seq_id = max(pool.lengths, key=pool.lengths.get)
token = pool.lengths[seq_id] * 3 // 4
logical, offset = divmod(token, BLOCK_SIZE)
block = pool.block_tables[seq_id][logical]
slot = block * BLOCK_SIZE + offset
print(f"seq {seq_id}, token {token}: logical block {logical}, offset {offset} → physical block {block} → "
      f"slot {block} × {BLOCK_SIZE} + {offset} = {slot}")

cfg = model.config


def close_enough(a, b):  # float32: element by element; bfloat16 rounds every op, so compare the size of the difference
    if model.dtype == torch.float32:
        return torch.allclose(a, b, atol=1e-4, rtol=1e-4)
    return bool((a.float() - b.float()).norm() / b.float().norm() < 2e-2)


same = all(
    close_enough(paged_pool[layer].view(-1, cfg.num_kv_heads, cfg.head_dim)[slot], slab_kv[layer][slab.row_of[seq_id], token])
    for layer in range(cfg.num_layers)
    for paged_pool, slab_kv in ((pool.k_pools, slab.k), (pool.v_pools, slab.v))
)
print(f"K and V at slot {slot} equal the contiguous cache's row {slab.row_of[seq_id]}, position {token}, "
      f"in all {cfg.num_layers} layers: {same}")

# %% [markdown]
# ## The real model through the real kernels
#
# `backend="triton"` sends every layer of the paged cache through kvlab's Triton kernels: `store_kv` writes the
# new tokens' K/V to their slots, `paged_prefill_attention` runs the prompt, `paged_decode_attention` each new
# token. On a CPU this is Triton's interpreter (30 layers × 3 kernels × 4 steps: a few seconds);
# on a GPU, compiled code. Greedy tokens must match the torch path.

# %%
through_kernels = kvlab.generate(model, tokenizer, PROMPTS[0], max_new_tokens=4, cache="paged", backend="triton")
through_torch = kvlab.generate(model, tokenizer, PROMPTS[0], max_new_tokens=4, cache="paged", backend="torch")
print(PROMPTS[0] + "|" + through_kernels.texts[0])
print("Triton-kernel tokens equal the torch path's first 4 tokens:", through_kernels.token_ids == through_torch.token_ids)

# %% [markdown]
# ## The decode kernel against its reference, live
#
# Prefill sequences of `KERNEL_CONTEXTS` tokens through the model into a paged cache, take the real pool of one
# layer, and give `paged_decode_attention` a query (random: the kernel must be right for any query). Its
# plain-torch oracle `paged_decode_reference` gathers each sequence's blocks through the table and attends in
# float32. Then again with **split-K** (`num_splits=2`): each sequence's context is cut in two slices whose
# partial results are combined with their log-sum-exps — the flash-decoding trick that fills a GPU when the
# batch is small. (On a CPU the shortest context fits in one 64-token tile, so its second slice is empty: that path
# is checked too.)

# %%
text_ids = tokenizer.encode(" ".join(PROMPTS))
kernel_cache = make_cache("paged", cfg, model.device, model.dtype, max_batch=len(KERNEL_CONTEXTS),
                          max_len=max(KERNEL_CONTEXTS), block_size=BLOCK_SIZE, backend="torch")
input_ids = torch.zeros(len(KERNEL_CONTEXTS), max(KERNEL_CONTEXTS), dtype=torch.int64)  # right-padded [B, T]
for seq_id, n in enumerate(KERNEL_CONTEXTS):
    kernel_cache.add_sequence(seq_id, n)
    input_ids[seq_id, :n] = torch.tensor((text_ids * (n // len(text_ids) + 1))[:n])
seq_ids = list(range(len(KERNEL_CONTEXTS)))
kernel_cache.begin_step(seq_ids, KERNEL_CONTEXTS)
model.forward(input_ids.to(device), kernel_cache)
kernel_cache.end_step()

layer = cfg.num_layers // 2
width = max(len(t) for t in kernel_cache.block_tables.values())
block_tables = torch.tensor([kernel_cache.block_tables[s] + [0] * (width - len(kernel_cache.block_tables[s]))
                             for s in seq_ids], dtype=torch.int32, device=device)  # [B, max_blocks]
context_lens = torch.tensor(KERNEL_CONTEXTS, dtype=torch.int32, device=device)  # [B]
query = torch.randn(len(seq_ids), cfg.num_heads, cfg.head_dim, generator=torch.Generator().manual_seed(0))
query = query.to(device, model.dtype)  # [B, Hq, D]
k_pool, v_pool = kernel_cache.k_pools[layer], kernel_cache.v_pools[layer]  # [num_blocks, block_size, Hkv, D]

kernel_tolerance = {torch.float32: 1e-5, torch.bfloat16: 3e-2}[model.dtype]
expected = kernels.paged_decode_reference(query, k_pool, v_pool, block_tables, context_lens)
outputs = {splits: kernels.paged_decode_attention(query, k_pool, v_pool, block_tables, context_lens, num_splits=splits)
           for splits in (1, 2)}
print(f"layer {layer}, contexts {KERNEL_CONTEXTS}, pool {tuple(k_pool.shape)}, query {tuple(query.shape)}")
for splits, out in outputs.items():
    close = torch.allclose(out.float(), expected.float(), atol=kernel_tolerance, rtol=kernel_tolerance)
    print(f"num_splits={splits}: torch.allclose(kernel, reference, atol=rtol={kernel_tolerance:g}) → {close}")

# %%
# NBVAL_IGNORE_OUTPUT
for splits, out in outputs.items():
    print(f"num_splits={splits}: max |kernel − reference| = {(out.float() - expected.float()).abs().max().item():.2e}")

# %% [markdown]
# On a CPU the paged cache's decode steps do not run this Triton kernel (the interpreter is far too slow for a
# whole generation) but its C++ counterpart, `kvlab.kernels.cpu_paged_attention`: the same arguments, the same
# walk through the block table tile by tile, each K/V row serving its whole query group, online softmax — in
# C++ vector code, with each thread taking a few sequences (or slices of one long context). Same oracle:

# %%
if paged_backend == "cpu":
    from kvlab.kernels.cpu_paged_attention import cpu_paged_decode_attention

    cpp_out = cpu_paged_decode_attention(query, k_pool, v_pool, block_tables, context_lens)
    cpp_close = torch.allclose(cpp_out.float(), expected.float(), atol=kernel_tolerance, rtol=kernel_tolerance)
    print(f"C++ kernel: torch.allclose(kernel, reference, atol=rtol={kernel_tolerance:g}) → {cpp_close}")
else:
    print("C++ kernel: not this device's paged path (a GPU runs the Triton kernel; see the banner)")

# %% [markdown]
# ## Measure: what paging costs at decode
#
# One decode step of attention must read every cached K and V byte once, so its figure of merit is bytes moved
# ÷ time, next to the copy bandwidth measured on the same device in the same run — and its cost of paging is its
# time next to torch's `scaled_dot_product_attention` over the same K/V in a contiguous cache. `kvlab.bench.decode.run`
# builds a paged pool with shuffled block tables (Llama-3-8B head shapes on a GPU, SmolLM2's on a CPU) and times
# them, taking turns.
#
# On a **CPU** there are two paged paths, and they tell different stories. The torch path gathers each sequence's
# blocks into a contiguous copy and then attends: it reads the K/V, writes them again and reads the copy, so it
# takes several times SDPA's time, and a reader would conclude that paging is expensive. It is not: that cost is
# the copy's, not the blocks'. kvlab's C++ kernel reads each block where it lies through the block table and takes
# no longer than SDPA over the contiguous cache (here less: torch's CPU attention is not built for one query per
# sequence). The vLLM paper measured its paged kernel 20–26 % slower than a contiguous one (Kwon et al. 2023,
# §7.1: the block-table lookups and the less regular reads, on a GPU, against a tuned contiguous kernel) — the
# band in the figure below. On a **GPU** the compiled Triton kernel is the paged path.

# %%
# NBVAL_IGNORE_OUTPUT
report = decode.run(device, bench_batches, bench_contexts, BLOCK_SIZE, model.dtype, progress=False)
decode.print_table(report)

# %%
# NBVAL_IGNORE_OUTPUT
paging_cost_figure(report).show()
in_place = [c["paged_over_sdpa_time"] for c in report["cases"]]
gathered = [c["gather_over_sdpa_time"] for c in report["cases"] if c.get("gather_s") is not None]
print(f"paged kernel, blocks read in place: {min(in_place):.2f}–{max(in_place):.2f}× SDPA's time on a contiguous cache")
if gathered:
    print(f"gather the blocks, then attend:     {min(gathered):.2f}–{max(gathered):.2f}× — the copy's cost, not paging's")

# %%
# NBVAL_IGNORE_OUTPUT
if use_cuda:  # CPU tensors run only under the interpreter, which a CUDA machine does not switch on
    print("On a GPU the kernels run compiled: the benchmark above timed them.")
else:
    tiny = decode.make_inputs(1, 64, BLOCK_SIZE, num_q_heads=8, num_kv_heads=2, head_dim=64, dtype=torch.float32,
                              device=torch.device("cpu"))
    tiny_query, tiny_k, tiny_v, tiny_tables, tiny_lens = tiny[:5]
    seconds = median_seconds(lambda: kernels.paged_decode_attention(tiny_query, tiny_k, tiny_v, tiny_tables, tiny_lens),
                             "cpu", warmup=1, repeats=3)
    print(f"one call of the Triton decode kernel in the interpreter (batch 1, 64 tokens, CPU tensors): {seconds * 1e3:.1f} ms")
    if paged_backend == "cpu":
        cpp_seconds = median_seconds(lambda: cpu_paged_decode_attention(tiny_query, tiny_k, tiny_v, tiny_tables, tiny_lens),
                                     "cpu", warmup=3, repeats=21)
        print(f"the same call through the C++ kernel:                                         {cpp_seconds * 1e6:.0f} µs")
    print("An interpreter timing says nothing about speed: it runs each program's tile operations one by one in numpy.")

# %%
# NBVAL_IGNORE_OUTPUT
decode_bandwidth_figure(report).show()

# %% [markdown]
# ## Check yourself
#
# 1. A sequence of **37** tokens is stored in blocks of **16**. How many token slots of its last block are empty?

# %%
my_empty_slots = None  # e.g. 3

check_number(
    "Empty slots in the last block of a 37-token sequence, block size 16:",
    my_empty_slots,
    blocks_for(37, 16) * 16 - 37,
    rel_tolerance=0,
    why="37 tokens need ceil(37 / 16) = 3 blocks = 48 slots; the last block holds 37 − 2 × 16 = 5 tokens, "
        "so 11 slots are empty. That tail (at most block size − 1 per sequence) is all the paged layout wastes.",
)

# %% [markdown]
# 2. A GPU has room for a KV pool of **1,024 blocks of 16 tokens** (16,384 token slots). Every request holds
#    **1,000** tokens. A contiguous cache that reserves `max_len = 4,096` per request fits 16,384 / 4,096 = 4 of
#    them. How many fit at once in the paged pool?

# %%
my_requests = None  # e.g. 5

check_number(
    "1000-token requests held at once by a pool of 1024 blocks × 16 tokens:",
    my_requests,
    1024 // blocks_for(1000, 16),
    rel_tolerance=0,
    why="each request needs ceil(1000 / 16) = 63 blocks; 1024 // 63 = 16 requests (16 blocks left over) — "
        "4× the contiguous cache's 4, from the same memory. More requests in a batch is more throughput.",
)

# %% [markdown]
# ## On a GPU
#
# The decode benchmark at full size — compiled Triton kernel, bfloat16, Llama-3-8B head shapes, batches
# 1–64 × contexts 1K–128K, split-K chosen per case — writes `benchmarks/results/decode_<device>.json`:
#
# ```bash
# .venv/bin/python -m kvlab.bench decode
# ```
#
# This notebook with GPU sizes (the benchmark cells pick `[1, 16, 64] × [1024, 8192, 32768]` by themselves
# when `BENCH_*` are `None`; the kernel check gets longer contexts):
#
# ```bash
# .venv/bin/papermill notebooks/02_paged_attention.ipynb /tmp/02_gpu.ipynb \
#     -p DEVICE cuda -p KERNEL_CONTEXTS '[1000, 4000, 8000]'
# ```
