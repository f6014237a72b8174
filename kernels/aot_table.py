"""The committed record of kvlab.kernels.aot: benchmarks/results/gpu_compile_table.json (every compile) and .md
(the summary), both functions of the compiled rows alone, so a test can rebuild them and compare."""
from __future__ import annotations

import pathlib

import triton

from .aot_checks import STATED, excused_rows, over_shared_limit, wide_bytes
from .aot_launches import MODELS
from .aot_targets import SHARED_LIMIT_BYTES, SMALLEST_SHARED, TARGETS

# kernels/ is the kvlab.kernels package in a checkout (pyproject's package-dir), so the repository is its parent
TABLE = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "gpu_compile_table"

TABLE_FIELDS = ("family", "kernel", "case", "target", "config", "error", "registers", "stack_bytes",
                "spill_store_bytes", "spill_load_bytes", "shared_bytes", "mma", "wgmma", "loads", "copies", "stores",
                "narrow_outer_strides")


def table_rows(rows: list[dict]) -> list[dict]:
    """The committed rows: what the pinned Triton and ptxas produce, deterministically, sorted."""
    kept = [{k: r.get(k) for k in TABLE_FIELDS} for r in rows]
    return sorted(kept, key=lambda r: (r["family"], r["kernel"], r["case"], r["target"], r["config"]))


def summary_markdown(rows: list[dict], seconds: float | None = None) -> str:
    """The .md summary: per kernel and target, the model shapes' every config, the stated exceptions with how
    many compiles each excuses, the compiles that fail; `seconds` (the CLI's print, not the file) the time."""
    ok = [r for r in rows if not r["error"]]
    lines = [
        "# kvlab's Triton kernels compiled for real GPUs, on a CPU",
        "",
        f"`python -m kvlab.kernels.aot --write` (Triton {triton.__version__}, its bundled ptxas), "
        f"{len(rows)} compiles of the covering set (kvlab.kernels.aot_launches.covering_set: every value of each "
        f"parameter with the others common on {TARGETS[0]}, the schemes on every target, the "
        f"{' and '.join(MODELS)} shapes with every autotune config on every target, head_dim 256 with every config "
        f"on {SMALLEST_SHARED}, whose shared memory is the smallest). "
        "Every row is in gpu_compile_table.json. Shared memory limits per block (opt-in): "
        + ", ".join(f"sm_{cc} {limit // 1024} KB" for cc, limit in SHARED_LIMIT_BYTES.items())
        + " (CUDA C++ Programming Guide, Technical Specifications per Compute Capability).",
        "",
        "| kernel | target | compiles | registers | spill stores (B) | shared memory (B) | MMA "
        "| K/V wide-load bytes / needed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (kernel, target), group in sorted(_groups(ok, ("kernel", "target")).items()):
        regs = [r["registers"] for r in group]
        attention = [r for r in group if r["tile_bytes_per_thread"] is not None]
        mma = f"{sum(1 for r in attention if r['mma'] + r['wgmma'])}/{len(attention)}" if attention else "—"
        ratios = [wide_bytes(r) / r["tile_bytes_per_thread"] for r in attention]
        fraction = f"{min(ratios):.2f}–{max(ratios):.2f}×" if attention else "—"
        lines.append(f"| {kernel} | {target} | {len(group)} | {min(regs)}–{max(regs)} | "
                     f"{max(r['spill_store_bytes'] for r in group)} | {max(r['shared_bytes'] for r in group)} | "
                     f"{mma} | {fraction} |")
    lines += ["", "## The model shapes, every autotune config", "",
              "| kernel | shape | target | config | registers | spill stores (B) | shared (B) | MMA "
              "| wide / needed B |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted((r for r in ok if r["case"] in MODELS),
                    key=lambda r: (r["kernel"], r["case"], r["target"], r["config"])):
        needed = r["tile_bytes_per_thread"]
        lines.append(f"| {r['kernel']} | {r['case']} | {r['target']} | {r['config']} | {r['registers']} | "
                     f"{r['spill_store_bytes']} | {r['shared_bytes']}{' (over)' if over_shared_limit(r) else ''} | "
                     f"{r['mma'] + r['wgmma'] if needed else '—'} | "
                     f"{f'{wide_bytes(r)} / {needed}' if needed else '—'} |")
    lines += ["", "## Stated exceptions", ""]
    for s, hit in zip(STATED, excused_rows(rows)):  # the compiles that fail the check and this excuses
        lines.append(f"- **{s.check}** ({len(hit)} of the compiles): {s.reason}")
    errors = [r for r in rows if r["error"]]
    if errors:
        lines += ["", "## Compiles that fail", ""]
        lines += [f"- {r['kernel']} [{r['case']}] {r['target']} {r['config']}: {r['error']}" for r in errors]
    if seconds is not None:
        lines += ["", f"Compiled in {seconds:.0f} s."]
    return "\n".join(lines) + "\n"



def _groups(rows, keys):
    out: dict[tuple, list] = {}
    for r in rows:
        out.setdefault(tuple(r[k] for k in keys), []).append(r)
    return out
