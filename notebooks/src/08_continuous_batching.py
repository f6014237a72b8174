# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 08 · Continuous batching: the scheduler a KV cache exists for
#
# **The question.** A KV cache makes one sequence fast. A *server* has many, arriving whenever they like, each
# stopping whenever it likes. What should the next forward pass compute? Students are told that **continuous
# batching** gives "5–10× the throughput of static batching", lifts "GPU utilisation from 30–50 % to 80–95 %",
# that "TTFT under 500 ms" is the rule for chat, and that "a large batch raises throughput but hurts latency".
# This notebook runs kvlab's own serving engine on the real model and measures each of those claims here.
#
# **The mechanism.** kvlab's engine is one loop — *schedule → run → postprocess* — over the paged caches of
# notebooks 02–05 (`kvlab/engine/`). Every step the scheduler forms one batch under two limits, `max_num_seqs`
# sequences and a token budget `max_num_batched_tokens`:
#
# 1. **running requests first**, one decode token each (or the next chunk of a prompt still being prefilled);
# 2. if the pool cannot give a running request its next block, the **most recently admitted** running request is
#    **preempted**: its blocks are freed, it goes back to the front of the waiting queue and later recomputes its
#    K/V (vLLM's and nano-vllm's rule);
# 3. then **waiting requests that have arrived**, first come first served, while slots, budget and blocks last. A
#    prompt longer than the budget left is fed in chunks over several steps (**chunked prefill**), beside other
#    requests' decode tokens.
#
# *Static* batching, the baseline of the Orca paper, is the same engine with one rule changed: a batch is formed only
# when nothing is running, and it runs until its **last** request finishes.

# %% tags=["parameters"]
# Parameters (papermill can override any of these: see the README)
DEVICE = "auto"  # "cpu", "cuda" or "auto"
NUM_REQUESTS = None  # chat-trace requests for static vs continuous; None: 16 on a CPU, 128 on a GPU
MAX_NUM_SEQS = None  # None: 8 on a CPU, 64 on a GPU
MAX_NUM_BATCHED_TOKENS = None  # the token budget per step; None: 256 on a CPU, 2048 on a GPU
PROMPT_MEAN = None  # chat-trace prompt / output means (log-normal, long-tailed); None: 48 / 64 on a CPU, 161 / 338 on a GPU
OUTPUT_MEAN = None
BATCHES = None  # decode batches for the step-cost curve; None: 1, 2, 4, 8, 16 on a CPU, 1 … 256 on a GPU
LOAD_FRACTIONS = (0.5, 1.0, 1.5)  # request rates for the latency–throughput curve, × the capacity measured below
SWEEP_REQUESTS = None  # requests per rate in that curve; None: 10 on a CPU (~35 s for the three rates), 128 on a GPU
SEED = 0

# %%
# NBVAL_IGNORE_OUTPUT
import pathlib
import tempfile

import torch
from IPython.display import HTML, display

import kvlab
from kvlab import Request, StepClock
from kvlab import traces
from kvlab.bench import serve as serve_bench
from kvlab.bench.results import recorded_gpu_runs
from kvlab.exercises import check_number
from kvlab.viz import mode_banner, show_with_first_view
from kvlab.viz.serving_figures import (batch_composition_figure, gantt_figure, latency_throughput_figure,
                                       slot_occupancy_figure, step_cost_figure)
from kvlab.viz.serving_widget import ServingLab
from kvlab.viz.vllm_figures import comparison_figure, mapping_table_html
from kvlab.vllm import load_timed_trace, map_config, save_timed_trace
from kvlab.vllm.replay import GPU_CONFIG, GPU_TRACE, replay_commands, replay_mapping

