"""The bridge to vLLM: every kvlab knob mapped to a vLLM engine argument or noted, the values converted, the flags
read back (by vLLM's own parser where vLLM is installed), a trace exported as vLLM's timed_trace with the same
arrival times and lengths, a `vllm bench serve` result read into kvlab's names — and bad input named. The replay
runs against a stand-in for the `vllm` command line: its server is stopped however the replay ends (SIGTERM too),
and a result with failed requests is refused.

The result fixture tests/data/vllm_bench_serve_result.json has the fields vllm/benchmarks/serve.py writes with
--save-result and `--percentile-metrics ttft,tpot,itl,e2el --metric-percentiles 50,99` (without --save-detailed);
its numbers are invented. No model is loaded here."""
from __future__ import annotations

import inspect
import json
import os
import pathlib
import shlex
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from kvlab import traces
from kvlab.cache import LAYOUT_OPTIONS
from kvlab.engine import Request, ServeResult, StepClock, serve
from kvlab.memory import GiB, kv_bytes_per_token
from kvlab.viz.vllm_figures import KIND_COLOURS, NO_VLLM, comparison_figure, mapping_table_html
from kvlab.vllm import flag, load_result, load_timed_trace, map_config, parse_flags, read_result, save_timed_trace
from kvlab.vllm.args import knob_defaults
from kvlab.vllm.knobs import KINDS
from kvlab.vllm import replay as replay_module
from kvlab.vllm.replay import (GPU_CONFIG, GPU_TRACE, checkpoint_missing, free_port, replay, replay_commands,
                               run_if_available, vllm_installed)
from kvlab.vllm.trace_export import bench_command, timed_trace_entries

FIXTURE = pathlib.Path(__file__).parent / "data" / "vllm_bench_serve_result.json"
NOTEBOOK_08_GPU = GPU_CONFIG | {"num_blocks": 5248, "block_size": 16}  # section 2 on a GPU, the pool kvlab sized
CONFIGS = {
    "notebook 08 on a GPU": NOTEBOOK_08_GPU,
    "prefix cache, small pool": {"cache": "prefix", "block_size": 16, "num_blocks": 512, "max_num_seqs": 8,
                                 "max_num_batched_tokens": 256},
    "int8 KV, ngram drafts": {"cache": "quantized", "scheme": "int8", "speculative": "ngram",
                              "num_speculative_tokens": 5, "speculative_options": {"min_n": 2, "max_n": 4}},
    "prefix cache over a 4 GiB tier, seeded": {"cache": "prefix", "tier": 4 * GiB, "seed": 7, "block_size": 32},
}


# --- the mapping --------------------------------------------------------------------------------------------

def test_every_knob_of_kvlab_serve_and_its_layouts_is_mapped_or_noted():
    params = {name for name, p in inspect.signature(serve).parameters.items()
              if name not in ("model", "tokenizer", "requests") and p.kind is not p.VAR_KEYWORD}
    options = {name for layout in LAYOUT_OPTIONS.values() for name in layout}
    rows = map_config().rows
    assert {r.knob for r in rows} == params | options | {"chunked_prefill"} == set(knob_defaults())
    for r in rows:
        assert r.kind in KINDS and r.note.strip(), r


def test_notebook_08s_gpu_configuration_becomes_the_engine_args_it_means():
    args = map_config(NOTEBOOK_08_GPU, dtype="bfloat16").engine_args()
    assert args == {"enable_prefix_caching": False, "block_size": 16, "num_gpu_blocks_override": 5248 + 1,
                    "kv_cache_dtype": "auto", "max_num_seqs": GPU_CONFIG["max_num_seqs"],
                    "max_num_batched_tokens": GPU_CONFIG["max_num_batched_tokens"], "enable_chunked_prefill": True,
                    "scheduling_policy": "fcfs", "dtype": "bfloat16"}
    assert map_config(NOTEBOOK_08_GPU).bench_flags() == ["--temperature", "0.0", "--ignore-eos"]


