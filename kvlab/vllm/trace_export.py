"""A kvlab trace as a dataset that `vllm bench serve` replays with the same arrival times: vLLM's timed_trace JSONL.

    path = save_timed_trace("trace.jsonl", requests, block_size=16)        # kvlab Requests (token-id prompts)
    argv = bench_command(path, len(requests), block_size=16, result_dir="out")   # vllm bench serve …

Of vLLM's benchmark datasets only timed_trace carries a time per request (vllm/benchmarks/datasets/datasets.py,
class TimedTrace, added by vLLM PR #39795 for the Mooncake and Alibaba traces): one JSON object a line,
{"timestamp", "input_length", "output_length", "hash_ids"}, and with --self-timed (this dataset's default) request i
is sent timestamp_i × --timed-trace-sec-multiplier seconds after the benchmark starts, in file order. sharegpt,
custom and random draw their arrivals from --request-rate instead (Poisson, or gamma with --burstiness).

What vLLM replays of a kvlab trace: every arrival time (kvlab's arrival_s, in seconds: multiplier 1); every prompt
length and output length (timed_trace turns --ignore-eos on, so each request generates exactly output_length
tokens, as kvlab's stop_at_eos=False); and which prompts share which leading blocks — one hash id per chunk of
block_size tokens (`--timed-trace-chunk-hash-size`), equal ids for equal chains of chunks, so vLLM's prefix cache
hits where kvlab's does. What it cannot replay: the prompts' tokens. vLLM expands each hash id into random ids of
its vocabulary (seeded through Python's hash(): the same tokens twice only under one PYTHONHASHSEED), so whatever
depends on the content differs — n-gram drafts (random tokens seldom repeat), EOS, the answers' text. For the text
itself, kvlab.traces.save_sharegpt writes the sharegpt dataset, which vLLM replays at a --request-rate instead.
"""
from __future__ import annotations

import json
import math
import pathlib
from dataclasses import dataclass

from ..cache import check_block_size
from ..cache.prefix_index import chain_hash
from ..checks import non_negative_number
from ..engine import Request
from .args import MODEL

FIELDS = ("timestamp", "input_length", "output_length", "hash_ids")  # vLLM's default --timed-trace-label-* names


@dataclass(frozen=True)
class TimedTraceEntry:
    timestamp: float  # seconds after the benchmark starts
    input_length: int
    output_length: int
    hash_ids: tuple[int, ...]  # one per chunk of block_size prompt tokens (the last may be partial)

    def as_json(self) -> dict:
        return {"timestamp": self.timestamp, "input_length": self.input_length, "output_length": self.output_length,
                "hash_ids": list(self.hash_ids)}


def _prompt_ids(request, index: int, tokenizer) -> list[int] | None:
    prompt = getattr(request, "prompt", None)
    if prompt is None:  # a kvlab.traces.SizedRequest: lengths only
        return None
    if isinstance(prompt, str):
        if tokenizer is None:
            raise ValueError(f"request {index} has a text prompt: pass the tokenizer to count its tokens")
        return tokenizer.encode(prompt)
    return list(prompt)


def timed_trace_entries(requests, block_size: int = 16, tokenizer=None) -> list[TimedTraceEntry]:
    """One entry per request (a kvlab Request, a dict of its keys, or a kvlab.traces.SizedRequest), hash ids
    numbered 0, 1, … in order of first appearance: block j of two prompts gets the same id exactly when both
    prompts agree on blocks 0..j (a SizedRequest's blocks are its own)."""
    check_block_size(block_size)
    ids_of: dict[tuple, int] = {}
    entries, last = [], 0.0
    for i, request in enumerate(requests):
        if isinstance(request, dict):
            request = Request.of(request, i)
        prompt = _prompt_ids(request, i, tokenizer)
        length = len(prompt) if prompt is not None else request.prompt_len
        if request.arrival_s < last:
            raise ValueError(f"request {i} arrives at {request.arrival_s} s, before request {i - 1} ({last} s): "
                             f"vLLM sends a timed trace in file order, so sort the requests by arrival")
        last = request.arrival_s
        hashes, parent = [], None
        for start in range(0, length, block_size):
            if prompt is None:
                key = ("sized", i, start)
            else:
                parent = chain_hash(parent, prompt[start:start + block_size])
                key = ("chain", parent)
            hashes.append(ids_of.setdefault(key, len(ids_of)))
        entries.append(TimedTraceEntry(request.arrival_s, length, request.max_new_tokens, tuple(hashes)))
    if not entries:
        raise ValueError("the trace is empty")
    return entries


