"""The bridge to vLLM: kvlab's serving configuration as vLLM engine arguments and `vllm serve` flags (args, with
one handler a knob in knobs), a kvlab trace as a dataset `vllm bench serve` replays with the same arrival times
(trace_export), a `vllm bench serve` result read into kvlab's metric names (result_import), and the replay itself
on a machine with vLLM and a GPU (replay.run_if_available: what `make gpu-check` calls). Nothing here imports vLLM
unless it runs it."""
from .args import MODEL, Row, VllmMapping, flag, map_config, parse_flags
from .result_import import VllmResult, load_result, read_result
from .trace_export import TimedTraceEntry, bench_command, load_timed_trace, save_timed_trace, timed_trace_entries

__all__ = ["MODEL", "Row", "VllmMapping", "flag", "map_config", "parse_flags", "VllmResult", "load_result",
           "read_result", "TimedTraceEntry", "bench_command", "load_timed_trace", "save_timed_trace",
           "timed_trace_entries"]