def test_prefix_caching_is_on_for_the_prefix_layout_and_off_for_the_plain_pool():
    assert map_config({"cache": "prefix"}).engine_args()["enable_prefix_caching"] is True
    assert map_config({"cache": "paged"}).engine_args()["enable_prefix_caching"] is False


@pytest.mark.parametrize("scheme, group, dtype, kind", [
    ("int8", None, "int8_per_token_head", "same"), ("int8", 16, "int8_per_token_head", "differs"),
    ("fp8", None, "fp8_per_token_head", "same"), ("int4", None, "int4_per_token_head", "differs"),
    ("int4", 64, "int4_per_token_head", "same")])
def test_kv_quantization_schemes_become_vllms_per_token_head_dtypes(scheme, group, dtype, kind):
    mapping = map_config({"cache": "quantized", "scheme": scheme, "group_size": group})
    assert mapping.engine_args()["kv_cache_dtype"] == dtype
    assert mapping.row("scheme").kind == kind  # a group finer than SmolLM2's 64-channel head is vLLM-coarser


def test_ngram_speculation_becomes_a_speculative_config_with_the_same_k_and_match_lengths():
    spec = map_config(CONFIGS["int8 KV, ngram drafts"]).engine_args()["speculative_config"]
    assert spec == {"method": "ngram", "num_speculative_tokens": 5, "prompt_lookup_max": 4, "prompt_lookup_min": 2}


def test_pool_size_is_exact_as_a_block_count_plus_vllms_null_block_and_a_memory_share_as_a_share():
    mapping = map_config({"num_blocks": 1000})
    assert mapping.engine_args()["num_gpu_blocks_override"] == 1001  # vLLM's BlockPool never hands out block 0
    assert "null block" in mapping.row("num_blocks").note
    total, weights = 80 * GiB, 270_000_000
    share = map_config({"num_blocks": 1000}, pool_as="gpu_memory_utilization", gpu_memory_bytes=total,
                       weight_bytes=weights).engine_args()["gpu_memory_utilization"]
    expected = (weights + 1001 * 16 * kv_bytes_per_token("SmolLM2-135M", "bfloat16")) / total
    assert expected <= share < expected + 1e-4
    with pytest.raises(ValueError, match="num_blocks=10000000"):
        map_config({"num_blocks": 10_000_000}, pool_as="gpu_memory_utilization", gpu_memory_bytes=total,
                   weight_bytes=weights)


def test_a_tier_below_the_pool_becomes_vllms_offloading_size_in_gib():
    args = map_config(CONFIGS["prefix cache over a 4 GiB tier, seeded"]).engine_args()
    assert (args["kv_offloading_size"], args["kv_offloading_backend"], args["seed"]) == (4.0, "native", 7)


@pytest.mark.parametrize("name", CONFIGS)
def test_serve_flags_read_back_as_the_same_engine_args(name):
    mapping = map_config(CONFIGS[name], dtype="bfloat16", max_model_len=4096)
    assert parse_flags(mapping.serve_flags()) == mapping.engine_args()
    argv = shlex.split(mapping.serve_command())
    assert argv[:3] == ["vllm", "serve", mapping.model] and parse_flags(argv[3:]) == mapping.engine_args()


@pytest.mark.parametrize("name", CONFIGS)
def test_serve_flags_parse_with_vllms_own_argument_parser(name):
    pytest.importorskip("vllm")
    from vllm.engine.arg_utils import EngineArgs
    try:
        from vllm.utils.argparse_utils import FlexibleArgumentParser
    except ImportError:
        from vllm.utils import FlexibleArgumentParser
    mapping = map_config(CONFIGS[name], dtype="bfloat16", max_model_len=4096)
    parsed = EngineArgs.from_cli_args(EngineArgs.add_cli_args(FlexibleArgumentParser()).parse_args(
        ["--model", mapping.model, *mapping.serve_flags()]))
    for arg, value in mapping.engine_args().items():
        assert getattr(parsed, arg) == value, arg


