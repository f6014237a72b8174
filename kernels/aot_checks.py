"""The checks kvlab.kernels.aot makes of each compiled kernel (one row of aot_compile), and the stated exceptions.

* the attention products run on the tensor cores (`mma.sync` / `wgmma` in the PTX);
* K/V tiles arrive by wide loads: `cp.async` copies or `ld.global.v2/.v4` of 8 bytes or more (or a thread's
  whole share of a small tile), at least one K and one V tile's bytes per thread of them in the PTX, and the
  narrower loads (block-table entries, scales) carry at most half as many bytes;
* no register spills (ptxas: 0 bytes of spill stores or loads);
* shared memory within the target's per-block limit — or, for an autotune config over it, another config of
  the same launch that fits (the autotuner skips a config that does not fit, and needs one that does);
* each outer-dimension stride (kernels/_common: names ending in b, n or r) is used only widened to int64.

STATED lists where a kernel does not meet a check on purpose, and why: each entry names exactly the compiles it
excuses, and each must excuse at least one compile that fails its check (a stale one is a problem too).
"""
from __future__ import annotations

import dataclasses

from .aot_targets import SHARED_LIMIT_BYTES, TARGETS, compute_capability

ATTENTION = ("decode", "prefill", "quant_decode")


@dataclasses.dataclass(frozen=True)
class Stated:
    """A check a kernel does not meet on purpose (or not yet), with the reason; `applies` picks its rows."""
    check: str
    applies: object
    reason: str


SPILL_BOUND_BYTES = 512  # what the kernels at the 255-register ceiling may spill (stores, and loads, each)


def spills_at_the_register_ceiling(r: dict) -> bool:
    """The compiles the first spills statement names, at 255 registers with ≤ SPILL_BOUND_BYTES spilled: prefill
    at head_dim 128 or 256, quantized decode at head_dim 256 or in float32, decode and quantized decode with a
    query group over 64. Not the models' decode shapes: a spill there is a problem."""
    family, head_dim = r["family"], r["head_dim"]
    named = ((family == "prefill" and head_dim in (128, 256))
             or (family == "quant_decode" and (head_dim == 256 or r["dtype"] == "float32"))
             or (family in ("decode", "quant_decode") and r["group"] > 64))
    return (named and r["registers"] == 255
            and max(r["spill_store_bytes"], r["spill_load_bytes"]) <= SPILL_BOUND_BYTES)


PREFILL_128_ON_4_WARPS = "BLOCK_M=128 BLOCK_N=32 w4 s2"
STATED = [
    Stated("mma", lambda r: r["dtype"] == "float32",
           "float32 pools take full-precision products (DOT_PRECISION 'ieee', kernels/_common.dot_flags): FMA, not "
           "tf32 tensor cores"),
    Stated("compiles", lambda r: r["target"] == "sm_80" and r["case"] == "scheme=fp8" and "fp8e4nv" in r["error"],
           "float8 e4m3 needs compute capability 8.9; kvlab.cache.quantization.make_scheme refuses fp8 there"),
    Stated("narrow_loads", lambda r: r["family"] == "quant_decode" and r["scale_group"] < r["head_dim"],
           "quantized decode with scales in groups (int4, kivi2 values; int8 in groups takes the same path): "
           "the codes arrive by "
           "cp.async copies, but the [BLOCK_N, D] scale tile is gathered by 2-byte loads, each scale once per "
           "channel of its group (L1 hits after the first) — 64 `ld.global.b16` a thread at BLOCK_N=32. Loading "
           "[BLOCK_N, groups] and broadcasting in registers would cut them by the group size"),
    Stated("spills", spills_at_the_register_ceiling,
           f"at ptxas's 255-register ceiling — the fp32 accumulator of a [BLOCK_M or BLOCK_G, D] tile, the query "
           f"tile and the scores share the register file — up to {SPILL_BOUND_BYTES} B go to local memory "
           f"(L1-cached), in exactly these: prefill at head_dim 128 and 256, quantized decode at head_dim 256 and in "
           f"float32, decode and quantized decode with a query group over 64 (a 128-row tile). The models' decode "
           f"shapes do not spill"),
    Stated("spills", lambda r: (r["family"], r["head_dim"], r["config"]) == ("prefill", 256, PREFILL_128_ON_4_WARPS),
           "prefill, BLOCK_M=128 on 4 warps at head_dim 256: the accumulator alone is 256 fp32 registers a thread; "
           "KBs spill. The autotuner still times it beside the configs that spill ≤ 236 B: a rule pruning it "
           "(BLOCK_M · D / threads > 128) waits for a GPU to confirm the others are as fast"),
    Stated("spills", lambda r: (r["family"], r["dtype"]) == ("prefill", "float32"),
           "float32 prefill, full-precision FMA products: on sm_80 ptxas keeps 32 registers and a 6 KB stack "
           "(14 KB spilled) for BLOCK_M=64 BLOCK_N=32 — float32 is not the lab's GPU dtype (bfloat16 is)"),
]


