"""versus-llamacpp: kvlab's CPU decode against llama.cpp's on the same GGUF file. The fast tests need no
llama-cpp-python (a fake engine stands in); the live one runs where `make bench-deps` installed it."""
from __future__ import annotations

import json
import pathlib
import sys
from types import SimpleNamespace

import pytest

from kvlab.bench import llamacpp_engine, versus_llamacpp
from kvlab.bench.llamacpp_engine import TimedGeneration, f16_kv_bytes_per_token, gguf_weight_bytes_per_step
from kvlab.bench.results import save_result
from kvlab.bench.versus_llamacpp import (KVLAB_FUSED, KVLAB_PYTHON, LLAMACPP, compare_with_llamacpp, print_comparison,
                                         recorded_comparisons)

ROOT = pathlib.Path(__file__).resolve().parents[1]
PROMPT = "The capital of France is"


class FakeLlama:
    """Stands in for LlamaCppEngine: every token 7, first token after 0.1 s, then 10 ms a step."""
    version = "fake"

    def __init__(self):
        self.calls = []

    def generate(self, prompt_ids, batch, new_tokens):
        self.calls.append((batch, new_tokens))
        return TimedGeneration(0.1, 0.1 + 0.01 * (new_tokens - 1), [[7] * new_tokens for _ in range(batch)])