def save_timed_trace(path, requests, block_size: int = 16, tokenizer=None) -> pathlib.Path:
    """Write the requests as a timed_trace JSONL file (see timed_trace_entries)."""
    entries = timed_trace_entries(requests, block_size, tokenizer)
    path = pathlib.Path(path)
    path.write_text("".join(json.dumps(e.as_json()) + "\n" for e in entries))
    return path


def load_timed_trace(path, block_size: int | None = None) -> list[TimedTraceEntry]:
    """The entries of a timed_trace JSONL file, checked as vLLM will read them: every field present, numbers finite
    and not negative, lengths whole and ≥ 1, timestamps in order, and (given block_size, vLLM's chunk size) enough
    hash ids for input_length — vLLM would send a shorter prompt otherwise. ValueError names the line and field."""
    entries, last = [], 0.0
    for n, text in enumerate(pathlib.Path(path).read_text().splitlines(), 1):
        if not text.strip():
            continue
        try:
            entry = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"timed_trace line {n} is not JSON: {error}") from None
        if not isinstance(entry, dict):
            raise ValueError(f"timed_trace line {n} is {entry!r:.80}, not a JSON object")
        missing = [f for f in FIELDS if f not in entry]
        if missing:
            raise ValueError(f"timed_trace line {n} has no {', '.join(missing)} "
                             f"(it has {', '.join(entry) or 'nothing'})")
        where = f"timed_trace line {n}:"
        timestamp = non_negative_number(f"{where} timestamp", entry["timestamp"])
        lengths = [non_negative_number(f"{where} {f}", entry[f], whole=True) for f in ("input_length", "output_length")]
        for name, value in zip(("input_length", "output_length"), lengths):
            if value < 1:
                raise ValueError(f"timed_trace line {n}: {name} must be at least 1, got {value}")
        hash_ids = entry["hash_ids"]
        if not isinstance(hash_ids, list):
            raise ValueError(f"timed_trace line {n}: hash_ids must be a list, got {hash_ids!r:.80}")
        hash_ids = tuple(non_negative_number(f"{where} hash_ids", h, whole=True) for h in hash_ids)
        if block_size is not None and len(hash_ids) < math.ceil(lengths[0] / block_size):
            raise ValueError(f"timed_trace line {n}: {len(hash_ids)} hash_ids cover {len(hash_ids) * block_size} "
                             f"tokens at chunk size {block_size}, under input_length {lengths[0]}")
        if timestamp < last:
            raise ValueError(f"timed_trace line {n}: timestamp {timestamp} is before the line above's ({last}); "
                             f"vLLM sends lines in order, so it would go late")
        last = timestamp
        entries.append(TimedTraceEntry(timestamp, lengths[0], lengths[1], hash_ids))
    if not entries:
        raise ValueError(f"{path} holds no timed_trace entries")
    return entries


def bench_command(path, num_requests: int, block_size: int = 16, model: str = MODEL,
                  base_url: str = "http://127.0.0.1:8000", result_dir=".", result_filename: str = "vllm_bench.json",
                  client_flags=()) -> list[str]:
    """The `vllm bench serve` argv that replays a timed_trace file at its own times and saves a result JSON with the
    median and p99 of TTFT, TPOT, ITL and end-to-end latency. client_flags: VllmMapping.bench_flags()
    (temperature, top_p); --ignore-eos is timed_trace's own."""
    return ["vllm", "bench", "serve", "--backend", "openai", "--base-url", base_url, "--endpoint", "/v1/completions",
            "--model", model, "--tokenizer", model, "--dataset-name", "timed_trace", "--dataset-path", str(path),
            "--num-prompts", str(num_requests), "--timed-trace-chunk-hash-size", str(check_block_size(block_size)),
            "--timed-trace-sec-multiplier", "1", "--self-timed", "--ignore-eos",
            "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,99",
            "--save-result", "--result-dir", str(result_dir), "--result-filename", result_filename,
            *[f for f in client_flags if f != "--ignore-eos"]]