device = kvlab.pick_device(DEVICE)  # "auto": $KVLAB_DEVICE if set (the tests pin cpu), else CUDA when available
model, tokenizer = kvlab.load_model(device=device)
on_gpu = device.type == "cuda"
# the GPU sizes are those the vLLM replay of section 8 serves (kvlab.vllm.replay: 128 requests, 64 slots, …)
NUM_REQUESTS = NUM_REQUESTS or (GPU_TRACE["num_requests"] if on_gpu else 16)
SWEEP_REQUESTS = SWEEP_REQUESTS or (128 if on_gpu else 10)
MAX_NUM_SEQS = MAX_NUM_SEQS or (GPU_CONFIG["max_num_seqs"] if on_gpu else 8)
MAX_NUM_BATCHED_TOKENS = MAX_NUM_BATCHED_TOKENS or (GPU_CONFIG["max_num_batched_tokens"] if on_gpu else 256)
PROMPT_MEAN = PROMPT_MEAN or (GPU_TRACE["prompt_mean"] if on_gpu else 48)
OUTPUT_MEAN = OUTPUT_MEAN or (GPU_TRACE["output_mean"] if on_gpu else 64)
BATCHES = BATCHES or ((1, 4, 16, 64, 128, 256) if on_gpu else (1, 2, 4, 8, 16))
display(mode_banner(device, model.dtype, "Every time below is measured on this machine, now, on the wall clock (the "
                    "engine's step-counting clock only where a cell says so)."))

# %% [markdown]
# ## 1 · The loop, one step at a time
#
# Four short requests, the last two arriving later, through a paged pool, with a token budget of 8 so that the
# prompts are fed in chunks. On the engine's **step clock** every step costs 1 s, so this log is the same on every
# machine. Each line is one `StepRecord`: which requests decoded (`D`), which prefilled a chunk (`P id:tokens`),
# who was admitted, and the pool after the step.

# %%
prompts = ["The history of the printing press", "Once upon a time,", "def fibonacci(n):", "A KV cache stores"]
requests = [Request(p, max_new_tokens=n, arrival_s=t) for p, n, t in zip(prompts, [6, 4, 5, 3], [0, 0, 2, 3])]
engine = kvlab.build_engine(model, tokenizer, requests, cache="paged", block_size=8, num_blocks=12,
                            max_num_seqs=3, max_num_batched_tokens=8, clock=StepClock(), stop_at_eos=False)
while engine.has_unfinished():
    s = engine.step()
    prefill = " ".join(f"P{q}:{n}" for q, n in s.prefill)
    decode = " ".join(f"D{q}" for q in s.decode)
    print(f"step {s.index:2d}  t={s.start_s:4.1f}s  {decode + ' ' + prefill:28s} admitted {list(s.admitted)} "
          f"waiting {list(s.waiting)}  blocks {s.blocks_used}/{s.blocks_total}")
small = engine.result()
print()
for o in small.outputs:
    print(f"request {o.seq_id}: arrived {o.arrival_s:.0f}s, first token {o.first_token_s:.0f}s (TTFT {o.ttft_s:.0f}), "
          f"finished {o.finish_s:.0f}s, TPOT {o.tpot_s:.1f}  {o.text!r}")

# %% [markdown]
# Read it against the rules: request 0's whole prompt (6 tokens) fits the budget of 8, so request 1 gets the 2
# tokens left and finishes its prompt in the next step, beside request 0's first decode token (a chunked prefill);
# request 2 is admitted the step it arrives; request 3 arrives at t = 3 but waits until step 5, because all
# `max_num_seqs` = 3 slots are busy until request 1 finishes. The same requests alone through `kvlab.generate` give the same tokens — the engine is checked
# against `generate` (and so against HF transformers) under chunked prefill and forced preemption in
# `tests/test_serve.py`:

# %%
alone = [kvlab.generate(model, tokenizer, r.prompt, max_new_tokens=r.max_new_tokens, stop_at_eos=False).token_ids[0]
         for r in requests]
print("same tokens as each request alone:", small.token_ids == alone)
gantt_figure(small).show()

# %% [markdown]
# ## 2 · Static vs continuous on the same requests
#
# Now the project's chat trace: long-tailed prompt and output lengths (ShareGPT-like, scaled down on a CPU), all
# arriving at once, each generating exactly its trace length. Same model, same pool, same `max_num_seqs`, same
# budget — only the admission rule differs. kvlab's static batching lets a finished request **drop out** of the
# batch (its row stops computing); HF `generate`-style batching keeps computing padding for it until the batch
# ends, which costs more per step, so the ratio measured here is the *kinder* comparison for static batching.

