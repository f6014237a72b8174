"""Replaying a kvlab trace through a real vLLM server, beside kvlab's own engine on the same trace and GPU.

    report = run_if_available("benchmarks/results")   # None where vLLM, CUDA or the checkpoint is missing
    commands = replay_commands(config, trace_path, context_len)   # `vllm serve …` and `vllm bench serve …`
    result = replay(commands)                         # start the server, replay the trace, stop the server

run_if_available (what `make gpu-check` calls) serves notebook 08's GPU trace (section 2: the chat trace, all at
once, every request generating exactly its length: GPU_TRACE, GPU_CONFIG) with kvlab's engine, maps that
configuration — its pool size included, as num_gpu_blocks_override — to `vllm serve` flags, exports the trace as a
timed_trace file, replays it through vLLM and writes benchmarks/results/vllm_<gpu>.json: both sides' metrics, the
commands, the mapping table, the vllm/torch/triton versions. The server runs offline (HF_HUB_OFFLINE=1): it needs
the checkpoint (HuggingFaceTB/SmolLM2-135M-Instruct) in the Hugging Face cache already (checkpoint_missing).
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import pathlib
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass

from ..checks import positive_int
from ..processes import stop_process_group
from .args import MODEL, VllmMapping, map_config
from .result_import import VllmResult, load_result
from .trace_export import bench_command, load_timed_trace, save_timed_trace

VLLM_CLI = [sys.executable, "-m", "vllm.entrypoints.cli.main"]  # `vllm`, from this interpreter's environment
HOST = "127.0.0.1"
# notebook 08's sizes on a GPU (its parameters' GPU defaults are these)
GPU_TRACE = dict(num_requests=128, prompt_mean=161, output_mean=338, max_prompt=4 * 161, max_output=3 * 338)
GPU_CONFIG = dict(cache="paged", max_num_seqs=64, max_num_batched_tokens=2048, stop_at_eos=False)
STOP_GRACE_S = 5.0  # SIGTERM → SIGKILL for the server: inside the 10 s gpu-check gives a step it stops
VERSIONS = ("vllm", "torch", "triton")


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def vllm_available() -> bool:
    """vLLM importable and a CUDA device to run it on."""
    if not vllm_installed():
        return False
    import torch

    return torch.cuda.is_available()


def checkpoint_missing(model: str = MODEL) -> str | None:
    """None when the Hugging Face cache holds `model`'s checkpoint (its config.json), else the reason — the replay's
    server runs offline, so it would not start without it."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return "huggingface_hub is not installed (vLLM brings it)"
    if isinstance(try_to_load_from_cache(model, "config.json"), str):
        return None
    return (f"the checkpoint {model} is not in the Hugging Face cache (no config.json): `hf download {model}` "
            f"where the network is reachable")


def unavailable() -> str | None:
    """Why the replay cannot run here — vLLM not installed, no CUDA device, the checkpoint not cached — or None."""
    if not vllm_installed():
        return "vLLM is not installed"
    if not vllm_available():
        return "no CUDA device"
    return checkpoint_missing()


