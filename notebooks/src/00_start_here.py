# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 00 · Start here
#
# **What this lab is.** kvlab teaches how the KV cache makes LLM inference fast by *running it*: a real model
# (SmolLM2-135M-Instruct, read from its GGUF file) generates through kvlab's own caches — contiguous, paged, prefix
# sharing, quantized, offloaded — and its own Triton and C++ kernels, and every trick is checked token for token
# against plain greedy decoding (and so against HF transformers). Each notebook asks one question, shows the
# mechanism, gives you a widget to move, and measures the claim people repeat about it on *this* machine.
#
# **How to use it.** Run a notebook top to bottom (*Run → Run All Cells*), then play with its widgets. Every notebook
# runs on a laptop CPU with small sizes and on a GPU with large ones; the banner under the setup cell names the
# mode. On a CPU, the Triton kernels run in Triton's interpreter: they are *correct* there, but their timings say
# nothing about speed; where a notebook has a GPU result recorded in `benchmarks/results/`, it shows it beside the
# live CPU numbers, labelled as recorded. The sizes are papermill parameters (the cell tagged `parameters` at the
# top of each notebook), so `papermill -p DEVICE cuda …` runs the GPU sizes.
#
# This notebook checks that the lab runs here, then gives the map of the course and four paths through it.

# %% tags=["parameters"]
# Parameters (papermill can override any of these: see the README)
DEVICE = "auto"  # "cpu", "cuda" or "auto"

# %% [markdown]
# ## 1 · Does it run here?
#
# The cell below checks, live: which device and mode the lab will use; how long the real model takes to load; that
# kvlab's C++ CPU kernel is built (it streams the weights at memory bandwidth in every CPU decode step, and
# `make install` built it); that the Triton kernels run — the paged decode attention kernel on odd shapes over
# scattered blocks, against its plain-torch oracle — and, on a GPU, that they compile for it. A ✗ says what to do.

# %%
# NBVAL_IGNORE_OUTPUT
from IPython.display import HTML, display

import kvlab
from kvlab import setup_check
from kvlab.viz import mode_banner
from kvlab.viz.course_view import course_map_html, paths_html

device = kvlab.pick_device(DEVICE)  # "auto": $KVLAB_DEVICE if set (the tests pin cpu), else CUDA when available
checks = [setup_check.device_check(device)]
loaded, model, tokenizer = setup_check.model_check(lambda: kvlab.load_model(device=device), device)
checks += [loaded, setup_check.cpu_kernel_check(), setup_check.triton_check(device),
           setup_check.gpu_compiled_check(device)]
display(mode_banner(device, model.dtype, "This notebook only checks the setup; the others measure."))
display(HTML(setup_table := setup_check.setup_table(checks)))

# %%
failed = [c.name for c in checks if c.passed is False]
print("every check passed (– means it does not apply here)" if not failed else f"fix these first: {failed}")

# %% [markdown]
# And the model is real: greedy decoding of one question, through a paged KV cache.

# %%
result = kvlab.generate(model, tokenizer, "What does a KV cache store?", max_new_tokens=24, chat=True, cache="paged")
print(result.texts[0])

# %% [markdown]
# ## 2 · The map
#
# Every notebook, the question it answers and what it measures live. Notebook 11 gathers the claims of the others
# into one ledger — each claim measured, with a one-line verdict — and an interview drill.

# %%
display(HTML(course_map_html()))

# %% [markdown]
# ## 3 · Paths through it
#
# Four ways through the course, by the time you have. The workshop guide (`docs/workshop.md`) has the schedule for
# an instructor, each notebook's measured run time and what each exercise checks.

# %%
display(HTML(paths_html()))

# %% [markdown]
# ## Check yourself
#
# **1.** From the model's own configuration (`model.config`: `num_layers`, `num_kv_heads`, `head_dim`, and 4 bytes a
# number in float32), how many bytes of KV cache does one token take in this lab on a CPU? Put it in `answer_1`;
# notebook 01 measures it on a real cache.

# %%
from kvlab.exercises import check_number

cfg = model.config
answer_1 = None
check_number("KV bytes per token, SmolLM2-135M, float32", answer_1,
             2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * 4, 0.01,
             f"2 (K and V) × {cfg.num_layers} layers × {cfg.num_kv_heads} KV heads × {cfg.head_dim} × 4 bytes: only "
             f"the K/V heads are cached, not the {cfg.num_heads} query heads.")

# %% [markdown]
# **2.** (Think.) Before you open notebook 01: a decode step of this 135M-parameter model reads every one of its
# weights (about 100 MB as the GGUF file's 4-bit blocks, 540 MB as float32) to produce *one* token. What do you
# expect to limit its speed on your laptop — the arithmetic, or the memory? Notebook 06 measures it.
#
# Next: [01 · Why generation needs a KV cache](01_why_kv_cache.ipynb).
