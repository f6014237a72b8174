"""`make gpu-check` — the first run of everything kvlab has only ever checked statically, on one GPU, in ≤ 10 minutes.

No development or CI machine of this project has a GPU: the Triton kernels are compiled for sm_80/89/90 in
`make test` (tests/test_gpu_compile.py) but have never run compiled. This is the one prepared command for the
first machine that has one. In order, each step in a subprocess with its own time limit under one deadline:

1. the CUDA kernel tests (tests/test_kernels.py, tests/test_quant_kernels.py: compiled kernels vs torch oracles),
   and where vLLM is installed the bridge tests (kvlab.vllm's arguments parsed by vLLM's own parsers);
2. the benchmarks at GPU sizes (decode, quant, gqa, roofline, prefix, serve, spec, offload), each writing
   benchmarks/results/<kind>_<device>.json as `python -m kvlab.bench <kind>` does;
3. every notebook through papermill with DEVICE="cuda" into a scratch folder (the committed notebooks stay
   the CPU runs nbval compares against), a few at a time;
4. the trace replayed through vLLM, where vLLM is importable;

then a one-page summary, benchmarks/results/gpu_check_<device>.md, with ✓/✗ for every step and for the GPU
targets read off the JSON just written (TARGETS below). A step whose prerequisite is missing (the model file,
papermill, vLLM) is listed as skipped with the reason, never silently dropped; a step past its limit is ✗.

    make gpu-check                       # or: python -m kvlab.bench.gpu_check [--copy-to DIR] [--only decode quant]
    python -m kvlab.bench.gpu_check --dry-run   # the plan, on any machine
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ..processes import stop_process_group
from . import quant_speed
from .results import result_path

DEADLINE_S = 570  # the whole check, inside the 10 minutes a GPU lease gives one command
NOTEBOOK_WORKERS = 4  # notebooks at once: they share the GPU, and their timings are not what this step checks
NOTEBOOKS = pathlib.Path("notebooks")


@dataclass(frozen=True)
class Step:
    name: str
    argv: tuple[str, ...]
    timeout_s: int
    needs: tuple[str, ...] = ()  # prerequisites: "cuda", "model", "papermill", "vllm"
    result_kind: str | None = None  # the benchmarks/results/<kind>_<device>.json it writes


@dataclass
class StepResult:
    name: str
    status: str  # "passed", "failed", "timed out", "skipped" (a prerequisite is missing), "not run" (deadline)
    seconds: float = 0.0
    reason: str = ""
    output_tail: str = ""

    @property
    def mark(self) -> str:
        return {"passed": "✓", "skipped": "–"}.get(self.status, "✗")


@dataclass(frozen=True)
class Target:
    name: str
    wanted: str
    measured: str
    ok: bool | None  # None: not measured (the case was skipped or the benchmark failed)

    @property
    def mark(self) -> str:
        return "✓" if self.ok else ("✗" if self.ok is False else "–")


# Each step's limit. Together they fit DEADLINE_S (tests/test_gpu_check.py checks it): the serial steps, then
# ceil(notebooks / NOTEBOOK_WORKERS) rounds of NOTEBOOK_S, then the vLLM replay. None has run on a GPU yet:
# a step past its limit is ✗ "timed out", and its limit (or its sizes) is what the next GPU session resizes.
BENCHMARKS = [  # (kind, extra arguments, seconds, prerequisites): GPU sizes are each benchmark's own CUDA defaults
    ("decode", (), 40, ("cuda",)),
    ("quant", (), 50, ("cuda", "model")),
    ("gqa", (), 15, ("cuda",)),
    ("roofline", (), 30, ("cuda", "model")),
    ("prefix", (), 20, ("cuda", "model")),
    ("serve", (), 40, ("cuda", "model")),
    ("spec", (), 30, ("cuda", "model")),
    ("offload", (), 30, ("cuda", "model")),
]
KERNEL_TESTS = ("tests/test_kernels.py", "tests/test_quant_kernels.py")
KERNEL_TESTS_S = 60
NOTEBOOK_S = 55
VLLM_TESTS_S = 15
VLLM_S = 75


def plan(python: str = sys.executable) -> list[Step]:
    """Every step of the check, in order (the notebooks and the vLLM replay are run by run_check itself)."""
    steps = [Step("kernel tests", (python, "-m", "pytest", *KERNEL_TESTS, "-k", "cuda", "-q", "-p", "no:cacheprovider"),
                  KERNEL_TESTS_S, ("cuda",)),
             # the generated engine arguments and `vllm serve` flags parsed by vLLM's own parsers
             Step("vllm bridge tests", (python, "-m", "pytest", "tests/test_vllm_bridge.py", "-q",
                                        "-p", "no:cacheprovider"), VLLM_TESTS_S, ("vllm",))]
    for kind, extra, seconds, needs in BENCHMARKS:
        steps.append(Step(f"{kind} benchmark", (python, "-m", "kvlab.bench", kind, *extra), seconds, needs, kind))
    return steps


def notebook_paths(folder: pathlib.Path = NOTEBOOKS) -> list[pathlib.Path]:
    return sorted(folder.glob("[0-9][0-9]_*.ipynb"))


def notebook_step(notebook: pathlib.Path, scratch: pathlib.Path, python: str = sys.executable) -> Step:
    return Step(f"notebook {notebook.stem}", (python, "-m", "papermill", "--cwd", str(notebook.parent), str(notebook),
                                              str(scratch / notebook.name), "-p", "DEVICE", "cuda"),
                NOTEBOOK_S, ("cuda", "model", "papermill"))


def available() -> dict[str, str | None]:
    """Each prerequisite → None when present, else why not."""
    import torch

    from kvlab.model.gguf_file import find_model_file

    try:
        find_model_file()
        model = None
    except Exception as err:  # noqa: BLE001 — whatever the reason, the steps that need it say it
        model = f"the model file is not installed ({type(err).__name__}: {err})"
    return {
        "cuda": None if torch.cuda.is_available() else "torch sees no CUDA device",
        "model": model,
        "papermill": None if importlib.util.find_spec("papermill") else
        "papermill is not installed (pip install '.[lab]')",
        "vllm": None if importlib.util.find_spec("vllm") else
        "vLLM is not installed (GPU machines only: pip install vllm)",
        "checkpoint": _checkpoint_missing(),
    }


def _checkpoint_missing() -> str | None:
    """vLLM serves the Hugging Face checkpoint, not the GGUF file: on a machine without a network it must be cached."""
    if not importlib.util.find_spec("vllm"):
        return "vLLM is not installed"
    from kvlab.vllm.replay import checkpoint_missing

    return checkpoint_missing()


def run_step(step: Step, missing: dict[str, str | None], deadline: float, env: dict[str, str]) -> StepResult:
    reasons = [missing[n] for n in step.needs if missing.get(n)]
    if reasons:
        return StepResult(step.name, "skipped", reason="; ".join(reasons))
    left = deadline - time.monotonic()
    if left < 5:
        return StepResult(step.name, "not run", reason="no time left under the check's deadline")
    limit = min(step.timeout_s, left)
    started = time.monotonic()
    # its own process group: at the limit the step and everything it started (a vLLM server) are stopped together
    process = subprocess.Popen(step.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                               start_new_session=True)
    try:
        output, _ = process.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        output = stop_process_group(process, grace_s=10.0)  # a step's cleanup (the replay's server) runs
        return StepResult(step.name, "timed out", time.monotonic() - started, f"stopped at its limit of {limit:.0f} s",
                          output[-2000:])
    seconds = time.monotonic() - started
    if process.returncode != 0:
        return StepResult(step.name, "failed", seconds, f"exit status {process.returncode}", output[-2000:])
    return StepResult(step.name, "passed", seconds, output_tail=output[-2000:])


# ---- the GPU targets, read off the results the benchmarks just wrote ----------------------------------------
DECODE_BANDWIDTH = 0.90  # paged decode at context ≥ 8K and batch ≥ 16: of the measured copy bandwidth
DECODE_VS_SDPA = 1.0  # … and no slower than SDPA over a contiguous cache
LONG_BATCH1 = 0.75  # batch 1 at 128K tokens: of the copy bandwidth
LONG_CONTEXT_QUANT = 16384  # the quantized kernels' time targets are for long contexts (kvlab.bench.quant_speed)
QUANT_TARGETS = quant_speed.TARGETS


def targets(decode: dict | None, quant: dict | None) -> list[Target]:
    """✓/✗ for each GPU target of the issue that asked for this check, from decode and quant benchmark reports."""
    out = []
    big = [c for c in (decode or {}).get("cases", []) if c["context"] >= 8192 and c["batch"] >= 16]
    if big:
        worst = min(big, key=lambda c: c["fraction_of_copy"])
        out.append(Target("paged decode bandwidth, context ≥ 8K, batch ≥ 16", f"≥ {DECODE_BANDWIDTH:.0%} of copy",
                          f"worst {worst['fraction_of_copy']:.0%} (batch {worst['batch']}, {worst['context']} tokens)",
                          worst["fraction_of_copy"] >= DECODE_BANDWIDTH))
        slowest = max(big, key=lambda c: c["paged_over_sdpa_time"])
        out.append(Target("paged decode vs SDPA on a contiguous cache", f"≤ {DECODE_VS_SDPA:.2f}× its time",
                          f"worst {slowest['paged_over_sdpa_time']:.2f}× (batch {slowest['batch']}, "
                          f"{slowest['context']} tokens)", slowest["paged_over_sdpa_time"] <= DECODE_VS_SDPA))
    else:
        out.append(Target("paged decode bandwidth, context ≥ 8K, batch ≥ 16", f"≥ {DECODE_BANDWIDTH:.0%} of copy",
                          "not measured", None))
    long = [c for c in (decode or {}).get("cases", []) if c["batch"] == 1 and c["context"] >= 131072]
    out.append(Target("paged decode bandwidth, batch 1 at 128K", f"≥ {LONG_BATCH1:.0%} of copy",
                      f"{long[0]['fraction_of_copy']:.0%}" if long else "not measured",
                      long[0]["fraction_of_copy"] >= LONG_BATCH1 if long else None))
    for scheme, limit in QUANT_TARGETS.items():
        rows = [r for r in (quant or {}).get("rows", [])
                if r["scheme"] == scheme and r["context"] >= LONG_CONTEXT_QUANT]
        worst = max(rows, key=lambda r: r["time_vs_baseline"]) if rows else None
        out.append(Target(f"{scheme} decode time vs bf16, context ≥ {LONG_CONTEXT_QUANT // 1024}K", f"≤ {limit:.2f}×",
                          f"worst {worst['time_vs_baseline']:.2f}× (batch {worst['batch']}, {worst['context']} tokens)"
                          if worst else "not measured", worst["time_vs_baseline"] <= limit if worst else None))
    return out


def summary_markdown(device: str, results: list[StepResult], goals: list[Target], date: str) -> str:
    lines = [f"# make gpu-check on {device}, {date}", "",
             f"{sum(r.status == 'passed' for r in results)} of {len(results)} steps passed; "
             f"{sum(t.ok is True for t in goals)} of {len(goals)} GPU targets met.", "",
             "## GPU targets", "", "| | target | wanted | measured |", "|---|---|---|---|"]
    lines += [f"| {t.mark} | {t.name} | {t.wanted} | {t.measured} |" for t in goals]
    lines += ["", "## Steps", "", "| | step | seconds | note |", "|---|---|---|---|"]
    lines += [f"| {r.mark} | {r.name} | {r.seconds:.0f} | {r.reason or r.status} |" for r in results]
    failed = [r for r in results if r.status in ("failed", "timed out") and r.output_tail]
    for r in failed:
        lines += ["", f"### {r.name}: the end of its output", "", "```", r.output_tail.strip()[-1500:], "```"]
    return "\n".join(lines) + "\n"


def _read(kind: str, device: str) -> dict | None:
    path = result_path(kind, device)
    return json.loads(path.read_text()) if path.is_file() else None


def run_check(only: list[str] | None = None, deadline_s: float = DEADLINE_S, scratch: pathlib.Path | None = None,
              python: str = sys.executable, progress=print) -> tuple[str, list[StepResult], list[Target]]:
    """Runs the check; returns (device label, step results, targets). `only`: step names to keep (by prefix)."""
    import torch

    from .roofs import device_label

    deadline = time.monotonic() + deadline_s
    missing = available()
    device = device_label("cuda") if torch.cuda.is_available() else device_label("cpu")
    env = {k: v for k, v in os.environ.items() if k not in ("KVLAB_DEVICE", "TRITON_INTERPRET")}
    env["PYTHONUNBUFFERED"] = "1"
    scratch = scratch or pathlib.Path("/tmp/kvlab-gpu-check")
    scratch.mkdir(parents=True, exist_ok=True)
    steps = select(all_steps(scratch, python), only)
    serial = [s for s in steps if not s.name.startswith("notebook") and s.name != "vllm replay"]
    notebooks = [s for s in steps if s.name.startswith("notebook")]
    last = [s for s in steps if s.name == "vllm replay"]

    def report(result: StepResult) -> StepResult:
        progress(f"{result.mark} {result.name}: {result.status} in {result.seconds:.0f} s {result.reason}")
        return result

    results = [report(run_step(step, missing, deadline, env)) for step in serial]  # the benchmarks, alone on the GPU
    with ThreadPoolExecutor(NOTEBOOK_WORKERS) as pool:
        results += [report(r) for r in pool.map(lambda s: run_step(s, missing, deadline, env), notebooks)]
    results += [report(run_step(step, missing, deadline, env)) for step in last]
    passed = {r.name for r in results if r.status == "passed"}  # a target is read only off what this run measured
    decode = _read("decode", device) if "decode benchmark" in passed else None
    quant = _read("quant", device) if "quant benchmark" in passed else None
    return device, results, targets(decode, quant)


def all_steps(scratch: pathlib.Path, python: str = sys.executable) -> list[Step]:
    return plan(python) + [notebook_step(nb, scratch, python) for nb in notebook_paths()] + [vllm_step(scratch, python)]


def select(steps: list[Step], only: list[str] | None) -> list[Step]:
    """The steps whose names start with one of `only` (all of them for None); a prefix matching none is refused."""
    if not only:
        return steps
    unmatched = [o for o in only if not any(s.name.startswith(o) for s in steps)]
    if unmatched:
        raise ValueError(f"--only {' '.join(unmatched)} matches no step; the steps are: "
                         f"{', '.join(s.name for s in steps)}")
    return [s for s in steps if any(s.name.startswith(o) for o in only)]


def vllm_step(scratch: pathlib.Path, python: str = sys.executable) -> Step:
    """Notebook 08's GPU trace through kvlab's engine and through a real vLLM server (kvlab.vllm.replay), writing
    benchmarks/results/vllm_<device>.json; run last, with what time is left."""
    code = ("import sys; from kvlab.vllm.replay import run_if_available; "
            f"report = run_if_available(work_dir={str(scratch / 'vllm')!r}, timeout_s={VLLM_S - 15}); "
            "sys.exit(0 if report else 3)")  # the replay stops its server itself before the step's limit
    return Step("vllm replay", (python, "-c", code), VLLM_S, ("cuda", "model", "vllm", "checkpoint"), "vllm")


def copy_results(summary: pathlib.Path, target: pathlib.Path, scratch: pathlib.Path) -> list[pathlib.Path]:
    """target/<summary>.md, target/<summary>.tar.gz (it and every result JSON of this device) and
    target/<summary>_notebooks.tar.gz (the notebooks executed on this device)."""
    import tarfile

    target.mkdir(parents=True, exist_ok=True)
    device_slug = summary.stem.removeprefix("gpu_check_")
    written = [target / summary.name]
    shutil.copy2(summary, written[0])
    with tarfile.open(target / f"{summary.stem}.tar.gz", "w:gz") as archive:
        for path in [summary] + sorted(summary.parent.glob(f"*_{device_slug}.json")):
            archive.add(path, arcname=str(path))
    written.append(target / f"{summary.stem}.tar.gz")
    with tarfile.open(target / f"{summary.stem}_notebooks.tar.gz", "w:gz") as archive:
        for path in sorted(scratch.glob("*.ipynb")):
            archive.add(path, arcname=path.name)
    written.append(target / f"{summary.stem}_notebooks.tar.gz")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kvlab.bench.gpu_check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="print the plan and what is missing; run nothing")
    parser.add_argument("--only", nargs="+", help="run only the steps whose names start with these")
    parser.add_argument("--deadline-s", type=float, default=DEADLINE_S)
    parser.add_argument("--copy-to", type=pathlib.Path, help="also copy the summary and the result files here")
    args = parser.parse_args(argv)
    if args.deadline_s <= 0:
        parser.error(f"--deadline-s must be positive, got {args.deadline_s}")
    try:
        select(all_steps(pathlib.Path("<scratch>")), args.only)
    except ValueError as err:
        parser.error(str(err))
    missing = available()
    if args.dry_run:
        for step in select(all_steps(pathlib.Path("<scratch>")), args.only):
            reasons = [missing[n] for n in step.needs if missing.get(n)]
            print(f"{step.name:<32} ≤ {step.timeout_s:>3} s  {'skip: ' + '; '.join(reasons) if reasons else 'ready'}")
        return 0
    if missing["cuda"]:
        print(f"make gpu-check is for a machine with a GPU: {missing['cuda']}. Without one, `make test` compiles the "
              "kernels for sm_80/89/90 and checks the compiled code (tests/test_gpu_compile.py).", file=sys.stderr)
        return 2
    device, results, goals = run_check(args.only, args.deadline_s)
    page = summary_markdown(device, results, goals, time.strftime("%Y-%m-%d"))
    path = result_path("gpu_check", device).with_suffix(".md")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page)
    print(page)
    print("summary written to", path)
    if args.copy_to:  # two archives (a GPU lease hands back few files): the results, and the executed notebooks
        copy_results(path, args.copy_to, pathlib.Path("/tmp/kvlab-gpu-check"))
    return 0 if all(r.status in ("passed", "skipped") for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
