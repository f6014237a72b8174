"""A `vllm bench serve --save-result` JSON read into kvlab's metric names and units, every field checked.

    result = load_result("benchmarks/results/vllm_bench.json")
    result.metrics["ttft_p99_s"], result.metrics["throughput_tok_s"]     # the keys of ServeResult.metrics()

The fields are those vllm/benchmarks/serve.py writes: completed, failed, duration (s), total_input_tokens,
total_output_tokens, request_throughput (req/s), output_throughput and total_token_throughput (tok/s), and for each
metric of --percentile-metrics (default ttft, tpot, itl; e2el on request) mean_/median_/std_<m>_ms and p<q>_<m>_ms
for each --metric-percentiles q (default 99). Times there are milliseconds; here seconds, as kvlab's.

The definitions agree with kvlab's (kvlab.engine.metrics): TTFT = first token − request sent, TPOT = (latency −
TTFT) / (output tokens − 1) over requests with more than one token, ITL = every gap between tokens, output
throughput = output tokens ÷ the benchmark's duration, percentiles interpolated linearly. What differs is where the
clock stands: vLLM's client measures through HTTP and detokenization, kvlab's engine at the step; and vLLM's ITL is
the gap between streamed chunks, so tokens that arrive together (accepted drafts) make one gap, not several.
"""
from __future__ import annotations

import json
import pathlib
from dataclasses import dataclass, field

from ..checks import non_negative_number

COUNTS = ("completed", "failed", "total_input_tokens", "total_output_tokens")
RATES = ("duration", "request_throughput", "output_throughput", "total_token_throughput")
LATENCIES = ("ttft", "tpot", "itl")  # vLLM's default --percentile-metrics for a generative model
STATISTICS = ("mean", "median", "p99")  # of each metric, in every result (p99: --metric-percentiles' default)
META = ("date", "backend", "model_id", "tokenizer_id", "num_prompts", "request_rate", "burstiness", "max_concurrency")


@dataclass(frozen=True)
class VllmResult:
    metrics: dict  # kvlab's names and units (seconds), as ServeResult.metrics(), where vLLM measures the same thing
    meta: dict = field(default_factory=dict)  # how vLLM was driven: backend, model_id, request_rate, …
    source: str = ""

    def summary(self) -> str:
        m = self.metrics
        return (f"vLLM ({self.meta.get('model_id', 'model ?')}): {m['requests']} requests, {m['output_tokens']} "
                f"tokens in {m['duration_s']:.1f} s, {m['throughput_tok_s']:.0f} tok/s, TTFT p50 "
                f"{m['ttft_p50_s'] * 1e3:.0f} ms / p99 {m['ttft_p99_s'] * 1e3:.0f} ms, TPOT p50 "
                f"{m['tpot_p50_s'] * 1e3:.1f} ms")


def _number(data: dict, name: str, where: str, whole: bool = False, required: bool = True):
    if name not in data or data[name] is None:
        if required:
            raise ValueError(f"{where} has no {name!r}: not the JSON of `vllm bench serve --save-result`, or not a "
                             f"generation benchmark")
        return None
    return non_negative_number(f"{where}: {name}", data[name], whole)


def read_result(data: dict, where: str = "the vLLM result") -> VllmResult:
    """A parsed result JSON → VllmResult. ValueError naming the field and its value: missing, not a number,
    negative or NaN; a run whose requests all failed."""
    if not isinstance(data, dict):
        raise ValueError(f"{where} is a JSON {type(data).__name__}, not an object (one --save-result run; "
                         f"--append-result files hold several lines)")
    counts = {name: _number(data, name, where, whole=True) for name in COUNTS}
    rates = {name: _number(data, name, where) for name in RATES}
    if counts["completed"] == 0:
        raise ValueError(f"{where}: completed is 0 — every request failed (its 'errors' say why)")
    if rates["duration"] == 0:
        raise ValueError(f"{where}: duration is 0 s")
    metrics = {"requests": counts["completed"], "failed": counts["failed"],
               "output_tokens": counts["total_output_tokens"], "input_tokens": counts["total_input_tokens"],
               "duration_s": rates["duration"],
               "throughput_tok_s": rates["output_throughput"], "request_throughput_req_s": rates["request_throughput"],
               "total_throughput_tok_s": rates["total_token_throughput"]}
    for metric in LATENCIES + ("e2el",):
        names = [f"{stat}_{metric}_ms" for stat in STATISTICS]
        given = [name for name in names if data.get(name) is not None]
        if given and len(given) < len(names):  # vLLM writes a metric's statistics together
            missing = [name for name in names if name not in given]
            raise ValueError(f"{where} has {', '.join(given)} but no {', '.join(map(repr, missing))}: a metric's "
                             f"mean, median and p99 come together")
        required = metric != "e2el" or bool(given)  # e2el only when --percentile-metrics names it
        ms = {stat: _number(data, name, where, required=required) for stat, name in zip(STATISTICS, names)}
        p50 = _number(data, f"p50_{metric}_ms", where, required=False)
        name = "e2e" if metric == "e2el" else metric
        if required:
            metrics[f"{name}_mean_s"] = ms["mean"] / 1e3
            metrics[f"{name}_p50_s"] = (p50 if p50 is not None else ms["median"]) / 1e3
            metrics[f"{name}_p99_s"] = ms["p99"] / 1e3
    meta = {key: data[key] for key in META if key in data}
    return VllmResult(metrics, meta, where)


def load_result(path) -> VllmResult:
    """Read a `vllm bench serve --save-result` JSON file (see read_result)."""
    path = pathlib.Path(path)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not JSON: {error}") from None
    return read_result(data, str(path))