# %%
# NBVAL_IGNORE_OUTPUT
trace = traces.chat_requests(tokenizer, NUM_REQUESTS, seed=SEED, arrival="all-at-once", prompt_mean=PROMPT_MEAN,
                             output_mean=OUTPUT_MEAN, max_prompt=4 * PROMPT_MEAN, max_output=3 * OUTPUT_MEAN)
common = dict(cache="paged", max_num_seqs=MAX_NUM_SEQS, max_num_batched_tokens=MAX_NUM_BATCHED_TOKENS, stop_at_eos=False)
kvlab.generate(model, tokenizer, "warm-up", max_new_tokens=4)
runs = {policy: kvlab.serve(model, tokenizer, trace, policy=policy, progress=True, **common)
        for policy in ("static", "continuous")}
for result in runs.values():
    print(result.summary())
lengths = [r.max_new_tokens for r in trace]
print(f"\n{len(trace)} requests: outputs from {min(lengths)} to {max(lengths)} tokens (median "
      f"{sorted(lengths)[len(lengths) // 2]}); same tokens under both policies: "
      f"{runs['static'].token_ids == runs['continuous'].token_ids}")
static, continuous = (runs[p].metrics() for p in ("static", "continuous"))
ratio = continuous["throughput_tok_s"] / static["throughput_tok_s"]
print(f"continuous / static throughput: {ratio:.2f}×; slot occupancy {static['mean_occupancy']:.0%} → "
      f"{continuous['mean_occupancy']:.0%}")

# %%
# NBVAL_IGNORE_OUTPUT
gantt_figure(runs["static"]).update_layout(title="static batching: a batch waits for its longest request").show()
gantt_figure(runs["continuous"]).update_layout(title="continuous batching: a finished slot is refilled at once").show()
slot_occupancy_figure({"static": runs["static"], "continuous": runs["continuous"]}).show()

# %% [markdown]
# **The claims beside the measurement.** "5–10× throughput" and "30–50 % → 80–95 % utilisation" are GPU numbers
# (the Orca paper reports up to 36.9× against FasterTransformer on GPT-3 175B; the vLLM paper 2–4× against Orca; the
# utilisation range has no primary source). What continuous batching removes is the idle slots while a batch waits
# for its longest request; what that buys depends on **how much a fuller batch costs per step** — the next section
# measures that on this device.

# %%
# NBVAL_IGNORE_OUTPUT
print(f"claim 19: throughput 5–10× │ measured here: {ratio:.2f}× (the same {len(trace)} requests, max_num_seqs "
      f"{MAX_NUM_SEQS})")
print(f"claim 19: utilisation 30–50 % → 80–95 % │ measured here: slot occupancy {static['mean_occupancy']:.0%} → "
      f"{continuous['mean_occupancy']:.0%} (share of max_num_seqs computing each step)")

# %% [markdown]
# ## 3 · What a fuller batch costs: the step cost against the batch
#
# One decode step of the real model at each batch size (median after warm-up). On a GPU a decode step reads the
# weights once for the whole batch and costs about the same at batch 1 and 64: filling slots is nearly free, so
# occupancy turns straight into throughput. On a 2-core CPU the step becomes compute-bound past a batch of ~4 and
# grows with the batch, so a fuller batch buys less.

# %%
# NBVAL_IGNORE_OUTPUT
cost = serve_bench.step_costs(model, tokenizer, BATCHES)
for row in cost:
    print(f"batch {row['batch']:3d}: {row['step_ms']:6.1f} ms a step, {row['tok_s']:6.1f} tok/s "
          f"({row['tok_s_vs_batch_1']:.1f}× batch 1)")
