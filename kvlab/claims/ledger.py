"""The claims ledger: every claim of CLAIMS.md, a short live measurement, and a verdict in one line.

A verdict is one of three kinds, decided by the measured number it quotes:
  * "holds"                      — the claim is right as stated, here;
  * "holds only when …"          — right under a condition the measurement names;
  * "wrong by N×"                — off by the factor measured;
or "not measurable here", with the reason (and the recorded GPU result where one exists).

The measurements live beside the mechanisms they use (kvlab.bench, kvlab.cache, kvlab.engine); the functions
in claims_*.py only size them, run them and read the verdict off the numbers. Nothing in a verdict is typed in:
change the measurement and the verdict follows.
"""
from __future__ import annotations

import dataclasses
import functools
import pathlib
import re
import time
from typing import Callable

import torch

CLAIMS_FILE = pathlib.Path(__file__).with_name("CLAIMS.md")  # a copy of the team's ../shared/CLAIMS.md
KINDS = ("holds", "holds only when", "wrong", "not measurable here")


def read_claims(path: str | pathlib.Path = CLAIMS_FILE) -> dict[int, str]:
    """{number: text} of the numbered claims in CLAIMS.md (a claim's continuation lines joined to it)."""
    claims: dict[int, str] = {}
    current = None
    for line in pathlib.Path(path).read_text(encoding="utf-8").splitlines():
        numbered = re.match(r"^(\d+)\. (.*)", line)
        if numbered:
            current = int(numbered.group(1))
            claims[current] = numbered.group(2).strip()
        elif current is not None and line.startswith("   ") and line.strip():
            claims[current] += " " + line.strip()
        else:
            current = None
    return claims


@dataclasses.dataclass(frozen=True)
class Finding:
    number: int  # the claim's number in CLAIMS.md
    kind: str  # one of KINDS
    verdict: str  # one line: "holds", "holds only when …", "wrong by 8×", "not measurable here: …"
    evidence: str  # the measured number(s) that decide it, with the sizes they were measured at
    notebook: str  # the notebook that explains it
    measured: dict  # the raw numbers, for figures and the quiz
    seconds: float = 0.0  # wall time of the measurement

    def __post_init__(self):
        assert self.kind in KINDS, self.kind


def holds(evidence: str, **measured) -> tuple:
    return "holds", "holds", evidence, measured


def holds_only_when(condition: str, evidence: str, **measured) -> tuple:
    return "holds only when", f"holds only when {condition}", evidence, measured


def wrong_by(factor: float, evidence: str, direction: str = "", **measured) -> tuple:
    assert factor >= 1, factor
    return "wrong", f"wrong by {factor:.1f}×" + (f" ({direction})" if direction else ""), evidence, measured


def not_measurable(why: str, evidence: str = "", **measured) -> tuple:
    return "not measurable here", f"not measurable here: {why}", evidence, measured


def ratio_text(x: float) -> str:
    return f"{x:.2f}×" if x < 10 else f"{x:.0f}×"


@dataclasses.dataclass
class Lab:
    """What every measurement shares: the model, its device, the size of the run, and measurements that more
    than one claim reads (each run once, remembered)."""
    model: object
    tokenizer: object
    large: bool  # GPU sizes; small (seconds on a 2-core CPU) otherwise
    memo: dict = dataclasses.field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return self.model.device

    def size(self, small, large):
        return large if self.large else small

    def shared(self, name: str, measure: Callable[[], object]):
        if name not in self.memo:
            self.memo[name] = measure()
        return self.memo[name]


MEASUREMENTS: dict[int, tuple[str, Callable[[Lab], tuple]]] = {}  # number → (notebook, measure)


def measures(number: int, notebook: str):
    """Register `fn(lab) -> (kind, verdict, evidence, measured)` as claim `number`'s measurement."""
    def register(fn):
        assert number not in MEASUREMENTS, f"claim {number} measured twice"
        MEASUREMENTS[number] = (notebook, fn)
        return fn
    return register


def measure_claim(lab: Lab, number: int) -> Finding:
    if number not in MEASUREMENTS:
        raise ValueError(f"no measurement for claim {number!r}; measured: {sorted(MEASUREMENTS)}")
    notebook, fn = MEASUREMENTS[number]
    start = time.perf_counter()
    kind, verdict, evidence, measured = fn(lab)
    return Finding(number, kind, verdict, evidence, notebook, measured, time.perf_counter() - start)


def make_lab(model, tokenizer, large: bool | None = None) -> Lab:
    _load_measurements()
    return Lab(model, tokenizer, model.device.type == "cuda" if large is None else large)


def run_ledger(lab: Lab, numbers=None, progress: bool = True) -> list[Finding]:
    """Measure every claim (or `numbers`), in order, with a progress bar."""
    from kvlab.progress import with_progress

    _load_measurements()
    numbers = sorted(MEASUREMENTS) if numbers is None else list(numbers)
    return [measure_claim(lab, n) for n in with_progress(numbers, progress, "claims ledger", "claim")]


@functools.cache
def _load_measurements() -> None:
    from . import claims_cache, claims_memory, claims_paging, claims_compression, claims_serving  # noqa: F401 (register)


# The benchmark (python -m kvlab.bench <kind>) whose GPU run, where one is recorded in benchmarks/results/, shows
# the claim at GPU sizes: what a CPU cannot measure (tensor cores, HBM bandwidth, a step that costs the same at any
# batch) is read from there, labelled as recorded.
GPU_BENCHMARKS = {1: "decode", 4: "roofline", 5: "roofline", 10: "gqa", 11: "decode", 12: "decode", 14: "prefix",
                  16: "quant", 17: "offload", 18: "quant", 19: "serve", 20: "serve", 21: "serve", 22: "spec",
                  23: "roofline", 24: "serve"}


def recorded_on_gpu(number: int, folder=None) -> str:
    """One line on the GPU result recorded for claim `number`: device and date of each run, or how to record one."""
    from kvlab.bench.results import RESULTS, recorded_gpu_runs

    kind = GPU_BENCHMARKS.get(number)
    if kind is None:
        return "— (shape arithmetic: the same on every device)"
    runs = recorded_gpu_runs(kind, folder or RESULTS)
    if not runs:
        return f"none yet: python -m kvlab.bench {kind} on a GPU records it"
    return "; ".join(f"{run['device']}, {run.get('date', '?')}: benchmarks/results/{kind}_*.json" for run in runs)
