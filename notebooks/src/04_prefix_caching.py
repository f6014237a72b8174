# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 04 · Prefix caching: compute a shared prompt once
#
# **The question.** A chatbot sends the same 1,000-token system prompt (instructions, tool definitions) in front of
# every user question; a RAG service puts the same documents in front of many questions. Each request's prefill
# recomputes K and V for those tokens — the same numbers, every time. Can the cache keep them, hand them to the
# next request, and how much of the time to first token (TTFT) does that save? The common claim is 50–90 %.
#
# **The mechanism** (kvlab's `PrefixCachedPagedCache`, the `"prefix"` layout):
# 1. the paged pool of notebook 02, but every **full** block is named by a hash of *(its parent block's hash, its
#    token ids)* — equal prefixes give equal chains, and one hash stands for everything before it;
# 2. a new request walks its prompt block by block along the chain; the blocks found join its block table by
#    reference (reference count + 1) and the engine prefills only the rest;
# 3. when a request finishes, its blocks keep their hash and stay **cached** until the space is needed; then the
#    least recently used is evicted;
# 4. a sequence about to write into a block someone else holds gets its own copy first (**copy-on-write**) —
#    parallel sampling forks a prompt without copying it.
#
# Everything below runs the real SmolLM2-135M through that cache and measures it.

# %% tags=["parameters"]
# Parameters (papermill can override any of these: see the README)
DEVICE = "auto"  # "cpu", "cuda" or "auto"
BLOCK_SIZE = 16  # tokens per KV block of the prefix cache
CHAT_REQUESTS = 6  # chatbot requests (one shared ~1,000-token system prompt); a GPU run can take 20
NEW_TOKENS = 4  # tokens generated per request in the measurements
NUM_SAMPLES = 4  # parallel samples of one prompt (copy-on-write)
LAB_BLOCKS = 40  # physical blocks in the live lab's pool
LAB_BLOCK_SIZE = 8  # tokens per block in the live lab

# %%
# NBVAL_IGNORE_OUTPUT
from IPython.display import display

import kvlab
from kvlab.bench.prefix import measure_scenario, print_prefix_report
from kvlab.cache import PrefixCachedPagedCache, chain_hash
from kvlab.exercises import check_number
from kvlab.memory import format_bytes
from kvlab.scenarios import chatbot_scenario, parallel_sampling_scenario, rag_scenario
from kvlab.viz import mode_banner, show_with_first_view, pool_figure, prompt_tokens_figure, radix_figure, radix_tree, ttft_figure
from kvlab.viz.block_table_widget import block_table_lab

device = kvlab.pick_device(DEVICE)  # "auto": $KVLAB_DEVICE if set (the tests pin cpu), else CUDA when available
model, tokenizer = kvlab.load_model(device=device)
display(mode_banner(device, model.dtype, "Every TTFT below is measured on this machine: median over requests."))

# %% [markdown]
# ## 1 · Blocks named by their content
#
# Two chatbot requests: the same system prompt, different questions. Cut each prompt into blocks of `BLOCK_SIZE`
# tokens and hash each block together with the hash of the block before it (`kvlab.cache.chain_hash`, a 64-bit
# blake2b — the same on every machine). The chains agree block for block while the prompts agree, and part ways
# at the first block that differs in even one token; after that no later block can match either, even if its
# own tokens are equal, because its parent differs.

# %%
chat = chatbot_scenario(tokenizer, CHAT_REQUESTS)
a, b = chat.prompt_ids[0], chat.prompt_ids[1]


