# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 11 · The claims ledger and interview drill
#
# **The question.** Explainers, blog posts and interview-prep notes repeat the same two dozen claims about the KV
# cache: "10–20× faster", "90 % of the memory wasted", "near-zero waste with paging", "2–3× from speculative
# decoding". Which of them hold — on a real model, here — and by how much are the others off?
#
# **The ledger.** For every claim in the team's `CLAIMS.md`, a short live measurement on the real model or on the
# lab's own caches, allocators and serving engine — the same functions the other notebooks use, sized to run in
# seconds on a 2-core CPU (larger on a GPU, through the `parameters` cell) — and a verdict in one line:
#
# * **holds** — right as stated, here;
# * **holds only when …** — right under the condition the measurement names;
# * **wrong by N×** — off by the factor measured;
# * **not measurable here** — with the reason, and the GPU result recorded where one exists.
#
# No verdict is typed in: each is read off the number printed beside it, so a different device can give a
# different verdict — and the reason is in the evidence. Then the **interview drill**: the questions behind the
# claims, checked, with the derivation shown and a "measure it" button on each.

# %% tags=["parameters"]
# Parameters (papermill can override any of these: see the README)
DEVICE = "auto"  # "cpu", "cuda" or "auto"
CLAIMS = None  # claim numbers to measure, e.g. [6, 7, 8]; None: all of CLAIMS.md
LARGE = None  # GPU sizes (True) or the small CPU sizes (False); None: large on a GPU, small on a CPU

# %%
# NBVAL_IGNORE_OUTPUT
import functools

from IPython.display import HTML, display

import kvlab
from kvlab.claims import make_lab, measure_claim, read_claims, run_ledger
from kvlab.claims.ledger import recorded_on_gpu
from kvlab.exercises import check_number
from kvlab.viz import mode_banner
from kvlab.viz.ledger_view import ledger_table_html, verdict_counts
from kvlab.viz.quiz_widget import QuizLab

device = kvlab.pick_device(DEVICE)  # "auto": $KVLAB_DEVICE if set (the tests pin cpu), else CUDA when available
model, tokenizer = kvlab.load_model(device=device)
lab = make_lab(model, tokenizer, large=LARGE)
claims = read_claims()
display(mode_banner(device, model.dtype, f"{'GPU' if lab.large else 'small CPU'} sizes; every number in the ledger "
                    "is measured now, on this machine."))

# %% [markdown]
# ## 1 · The ledger
#
# Each measurement prints nothing while it runs; the bar shows which claim is being measured. On the 2-core CPU the
# whole ledger takes a minute or two.

# %%
# NBVAL_IGNORE_OUTPUT
findings = run_ledger(lab, CLAIMS)
display(HTML(ledger_table_html(findings, claims, {f.number: recorded_on_gpu(f.number) for f in findings})))

# %%
# NBVAL_IGNORE_OUTPUT
counts = verdict_counts(findings)
print(", ".join(f"{kind}: {n}" for kind, n in counts.items()), f"— {len(findings)} claims measured in "
      f"{sum(f.seconds for f in findings):.0f} s")

# %% [markdown]
# Each claim was measured, and each has a verdict of one of the four kinds:

# %%
assert [f.number for f in findings] == sorted(CLAIMS or claims), "a claim was skipped"
print(all(f.verdict and f.evidence for f in findings))

# %% [markdown]
# **Reading the verdicts.** Three patterns recur:
#
# * *Memory arithmetic holds exactly* — bytes per token are shape × dtype, and a real cache's bytes match the
#   formula — but copied numbers go stale: the widely shared Llama-3-8B snippet (claim 7) is off by its KV-head
#   count.
# * *Speed claims are device claims.* A GPU runs a batched decode step in nearly the time of one sequence; a CPU does
#   not. So "continuous batching gives 5–10×" or "batching raises throughput" can fail here while holding on a GPU —
#   the evidence says why, and the recorded column shows the GPU run where one exists.
# * *"Near-zero", "often", "typical"* hide the condition: paging's waste is small but not zero (the last block's
#   tail), prefix caching's saving depends on how much of the prompt is shared, speculative decoding on how
#   predictable the text is.
#
# Follow the notebook link of any claim for the mechanism behind its number.

# %% [markdown]
# ## 2 · The interview drill
#
# The questions interviewers ask behind these claims. Numeric answers are checked within a tolerance and show the
# derivation; choices say why each wrong answer is wrong. The first answer to each question counts for the score.
# "measure it" shows the claim's live measurement (from the ledger above, or measured now if you skipped it).

# %%
# NBVAL_IGNORE_OUTPUT
quiz = QuizLab(measure=functools.partial(measure_claim, lab), findings={f.number: f for f in findings})
display(quiz.widget)

# %% [markdown]
# The same checks work without the widget, for a script or a study group:

# %%
from kvlab.claims.quiz import Quiz

drill = Quiz()
print(drill.answer("llama3-bytes-per-layer", 4096).message)
print(drill.answer("gqa-ratio", 8).message)
print(drill.score_line())

# %% [markdown]
# ## Check yourself
#
# **1.** Claim 8 says Llama-2-13B at batch 8 and 4K context holds about 26 GB of KV cache. Llama-2-13B has 40 layers
# and 40 K/V heads of dimension 128. How many GB (10⁹ bytes) would it hold at batch 8 and 4K context if it had used
# GQA with 8 K/V heads? (`answer_1`)

# %%
answer_1 = None
check_number("Llama-2-13B with 8 KV heads, batch 8, 4K context, bf16 (GB)", answer_1,
             2 * 40 * 8 * 128 * 2 * 4096 * 8 / 1e9, 0.03,
             "2 × 40 layers × 8 KV heads × 128 × 2 bytes × 4,096 tokens × 8 requests = 5.4 GB: the cache shrinks by "
             "the 5× fewer K/V heads; nothing else changes.")

# %% [markdown]
# **2.** The ledger measured prefix caching's TTFT saving (claim 14). If a request's prompt is *p* tokens of which
# *s* are a cached shared prefix, and prefill time is proportional to the tokens prefilled, what fraction of TTFT
# does the cache save for p = 1,100 and s = 1,083 (the chatbot's system prompt)? (`answer_2`, a fraction)

# %%
answer_2 = None
check_number("TTFT saved, 1,083 of 1,100 tokens cached", answer_2, 1083 / 1100, 0.02,
             "(s / p) of the prefill is skipped = 98 %; the measured saving is smaller, because attention over the "
             "cached prefix, the sampling step and fixed per-step costs are still paid.")

# %% [markdown]
# **3.** (Think.) Pick one claim the ledger found *wrong by N×* or *holds only when …* on this device. What would you
# have to change — device, model, workload, sizes — for it to hold as stated? Rerun that claim alone with the
# `CLAIMS` parameter (e.g. `papermill -p CLAIMS "[19]" …`) or its notebook's widget to check.
