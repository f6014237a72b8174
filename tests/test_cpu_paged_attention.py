"""kvlab's C++ paged decode attention for the CPU equals its plain-torch oracle on odd shapes, refuses bad input
naming the value, and is the paged cache's decode path on a CPU: the same greedy tokens as the torch path.

Its speed is recorded by the decode benchmark (python -m kvlab.bench decode), not asserted here: a shared
2-core machine cannot time it without flaking.
"""
from __future__ import annotations

import math
import platform
import re

import pytest
import torch

import kvlab
from kvlab.cache import PagedCache, PrefixCachedPagedCache, QuantizedPagedCache
from kvlab.kernels import cpu_gemv, cpu_paged_attention, paged_decode_reference
from kvlab.kernels.cpu_paged_attention import cpu_paged_decode_attention
from stand_in import STAND_IN
from test_kernels import DECODE_ERRORS, RAGGED, _decode_inputs, assert_close, make_paged, random_query

pytestmark = pytest.mark.skipif(not cpu_paged_attention.available(), reason="the C++ CPU kernel could not be built here")


def check_against_reference(context_lens, block_size, num_kv_heads, group, head_dim, dtype=torch.float32,
                            num_splits=None, **paged):
    k_pool, v_pool, table, lens = make_paged(context_lens, block_size, num_kv_heads, head_dim, dtype=dtype, **paged)
    query = random_query((len(context_lens), num_kv_heads * group, head_dim), dtype, "cpu")
    out = cpu_paged_decode_attention(query, k_pool, v_pool, table, lens, num_splits=num_splits)
    assert_close(out, paged_decode_reference(query, k_pool, v_pool, table, lens))


@pytest.mark.parametrize("block_size", [1, 2, 16, 32, 64])
@pytest.mark.parametrize("group", [1, 3, 5, 8])
def test_equals_the_reference_for_block_sizes_and_gqa_groups(block_size, group):
    check_against_reference(RAGGED, block_size, 3, group, 64)  # mixed lengths: 1 token, odd, a block multiple


@pytest.mark.parametrize("head_dim", [16, 32, 128, 256])
def test_equals_the_reference_for_head_dims(head_dim):
    check_against_reference([5, 40, 129], 16, 2, 3, head_dim)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_equals_the_reference_on_half_precision_pools(dtype):
    check_against_reference(RAGGED, 16, 3, 3, 64, dtype=dtype)  # SmolLM2's heads


@pytest.mark.parametrize("num_splits", [1, 2, 3, 7, 64])
def test_every_split_count_gives_the_reference(num_splits):
    # 300 tokens: several tiles a split; 1 and 45 tokens: the later splits are empty and must weigh nothing
    check_against_reference([1, 300, 45], 4, 3, 3, 64, num_splits=num_splits)


def test_a_long_context_of_batch_one_is_split_across_threads_and_stays_exact():
    assert cpu_paged_attention.cpu_splits(1, 4096) >= torch.get_num_threads()
    assert cpu_paged_attention.cpu_splits(64, 4096) == 1  # a big batch already gives every thread work
    check_against_reference([4000], 16, 3, 3, 64)


def test_mqa_one_kv_head_serves_all_query_heads():
    check_against_reference([23, 70], 16, 1, 8, 64)


def test_one_cached_token_returns_its_value():
    k_pool, v_pool, table, lens = make_paged([1], 16, 3, 64)
    query = random_query((1, 9, 64), torch.float32, "cpu")
    value = v_pool[table[0, 0].long(), 0]  # [Hkv, D]: softmax over one key is 1
    assert_close(cpu_paged_decode_attention(query, k_pool, v_pool, table, lens)[0], value.repeat_interleave(3, dim=0))


def test_int64_tables_strided_query_and_scale():
    k_pool, v_pool, table, lens = make_paged([9, 50], 8, 2, 32)
    query = random_query((2, 1, 12, 32), torch.float32, "cpu")[:, 0, 2:10]  # [2, 8, 32], strided heads
    expected = paged_decode_reference(query, k_pool, v_pool, table, lens, scale=0.3)
    assert_close(cpu_paged_decode_attention(query, k_pool, v_pool, table.long(), lens.long(), scale=0.3), expected)


def test_unused_table_entries_are_never_read():
    k_pool, v_pool, table, lens = make_paged([3, 9, 5], 4, 2, 16, unused_entry=-(2**31))
    query = torch.randn(3, 4, 16)
    assert_close(cpu_paged_decode_attention(query, k_pool, v_pool, table, lens),
                 paged_decode_reference(query, k_pool, v_pool, table, lens))


@pytest.mark.parametrize("head_dim", [48, 80])
def test_head_dims_outside_the_vector_widths_take_the_plain_path_and_stay_exact(head_dim):
    # the wrapper accepts the head dims the lab's kernels share; the C++ itself takes any, in plain C++ loops
    k_pool, v_pool, table, lens = make_paged([7, 90], 16, 2, head_dim)
    query = random_query((2, 6, head_dim), torch.float32, "cpu")
    out = cpu_gemv.load_gemv().paged_decode(query, k_pool, v_pool, table, lens, 1 / math.sqrt(head_dim), 0)
    assert_close(out, paged_decode_reference(query, k_pool, v_pool, table, lens))


@pytest.mark.parametrize("case", list(DECODE_ERRORS), ids=list(DECODE_ERRORS))
def test_bad_input_is_refused_naming_the_value(case):
    change, message = DECODE_ERRORS[case]
    args = _decode_inputs(**change)
    with pytest.raises(ValueError, match=re.escape(message)):
        cpu_paged_decode_attention(**args)