@pytest.mark.parametrize("knob, value, words", [
    ("policy", "static", "request-level"), ("preemption", "swap", "swaps"), ("cache", "contiguous", "paged"),
    ("speculative", "self", "own layers"), ("clock", StepClock(), "wall clock"),
    ("progress", True, "progress"), ("temperature", 0.7, "benchmark client")])
def test_a_knob_with_no_vllm_flag_asked_for_as_one_is_refused_naming_it(knob, value, words):
    with pytest.raises(ValueError) as error:
        flag(knob, value)
    message = str(error.value)
    assert knob in message and words in message
    assert (repr(value) if not isinstance(value, StepClock) else "StepClock") in message


def test_engine_args_refuse_every_knob_vllm_cannot_serve_and_the_table_still_shows_them():
    mapping = map_config({"policy": "static", "cache": "quantized", "scheme": "kivi2"})
    with pytest.raises(ValueError, match=r"scheme='kivi2'.*policy='static'"):
        mapping.engine_args()
    assert {r["kvlab knob"] for r in mapping.table() if r["kind"] == "none"} == {"policy", "scheme"}
    drawn = mapping_table_html(mapping.table())
    assert drawn.count(f"color:{KIND_COLOURS['none']}") == 2 and drawn.count("<tr>") == len(mapping.rows) + 1
    assert flag("max_num_seqs", 4) == ["--max-num-seqs", "4"]


@pytest.mark.parametrize("config, named", [
    ({"blok_size": 16}, "blok_size"), ({"block_size": 12}, "block_size"),
    ({"chunked_prefill": False}, "chunked_prefill"), ({"max_num_seqs": 0}, "max_num_seqs"),
    ({"policy": "fifo"}, "fifo"),
    ({"cache": "quantized", "group_size": 12}, "group_size 12"),
    ({"cache": "quantized", "scheme": "int4", "group_size": 7}, "group_size 7"),
    ({"cache": "quantized", "scheme": "int3"}, "int3"), ({"group_size": 16}, "group_size"),
    ({"seed": "abc"}, "seed"), ({"temperature": -1}, "temperature"), ({"temperature": "hot"}, "temperature"),
    ({"top_p": 0}, "top_p"), ({"speculative_options": {"max_m": 2}, "speculative": "ngram"}, "max_m"),
    ({"speculative_options": {"min_n": 2}}, "speculative="),
    ({"speculative": "ngram", "speculative_options": {"min_n": 4, "max_n": 2}}, "min_n=4")])
def test_a_bad_knob_or_value_is_refused_as_kvlab_refuses_it_naming_it(config, named):
    with pytest.raises(ValueError, match=named):
        map_config(config)


@pytest.mark.parametrize("options, named", [({"gpu_memory_bytes": 0, "weight_bytes": 1}, "gpu_memory_bytes"),
                                            ({"gpu_memory_bytes": GiB, "weight_bytes": -1}, "weight_bytes")])
def test_byte_counts_must_be_positive_integers(options, named):
    with pytest.raises(ValueError, match=named):
        map_config({"num_blocks": 8}, pool_as="gpu_memory_utilization", **options)


def test_asking_for_an_unknown_knobs_row_names_it():
    with pytest.raises(ValueError, match="'blok'"):
        map_config().row("blok")


# --- the trace ----------------------------------------------------------------------------------------------

def prompts_sharing_a_prefix() -> list[Request]:
    shared, other = list(range(100, 140)), list(range(500, 520))
    return [Request(shared, 8, 0.0), Request(shared[:32] + [7] * 9, 5, 0.25), Request(other, 3, 1.5),
            Request(shared, 2, 1.5)]


def test_a_trace_read_back_has_the_same_lengths_and_arrival_times(tmp_path):
    requests = prompts_sharing_a_prefix()
    path = save_timed_trace(tmp_path / "trace.jsonl", requests, block_size=16)
    entries = load_timed_trace(path, block_size=16)
    assert [(e.timestamp, e.input_length, e.output_length) for e in entries] == \
        [(r.arrival_s, len(r.prompt), r.max_new_tokens) for r in requests]
    assert [json.loads(line) for line in path.read_text().splitlines()][0].keys() == \
        {"timestamp", "input_length", "output_length", "hash_ids"}


