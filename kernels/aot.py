"""Compile kvlab's Triton kernels for real GPUs on a machine without one, and check what the compiled code says.

Triton's wheel bundles NVIDIA's ptxas, so `triton.compile(ASTSource(...), target=GPUTarget("cuda", cc, 32))`
builds PTX and a cubin on a CPU. This command compiles a covering set of the configurations the lab can launch
for sm_80, sm_89 and sm_90 and checks each compiled kernel. Its parts, one module each:

    aot_targets.py    the targets, their shared-memory limits, whether the bundled ptxas builds for one
    aot_launches.py   the lab's own launches recorded on meta tensors; the covering set of shapes
    aot_compile.py    one job per distinct compile, compiled in worker processes → one row per compile
    aot_ptx.py        what a compile says: ptxas's registers and spills, PTX instructions, TTIR strides
    aot_checks.py     the checks (tensor cores, wide K/V loads, spills, shared memory, int64 strides) and STATED,
                      where a kernel does not meet one on purpose, and why
    aot_table.py      benchmarks/results/gpu_compile_table.json (every compile) and .md (the summary)

    TRITON_INTERPRET=0 python -m kvlab.kernels.aot            # compile, print the summary, exit 1 on a problem
    TRITON_INTERPRET=0 python -m kvlab.kernels.aot --write    # and rewrite benchmarks/results/gpu_compile_table.*
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

import torch  # noqa: F401  (re-exported: tests build meta tensors as aot.torch)
import triton

from . import paged_decode
# re-exported: the names tests and scripts use as kvlab.kernels.aot.<name>
from .aot_checks import (ATTENTION, STATED, Stated, excused_rows, failed_checks, narrow_bytes,  # noqa: F401
                         over_shared_limit, problems, row_problems, shared_memory_problems,
                         spills_at_the_register_ceiling, stale_statements, stated, wide_bytes)
from .aot_compile import Job, bind, compile_all, compile_job, jobs_for, row  # noqa: F401
from .aot_launches import (FAMILIES, MODELS, Case, Family, Launch, Shape, _meta, axis_values,  # noqa: F401
                           covering_set, recorded_launches)
from .aot_ptx import narrow_outer_strides, read_ptx, read_ptxas_log  # noqa: F401
from .aot_table import TABLE, TABLE_FIELDS, summary_markdown, table_rows  # noqa: F401
from .aot_targets import SHARED_LIMIT_BYTES, SMALLEST_SHARED, TARGETS, compute_capability  # noqa: F401


def run(targets: tuple[str, ...] = TARGETS, workers: int = 2) -> list[dict]:
    """Compile the covering set for `targets` → one row per compile (see aot_compile.row)."""
    if not isinstance(paged_decode._paged_decode_kernel.compiled, triton.JITFunction) or \
            os.environ.get("TRITON_INTERPRET") != "0":
        raise RuntimeError("set TRITON_INTERPRET=0 before importing kvlab: the kernels must not be interpreted")
    for target in targets:
        compute_capability(target)
    return compile_all(jobs_for(covering_set(tuple(targets))), workers)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"rewrite {TABLE}.json and .md")
    parser.add_argument("--json", type=pathlib.Path, help="write every row (with the check inputs) to this file")
    parser.add_argument("--targets", nargs="+", default=list(TARGETS))
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    args = parser.parse_args(argv)
    if args.write and not TABLE.parent.is_dir():
        print(f"error: --write rewrites the table in a kvlab checkout; {TABLE.parent} does not exist",
              file=sys.stderr)
        return 2
    start = time.perf_counter()
    try:
        rows = run(tuple(args.targets), args.workers)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - start
    found = problems(rows)
    if args.json:
        args.json.write_text(json.dumps({"seconds": seconds, "rows": rows, "problems": found}, indent=1))
    if args.write:
        TABLE.with_suffix(".json").write_text(json.dumps({"triton": triton.__version__, "rows": table_rows(rows)},
                                                         indent=1) + "\n")
        TABLE.with_suffix(".md").write_text(summary_markdown(rows))
    print(summary_markdown(rows, seconds))
    print("\n".join(found) if found else f"{len(rows)} compiles, every check passes")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