VALUE_ERRORS = ["empty context", "context past the table", "block past the pool", "negative block"]


@pytest.mark.parametrize("case", VALUE_ERRORS)
def test_without_the_python_checks_the_cpp_still_refuses_bad_values_naming_them(case):
    change, message = DECODE_ERRORS[case]
    with pytest.raises(ValueError, match=re.escape(message)):
        cpu_paged_decode_attention(**_decode_inputs(**change), check=False)


def test_without_the_python_checks_the_cpp_still_refuses_a_bad_shape():
    args = _decode_inputs(query=lambda a: torch.randn(3, 5, 16))  # 5 query heads over 2 KV heads
    with pytest.raises(RuntimeError, match="paged_decode: shapes"):
        cpu_paged_decode_attention(**args, check=False)


@pytest.mark.parametrize("num_splits", [0, -2, 1.5, True])
def test_a_bad_num_splits_is_refused(num_splits):
    with pytest.raises(ValueError, match=re.escape(f"num_splits = {num_splits!r} must be a positive integer")):
        cpu_paged_decode_attention(**_decode_inputs(), num_splits=num_splits)


def test_tensors_off_the_cpu_are_refused():
    args = {name: tensor.to("meta") for name, tensor in _decode_inputs().items()}
    with pytest.raises(ValueError, match="query is on meta; cpu_paged_decode_attention takes CPU tensors"):
        cpu_paged_decode_attention(**args)


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86 instruction-set variants")
@pytest.mark.parametrize("variant, path", [(("-mno-avx512f",), "avx2"),
                                           (("-mno-avx512f", "-mno-avx2", "-mno-fma", "-mno-f16c"), "plain")],
                         ids=["avx2", "plain-c++"])
def test_every_instruction_set_path_equals_the_reference(variant, path):
    """The same builds as tests/test_projection.py's (~1 min each the first time, then cached)."""
    module = cpu_gemv.build_gemv(variant)
    assert module.attention_simd_path() == path
    for lens, block_size, kv_heads, group, head_dim in [(RAGGED, 16, 3, 3, 64), ([1, 300, 45], 4, 2, 5, 16),
                                                        ([70, 9], 32, 1, 8, 128)]:
        k_pool, v_pool, table, context_lens = make_paged(lens, block_size, kv_heads, head_dim)
        query = random_query((len(lens), kv_heads * group, head_dim), torch.float32, "cpu")
        expected = paged_decode_reference(query, k_pool, v_pool, table, context_lens)
        for splits in (1, 3):
            out = module.paged_decode(query, k_pool, v_pool, table, context_lens, 1 / math.sqrt(head_dim), splits)
            assert_close(out, expected)


# --- the paged cache's CPU path --------------------------------------------------------------------------------
def test_the_cpu_default_of_the_paged_layouts_is_the_kernel_and_the_quantized_layout_keeps_torch():
    assert PagedCache(STAND_IN, "cpu", torch.float32, num_blocks=4, block_size=4).backend == "cpu"
    assert PrefixCachedPagedCache(STAND_IN, "cpu", torch.float32, num_blocks=4, block_size=4).backend == "cpu"
    assert QuantizedPagedCache(STAND_IN, "cpu", torch.float32, num_blocks=4, block_size=4).backend == "torch"
    with pytest.raises(ValueError, match="unknown paged backend 'cpu'; choose one of torch, triton"):
        QuantizedPagedCache(STAND_IN, "cpu", torch.float32, num_blocks=4, block_size=4, backend="cpu")


def test_without_the_extension_the_cpu_default_falls_back_to_torch_and_cpu_is_refused(monkeypatch):
    monkeypatch.setattr(cpu_gemv, "_loaded", {"module": None})  # as with KVLAB_CPU_GEMV=0 or no compiler
    assert PagedCache(STAND_IN, "cpu", torch.float32, num_blocks=4, block_size=4).backend == "torch"
    with pytest.raises(ValueError, match="backend 'cpu' needs kvlab's C\\+\\+ CPU kernel"):
        PagedCache(STAND_IN, "cpu", torch.float32, num_blocks=4, block_size=4, backend="cpu")


def test_backend_cpu_is_refused_for_a_cache_off_the_cpu():
    with pytest.raises(ValueError, match="backend 'cpu' runs on CPU tensors, but this cache is on meta"):
        PagedCache(STAND_IN, "meta", torch.float32, num_blocks=4, block_size=4, backend="cpu")


PROMPTS = ["The history of the printing press", "Once upon a time, in a small village at the edge of a great forest,"
           " there lived", "Paged attention stores the KV cache in blocks"]


@pytest.mark.parametrize("cache", ["paged", "prefix"])
def test_the_kernel_path_gives_the_torch_paths_greedy_tokens_on_the_real_model(model, tokenizer, cache):
    backends = set()
    kernel = kvlab.generate(model, tokenizer, PROMPTS, max_new_tokens=8, cache=cache, block_size=16, stop_at_eos=False,
                            on_step=lambda step, live_cache, running: backends.add(live_cache.backend))
    plain = kvlab.generate(model, tokenizer, PROMPTS, max_new_tokens=8, cache=cache, block_size=16, stop_at_eos=False,
                           backend="torch")
    assert backends == {"cpu"} and kernel.token_ids == plain.token_ids