def chain(ids, block_size=BLOCK_SIZE):
    hashes, parent = [], None
    for j in range(len(ids) // block_size):
        parent = chain_hash(parent, ids[j * block_size:(j + 1) * block_size])
        hashes.append(parent)
    return hashes


chain_a, chain_b = chain(a), chain(b)
first_difference = next(j for j, (x, y) in enumerate(zip(chain_a, chain_b)) if x != y)
print(f"request A: {len(a)} tokens = {len(chain_a)} full blocks; request B: {len(b)} tokens = {len(chain_b)} full blocks")
for j in [0, 1, 2, first_difference - 1] + list(range(first_difference, min(len(chain_a), len(chain_b)))):
    text = tokenizer.decode(a[j * BLOCK_SIZE:(j + 1) * BLOCK_SIZE]).replace("\n", "⏎")
    same = "same" if chain_a[j] == chain_b[j] else "DIFFERENT"
    print(f"block {j:>3}: A {chain_a[j]:016x}  B {chain_b[j]:016x}  {same:<9} A's text: {text[:38]!r}")
print(f"the chains agree for {first_difference} blocks = {first_difference * BLOCK_SIZE} tokens")

# %% [markdown]
# ## 2 · The chatbot, measured
#
# `CHAT_REQUESTS` requests, each the shared system prompt plus one question (the chat template wraps both). For
# each request kvlab measures:
# * **cold** — `generate` with a fresh paged cache: the whole prompt is prefilled;
# * **warm** — `generate` with *one* `PrefixCachedPagedCache` object that all requests share: request 1 fills it,
#   the others find the system prompt's blocks and prefill only their question.
#
# Both runs are greedy and their tokens must be identical — reusing K/V must not change a single token.

# %%
# NBVAL_IGNORE_OUTPUT
chat_report = measure_scenario(model, tokenizer, chat, NEW_TOKENS, BLOCK_SIZE)
ttft_figure(chat_report).show()

# %%
# NBVAL_IGNORE_OUTPUT
r = chat_report
print(f"TTFT (median over requests 2…{r['num_requests']}): {r['cold_ttft_s'] * 1e3:.0f} ms cold → "
      f"{r['warm_ttft_s'] * 1e3:.0f} ms warm = {r['ttft_reduction']:.0%} less (the issue's target: ≥ 85 %)")
print(f"prefill skipped: {r['tokens_skipped']:,} tokens × {r['bytes_per_token']:,} B of K/V each = "
      f"{format_bytes(r['kv_bytes_not_recomputed'])} not recomputed, {r['prefill_flops_skipped'] / 1e12:.2f} TFLOP of work")

# %% [markdown]
# The counts behind those timings do not depend on the machine: which tokens were found, whether the warm
# tokens equal the cold ones, and how much memory sharing saves when all requests run *at once* on the warm cache
# (every extra owner of a block would otherwise need its own copy):

# %%
r = chat_report
print("cached prompt tokens per request:", [row["cached_tokens"] for row in r["requests"]])
print(f"hit rate: {r['hit_rate']:.1%} of {r['prompt_tokens']:,} prompt tokens")
print("warm tokens identical to cold tokens for every request:", r["token_exact"])
print("cached tokens exactly as predicted from the prompts alone:", r["matches_prediction"])
print(f"all {r['num_requests']} at once: {r['blocks_shared']} blocks shared; "
      f"{format_bytes(r['bytes_held_together'])} of K/V held instead of {format_bytes(r['bytes_without_sharing'])}")


# %% [markdown]
# ## 3 · The subtlety: a shared prompt shorter than one block never hits
#
# Only **full** blocks are hashed, and a request always computes at least its **last** prompt token (its
# logits give the first new token). So with blocks of 16 tokens, the cache serves
# `min(shared, prompt − 1)` rounded *down* to a multiple of 16. A 15-token shared instruction is never served,
# however many requests repeat it; a prompt of exactly 16 tokens whose block is cached still recomputes all 16.
# The real cache, fed real token ids (no model needed to count):

# %%
def tokens_found(shared_len, own_len, block_size=BLOCK_SIZE):
    """Prefill one request with `shared_len` tokens of the system prompt + its own tokens, then ask the cache
    how much of a second request with the same shared part (and other own tokens) it finds."""
    cache = PrefixCachedPagedCache(model.config, "cpu", model.dtype, num_blocks=64, block_size=block_size)
    shared = a[:shared_len]
    owns = [tokenizer.encode(" apples, pears and plums")[:own_len], tokenizer.encode(" bridges, roads and tunnels")[:own_len]]
    for seq_id, own in enumerate(owns):
        prompt = shared + own
        found = cache.add_sequence(seq_id, len(prompt), prompt)
        cache.begin_step([seq_id], [len(prompt) - found], [prompt[found:]])  # bookkeeping: no K/V written
        cache.end_step()
    return found


print(f"block size {BLOCK_SIZE}; 2nd request: shared tokens + 5 tokens of its own")
for shared_len in [8, 15, 16, 17, 31, 32, 33, 100]:
    print(f"  shared {shared_len:>3} → found {tokens_found(shared_len, 5):>3}")
print("the whole prompt shared (no tokens of its own; the last token is always computed):")
for shared_len in [16, 17, 32, 33]:
    print(f"  prompt {shared_len:>3} → found {tokens_found(shared_len, 0):>3}")

# %% [markdown]
# ## 4 · RAG: the documents' order decides
#
# Six retrieval requests over Python standard-library docstrings (read at run time from this machine's Python):
# the same documents again, then in another order, then other documents. A prefix cache matches *prefixes*: the
# same three documents in a different order share only what comes before the first difference.

# %%
# NBVAL_IGNORE_OUTPUT
rag = rag_scenario(tokenizer)
rag_report = measure_scenario(model, tokenizer, rag, NEW_TOKENS, BLOCK_SIZE)
prompt_tokens_figure(rag_report).show()

# %%
for row in rag_report["requests"]:
    print(f"{row['cached_tokens']:>4} of {row['prompt_tokens']:>4} tokens found · {row['label']}")
print("warm tokens identical to cold tokens for every request:", rag_report["token_exact"])

# %% [markdown]
# ## 5 · Parallel sampling: fork without copying, copy on write
#
# `generate(..., num_samples=NUM_SAMPLES)` prefills the prompt once and forks the sequence. In the prefix cache
# a fork shares **every** block, even the partly filled last one; on the next decode step each sample wants to write
# its own token into that block, so all but the last writer first get their own copy (copy-on-write). The pool
# right after the fork, and one step later:

# %%
sampling = parallel_sampling_scenario(tokenizer, NUM_SAMPLES)
cow_cache = PrefixCachedPagedCache(model.config, model.device, model.dtype, num_blocks=64, block_size=BLOCK_SIZE)
pools = {}


def look(step_index, cache, running):
    if step_index < 2:
        pools[step_index] = (pool_figure(cache, columns=16), cache.shared_blocks(), cache.saved_bytes())


samples = kvlab.generate(model, tokenizer, sampling.prompt_ids, max_new_tokens=12, num_samples=NUM_SAMPLES,
                         temperature=0.9, seed=0, cache=cow_cache, on_step=look)
print(f"prompt: {len(sampling.prompt_ids)} tokens = {len(sampling.prompt_ids) // BLOCK_SIZE} full blocks + "
      f"{len(sampling.prompt_ids) % BLOCK_SIZE} tokens in a partial one")
for step_index, (_, shared, saved) in pools.items():
    print(f"after step {step_index}: {shared} blocks shared, saving {format_bytes(saved)}")
print(f"copy-on-write copies: {cow_cache.stats.cow_copies}")
for event in list(cow_cache.events):
    if event.kind in ("fork", "cow"):
        print(" ", event.text)

# %%
# NBVAL_IGNORE_OUTPUT
pools[0][0].update_layout(title=f"right after the fork: every block shared (×{NUM_SAMPLES})").show()
pools[1][0].update_layout(title=f"one decode step later: the partial block copied for {NUM_SAMPLES - 1} samples").show()
for text in samples.texts:
    print("•", text.replace("\n", " "))

# %% [markdown]
# ## 6 · The radix view
#
# The cached blocks form a tree (the picture of SGLang's RadixAttention): each path from the root is a prefix the
# cache can serve; a chain of blocks without branching is one edge. Here: the chatbot's system prompt with one
# branch per question, and the RAG requests branching at their documents. Colour says whether a sequence holds
# the blocks now or they are only cached (evictable — the LRU rank says which goes first); hover for hit counts.

# %%
tree_cache = PrefixCachedPagedCache(model.config, model.device, model.dtype, num_blocks=600, block_size=BLOCK_SIZE)
for prompt in chat.prompt_ids[:3] + rag.prompt_ids[:4]:
    kvlab.generate(model, tokenizer, prompt, max_new_tokens=1, cache=tree_cache)
tree = radix_tree(tree_cache)
for node in tree.nodes[1:]:
    print(f"node {node.node_id}: parent {node.parent}, {len(node.blocks)} blocks, {node.num_tokens} tokens, "
          f"hits {max(node.hits)}, {node.state}")

# %%
# NBVAL_IGNORE_OUTPUT
radix_figure(tree_cache, tokenizer).show()

# %% [markdown]
# ## 7 · The live lab
#
# A prefix-caching pool of `LAB_BLOCKS` blocks of `LAB_BLOCK_SIZE` tokens, run by the real model. Two requests
# share a system line. Try:
# * **Add request** with a prompt that starts like one already there: the status line's hit rate rises and the
#   event log says which blocks were reused;
# * **Fork** a sequence, then **Decode**: the event log shows the copy-on-write;
# * **Finish** sequences: their full blocks stay cached (a lighter colour, with their LRU rank) until new requests
#   need the space — then watch the `evict` events take the least recently used first.

# %%
system_line = "You are a concise assistant for a cooking website. Answer in one sentence. Question: "
lab = block_table_lab(num_blocks=LAB_BLOCKS, block_size=LAB_BLOCK_SIZE, model=model, tokenizer=tokenizer,
                      layout="prefix", initial_requests=[(system_line + "How long do I boil an egg?", 6),
                                                         (system_line + "What is a roux?", 6)])
print(lab.status_text())
for event in list(lab.cache.events):
    print(" ", event.text)

# %%
# NBVAL_IGNORE_OUTPUT
show_with_first_view(lab)

# %% [markdown]
# ## 8 · Check yourself
#
# **1.** A system prompt of 1,000 tokens, followed by a 23-token question, with blocks of 16 tokens. How many of the
# second request's prompt tokens does the prefix cache serve? (Put a number in `answer_1`.)

# %%
answer_1 = None
check_number("Tokens served from the cache", answer_1, 1000 // 16 * 16, 0.0,
             "only full blocks are cached: 62 blocks × 16 = 992 tokens; the last 8 system tokens share a block "
             "with the question, which differs, so that block does not match.")

# %% [markdown]
# **2.** Ten requests run at the same time, all sharing that 992-token cached prefix. SmolLM2 keeps
# `model.config.num_layers × 2 × num_kv_heads × head_dim` numbers per token (here in float32). How many bytes of
# K/V does sharing save compared with each request holding its own copy? (`answer_2`, in bytes.)

# %%
cfg = model.config
bytes_per_token = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * 4
answer_2 = None
check_number("Bytes saved by sharing", answer_2, 9 * 992 * bytes_per_token, 0.01,
             f"nine of the ten would each hold another copy of 992 tokens × {bytes_per_token:,} B = "
             f"{format_bytes(9 * 992 * bytes_per_token)}.")

# %% [markdown]
# **3.** (Think, then try it in the lab.) Two requests share the first 200 tokens. Request A runs alone and
# finishes; 300 other requests pass before B arrives, in a pool of 64 blocks of 16 tokens. Does B hit? What does the
# answer depend on? *Hint: eviction is least recently used, and a block becomes "used" again only when a request
# reuses it.*
#
# ## What we saw
# * A hit skips prefill work in proportion to the shared tokens: on this machine the chatbot's TTFT fell by the
#   share printed in section 2, with tokens identical to a cold run.
# * Matching is by whole blocks and by prefix: a shared part shorter than a block, or the same documents in another
#   order, gets nothing.
# * Sharing also saves memory while requests run together, and copy-on-write lets parallel samples share a prompt
#   until they diverge.
#
# Next in the lab: shrinking each cached token with quantization.