def versions() -> dict[str, str | None]:
    """The installed versions of vLLM and what it runs on (None: not installed)."""
    found = {}
    for name in VERSIONS:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def free_port(host: str = HOST) -> int:
    """A TCP port nothing listens on now (the OS's choice)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


# --- the commands -------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ReplayCommands:
    mapping: VllmMapping
    serve: list[str]  # `vllm serve MODEL …` argv
    bench: list[str]  # `vllm bench serve …` argv, against the server's port
    port: int
    num_requests: int  # lines of the trace file
    result_path: pathlib.Path  # where `vllm bench serve` saves its result JSON

    def __str__(self) -> str:
        return shlex.join(self.serve) + "\n" + shlex.join(self.bench)


def replay_mapping(config: dict, context_len: int) -> VllmMapping:
    """A kvlab configuration with its pool sized (num_blocks, block_size) as the replay serves it: bfloat16
    weights, max_model_len the model's context or, if less, what the pool holds (vLLM refuses to start when one
    sequence of max_model_len would not fit)."""
    missing = [k for k in ("num_blocks", "block_size") if config.get(k) is None]
    if missing:
        raise ValueError(f"the replay needs the pool kvlab sized: config has no {', '.join(missing)}")
    tokens = positive_int("num_blocks", config["num_blocks"]) * positive_int("block_size", config["block_size"])
    return map_config(config, dtype="bfloat16", max_model_len=min(positive_int("context_len", context_len), tokens))


def replay_commands(config: dict, trace_path, context_len: int, port: int = 8000, result_dir=".",
                    result_filename: str = "vllm_bench.json") -> ReplayCommands:
    """The two commands of a replay of the timed_trace file at trace_path (checked as vLLM will read it) under
    config (see replay_mapping): `vllm serve` on HOST:port, and `vllm bench serve` saving its result in
    result_dir/result_filename."""
    mapping = replay_mapping(config, context_len)
    block_size = config["block_size"]
    num_requests = len(load_timed_trace(trace_path, block_size))
    serve = ["vllm", "serve", mapping.model, *mapping.serve_flags(), "--host", HOST, "--port", str(port)]
    bench = bench_command(trace_path, num_requests, block_size, mapping.model, f"http://{HOST}:{port}", result_dir,
                          result_filename, mapping.bench_flags())
    return ReplayCommands(mapping, serve, bench, port, num_requests, pathlib.Path(result_dir) / result_filename)


# --- the replay ---------------------------------------------------------------------------------------------------

def _tail(path: pathlib.Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else "(no log)"


def _time_left(deadline: float | None, limit_s: float, what: str) -> float:
    """limit_s, or less so that `what` and stopping the server end before the deadline (time.monotonic())."""
    if deadline is None:
        return limit_s
    left = deadline - time.monotonic() - STOP_GRACE_S - 1
    if left <= 0:
        raise RuntimeError(f"no time left for {what} before the deadline")
    return min(limit_s, left)


def _wait_healthy(server: subprocess.Popen, url: str, log: pathlib.Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"`vllm serve` exited with code {server.returncode} before it was ready:\n{_tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                healthy = response.status == 200
        except OSError:
            healthy = False
        if healthy:
            if server.poll() is not None:  # the answer came from another server on the port
                raise RuntimeError(f"{url} answered, but the `vllm serve` started here exited with code "
                                   f"{server.returncode}: another server listens on that port\n{_tail(log)}")
            return
        time.sleep(2)
    raise RuntimeError(f"`vllm serve` was not ready after {timeout_s:.0f} s:\n{_tail(log)}")


def _stop(server: subprocess.Popen) -> None:
    """SIGTERM to the server's own process group (its engine workers too), SIGKILL to what is left after
    STOP_GRACE_S."""
    stop_process_group(server, STOP_GRACE_S)


def _exit(signum, frame):
    """SIGTERM (gpu-check stopping a step at its limit) → SystemExit, so that the finally stopping the server runs:
    the server has its own session, out of reach of a signal to ours."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the server's stop short
    raise SystemExit(128 + signum)


def _on_sigterm(handler):
    """Install handler for SIGTERM, returning the one it replaces (only the main thread may: elsewhere, nothing)."""
    if handler is None or threading.current_thread() is not threading.main_thread():
        return None
    replaced = signal.signal(signal.SIGTERM, handler)
    return signal.SIG_DFL if replaced is None else replaced  # None: a handler not set from Python