step_cost_figure(cost).show()
static_batch = sum(s.num_scheduled for s in runs["static"].steps) / len(runs["static"].steps)
continuous_batch = sum(s.num_scheduled for s in runs["continuous"].steps) / len(runs["continuous"].steps)
predicted = serve_bench.tok_s_at(cost, continuous_batch) / serve_bench.tok_s_at(cost, static_batch)
print(f"mean batch: static {static_batch:.1f}, continuous {continuous_batch:.1f} → the step-cost curve predicts "
      f"{predicted:.2f}× (measured {ratio:.2f}×; prefill steps and the tail of the last batch make the rest)")

# %% [markdown]
# ## 4 · Chunked prefill: the short requests stuck behind a long prompt
#
# A few short requests are decoding when a long prompt arrives; more short ones arrive while it is being prefilled.
# With a budget at least as large as the prompt, the whole prompt is one step: every decoding request stalls for
# that step and the late arrivals wait behind it. With a small budget the prompt is fed in chunks, each step mixing
# one chunk with everyone's decode tokens.

# %%
# NBVAL_IGNORE_OUTPUT
long_prompt = 1500 if on_gpu else 300
chunked = serve_bench.chunked_prefill(model, tokenizer, long_prompt=long_prompt, short_prompt=24, num_short=3,
                                      chunk_budget=64, decode_step_s=cost[min(2, len(cost) - 1)]["step_ms"] / 1e3)
for run in chunked["runs"]:
    label = f"budget {run['max_num_batched_tokens']:4d} ({'chunked' if run['chunked'] else 'one step'})"
    print(f"{label}: late short requests' TTFT p50 {run['late_ttft_p50_s'] * 1e3:5.0f} ms / p99 "
          f"{run['late_ttft_p99_s'] * 1e3:5.0f} ms; decoding requests' worst gap between tokens "
          f"{run['early_itl_max_s'] * 1e3:5.0f} ms; the long prompt's TTFT {run['long_ttft_s'] * 1e3:5.0f} ms")
print("same tokens with and without chunks:", chunked["same_tokens"])

# %% [markdown]
# Chunking trades the long request's own TTFT (its prefill now spans several steps) for everyone else's latency:
# no decode step waits for a whole prompt.
#
# ## 5 · Preemption under memory pressure
#
# A pool only a few blocks larger than one request, and four requests whose outputs outgrow it. When a running
# request needs a block and none is free, the newest running request is preempted (×) and later recomputes its
# prompt *and* the tokens it had generated. Nothing is lost and no token changes — it only costs time (step clock
# here, so the picture is the same everywhere).

# %%
pressure = [Request(p, max_new_tokens=24) for p in prompts]
tight = kvlab.serve(model, tokenizer, pressure, cache="paged", block_size=8, num_blocks=9, max_num_seqs=4,
                    max_num_batched_tokens=64, clock=StepClock(), stop_at_eos=False)
roomy = kvlab.serve(model, tokenizer, pressure, cache="paged", block_size=8, max_num_seqs=4,
                    max_num_batched_tokens=64, clock=StepClock(), stop_at_eos=False)
print(f"9 blocks: {tight.num_preemptions} preemptions, {len(tight.steps)} steps; a roomy pool: "
      f"{roomy.num_preemptions} preemptions, {len(roomy.steps)} steps; same tokens: {tight.token_ids == roomy.token_ids}")
gantt_figure(tight).update_layout(title="9 blocks of 8 tokens: preempted (×), then recomputed").show()
batch_composition_figure(tight, budget=64).show()

# %% [markdown]
# ## 6 · Latency against throughput: where the queue starts to grow
#
# A chat trace drawn the same way (`SWEEP_REQUESTS` requests), now arriving as a Poisson process at a rising
# request rate — fractions of the capacity measured in section 2 (requests per second that continuous batching
# finished). Below capacity, TTFT is a prefill plus a little queueing; past it, requests arrive faster than they
# finish and TTFT grows with every arrival.

# %%
# NBVAL_IGNORE_OUTPUT
capacity = NUM_REQUESTS / runs["continuous"].duration_s
trace_sizes = dict(num_requests=SWEEP_REQUESTS, seed=SEED, prompt_mean=PROMPT_MEAN, output_mean=OUTPUT_MEAN,
                   max_prompt=4 * PROMPT_MEAN, max_output=3 * OUTPUT_MEAN)
