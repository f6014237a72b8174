"""kvlab's Triton kernels compiled for sm_80, sm_89 and sm_90 on this CPU (kvlab.kernels.aot), and what the
compiled code says: tensor-core products, wide K/V loads, no spills past the stated bounds, shared memory that
fits, int64 outer offsets, every stated exception in use, and the committed table and its summary equal to what
the pinned Triton builds.

The covering set compiles in one subprocess (TRITON_INTERPRET=0: kvlab switches the interpreter on otherwise),
two worker processes, ~2.5 min cold on 2 cores; Triton's cache and the result cache beside it make a re-run take
seconds. A deliberately broken kernel (hints dropped, a cast removed, a product without tl.dot, 32 registers)
must fail the same checks.
"""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

import kvlab  # noqa: F401  (switches Triton's interpreter on before kvlab.kernels imports triton)
from kvlab.kernels import aot

ROOT = pathlib.Path(__file__).resolve().parents[1]
COMMITTED = aot.TABLE.with_suffix(".json")
REWRITE = "TRITON_INTERPRET=0 python -m kvlab.kernels.aot --write"
COMPILED_ENV = {**os.environ, "TRITON_INTERPRET": "0"}


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("aot") / "rows.json"
    proc = subprocess.run([sys.executable, "-m", "kvlab.kernels.aot", "--json", str(out)], cwd=ROOT,
                          env=COMPILED_ENV, capture_output=True, text=True, timeout=900)
    assert out.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())


def rows_of(report: dict, *families: str) -> list[dict]:
    return [r for r in report["rows"] if not r["error"] and (not families or r["family"] in families)]


def test_the_covering_set_takes_every_value_of_every_parameter_on_every_target():
    cases = aot.covering_set()
    values = aot.axis_values()
    for name, family in aot.FAMILIES.items():
        shapes = [c.shape for c in cases if c.family == name]
        for axis in family.axes:
            field = "scheme_group" if axis == "int4_group" else axis
            wanted = [v for v in values[axis] if not (axis == "group" and family.max_group and v > family.max_group)]
            seen = {getattr(s, field) for s in shapes}
            assert set(wanted) <= seen | {getattr(family.base, field)}, (name, axis)
        for model in aot.MODELS:
            assert any(c.label == model and c.all_configs and c.targets == aot.TARGETS
                       for c in cases if c.family == name), (name, model)
    assert {t for c in cases for t in c.targets} == set(aot.TARGETS)


def test_every_kernel_compiles_for_every_target_but_fp8_on_sm_80(report):
    failed = [r for r in report["rows"] if r["error"]]
    assert failed and all(r["target"] == "sm_80" and "fp8" in r["case"] for r in failed)
    built = {(r["kernel"], r["target"]) for r in rows_of(report)}
    kernels = {r["kernel"] for r in report["rows"]}
    assert len(kernels) == 7 and built == {(k, t) for k in kernels for t in aot.TARGETS}
    assert any("fp8" in r["case"] for r in rows_of(report) if r["target"] == "sm_89")


def test_decode_and_prefill_products_run_on_tensor_cores_except_fp32(report):
    attention = [r for r in rows_of(report, *aot.ATTENTION) if r["tile_bytes_per_thread"] is not None]
    assert len(attention) > 150
    for r in attention:
        mma = r["mma"] + r["wgmma"]
        assert (mma == 0) == (r["dtype"] == "float32"), r  # fp32: 'ieee' products on FMA, by design
    assert any(r["wgmma"] for r in attention if r["target"] == "sm_90")  # prefill on Hopper: warpgroup MMA