def replay(commands: ReplayCommands, log_dir=None, startup_timeout_s: float = 900, bench_timeout_s: float = 3600,
           deadline: float | None = None) -> VllmResult:
    """Start `vllm serve` (offline: HF_HUB_OFFLINE=1), wait for /health, replay the trace with `vllm bench serve`,
    stop the server — also on SIGTERM — and read the result JSON. deadline (time.monotonic()): the startup and
    benchmark timeouts shrink so that all of it, the stop included, ends before it. Both logs stay in log_dir
    (default: the result's folder). RuntimeError with the log's tail if vLLM is missing, does not start, the
    benchmark fails or a request of the trace does not complete."""
    if not vllm_installed():
        raise RuntimeError("vLLM is not installed here: `pip install vllm` on a machine with a GPU, then "
                           "`make gpu-check`")
    log_dir = pathlib.Path(log_dir) if log_dir is not None else commands.result_path.parent
    log_dir.mkdir(parents=True, exist_ok=True)
    commands.result_path.parent.mkdir(parents=True, exist_ok=True)
    server_log, bench_log = log_dir / "vllm_serve.log", log_dir / "vllm_bench.log"
    env = os.environ | {"HF_HUB_OFFLINE": "1"}
    startup_s = _time_left(deadline, startup_timeout_s, "`vllm serve` to start")
    previous = _on_sigterm(_exit)
    server = None
    try:
        with open(server_log, "w") as log:
            server = subprocess.Popen(VLLM_CLI + commands.serve[1:], stdout=log, stderr=subprocess.STDOUT, env=env,
                                      start_new_session=True)
        _wait_healthy(server, f"http://{HOST}:{commands.port}/health", server_log, startup_s)
        timeout_s = _time_left(deadline, bench_timeout_s, "`vllm bench serve`")
        with open(bench_log, "w") as log:
            try:
                done = subprocess.run(VLLM_CLI + commands.bench[1:], stdout=log, stderr=subprocess.STDOUT, env=env,
                                      timeout=timeout_s)
            except subprocess.TimeoutExpired:
                raise RuntimeError(f"`vllm bench serve` did not finish in {timeout_s:.0f} s:\n"
                                   f"{_tail(bench_log)}") from None
        if done.returncode != 0:
            raise RuntimeError(f"`vllm bench serve` failed with code {done.returncode}:\n{_tail(bench_log)}")
    finally:
        _on_sigterm(signal.SIG_IGN)
        if server is not None:
            _stop(server)
        _on_sigterm(previous)
    result = load_result(commands.result_path)
    completed, failed = result.metrics["requests"], result.metrics["failed"]
    if failed or completed != commands.num_requests:
        raise RuntimeError(f"vLLM completed {completed} of the trace's {commands.num_requests} requests and "
                           f"{failed} failed (the result's 'errors' and {bench_log} say why)")
    return result


def run_if_available(out_dir=None, seed: int = 0, port: int | None = None, work_dir=None,
                     timeout_s: float | None = None, **trace_sizes) -> dict | None:
    """None where vLLM, CUDA or the checkpoint is missing (see unavailable); else kvlab's engine and vLLM on
    notebook 08's GPU trace, the report saved as <out_dir>/vllm_<gpu>.json (default benchmarks/results) and
    returned. port: the server's (default: a free one). work_dir (default: a new temporary folder) keeps the trace
    file, the result JSON and both vLLM logs. timeout_s: all of it ends within that many seconds (the replay's
    timeouts shrink to fit; RuntimeError if too little is left for it)."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    if unavailable() is not None:
        return None
    import torch

    import kvlab
    from .. import traces
    from ..bench.results import RESULTS, save_result
    from ..bench.roofs import device_label
    from ..bench.serve import _clean

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

    work = pathlib.Path(work_dir) if work_dir is not None else pathlib.Path(tempfile.mkdtemp(prefix="kvlab-vllm-"))
    work.mkdir(parents=True, exist_ok=True)
    trace_path = save_timed_trace(work / "trace.timed_trace.jsonl", requests, ours.block_size)
    commands = replay_commands(config, trace_path, context, free_port() if port is None else port, work)
    theirs = replay(commands, deadline=deadline)
    device = device_label("cuda")
    report = {"device": device, "date": time.strftime("%Y-%m-%d"), "model": commands.mapping.model, "seed": seed,
              "versions": versions(), "trace": sizes | {"arrival": "all-at-once"}, "work_dir": str(work),
              "config": config, "serve_command": shlex.join(commands.serve),
              "bench_command": shlex.join(commands.bench), "mapping": commands.mapping.table(),
              "kvlab": _clean(ours.metrics()), "vllm": theirs.metrics, "vllm_meta": theirs.meta}
    save_result("vllm", report, out_dir)
    return report


def main(argv=None) -> int:
    """python -m kvlab.vllm.replay [out_dir]: run_if_available, saying what it did."""
    args = sys.argv[1:] if argv is None else argv
    reason = unavailable()
    if reason is not None:
        print(f"vLLM replay skipped: {reason}")
        return 0
    report = run_if_available(args[0] if args else None)
    print(json.dumps({"kvlab": report["kvlab"], "vllm": report["vllm"]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
