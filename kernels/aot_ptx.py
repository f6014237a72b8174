"""What a compiled kernel says, read from its PTX, its TTIR and ptxas's `-v` report (kvlab.kernels.aot's inputs to
the checks): registers and spills, tensor-core instructions, the width of every global load, copy and store, and
the outer strides used in int32."""
from __future__ import annotations

import re
from collections import Counter


def read_ptxas_log(log: str) -> dict:
    """Registers and spills from `ptxas -v`, which Triton runs on every compile. Raises ValueError naming the
    line that is missing when `log` holds no such report."""
    regs = re.search(r"Used (\d+) registers", log)
    spills = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", log)
    missing = [line for line, found in (("'Used N registers'", regs),
                                        ("'N bytes stack frame, N bytes spill stores, N bytes spill loads'", spills))
               if not found]
    if missing:
        raise ValueError(f"not a ptxas -v report: no {' and no '.join(missing)} line in {log[-2000:]!r}")
    return {"registers": int(regs.group(1)), "stack_bytes": int(spills.group(1)),
            "spill_store_bytes": int(spills.group(2)), "spill_load_bytes": int(spills.group(3))}


_WIDTH = re.compile(r"\.[busf](8|16|32|64)\b")
_VECTOR = re.compile(r"\.v(2|4|8)\b")


def _instruction_bytes(modifiers: str) -> int:
    width = _WIDTH.search(modifiers)
    vector = _VECTOR.search(modifiers)
    return (int(width.group(1)) // 8 if width else 0) * (int(vector.group(1)) if vector else 1)


def read_ptx(ptx: str) -> dict:
    """Tensor-core instructions and the width of every global load, copy and store (bytes per instruction)."""
    loads = Counter(_instruction_bytes(m) for m in re.findall(r"\bld\.global((?:\.[\w:]+)*)", ptx))
    stores = Counter(_instruction_bytes(m) for m in re.findall(r"\bst\.global((?:\.[\w:]+)*)", ptx))
    copies = Counter(int(n, 0) for n in re.findall(r"\bcp\.async\.c[ag]\.shared\.global[\w.:]*\s*\[[^\]]*\],\s*"
                                                    r"\[[^\]]*\],\s*(0x[0-9a-fA-F]+|\d+)", ptx))
    return {"mma": len(re.findall(r"\bmma\.sync\.", ptx)), "wgmma": len(re.findall(r"\bwgmma\.mma_async\.", ptx)),
            "loads": _counter_json(loads), "copies": _counter_json(copies), "stores": _counter_json(stores),
            "tma": len(re.findall(r"\bcp\.async\.bulk\.tensor", ptx))}


def _counter_json(counter: Counter) -> dict[str, int]:
    return {str(k): counter[k] for k in sorted(counter)}


def narrow_outer_strides(ttir: str, signature: dict) -> list[str]:
    """The outer-dimension strides (names ending in b, n or r) that the TTIR uses other than widened to int64."""
    lines = [line for line in ttir.splitlines() if "tt.func" not in line]
    narrow = []
    for name, kind in signature.items():
        if kind != "i32" or not re.fullmatch(r"stride_\w*[bnr]", name):
            continue
        uses = [line for line in lines if re.search(rf"%{name}\b", line)]
        if any(not re.search(rf"arith\.extsi %{name} : i32 to i64", line) for line in uses):
            narrow.append(name)
    return narrow