def test_kv_tiles_arrive_by_wide_loads(report):
    narrow = []
    for r in rows_of(report, *aot.ATTENTION):
        if r["tile_bytes_per_thread"] is not None:
            assert aot.wide_bytes(r) >= r["tile_bytes_per_thread"], r
            if aot.narrow_bytes(r) > aot.wide_bytes(r) / 2:
                narrow.append(r)
    assert narrow and all(aot.stated("narrow_loads", r) for r in narrow)  # grouped scales, gathered (stated)
    decode = [r for r in rows_of(report, "decode") if r["tile_bytes_per_thread"] is not None]
    for r in decode:  # asynchronous copies as wide as a thread's share of a tile allows, up to 16 bytes
        assert max(map(int, r["copies"]), default=0) >= min(16, r["tile_bytes_per_thread"] // 2), r


def test_spills_only_where_stated(report):
    spilling = [r for r in rows_of(report) if r["spill_store_bytes"] or r["spill_load_bytes"]]
    for r in spilling:
        assert aot.stated("spills", r), r
    assert not [p for p in report["problems"] if "spill" in p]


def test_the_model_decode_shapes_do_not_spill_and_a_spill_there_would_be_a_problem(report):
    decode = [r for r in rows_of(report, "decode", "quant_decode") if r["case"] in aot.MODELS]
    assert {(r["family"], r["case"], r["target"]) for r in decode} == {
        (f, m, t) for f in ("decode", "quant_decode") for m in aot.MODELS for t in aot.TARGETS}
    assert [r for r in decode if r["spill_store_bytes"] or r["spill_load_bytes"]] == []
    for r in decode:  # at the register ceiling with a small spill, as the stated prefill rows: not excused
        spilled = {**r, "registers": 255, "spill_store_bytes": 8, "spill_load_bytes": 4}
        assert aot.stated("spills", spilled) is None, r
        assert any("spill" in p for p in aot.problems([spilled])), r


def test_the_ceiling_statement_excuses_exactly_the_cases_it_names(report):
    ceiling = next(i for i, s in enumerate(aot.STATED) if s.applies is aot.spills_at_the_register_ceiling)
    excused = aot.excused_rows(report["rows"])[ceiling]
    named = {("prefill", 128), ("prefill", 256), ("quant_decode", 256), ("quant_decode", "float32"),
             ("decode", "group > 64"), ("quant_decode", "group > 64")}  # as its reason lists them
    seen = set()
    for r in excused:
        assert r["registers"] == 255 and max(r["spill_store_bytes"], r["spill_load_bytes"]) <= 512, r
        cases = {(r["family"], r["head_dim"]), (r["family"], r["dtype"]),
                 (r["family"], "group > 64" if r["group"] > 64 else None)} & named
        assert cases, r
        seen |= cases
    assert seen == named  # each case it names does spill (no clause excuses nothing)
    assert not aot.spills_at_the_register_ceiling({**excused[0], "spill_store_bytes": 513})
    assert not aot.spills_at_the_register_ceiling({**excused[0], "registers": 254})


def test_every_stated_exception_excuses_a_compile_that_fails_its_check(report):
    assert aot.stale_statements(report["rows"]) == []
    assert all(aot.excused_rows(report["rows"]))
    fp32_prefill = next(s for s in aot.STATED if s.check == "spills" and s.reason.startswith("float32 prefill"))
    fixed = [r for r in report["rows"] if (r["family"], r["dtype"]) != ("prefill", "float32")]
    assert aot.stale_statements(fixed) == [fp32_prefill]  # as if float32 prefill stopped spilling
    assert [p for p in aot.problems(fixed) if "excuses no compile" in p] != []


def test_the_committed_table_is_what_the_pinned_triton_compiles(report):
    committed = json.loads(COMMITTED.read_text())
    assert committed["triton"] == aot.triton.__version__
    assert committed["rows"] == aot.table_rows(report["rows"]), f"the table is stale: {REWRITE}"


def test_the_committed_summary_is_what_the_compiles_give(report):
    committed = aot.TABLE.with_suffix(".md").read_text()
    assert committed == aot.summary_markdown(report["rows"]), f"the summary is stale: {REWRITE}"


def test_the_table_is_written_into_the_repository_wherever_the_command_runs():
    assert aot.TABLE == ROOT / "benchmarks" / "results" / "gpu_compile_table"  # not relative to the cwd


def test_the_ptxas_report_is_read_and_a_log_without_one_is_refused_naming_the_missing_line():
    log = ("ptxas info    : Function properties for _combine_splits_kernel\n"
           "    16 bytes stack frame, 8 bytes spill stores, 4 bytes spill loads\n"
           "ptxas info    : Used 31 registers, used 1 barriers, 424 bytes cmem[0]\n")
    assert aot.read_ptxas_log(log) == {"registers": 31, "stack_bytes": 16, "spill_store_bytes": 8,
                                       "spill_load_bytes": 4}
    with pytest.raises(ValueError, match="no 'Used N registers' line"):
        aot.read_ptxas_log(log.splitlines()[1])
    with pytest.raises(ValueError, match="no 'Used N registers' and no 'N bytes stack frame"):
        aot.read_ptxas_log("")
    with pytest.raises(ValueError, match="^not a ptxas -v report: no 'N bytes stack frame"):
        aot.read_ptxas_log(log.splitlines()[2])


BROKEN = textwrap.dedent('''
    import importlib.util, json, pathlib, sys, tempfile, triton
    from kvlab.kernels import aot, paged_decode

    def checked(module, target="sm_80", drop_hints=False, maxnreg=None):
        with aot.recorded_launches() as launches:
            module.paged_decode_attention(*aot_args(), check=False)
        launch = launches[0]
        config = launch.configs[0]
        if maxnreg:
            config = triton.Config(config.kwargs, config.num_warps, config.num_stages, maxnreg=maxnreg)
        signature, constexprs, attrs, options, key = aot.bind(launch, config, target, drop_hints)
        job = aot.Job("decode", "broken", aot.Shape(), launch.kernel, target, "-", signature, constexprs, attrs,
                      options, key)
        return [check for check, _ in aot.row_problems(aot.compile_all([job], workers=1)[0])]

    def aot_args():  # Llama-3-8B's heads at head_dim 32 (the broken products compile in seconds), bf16
        q = aot._meta(4, 32, 32, dtype=aot.torch.bfloat16)
        pool = aot._meta(64, 16, 8, 32, dtype=aot.torch.bfloat16)
        return q, pool, pool, aot._meta(4, 256), aot._meta(4)

    def variant(*edits):
        source = pathlib.Path(paged_decode.__file__).read_text().replace("from ._common", "from kvlab.kernels._common")
        for old, new in edits:
            assert old in source, old
            source = source.replace(old, new)
        path = pathlib.Path(tempfile.mkdtemp()) / "broken_decode.py"
        path.write_text(source)
        spec = importlib.util.spec_from_file_location("broken_decode", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    print(json.dumps({
        "as shipped": checked(paged_decode),
        "divisibility hints dropped": checked(paged_decode, drop_hints=True),
        "32 registers": checked(paged_decode, maxnreg=32),
        "seq not widened": checked(variant(("seq = tl.program_id(0).to(tl.int64)", "seq = tl.program_id(0)"))),
        "products without tl.dot": checked(variant(
            ("tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)", "tl.sum(q[:, None, :] * k[None, :, :], 2)"),
            ("tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=DOT_PRECISION)",
             "acc * alpha[:, None] + tl.sum(p[:, :, None] * v[None, :, :], 1)"))),
    }))
''')


def test_a_broken_kernel_fails_the_checks():
    proc = subprocess.run([sys.executable, "-c", BROKEN], cwd=ROOT, env=COMPILED_ENV, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert found["as shipped"] == []
    for broken, check in [("divisibility hints dropped", "wide_loads"), ("32 registers", "spills"),
                          ("seq not widened", "int64"), ("products without tl.dot", "mma")]:
        assert check in found[broken], (broken, found[broken])


@pytest.mark.parametrize("target", ["sm_999", "ampere", "sm_"])
def test_a_target_the_installed_triton_cannot_build_for_is_refused_by_name(target):
    with pytest.raises(ValueError, match=repr(target)):
        aot.compute_capability(target)


def test_the_command_line_names_a_bad_target():
    proc = subprocess.run([sys.executable, "-m", "kvlab.kernels.aot", "--targets", "sm_80", "sm_999"], cwd=ROOT,
                          env=COMPILED_ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "'sm_999'" in proc.stderr and "cannot build" in proc.stderr
