"""The bridge to vLLM: every kvlab knob mapped to a vLLM engine argument or noted, the values converted, the flags
read back (by vLLM's own parser where vLLM is installed), a trace exported as vLLM's timed_trace with the same
arrival times and lengths, a `vllm bench serve` result read into kvlab's names — and bad input named.

The result fixture tests/data/vllm_bench_serve_result.json has the fields vllm/benchmarks/serve.py writes with
--save-result and `--percentile-metrics ttft,tpot,itl,e2el --metric-percentiles 50,99` (without --save-detailed);
its numbers are invented. No model is loaded here."""
from __future__ import annotations

import inspect
import json
import math
import pathlib
import shlex

import pytest

from kvlab import traces
from kvlab.cache import LAYOUT_OPTIONS, chain_hash
from kvlab.engine import Request, ServeResult, StepClock, serve
from kvlab.memory import GiB, kv_bytes_per_token
from kvlab.viz.vllm_figures import KIND_COLOURS, NO_VLLM, comparison_figure, mapping_table_html
from kvlab.vllm import flag, load_result, load_timed_trace, map_config, parse_flags, read_result, save_timed_trace
from kvlab.vllm.args import knob_defaults
from kvlab.vllm.knobs import KINDS
from kvlab.vllm.replay import GPU_CONFIG, replay, run_if_available, vllm_available, vllm_installed
from kvlab.vllm.trace_export import bench_command, timed_trace_entries

FIXTURE = pathlib.Path(__file__).parent / "data" / "vllm_bench_serve_result.json"
NOTEBOOK_08_GPU = GPU_CONFIG | {"num_blocks": 5248}  # section 2 on a GPU, with the pool kvlab sized
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
    assert args == {"enable_prefix_caching": False, "block_size": 16, "num_gpu_blocks_override": 5248,
                    "kv_cache_dtype": "auto", "max_num_seqs": 64, "max_num_batched_tokens": 2048,
                    "enable_chunked_prefill": True, "scheduling_policy": "fcfs", "dtype": "bfloat16"}
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


def test_pool_size_is_exact_as_a_block_count_and_a_memory_share_as_a_share():
    assert map_config({"num_blocks": 1000}).engine_args()["num_gpu_blocks_override"] == 1000
    total, weights = 80 * GiB, 270_000_000
    share = map_config({"num_blocks": 1000}, pool_as="gpu_memory_utilization", gpu_memory_bytes=total,
                       weight_bytes=weights).engine_args()["gpu_memory_utilization"]
    expected = (weights + 1000 * 16 * kv_bytes_per_token("SmolLM2-135M", "bfloat16")) / total
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


@pytest.mark.parametrize("config, named", [({"blok_size": 16}, "blok_size"), ({"block_size": 12}, "block_size"),
                                           ({"chunked_prefill": False}, "chunked_prefill"),
                                           ({"max_num_seqs": 0}, "max_num_seqs"), ({"policy": "fifo"}, "fifo")])
def test_a_bad_knob_or_value_is_named(config, named):
    with pytest.raises(ValueError, match=named):
        map_config(config)


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
    ({"timestamp": -0.5, "input_length": 16, "output_length": 4, "hash_ids": [0]}, "timestamp -0.5"),
    ({"timestamp": 0, "input_length": 16, "output_length": -4, "hash_ids": [0]}, "output_length -4"),
    ({"timestamp": 0, "input_length": 16, "output_length": 0, "hash_ids": [0]}, "output_length"),
    ({"timestamp": 0, "input_length": 40, "output_length": 4, "hash_ids": [0, 1]}, "input_length 40"),
    ({"timestamp": 0, "input_length": 16, "output_length": 4, "hash_ids": [-3]}, "hash_ids -3"),
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
    ({"completed": 0}, "completed is 0"), ({"total_output_tokens": 12.5}, "total_output_tokens is 12.5")])
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


@pytest.mark.skipif(vllm_installed(), reason="vLLM is installed here")
def test_without_vllm_the_replay_is_skipped_and_asked_for_says_how_to_get_it(tmp_path):
    assert run_if_available(tmp_path) is None
    with pytest.raises(RuntimeError, match="vLLM is not installed"):
        replay(tmp_path / "t.jsonl", map_config(), 1, tmp_path)


@pytest.mark.skipif(not vllm_available(), reason="needs vLLM and a CUDA device (make gpu-check)")
def test_a_short_trace_replays_through_vllm_beside_kvlab(tmp_path):
    report = run_if_available(tmp_path, num_requests=8, work_dir=tmp_path / "work")
    assert report["vllm"]["requests"] == report["kvlab"]["requests"] == 8
    assert report["vllm"]["output_tokens"] == report["kvlab"]["output_tokens"]  # --ignore-eos: every length exact
