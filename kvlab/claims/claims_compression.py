"""CLAIMS.md 16–18, compression and tiers: KV quantization, offloading old tokens, weight quantization."""
from __future__ import annotations

import torch

from kvlab.bench import quant_accuracy
from kvlab.bench.offload import premise_check
from kvlab.bench.roofline import measure_decode
from kvlab.bench.roofs import measure_matmul_flops
from kvlab.cache import PagedCache, QuantizedPagedCache

from .ledger import Lab, holds, holds_only_when, measures, not_measurable, ratio_text


@measures(16, "05_quantization.ipynb")
def kv_quantization(lab: Lab):
    cfg = lab.model.config
    per_token = {name: PagedCache(cfg, "cpu", dtype, num_blocks=1, block_size=16).bytes_per_token()
                 for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    for scheme, group in (("int8", None), ("int4", 32)):
        per_token[scheme] = QuantizedPagedCache(cfg, "cpu", torch.float32, num_blocks=1, block_size=16, scheme=scheme,
                                                group_size=group).bytes_per_token()
    accuracy = quant_accuracy.run_accuracy(lab.model, lab.tokenizer, (("int8", None), ("int4", 32)), num_windows=1,
                                           tokens_per_window=lab.size(64, 256), new_tokens=lab.size(8, 32),
                                           progress=False)
    rows = {r["scheme"]: r for r in accuracy["rows"][1:]}
    base = accuracy["rows"][0]["perplexity"]
    int8, int4 = per_token["bf16"] / per_token["int8"], per_token["bf16"] / per_token["int4"]
    saved16, saved8 = 1 - per_token["bf16"] / per_token["fp32"], 1 - per_token["int8"] / per_token["fp32"]
    evidence = (f"bytes a token with the scales counted: int8 {ratio_text(int8)} and int4 (group 32) {ratio_text(int4)} "
                f"smaller than bf16; bf16 saves {saved16:.0%} and int8 {saved8:.0%} of fp32; perplexity "
                f"{base:.2f} → int8 {rows['int8']['perplexity']:.2f}, int4 {rows['int4']['perplexity']:.2f}; greedy "
                f"tokens agree {rows['int8']['agreement']:.0%} (int8) and {rows['int4']['agreement']:.0%} (int4) "
                f"before the first difference")
    facts = dict(bytes_per_token=per_token, int8_ratio=int8, int4_ratio=int4,
                 perplexity={"base": base, **{k: r["perplexity"] for k, r in rows.items()}},
                 agreement={k: r["agreement"] for k, r in rows.items()})
    return holds_only_when(f"the scales are counted (int4 is {ratio_text(int4)}, not 4×) and \"minimal\" allows "
                           f"int4's {rows['int4']['perplexity'] / base - 1:+.0%} perplexity", evidence, **facts)


@measures(17, "09_offload.ipynb")
def offload_old_tokens(lab: Lab):
    check = premise_check(lab.model, lab.tokenizer, context=lab.size(512, 8192), repeats=3)
    evidence = (f"a decode step over {check['context']} tokens reads every one of them, the oldest as often as the "
                f"newest; fetching the older half from the {check['tier_kind']} tier before each step made it "
                f"{check['slowdown']:.2f}× as long ({check['step_s'] * 1e3:.1f} → {check['step_with_fetch_s'] * 1e3:.1f} "
                f"ms); swapping an idle request out and in once took {check['idle_swap_s'] * 1e3:.1f} ms")
    return holds_only_when("the offloaded request is not running (preempted, idle, or a cached prefix): full "
                           "attention reads old tokens every step", evidence,
                           **{k: check[k] for k in ("context", "slowdown", "step_s", "step_with_fetch_s", "idle_swap_s")})


@measures(18, "06_decode_is_bandwidth_bound.ipynb")
def weight_quantization(lab: Lab):
    model = lab.model
    matmul = lab.shared("matmul_dtypes", lambda: {
        dtype: measure_matmul_flops(lab.device, dtype, size=lab.size(512, 8192)).flops_per_s
        for dtype in (torch.float32, torch.bfloat16)})
    mixed = matmul[torch.bfloat16] / matmul[torch.float32]
    mixed_text = (f"a bf16 matmul runs at {mixed:.2f}× the FLOP/s of float32 here "
                  f"({matmul[torch.bfloat16] / 1e9:.0f} vs {matmul[torch.float32] / 1e9:.0f} GFLOP/s)")
    if not model.can_read_blocks:
        return not_measurable("kvlab reads the GGUF file's 4-/8-bit blocks only on a CPU; here the weights are "
                              f"{model.dtype}", mixed_text, mixed_speed=mixed)
    dense, packed = model.dense_weight_bytes(), model.weight_bytes()
    was = model.decode_reads_blocks
    try:
        model.decode_reads_blocks = False
        dense_step = measure_decode(model, 1, 64).seconds
        model.decode_reads_blocks = True
        packed_step = measure_decode(model, 1, 64).seconds
    finally:
        model.decode_reads_blocks = was
    memory, latency = dense / packed, dense_step / packed_step
    evidence = (f"the GGUF file's blocks are {ratio_text(memory)} smaller than its float32 weights "
                f"({packed / 1e6:.0f} vs {dense / 1e6:.0f} MB a decode step reads); a decode step reading them takes "
                f"{packed_step * 1e3:.1f} ms vs {dense_step * 1e3:.1f} ms ({ratio_text(latency)} faster), same tokens "
                f"(the blocks are rebuilt exactly); {mixed_text}")
    facts = dict(memory_ratio=memory, latency_ratio=latency, mixed_speed=mixed)
    if 1.5 <= latency <= 3 and mixed >= 1.8:
        return holds(evidence, **facts)
    time_part = (f"decode time follows the bytes ({ratio_text(latency)} faster)" if latency >= 1.5
                 else f"decode time follows them only in part ({ratio_text(latency)})")
    mixed_part = "bf16 arithmetic is faster" if mixed >= 1.8 else f"bf16 arithmetic runs at {mixed:.2f}× float32's speed"
    return holds_only_when(f"the device has fast low-precision arithmetic (GPU tensor cores): memory shrinks "
                           f"{ratio_text(memory)}, {time_part}, but here {mixed_part}", evidence, **facts)
