"""`make gpu-check` (kvlab.bench.gpu_check): its plan names real commands and notebooks, its steps report what
happened (passed, failed, timed out, skipped with the reason), and its targets read ✓/✗ off benchmark reports."""
from __future__ import annotations

import ast
import json
import pathlib
import subprocess
import sys
import tarfile
import time

import pytest
import torch

from kvlab.bench import gpu_check
from kvlab.bench.gpu_check import Step, notebook_paths, plan, run_step, summary_markdown, targets

ROOT = pathlib.Path(__file__).resolve().parents[1]


def bench_commands() -> list[str]:
    """The command choices of `python -m kvlab.bench`, read from its argument parser's source."""
    tree = ast.parse((ROOT / "kvlab/bench/__main__.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "choices":
            return [elt.value for elt in node.value.elts]
    raise AssertionError("no choices= in kvlab/bench/__main__.py")


def test_every_benchmark_step_is_a_command_of_kvlab_bench_and_every_kernel_test_exists():
    commands = bench_commands()
    steps = plan("python")
    assert [s for s in steps if s.result_kind], "the plan runs no benchmark"
    for step in steps:
        if step.result_kind:
            assert step.argv[1:4] == ("-m", "kvlab.bench", step.result_kind) and step.result_kind in commands
    for path in gpu_check.KERNEL_TESTS:
        assert (ROOT / path).is_file(), path


def test_every_step_at_its_limit_still_fits_the_deadline_and_the_ten_minutes():
    steps = gpu_check.all_steps(pathlib.Path("/scratch"), "python")
    notebooks = [s for s in steps if s.name.startswith("notebook")]
    others = [s for s in steps if not s.name.startswith("notebook")]
    rounds = -(-len(notebooks) // gpu_check.NOTEBOOK_WORKERS)
    worst = sum(s.timeout_s for s in others) + rounds * max(s.timeout_s for s in notebooks)
    assert worst <= gpu_check.DEADLINE_S <= 600, f"{worst} s at the limits"


def test_the_kernel_test_step_collects_tests_from_every_file_it_names():
    for path in gpu_check.KERNEL_TESTS:  # `-k cuda` must select something in each file (skipped here, run on a GPU)
        done = subprocess.run([sys.executable, "-m", "pytest", path, "-k", "cuda", "--collect-only", "-q",
                               "-p", "no:cacheprovider"], capture_output=True, text=True, cwd=ROOT)
        assert done.returncode == 0 and "no tests collected" not in done.stdout, (path, done.stdout[-500:])


def test_only_refuses_a_prefix_that_matches_no_step_and_names_the_steps():
    steps = gpu_check.all_steps(pathlib.Path("/scratch"), "python")
    assert [s.name for s in gpu_check.select(steps, ["decode", "notebook 02"])] == ["decode benchmark",
                                                                                   "notebook 02_paged_attention"]
    with pytest.raises(ValueError, match="--only decod3 matches no step; the steps are: kernel tests, vllm bridge tests, decode"):
        gpu_check.select(steps, ["decode", "decod3"])


def test_every_notebook_is_run_with_a_device_parameter_it_has():
    notebooks = notebook_paths(ROOT / "notebooks")
    assert len(notebooks) == len(list((ROOT / "notebooks/src").glob("[0-9][0-9]_*.py")))
    for notebook in notebooks:
        cells = json.loads(notebook.read_text())["cells"]
        parameters = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(parameters) == 1 and "DEVICE = " in "".join(parameters[0]["source"]), notebook.name
        step = gpu_check.notebook_step(notebook, pathlib.Path("/scratch"))
        assert step.argv[-3:] == ("-p", "DEVICE", "cuda") and "papermill" in step.needs


def _step(code: str, timeout_s: int = 30, needs=()) -> Step:
    return Step("probe", (sys.executable, "-c", code), timeout_s, tuple(needs))


def test_a_step_reports_passed_failed_timed_out_or_skipped_with_its_reason():
    far = time.monotonic() + 60
    assert run_step(_step("print('ok')"), {}, far, {}).status == "passed"
    failed = run_step(_step("import sys; print('boom'); sys.exit(3)"), {}, far, {})
    assert failed.status == "failed" and "exit status 3" in failed.reason and "boom" in failed.output_tail
    slow = run_step(_step("import time; time.sleep(10)", timeout_s=1), {}, far, {})
    assert slow.status == "timed out" and slow.mark == "✗"
    skipped = run_step(_step("print(1)", needs=["model"]), {"model": "the model file is not installed"}, far, {})
    assert skipped.status == "skipped" and skipped.reason == "the model file is not installed"
    late = run_step(_step("print(1)"), {}, time.monotonic() + 1, {})
    assert late.status == "not run" and "deadline" in late.reason and late.mark == "✗"


def test_a_step_past_its_limit_is_stopped_with_everything_it_started(tmp_path):
    marker = tmp_path / "child.pid"
    code = ("import subprocess, sys, time; child = subprocess.Popen([sys.executable, '-c', 'import time; "
            f"time.sleep(60)']); open({str(marker)!r}, 'w').write(str(child.pid)); print('started', flush=True); "
            "time.sleep(60)")
    result = run_step(_step(code, timeout_s=3), {}, time.monotonic() + 60, {})
    assert result.status == "timed out" and "started" in result.output_tail
    child = int(marker.read_text())
    time.sleep(0.5)
    status = pathlib.Path(f"/proc/{child}/status")
    assert not status.exists() or "zombie" in status.read_text(), "the step's child outlived the step"


def _decode_case(batch, context, fraction, vs_sdpa):
    return {"batch": batch, "context": context, "fraction_of_copy": fraction, "paged_over_sdpa_time": vs_sdpa}


def _quant_row(scheme, context, ratio):
    return {"scheme": scheme, "batch": 8, "context": context, "time_vs_baseline": ratio}


def test_targets_are_met_only_when_every_case_they_cover_meets_them():
    decode = {"cases": [_decode_case(1, 1024, 0.10, 3.0),  # small: outside every target
                        _decode_case(16, 8192, 0.93, 0.97), _decode_case(64, 32768, 0.95, 0.99),
                        _decode_case(1, 131072, 0.80, 1.1)]}
    quant = {"targets": {"int8": 0.55, "int4": 0.30},
             "rows": [_quant_row("int8", 4096, 0.9), _quant_row("int8", 32768, 0.5), _quant_row("int4", 32768, 0.31)]}
    marks = {t.name: t.ok for t in targets(decode, quant)}
    assert marks == {"paged decode bandwidth, context ≥ 8K, batch ≥ 16": True,
                     "paged decode vs SDPA on a contiguous cache": True,
                     "paged decode bandwidth, batch 1 at 128K": True,
                     "int8 decode time vs bf16, context ≥ 16K": True,
                     "int4 decode time vs bf16, context ≥ 16K": False}
    decode["cases"][2]["fraction_of_copy"] = 0.89  # one big case short of 90 %: the target is missed
    assert not targets(decode, quant)[0].ok and "batch 64" in targets(decode, quant)[0].measured


def test_targets_without_results_say_not_measured_rather_than_passing():
    goals = targets(None, None)
    assert goals and all(t.ok is None and t.measured == "not measured" and t.mark == "–" for t in goals)


def test_the_summary_marks_each_step_and_target_and_shows_what_a_failed_step_printed():
    results = [gpu_check.StepResult("decode benchmark", "passed", 12.0),
               gpu_check.StepResult("quant benchmark", "failed", 3.0, "exit status 1", "Traceback: OutOfResources"),
               gpu_check.StepResult("notebook 08", "skipped", reason="papermill is not installed")]
    page = summary_markdown("NVIDIA H200", results, targets(None, None), "2026-12-03")
    assert page.startswith("# make gpu-check on NVIDIA H200, 2026-12-03")
    assert "1 of 3 steps passed" in page and "| ✗ | quant benchmark |" in page and "OutOfResources" in page
    assert "| – | notebook 08 | 0 | papermill is not installed |" in page


def test_copy_results_hands_back_three_files_whatever_the_number_of_results(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    summary = results / "gpu_check_nvidia-h200.md"
    summary.write_text("# summary\n")
    for kind in ("decode", "quant", "serve", "spec", "offload", "prefix", "gqa", "roofline", "versus_hf"):
        (results / f"{kind}_nvidia-h200.json").write_text("{}")
    (results / "decode_cpu-x86-64-2-threads.json").write_text("{}")  # another device's: not copied
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    (scratch / "02_paged_attention.ipynb").write_text("{}")
    written = gpu_check.copy_results(summary, tmp_path / "out", scratch)
    assert [p.name for p in written] == ["gpu_check_nvidia-h200.md", "gpu_check_nvidia-h200.tar.gz",
                                         "gpu_check_nvidia-h200_notebooks.tar.gz"]
    with tarfile.open(written[1]) as archive:
        names = archive.getnames()
    assert len(names) == 10 and not any("cpu" in n for n in names)
    with tarfile.open(written[2]) as archive:
        assert archive.getnames() == ["02_paged_attention.ipynb"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine the check would run")
def test_without_a_gpu_the_command_says_what_it_is_for_and_exits_2():
    done = subprocess.run([sys.executable, "-m", "kvlab.bench.gpu_check"], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 2 and "torch sees no CUDA device" in done.stderr and "make test" in done.stderr
    dry = subprocess.run([sys.executable, "-m", "kvlab.bench.gpu_check", "--dry-run"], capture_output=True, text=True,
                         cwd=ROOT)
    assert dry.returncode == 0 and "decode benchmark" in dry.stdout and "notebook 02_paged_attention" in dry.stdout


def test_the_vllm_step_calls_a_replay_that_exists_with_arguments_it_takes():
    import inspect

    from kvlab.vllm.replay import run_if_available

    step = gpu_check.vllm_step(pathlib.Path("/scratch"))
    assert f"run_if_available(work_dir='/scratch/vllm', timeout_s={gpu_check.VLLM_S - 15})" in step.argv[-1]
    assert set(step.needs) >= {"cuda", "vllm", "checkpoint"}
    assert {"work_dir", "timeout_s"} <= set(inspect.signature(run_if_available).parameters)
    from kvlab.vllm.replay import vllm_available

    if not vllm_available():  # with vLLM and a GPU this would run the whole replay: that is gpu-check's job
        assert run_if_available() is None


def test_targets_are_read_only_off_benchmarks_that_ran_in_this_check(monkeypatch, tmp_path):
    monkeypatch.setattr(gpu_check, "available", lambda: {"cuda": None, "model": None, "papermill": None,
                                                         "vllm": None, "checkpoint": None})
    monkeypatch.setattr(gpu_check, "_read", lambda kind, device: {"cases": [_decode_case(16, 8192, 0.95, 0.9)]})
    monkeypatch.setattr(gpu_check, "all_steps", lambda scratch, python: [
        Step("decode benchmark", (sys.executable, "-c", "raise SystemExit(1)"), 10, (), "decode")])
    _, results, goals = gpu_check.run_check(["decode"], scratch=tmp_path, progress=lambda line: None)
    assert results[0].status == "failed" and goals[0].measured == "not measured"  # the old file is not read