sweep = serve_bench.rate_sweep(model, tokenizer, [round(f * capacity, 3) for f in LOAD_FRACTIONS], capacity,
                               trace_sizes, MAX_NUM_SEQS, MAX_NUM_BATCHED_TOKENS)
for row in sweep["rows"]:
    print(f"{row['rate_per_s']:5.2f} req/s ({row['offered_load']:.0%} of capacity): {row['throughput_tok_s']:6.1f} tok/s, "
          f"TTFT p50 {row['ttft_p50_s'] * 1e3:6.0f} ms, p99 {row['ttft_p99_s'] * 1e3:6.0f} ms, "
          f"queue grows: {row['queue_grows']}")
print(f"the queue starts to grow at {sweep['queue_grows_from_rate_per_s']} req/s; TTFT p99 stays under 500 ms up to "
      f"{sweep['max_rate_ttft_p99_under_target']} req/s")
latency_throughput_figure(sweep["rows"]).show()

# %% [markdown]
# **Claims 20 and 21.** "A large batch raises throughput but each request waits longer": yes — throughput climbs
# with the rate until capacity, and TTFT climbs with it. "TTFT < 500 ms" is a budget on this curve, not a property
# of a model: it holds up to the rate printed above, and on a CPU a single long prompt's prefill can spend it alone
# (~1.7 ms a token). TTFT is queueing plus prefill (the queue's share grows with the rate); tokens/s is set by the
# decode step (section 3).
#
# ## 7 · Recorded on a GPU
#
# On a GPU the same measurements run in bf16 with 128 requests, 64 slots and a 2,048-token budget, where a decode
# step costs about the same at batch 1 and 64. `python -m kvlab.bench serve` on a GPU machine writes
# `benchmarks/results/serve_<gpu>.json`; this cell shows any such recording, clearly labelled.

# %%
# NBVAL_IGNORE_OUTPUT
recorded = recorded_gpu_runs("serve", "../benchmarks/results")
if not recorded:
    print("No GPU run of this benchmark is recorded yet. On a machine with a GPU:\n"
          "    python -m kvlab.bench serve\n"
          "writes benchmarks/results/serve_<gpu>.json, and this cell then shows it beside the live numbers.")
for r in recorded:
    print(f"RECORDED on {r['device']}, {r['date']} (not this machine):")
    serve_bench.print_report(r)

# %% [markdown]
# ## 8 · When a real server takes over
#
# kvlab's engine is small enough to read in an afternoon; vLLM is the server people deploy. Most of what this
# notebook turned has a vLLM argument with the same meaning — a token budget, a slot limit, a block pool, chunked
# prefill, first come first served, recompute preemption — and `kvlab.vllm` maps this notebook's configuration to
# them knob by knob, with a note wherever vLLM has no equivalent or means something else. The *kind* column says
# which: **same**; **differs** (the nearest argument, whose meaning the note qualifies); **implicit** (vLLM does it
# with no flag); **client** (a per-request setting that the benchmark client sends); **kvlab only** (the lab's
# instrumentation); **none** (vLLM cannot do it, and `engine_args()` refuses it by name).

# %%
served = runs["continuous"]
config = common | {"num_blocks": served.num_blocks, "block_size": served.block_size}  # the pool section 2 sized
mapping = replay_mapping(config, model.config.context_len)  # as the replay serves it (bfloat16, max_model_len)
display(HTML(mapping_table_html(mapping.table())))
try:
    map_config(config | {"policy": "static"}).engine_args()
except ValueError as refusal:
    print(f"\nstatic batching, asked of vLLM: {refusal}")