def test_hash_ids_repeat_exactly_where_the_prompts_share_leading_blocks(tmp_path):
    requests = prompts_sharing_a_prefix()
    entries = load_timed_trace(save_timed_trace(tmp_path / "t.jsonl", requests, 16), 16)
    assert [e.hash_ids for e in entries] == [(0, 1, 2), (0, 1, 3), (4, 5), (0, 1, 2)]

    def leading_equal(a, b):
        return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))

    def chunks(prompt):
        return [tuple(prompt[i:i + 16]) for i in range(0, len(prompt), 16)]

    for a, ea in zip(requests, entries):
        assert len(ea.hash_ids) == len(chunks(a.prompt))  # vLLM's prompt comes out input_length long
        for b, eb in zip(requests, entries):  # equal ids exactly as far as the chunks are equal from the start
            assert leading_equal(ea.hash_ids, eb.hash_ids) == leading_equal(chunks(a.prompt), chunks(b.prompt))


def test_a_chat_trace_keeps_its_poisson_arrivals():
    sized = traces.chat_requests(None, 30, seed=2, rate_per_s=3.0)
    entries = timed_trace_entries(sized, 16)
    assert [e.timestamp for e in entries] == traces.arrival_times(30, 3.0, seed=2)
    assert [e.input_length for e in entries] == [s.prompt_len for s in sized]
    assert len({h for e in entries for h in e.hash_ids}) == sum(len(e.hash_ids) for e in entries)  # no sharing


def test_the_bench_command_replays_the_file_at_its_own_times():
    argv = bench_command("t.jsonl", 4, block_size=32, client_flags=["--temperature", "0.0", "--ignore-eos"])
    pairs = dict(zip(argv, argv[1:]))
    assert pairs["--dataset-name"] == "timed_trace" and pairs["--timed-trace-chunk-hash-size"] == "32"
    assert pairs["--timed-trace-sec-multiplier"] == "1" and pairs["--num-prompts"] == "4"
    assert "--self-timed" in argv and argv.count("--ignore-eos") == 1
    if vllm_installed():
        from vllm.benchmarks.serve import add_cli_args
        try:
            from vllm.utils.argparse_utils import FlexibleArgumentParser
        except ImportError:
            from vllm.utils import FlexibleArgumentParser
        parser = FlexibleArgumentParser()
        add_cli_args(parser)
        parsed = parser.parse_args(argv[3:])
        assert (parsed.dataset_name, parsed.timed_trace_chunk_hash_size, parsed.self_timed) == ("timed_trace", 32, True)


@pytest.mark.parametrize("line, named", [
    ({"input_length": 16, "output_length": 4, "hash_ids": [0]}, "timestamp"),
    ({"timestamp": -0.5, "input_length": 16, "output_length": 4, "hash_ids": [0]}, "timestamp is -0.5"),
    ({"timestamp": 0, "input_length": 16, "output_length": -4, "hash_ids": [0]}, "output_length is -4"),
    ({"timestamp": 0, "input_length": 16, "output_length": 0, "hash_ids": [0]}, "output_length"),
    ({"timestamp": 0, "input_length": 40, "output_length": 4, "hash_ids": [0, 1]}, "input_length 40"),
    ({"timestamp": 0, "input_length": 16, "output_length": 4, "hash_ids": [-3]}, "hash_ids is -3"),
    ({"timestamp": "soon", "input_length": 16, "output_length": 4, "hash_ids": [0]}, "timestamp")])
def test_a_trace_file_with_a_missing_or_negative_field_is_refused_naming_it(tmp_path, line, named):
    path = tmp_path / "bad.jsonl"
    good = {"timestamp": 0, "input_length": 16, "output_length": 1, "hash_ids": [9]}
    path.write_text(json.dumps(good) + "\n" + json.dumps(line) + "\n")
    with pytest.raises(ValueError, match="line 2") as error:
        load_timed_trace(path, block_size=16)
    assert named in str(error.value)