def test_missing_llama_cpp_says_to_run_make_bench_deps(monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import llama_cpp now raises ImportError
    with pytest.raises(ModuleNotFoundError, match="make bench-deps") as error:
        llamacpp_engine.import_llama_cpp()
    assert "10 min" in str(error.value) and "make test" in str(error.value)
    assert not llamacpp_engine.llama_cpp_available()


def test_the_command_line_exits_nonzero_with_the_install_hint(monkeypatch):
    from kvlab.bench.__main__ import main

    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    with pytest.raises(SystemExit, match="make bench-deps"):
        main(["versus-llamacpp", "--device", "cpu", "--no-save"])


@pytest.mark.parametrize("kwargs, named", [({"new_tokens": 1}, "new_tokens"), ({"runs": 0}, "runs"),
                                           ({"batches": (1, 0)}, "batches"), ({"batches": ()}, "batches")])
def test_bad_arguments_are_named_before_anything_runs(kwargs, named):
    with pytest.raises(ValueError, match=named):
        compare_with_llamacpp(object(), object(), "x", llama=FakeLlama(), **kwargs)


def test_llama_cpp_bytes_per_step_on_smollm2(model):
    # every tensor of the file as stored: the Q8_0 embedding is read whole as the tied lm_head
    assert gguf_weight_bytes_per_step(model_file()) == 96_576_768 == model.weight_bytes(rows=1)
    cfg = model.config
    assert (cfg.num_layers, cfg.num_kv_heads, cfg.head_dim) == (30, 3, 64)
    assert f16_kv_bytes_per_token(cfg) == 2 * 30 * 3 * 64 * 2 == 23_040


def model_file():
    from kvlab.model.gguf_file import find_model_file

    return find_model_file()


def test_first_difference_is_the_worst_sequence_of_the_batch():
    reference = [[1, 2, 3, 4], [1, 2, 3, 4]]
    assert versus_llamacpp._first_difference([[1, 2, 3, 4], [1, 2, 9, 4]], reference) == 2
    assert versus_llamacpp._first_difference(reference, reference) == 4


def test_no_recorded_result_is_an_empty_list(tmp_path):
    assert recorded_comparisons(tmp_path) == []


def test_report_rows_ratios_bounds_and_json_with_a_fake_llama(model, tokenizer, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(versus_llamacpp, "device_roofs", lambda device: SimpleNamespace(copy=SimpleNamespace(gb_per_s=10.0)))
    before = model.decode_reads_blocks, model.fused_decode
    fake = FakeLlama()
    report = compare_with_llamacpp(model, tokenizer, PROMPT, new_tokens=2, runs=2, batches=(1, 2), llama=fake)
    assert (model.decode_reads_blocks, model.fused_decode) == before  # the switches are put back
    kvlab = [KVLAB_FUSED, KVLAB_PYTHON] if model.can_fuse_decode else [KVLAB_PYTHON]
    assert [(r["engine"], r["batch"]) for r in report["rows"]] == [(n, b) for b in (1, 2) for n in [LLAMACPP, *kvlab]]
    assert fake.calls == [(1, 2), (2, 2)] * 3  # a warm-up at each batch, then the runs alternate
    rows = {(r["engine"], r["batch"]): r for r in report["rows"]}
    prompt_tokens = len(tokenizer.encode(PROMPT))
    for batch in (1, 2):
        llama = rows[LLAMACPP, batch]
        assert llama["decode_tok_s"] == pytest.approx(batch * 100)  # batch · 1 token / 10 ms
        assert llama["bytes_per_step"] == 96_576_768 + batch * 23_040 * (prompt_tokens + 1)  # one step, prompt + 1
        assert not llama["tokens_identical"] and llama["identical_before_first_difference"] == 0
        reference = rows[KVLAB_PYTHON, batch]
        assert reference["tokens_identical"] and reference["identical_before_first_difference"] == 2
        for r in (llama, reference):
            assert r["bound_tok_s"] == pytest.approx(batch * 10e9 / r["bytes_per_step"])
            assert r["fraction_of_bound"] == pytest.approx(r["decode_tok_s"] / r["bound_tok_s"])
            assert r["min_tok_s"] <= r["decode_tok_s"] <= r["max_tok_s"] and len(r["runs_tok_s"]) == 2
    ratio_engine = KVLAB_FUSED if model.can_fuse_decode else KVLAB_PYTHON
    assert report["ratio_engine"] == ratio_engine
    assert [r["batch"] for r in report["ratios"]] == [1, 2]
    for r in report["ratios"]:
        expected = rows[ratio_engine, r["batch"]]["decode_tok_s"] / rows[LLAMACPP, r["batch"]]["decode_tok_s"]
        assert r["kvlab_over_llamacpp"] == pytest.approx(expected)
        kvlab_runs, llama_runs = rows[ratio_engine, r["batch"]]["runs_tok_s"], rows[LLAMACPP, r["batch"]]["runs_tok_s"]
        assert r["paired_runs"] == pytest.approx([a / b for a, b in zip(kvlab_runs, llama_runs)])
        assert min(r["paired_runs"]) <= r["paired_median"] <= max(r["paired_runs"])
    assert (KVLAB_FUSED in report["not_measured"]) == (not model.can_fuse_decode) and report["notes"] == []
    saved = save_result("versus_llamacpp", {"device": "CPU (x86_64, 2 threads)", **report}, tmp_path)
    assert saved.name == "versus_llamacpp_cpu-x86-64-2-threads.json"
    [recorded] = recorded_comparisons(tmp_path)  # what notebook 06 shows where llama-cpp-python is not installed
    assert recorded["rows"] == json.loads(json.dumps(report["rows"]))
    print_comparison(recorded)
    table = capsys.readouterr().out
    assert "llama.cpp" in table and "differ from #0" in table and "1.00×" in table


def test_llama_cpp_python_is_only_in_the_bench_extra():
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert "llama-cpp-python==0.3.36" in extras["bench"]
    assert not any(req.startswith("llama-cpp-python") for req in extras["lab"] + extras["test"])
    assert "bench-deps:" in (ROOT / "Makefile").read_text()


def test_live_llama_cpp_decodes_greedy_at_batch_1_and_2(model, tokenizer):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (make bench-deps)")
    report = compare_with_llamacpp(model, tokenizer, PROMPT, new_tokens=8, runs=1, batches=(1, 2))
    assert report["llama_cpp_version"] == "0.3.36" and LLAMACPP not in report["not_measured"]
    rows = {(r["engine"], r["batch"]): r for r in report["rows"]}
    for batch in (1, 2):
        llama = rows[LLAMACPP, batch]
        assert llama["decode_tok_s"] > 0 and 0 < llama["fraction_of_bound"] < 1.5
        assert 0 <= llama["identical_before_first_difference"] <= 8  # reported, not required: 8-bit activations
    assert rows[KVLAB_PYTHON, 1]["tokens_identical"]