# %% [markdown]
# **The trace, with its arrival times.** Of the datasets `vllm bench serve` reads, only `timed_trace` gives each
# request its own send time (`--self-timed`): one JSON line per request with its timestamp in seconds, its prompt and
# output lengths, and one hash id per block of prompt tokens — equal ids for equal blocks from the start of the
# prompt, so vLLM's prefix cache hits where kvlab's would. What vLLM cannot replay is the prompts' tokens: it draws
# random tokens for each id, so whatever depends on the text differs (n-gram drafts, EOS, the answers), and
# `--ignore-eos` keeps every output at its trace length, as `stop_at_eos=False` does here. Section 2's trace arrives
# all at once (every timestamp 0); a Poisson trace keeps its times as they are. The cell after it prints the two
# commands that replay the file just written: `vllm serve` with the table's flags, and `vllm bench serve` against it.

# %%
export_dir = pathlib.Path(tempfile.mkdtemp(prefix="kvlab-vllm-"))
path = save_timed_trace(export_dir / "trace.timed_trace.jsonl", trace, served.block_size)
entries = load_timed_trace(path, served.block_size)
print(f"{path.name}: {len(entries)} lines, the first two:\n  " + "\n  ".join(path.read_text().splitlines()[:2]))
print("read back — the same arrival times, prompt lengths and output lengths:",
      [(e.timestamp, e.input_length, e.output_length) for e in entries]
      == [(r.arrival_s, len(r.prompt), r.max_new_tokens) for r in trace])
poisson = traces.chat_requests(tokenizer, NUM_REQUESTS, seed=SEED, rate_per_s=2.0, prompt_mean=PROMPT_MEAN,
                               output_mean=OUTPUT_MEAN, max_prompt=4 * PROMPT_MEAN, max_output=3 * OUTPUT_MEAN)
poisson_entries = load_timed_trace(save_timed_trace(export_dir / "poisson.timed_trace.jsonl", poisson))
print("a Poisson trace at 2 req/s keeps its arrival times:",
      [e.timestamp for e in poisson_entries] == [r.arrival_s for r in poisson],
      "— the first five (s):", [round(e.timestamp, 3) for e in poisson_entries[:5]])

# %%
# NBVAL_IGNORE_OUTPUT
# the replay of section 2's file, as kvlab.vllm.replay runs it: the server, then the benchmark client (the replay
# itself picks a free port; the path is this run's temporary folder)
print(replay_commands(config, path, model.config.context_len, result_dir=export_dir))

# %% [markdown]
# **What changes when vLLM serves it.**
# * The rules stay — one token budget a step, running requests first, first come first served, the newest preempted
#   and recomputed, long prompts chunked — so slots fill and queues grow the same way. What changes is what a step
#   costs: CUDA graphs, FlashAttention or Triton kernels, and one packed (varlen) batch where kvlab pads its rows and
#   runs the decode and prefill groups as two passes; with async scheduling, vLLM plans the next step while the GPU
#   runs this one.
# * The clock moves: vLLM's TTFT, TPOT and ITL are measured by the benchmark client, through HTTP and
#   detokenization; kvlab's at the engine's step. vLLM's ITL is the gap between streamed chunks: tokens that arrive
#   together (accepted drafts) make one gap there, several zero gaps here.
# * The weights differ: kvlab runs the Q4_1 GGUF file dequantized, vLLM the Hugging Face checkpoint in bfloat16, so
#   greedy tokens can differ — and with random prompt tokens the answers are not this notebook's anyway. The
#   comparison is of time, not of text.
# * Some of what kvlab does, vLLM does not do at all: static batching, swap preemption, a draft made of the target's
#   own layers, 2-bit KIVI — the table's *none* rows.
#
# A recorded replay runs section 2's trace at GPU sizes through kvlab's engine and then through `vllm serve` on the
# same GPU (`kvlab.vllm.replay.run_if_available`, which `make gpu-check` calls where vLLM is installed) and writes
# `benchmarks/results/vllm_<gpu>.json`; this cell draws it, clearly labelled, or says that none exists.

# %%
# NBVAL_IGNORE_OUTPUT
recorded_vllm = recorded_gpu_runs("vllm", "../benchmarks/results")
for r in recorded_vllm:
    print(f"RECORDED on {r['device']}, {r['date']} (not this machine), both servers on the same trace and GPU:\n"
          f"  {r['serve_command']}")
    comparison_figure(r["kvlab"], r["vllm"], kvlab_label=f"kvlab on {r['device']}",
                      vllm_label=f"vLLM on {r['device']}").show()
