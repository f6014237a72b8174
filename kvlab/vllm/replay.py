"""Replaying a kvlab trace through a real vLLM server, beside kvlab's own engine on the same trace and GPU.

    report = run_if_available("benchmarks/results")   # None where vLLM or CUDA is missing (what `make gpu-check` calls)
    result = replay(trace_path, mapping, num_requests, out_dir)   # one `vllm serve` + `vllm bench serve` run

run_if_available serves notebook 08's GPU trace (section 2: the chat trace, all at once, every request generating
exactly its length) with kvlab's engine, maps that configuration — its pool size included, as
num_gpu_blocks_override — to `vllm serve` flags, exports the trace as a timed_trace file, replays it through
vLLM and writes benchmarks/results/vllm_<gpu>.json: both sides' metrics, the commands, the mapping table.
vLLM needs the checkpoint (HuggingFaceTB/SmolLM2-135M-Instruct) in its Hugging Face cache or the network to get it.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import pathlib
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

from .args import VllmMapping, map_config
from .result_import import VllmResult, load_result
from .trace_export import bench_command, save_timed_trace

VLLM_CLI = [sys.executable, "-m", "vllm.entrypoints.cli.main"]  # `vllm`, from this interpreter's environment
GPU_TRACE = dict(num_requests=128, prompt_mean=161, output_mean=338, max_prompt=4 * 161, max_output=3 * 338)
GPU_CONFIG = dict(cache="paged", max_num_seqs=64, max_num_batched_tokens=2048, stop_at_eos=False)  # notebook 08


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def vllm_available() -> bool:
    """vLLM importable and a CUDA device to run it on."""
    if not vllm_installed():
        return False
    import torch

    return torch.cuda.is_available()


def _tail(path: pathlib.Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else "(no log)"


def _wait_healthy(server: subprocess.Popen, url: str, log: pathlib.Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"`vllm serve` exited with code {server.returncode} before it was ready:\n{_tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(2)
    raise RuntimeError(f"`vllm serve` was not ready after {timeout_s:.0f} s:\n{_tail(log)}")


def _stop(server: subprocess.Popen) -> None:
    if server.poll() is not None:
        return
    os.killpg(server.pid, signal.SIGTERM)  # the server's own process group: its engine workers too
    try:
        server.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def replay(trace_path, mapping: VllmMapping, num_requests: int, out_dir, block_size: int = 16, port: int = 8000,
           startup_timeout_s: float = 900, bench_timeout_s: float = 3600) -> VllmResult:
    """Start `vllm serve` with the mapping's flags, wait for /health, replay the timed_trace file at its own times
    with `vllm bench serve`, stop the server and read the result JSON (both logs stay in out_dir).
    RuntimeError with the log's tail if vLLM is missing, does not start, or the benchmark fails."""
    if not vllm_installed():
        raise RuntimeError("vLLM is not installed here: `pip install vllm` on a machine with a GPU, then "
                           "`make gpu-check`")
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    server_log, bench_log = out_dir / "vllm_serve.log", out_dir / "vllm_bench.log"
    serve_argv = VLLM_CLI + ["serve", mapping.model, *mapping.serve_flags(), "--port", str(port)]
    bench_argv = VLLM_CLI + bench_command(trace_path, num_requests, block_size, mapping.model,
                                          f"http://127.0.0.1:{port}", out_dir, "vllm_bench.json",
                                          mapping.bench_flags())[1:]
    with open(server_log, "w") as log:
        server = subprocess.Popen(serve_argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_healthy(server, f"http://127.0.0.1:{port}/health", server_log, startup_timeout_s)
        with open(bench_log, "w") as log:
            done = subprocess.run(bench_argv, stdout=log, stderr=subprocess.STDOUT, timeout=bench_timeout_s)
        if done.returncode != 0:
            raise RuntimeError(f"`vllm bench serve` failed with code {done.returncode}:\n{_tail(bench_log)}")
    finally:
        _stop(server)
    return load_result(out_dir / "vllm_bench.json")


def _clean(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def run_if_available(out_dir=None, seed: int = 0, port: int = 8000, work_dir=None, **trace_sizes) -> dict | None:
    """None where vLLM or CUDA is missing; else kvlab's engine and vLLM on notebook 08's GPU trace, the report saved
    as <out_dir>/vllm_<gpu>.json (default benchmarks/results) and returned. work_dir (default: a new temporary
    folder) keeps the trace file, the result JSON and both vLLM logs."""
    if not vllm_available():
        return None
    import torch

    import kvlab
    from .. import traces
    from ..bench.results import RESULTS, save_result
    from ..bench.roofs import device_label

    out_dir = pathlib.Path(out_dir) if out_dir is not None else RESULTS
    sizes = GPU_TRACE | trace_sizes
    model, tokenizer = kvlab.load_model(device="cuda")
    requests = traces.chat_requests(tokenizer, sizes["num_requests"], seed=seed, arrival="all-at-once",
                                    prompt_mean=sizes["prompt_mean"], output_mean=sizes["output_mean"],
                                    max_prompt=sizes["max_prompt"], max_output=sizes["max_output"])
    kvlab.generate(model, tokenizer, "warm-up", max_new_tokens=4)
    ours = kvlab.serve(model, tokenizer, requests, **GPU_CONFIG)
    config = GPU_CONFIG | {"num_blocks": ours.num_blocks, "block_size": ours.block_size}
    context = model.config.context_len
    del model
    torch.cuda.empty_cache()

    mapping = map_config(config, dtype="bfloat16", max_model_len=min(context, ours.num_blocks * ours.block_size))
    work = pathlib.Path(work_dir) if work_dir is not None else pathlib.Path(tempfile.mkdtemp(prefix="kvlab-vllm-"))
    work.mkdir(parents=True, exist_ok=True)
    trace_path = save_timed_trace(work / "trace.timed_trace.jsonl", requests, ours.block_size)
    theirs = replay(trace_path, mapping, len(requests), work, ours.block_size, port)
    device = device_label("cuda")
    report = {"device": device, "date": time.strftime("%Y-%m-%d"), "model": mapping.model, "seed": seed,
              "trace": sizes | {"arrival": "all-at-once"}, "work_dir": str(work), "config": config,
              "serve_command": mapping.serve_command(),
              "bench_command": shlex.join(bench_command(trace_path, len(requests), ours.block_size, mapping.model,
                                                        client_flags=mapping.bench_flags())),
              "mapping": mapping.table(), "kvlab": _clean(ours.metrics()), "vllm": theirs.metrics,
              "vllm_meta": theirs.meta}
    save_result("vllm", report, out_dir)
    return report


def main(argv=None) -> int:
    """python -m kvlab.vllm.replay [out_dir]: run_if_available, saying what it did."""
    args = sys.argv[1:] if argv is None else argv
    report = run_if_available(args[0] if args else None)
    if report is None:
        print("vLLM replay skipped: " + ("no CUDA device" if vllm_installed() else "vLLM is not installed"))
        return 0
    print(json.dumps({"kvlab": report["kvlab"], "vllm": report["vllm"]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