def stated(check: str, r: dict) -> Stated | None:
    """The first statement that excuses row `r` failing `check`, or None."""
    return next((s for s in STATED if s.check == check and s.applies(r)), None)


def failed_checks(r: dict) -> list[str]:
    """The checks row `r` fails: 'compiles' when it did not compile, else those of row_problems."""
    return ["compiles"] if r["error"] else [check for check, _ in row_problems(r)]


def excused_rows(rows: list[dict]) -> list[list[dict]]:
    """For each entry of STATED, the rows that fail its check and that it excuses (the first that applies)."""
    excused: list[list[dict]] = [[] for _ in STATED]
    for r in rows:
        for check in failed_checks(r):
            reason = stated(check, r)
            if reason is not None:
                excused[STATED.index(reason)].append(r)
    return excused


def stale_statements(rows: list[dict]) -> list[Stated]:
    """The statements that excuse no row failing their check: the kernel was fixed, or the predicate is wrong."""
    return [s for s, hit in zip(STATED, excused_rows(rows)) if not hit]


def problems(rows: list[dict]) -> list[str]:
    """Every row that fails a check and has no stated reason, and — when the rows cover every target — every
    statement that excuses nothing; [] when all is well."""
    found = []
    for r in rows:
        where = f"{r['kernel']} [{r['case']}] {r['target']} {r['config']}"
        if r["error"]:
            if not stated("compiles", r):
                found.append(f"{where}: does not compile: {r['error']}")
            continue
        for check, message in row_problems(r):
            if not stated(check, r):
                found.append(f"{where}: {message}")
    found += shared_memory_problems(rows)
    if {r["target"] for r in rows} >= set(TARGETS):
        found += [f"a stated exception for '{s.check}' excuses no compile that fails it (stale, or its predicate "
                  f"is wrong): {s.reason}" for s in stale_statements(rows)]
    return found


def row_problems(r: dict) -> list[tuple[str, str]]:
    """(check, message) for each check row `r` (a compile that succeeded) fails."""
    out = []
    if r["family"] in ATTENTION and r["tile_bytes_per_thread"] is not None:
        if r["mma"] + r["wgmma"] == 0:
            out.append(("mma", "no tensor-core MMA instruction in the PTX"))
        wide, narrow = wide_bytes(r), narrow_bytes(r)
        if wide < r["tile_bytes_per_thread"]:
            out.append(("wide_loads", f"K/V tiles: {wide} B per thread by wide loads or copies, "
                                      f"{r['tile_bytes_per_thread']} B needed (loads {r['loads']})"))
        if narrow > wide / 2:
            out.append(("narrow_loads", f"{narrow} B per thread by narrow loads beside {wide} B by wide ones "
                                        f"(loads {r['loads']}, copies {r['copies']})"))
    if r["spill_store_bytes"] or r["spill_load_bytes"]:
        out.append(("spills", f"{r['spill_store_bytes']} B spill stores, {r['spill_load_bytes']} B spill loads "
                              f"({r['registers']} registers)"))
    if r["narrow_outer_strides"]:
        out.append(("int64", f"outer strides used in int32: {', '.join(r['narrow_outer_strides'])}"))
    return out


def wide_bytes(r: dict) -> int:
    """Bytes per thread the PTX moves from global memory by wide instructions: 8 bytes or more, or a thread's
    whole share of one tile when that is smaller (a 16-channel int8 tile gives each thread 4 bytes). A static
    count: a pipelined loop's prologue counts too."""
    wide = min(8, r["tile_bytes_per_thread"] // 2)
    return sum(int(n) * k for part in ("loads", "copies") for n, k in r[part].items() if int(n) >= wide)


def narrow_bytes(r: dict) -> int:
    """Bytes per thread of the other global loads and copies (static count, as wide_bytes)."""
    wide = min(8, r["tile_bytes_per_thread"] // 2)
    return sum(int(n) * k for part in ("loads", "copies") for n, k in r[part].items() if int(n) < wide)


def over_shared_limit(r: dict) -> bool:
    return r["shared_bytes"] > SHARED_LIMIT_BYTES[compute_capability(r["target"])]


def shared_memory_problems(rows: list[dict]) -> list[str]:
    """A config over the target's limit is skipped by the autotuner; a launch with no config that fits fails."""
    by_launch: dict[tuple, list[dict]] = {}
    for r in rows:
        if not r["error"]:
            by_launch.setdefault((r["kernel"], r["case"], r["target"]), []).append(r)
    found = []
    for (kernel, case, target), group in by_launch.items():
        if all(over_shared_limit(r) for r in group):
            limit = SHARED_LIMIT_BYTES[compute_capability(target)]
            found.append(f"{kernel} [{case}] {target}: no config fits in {limit} B of shared memory "
                         f"({', '.join(str(r['shared_bytes']) for r in group)} B)")
    return found