def test_out_of_order_arrivals_are_refused_on_export_naming_the_request():
    with pytest.raises(ValueError, match="request 1 arrives at 0.5 s"):
        timed_trace_entries([Request([1, 2], 2, 1.0), Request([3, 4], 2, 0.5)])


# --- the result ---------------------------------------------------------------------------------------------

def test_a_vllm_result_reads_into_kvlabs_metric_names_and_seconds():
    raw = json.loads(FIXTURE.read_text())
    result = load_result(FIXTURE)
    m = result.metrics
    assert m["ttft_p50_s"] == raw["p50_ttft_ms"] / 1e3 and m["ttft_p99_s"] == raw["p99_ttft_ms"] / 1e3
    assert m["tpot_p50_s"] == raw["median_tpot_ms"] / 1e3 and m["itl_p99_s"] == raw["p99_itl_ms"] / 1e3
    assert m["e2e_p50_s"] == raw["median_e2el_ms"] / 1e3
    assert (m["throughput_tok_s"], m["requests"], m["output_tokens"], m["duration_s"]) == (80.0, 4, 200, 2.5)
    kvlab_names = ServeResult([], [], "continuous", "paged", 8, 256, None, None, "wall", 0.0).metrics()
    shared = {"requests", "output_tokens", "duration_s", "throughput_tok_s", "ttft_p50_s", "ttft_p99_s",
              "tpot_p50_s", "tpot_p99_s", "itl_p50_s", "itl_p99_s", "e2e_p50_s"}
    assert shared <= set(m) & set(kvlab_names)
    assert result.meta["model_id"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and "vLLM" in result.summary()


def test_a_result_with_the_default_percentiles_only_still_reads():
    raw = {k: v for k, v in json.loads(FIXTURE.read_text()).items() if not k.startswith("p50_") and "e2el" not in k}
    m = read_result(raw).metrics
    assert m["ttft_p50_s"] == raw["median_ttft_ms"] / 1e3 and "e2e_p50_s" not in m


@pytest.mark.parametrize("change, named", [
    ({"mean_ttft_ms": None}, "'mean_ttft_ms'"), ({"p99_itl_ms": -3.0}, "p99_itl_ms is -3.0"),
    ({"median_tpot_ms": float("nan")}, "median_tpot_ms is nan"), ({"duration": "2.5"}, "duration is '2.5'"),
    ({"completed": 0}, "completed is 0"), ({"total_output_tokens": 12.5}, "total_output_tokens is 12.5"),
    ({"mean_e2el_ms": None}, "'mean_e2el_ms'")])  # e2el is optional, but not one statistic without the others
def test_a_result_with_a_missing_or_bad_field_is_refused_naming_it(tmp_path, change, named):
    raw = json.loads(FIXTURE.read_text())
    for key, value in change.items():
        if value is None:
            del raw[key]
        else:
            raw[key] = value
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(ValueError) as error:
        load_result(path)
    assert named in str(error.value)


# --- the figure and the replay ------------------------------------------------------------------------------

def test_the_comparison_draws_kvlab_alone_with_the_note_when_no_vllm_run_is_recorded():
    kvlab = {"ttft_p50_s": 0.5, "ttft_p99_s": 2.0, "tpot_p50_s": 0.03, "tpot_p99_s": 0.05, "itl_p50_s": 0.03,
             "itl_p99_s": 0.2, "throughput_tok_s": 90.0}
    alone = comparison_figure(kvlab)
    assert {t.name for t in alone.data} == {"kvlab"} and NO_VLLM in alone.layout.title.text
    both = comparison_figure(kvlab, load_result(FIXTURE).metrics, vllm_label="vLLM (fixture)")
    assert {t.name for t in both.data} == {"kvlab", "vLLM (fixture)"}
    assert list(both.data[2].y) == pytest.approx([48, 70, 12, 16, 11.5, 21])


# A stand-in for the `vllm` command line: `serve` answers /health on its --port (and ignores SIGTERM, as a server
# slow to stop), `bench serve` writes the fixture as its result — all requests done, one failed, or it hangs.
FAKE_VLLM = r"""
import http.server, json, os, pathlib, signal, sys, time
args = sys.argv[1:]
state = pathlib.Path(os.environ["FAKE_VLLM_STATE"])
def arg(name):
    return args[args.index(name) + 1]
if args[0] == "serve":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    (state / "server.pid").write_text(str(os.getpid()))
    (state / "server.env").write_text(os.environ.get("HF_HUB_OFFLINE", "unset"))
    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/health" else 404)
            self.end_headers()
        def log_message(self, *_):
            pass
    http.server.HTTPServer((arg("--host"), int(arg("--port"))), Health).serve_forever()
mode = os.environ["FAKE_VLLM_BENCH"]
if mode == "hang":
    (state / "bench.started").write_text("")
    time.sleep(600)
n = int(arg("--num-prompts"))
result = json.loads(pathlib.Path(os.environ["FAKE_VLLM_RESULT"]).read_text())
result |= {"completed": n - (mode == "fail"), "failed": int(mode == "fail")}
pathlib.Path(arg("--result-dir"), arg("--result-filename")).write_text(json.dumps(result))
"""
SMALL_POOL = {"cache": "paged", "num_blocks": 64, "block_size": 16}


def fake_vllm(tmp_path, monkeypatch, bench: str) -> pathlib.Path:
    script = tmp_path / "fake_vllm.py"
    script.write_text(FAKE_VLLM)
    monkeypatch.setenv("FAKE_VLLM_STATE", str(tmp_path))
    monkeypatch.setenv("FAKE_VLLM_BENCH", bench)
    monkeypatch.setenv("FAKE_VLLM_RESULT", str(FIXTURE))
    monkeypatch.setattr(replay_module, "VLLM_CLI", [sys.executable, str(script)])
    monkeypatch.setattr(replay_module, "vllm_installed", lambda: True)
    monkeypatch.setattr(replay_module, "STOP_GRACE_S", 0.5)
    return script


def small_replay(tmp_path):
    trace = save_timed_trace(tmp_path / "trace.jsonl", prompts_sharing_a_prefix(), 16)
    return replay_commands(SMALL_POOL, trace, 2048, free_port(), tmp_path / "out")


def server_gone(tmp_path) -> bool:
    try:
        os.kill(int((tmp_path / "server.pid").read_text()), 0)
    except ProcessLookupError:
        return True
    return False


def test_the_replays_commands_serve_with_max_model_len_and_replay_the_written_file(tmp_path):
    commands = small_replay(tmp_path)
    serve, bench = dict(zip(commands.serve, commands.serve[1:])), dict(zip(commands.bench, commands.bench[1:]))
    assert serve["--max-model-len"] == str(64 * 16) and serve["--port"] == str(commands.port)
    assert serve["--num-gpu-blocks-override"] == "65"
    assert bench["--dataset-path"] == str(tmp_path / "trace.jsonl") and bench["--num-prompts"] == "4"
    assert bench["--base-url"] == f"http://127.0.0.1:{commands.port}"
    assert commands.result_path == tmp_path / "out" / "vllm_bench.json"
    assert str(commands).splitlines() == [shlex.join(commands.serve), shlex.join(commands.bench)]


@pytest.mark.parametrize("bench, refused", [("ok", None),
                                            ("fail", "completed 3 of the trace's 4 requests and 1 failed")])
def test_a_replay_reads_the_result_offline_refuses_failed_requests_and_stops_its_server(tmp_path, monkeypatch,
                                                                                        bench, refused):
    fake_vllm(tmp_path, monkeypatch, bench)
    commands = small_replay(tmp_path)
    if refused:
        with pytest.raises(RuntimeError, match=refused):
            replay(commands)
    else:
        assert replay(commands).metrics["requests"] == 4
    assert (tmp_path / "server.env").read_text() == "1"  # HF_HUB_OFFLINE: the server downloads nothing
    assert server_gone(tmp_path)  # stopped by SIGKILL: the fake ignores SIGTERM


def test_a_replay_with_no_time_left_before_its_deadline_starts_no_server(tmp_path, monkeypatch):
    fake_vllm(tmp_path, monkeypatch, "ok")
    with pytest.raises(RuntimeError, match="no time left for `vllm serve` to start"):
        replay(small_replay(tmp_path), deadline=time.monotonic() + replay_module.STOP_GRACE_S)
    assert not (tmp_path / "server.pid").exists()


def test_a_replay_stopped_by_sigterm_stops_its_server_too(tmp_path, monkeypatch):
    script = fake_vllm(tmp_path, monkeypatch, "hang")
    small_replay(tmp_path)  # the trace file
    child = ("import pathlib, sys; from kvlab.vllm import replay as r; "
             f"r.VLLM_CLI = [sys.executable, {str(script)!r}]; r.vllm_installed = lambda: True; r.STOP_GRACE_S = 0.5; "
             f"p = pathlib.Path({str(tmp_path)!r}); "
             f"r.replay(r.replay_commands({SMALL_POOL!r}, p / 'trace.jsonl', 2048, r.free_port(), p / 'out'))")
    process = subprocess.Popen([sys.executable, "-c", child], start_new_session=True)  # as gpu-check runs a step
    try:
        for _ in range(600):
            if (tmp_path / "bench.started").exists() or process.poll() is not None:
                break
            time.sleep(0.1)
        assert process.poll() is None, "the replay ended before its benchmark started"
        os.killpg(process.pid, signal.SIGTERM)  # gpu-check at the step's limit: the server is in another session
        assert process.wait(timeout=30) == 128 + signal.SIGTERM
    finally:
        if process.poll() is None:
            process.kill()
    assert server_gone(tmp_path)


def test_a_stale_server_answering_on_the_port_is_not_taken_for_the_one_started(tmp_path):
    class Health(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()

        def log_message(self, *_):
            pass

    class ExitedServer:  # running at the first look, exited by the time /health answers
        returncode = 1

        def __init__(self):
            self.looks = iter([None, 1])

        def poll(self):
            return next(self.looks, 1)

    stale = ThreadingHTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=stale.serve_forever, daemon=True).start()
    try:
        with pytest.raises(RuntimeError, match="another server"):
            replay_module._wait_healthy(ExitedServer(), f"http://127.0.0.1:{stale.server_port}/health",
                                        tmp_path / "log", 10)
    finally:
        stale.shutdown()


def test_a_checkpoint_not_in_the_hugging_face_cache_is_named():
    reason = checkpoint_missing("kvlab-tests/no-such-checkpoint")
    assert reason is not None and ("kvlab-tests/no-such-checkpoint" in reason or "huggingface_hub" in reason)


@pytest.mark.skipif(vllm_installed(), reason="vLLM is installed here")
def test_without_vllm_the_replay_is_skipped_and_asked_for_says_how_to_get_it(tmp_path):
    assert run_if_available(tmp_path, timeout_s=60) is None
    with pytest.raises(RuntimeError, match="vLLM is not installed"):
        replay(small_replay(tmp_path))


@pytest.mark.skipif(replay_module.unavailable() is not None, reason="needs vLLM, a CUDA device and the checkpoint "
                    "(make gpu-check)")
def test_a_short_trace_replays_through_vllm_beside_kvlab(tmp_path):
    report = run_if_available(tmp_path, num_requests=8, work_dir=tmp_path / "work", timeout_s=600)
    assert report["vllm"]["requests"] == report["kvlab"]["requests"] == 8
    assert report["vllm"]["output_tokens"] == report["kvlab"]["output_tokens"]  # --ignore-eos: every length exact
    assert report["versions"]["vllm"] and report["trace"]["num_requests"] == 8 != GPU_TRACE["num_requests"]