if not recorded_vllm:
    print("No vLLM result is recorded yet. On a GPU machine with vLLM installed, `make gpu-check` replays section 2's\n"
          "trace through kvlab and through `vllm serve` and writes benchmarks/results/vllm_<gpu>.json; this cell then\n"
          "draws vLLM's numbers beside kvlab's. Until then, kvlab's side alone, live from section 2 on this machine:")
    comparison_figure(continuous, kvlab_label="kvlab, live on this machine (section 2)").show()

# %% [markdown]
# ## 9 · The lab
#
# Choose the policy, `max_num_seqs`, the token budget, the pool size and the request rate, then **run** the real
# model through the engine. **Step** and the **replay** slider walk through the run: the Gantt chart with the
# current step, the pool's block tables at that step, the composition of the step's batch, and the running
# throughput and TTFT. A small pool makes preemption visible; static batching leaves slots idle.

# %%
# NBVAL_IGNORE_OUTPUT
lab = ServingLab(model, tokenizer)
show_with_first_view(lab)

# %% [markdown]
# ## Check yourself
#
# **1.** Static batching, `max_num_seqs` = 8, every request needs the same 10-token prompt (one step) and eight of
# them generate 10 tokens while one in each batch generates 100. How many steps does a batch of 8 take? (`answer_1`)

# %%
answer_1 = None
check_number("steps a static batch of 8 takes", answer_1, 100, 0.0,
             "the first step prefills and gives every request its first token; the batch then runs until its longest "
             "request has its 100th token: 1 + 99 = 100 steps. Seven of eight slots sit idle for 90 of them.")

# %% [markdown]
# **2.** In question 1, what is the mean slot occupancy of that batch? (`answer_2`, a fraction)

# %%
answer_2 = None
check_number("mean slot occupancy of the static batch", answer_2, (8 * 10 + 90) / (8 * 100), 0.02,
             "slot-steps used: 7 requests × 10 steps + 1 × 100 = 170 (the first step counts all 8), of 8 × 100: 21 %.")

# %% [markdown]
# **3.** A decode step costs `c(B)` seconds at batch B. If continuous batching keeps a mean batch of 7.5 and static
# batching a mean batch of 2, and c(2) = 24 ms, c(7.5) = 50 ms on this CPU, what throughput ratio should you expect
# from the step cost alone? (`answer_3`)

# %%
answer_3 = None
check_number("continuous / static throughput from the step cost", answer_3, (7.5 / 0.050) / (2 / 0.024), 0.05,
             "throughput = batch ÷ step cost: 150 tok/s against 83 tok/s = 1.8×. On a GPU c(7.5) ≈ c(2), and the "
             "same occupancy gain gives 3.75×.")

# %% [markdown]
# **4.** (Think, then try it in the lab.) With a pool just big enough for one long request and `max_num_seqs` = 4,
# why does recompute preemption waste more work the *later* in its output a request is preempted — and what would
# swapping its blocks to a slower memory tier instead cost? (Notebook 09, offloading, measures that trade.)
#
# ## What we saw
# * One loop forms every step: running requests first, then waiting ones first come first served, under a slot
#   limit and a token budget; long prompts are chunked; the newest request is preempted when the pool runs dry —
#   and every request's tokens stay those it gets alone.
# * Continuous batching refills a slot the moment a request finishes; static batching waits for its longest
#   request. The gain in throughput is the gain in occupancy *times what a fuller batch costs per step*: on a GPU a
#   fuller batch is almost free, on this CPU it is not, so the ratio here is smaller than the claims' 5–10×.
# * Chunked prefill keeps decode tokens flowing and short requests' TTFT low behind a long prompt.
# * Latency and throughput trade along one curve; past capacity the queue, not the model, sets TTFT.
# * A real server keeps these rules and changes what a step costs: `kvlab.vllm` maps the knobs to vLLM's arguments,
#   exports the trace with its arrival times, and draws vLLM's recorded result beside kvlab's.
