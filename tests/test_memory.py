"""Tests for kvlab.memory: known KV cache figures, presets, input checks, formatting."""
import re
from decimal import ROUND_HALF_UP, Decimal
from types import SimpleNamespace

import pytest

from kvlab.memory import (
    GB,
    GiB,
    MiB,
    PRESETS,
    ModelShape,
    format_bytes,
    kv_bytes_per_token,
    kv_bytes_per_token_per_layer,
    kv_cache_bytes,
    max_context_for_budget,
    resolve_shape,
    with_kv_heads,
)


def test_llama3_8b_bf16_4k_tokens_is_exactly_512_mib():
    assert kv_cache_bytes("Llama-3-8B", 4096) == 512 * MiB == 536870912


def test_llama3_8b_bf16_128k_tokens_is_exactly_16_gib():
    assert kv_cache_bytes("Llama-3-8B", 131072, dtype="bf16") == 16 * GiB


def test_llama3_8b_preset_has_128k_context():
    assert PRESETS["Llama-3-8B"].context_len == 131072


def test_mha_gqa_mqa_variants_of_llama3_8b_at_32k_are_16_4_and_half_gib():
    expected = {32: 16 * GiB, 8: 4 * GiB, 1: GiB // 2}
    for kv_heads, size in expected.items():
        assert kv_cache_bytes(with_kv_heads("Llama-3-8B", kv_heads), 32768) == size
    kinds = [with_kv_heads("Llama-3-8B", kv).attention_kind for kv in (32, 8, 1)]
    assert kinds == ["MHA", "GQA", "MQA"]


def test_llama2_13b_batch8_4k_bf16_is_26_8_decimal_gb():
    n = kv_cache_bytes("Llama-2-13B", 4096, batch=8)
    assert n == 26843545600
    assert round(n / GB, 1) == 26.8


def test_smollm2_135m_bf16_per_token_is_23040_bytes():
    assert kv_bytes_per_token_per_layer("SmolLM2-135M") == 2 * 3 * 64 * 2
    assert kv_bytes_per_token("SmolLM2-135M") == 30 * 2 * 3 * 64 * 2 == 23040


def test_llama3_8b_at_2k_8k_32k_128k_is_quarter_1_4_16_gib():
    sizes = [kv_cache_bytes("Llama-3-8B", t) / GiB for t in (2048, 8192, 32768, 131072)]
    assert sizes == [0.25, 1, 4, 16]


def test_widely_shared_table_is_exactly_8x_too_small_for_llama3_8b():
    # A widely shared table gives 0.03 / 0.13 / 0.50 / 2.00 GB for Llama-3-8B at 2K/8K/32K/128K.
    # Our exact figures divided by 8, rounded half-up to 2 decimals, reproduce it. (Decimal, since
    # f"{0.125:.2f}" gives '0.12'.) 8 is Llama-3-8B's num_kv_heads: the table matches a 1-kv-head cache.
    table = ["0.03", "0.13", "0.50", "2.00"]
    for tokens, figure in zip((2048, 8192, 32768, 131072), table):
        ours_gib = kv_cache_bytes("Llama-3-8B", tokens) / GiB
        eighth = Decimal(str(ours_gib / 8)).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
        assert str(eighth) == figure
        mqa_gib = kv_cache_bytes(with_kv_heads("Llama-3-8B", 1), tokens) / GiB
        assert mqa_gib == ours_gib / 8


def test_every_preset_resolves_and_num_heads_divisible_by_kv_heads():
    assert len(PRESETS) >= 9
    for name, shape in PRESETS.items():
        assert resolve_shape(name) is shape
        assert shape.num_heads % shape.num_kv_heads == 0
        assert shape.group_size * shape.num_kv_heads == shape.num_heads
        assert shape.context_len > 0 and shape.source


def test_attention_kinds_falcon_mqa_llama2_mha_llama3_gqa():
    assert resolve_shape("Falcon-7B").attention_kind == "MQA"
    assert resolve_shape("Llama-2-7B").attention_kind == "MHA"
    assert resolve_shape("Llama-3-8B").attention_kind == "GQA"
    assert resolve_shape("Llama-3-8B").group_size == 4


def test_preset_lookup_is_case_insensitive():
    assert resolve_shape("llama-3-8b") is PRESETS["Llama-3-8B"]
    assert resolve_shape("SMOLLM2-135M") is PRESETS["SmolLM2-135M"]


def test_unknown_preset_raises_naming_it_and_listing_known_presets():
    with pytest.raises(ValueError, match=r"'Llama-9-1T'.*Llama-3-8B"):
        resolve_shape("Llama-9-1T")


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_bad_context_len_raises_naming_the_value(bad):
    with pytest.raises(ValueError, match=re.escape(f"context_len must be a positive integer, got {bad!r}")):
        kv_cache_bytes("Llama-3-8B", bad)


def test_batch_zero_raises_naming_the_value():
    with pytest.raises(ValueError, match=r"batch must be a positive integer, got 0"):
        kv_cache_bytes("Llama-3-8B", 4096, batch=0)


def test_unknown_dtype_raises_naming_it():
    with pytest.raises(ValueError, match=r"'float13'"):
        kv_cache_bytes("Llama-3-8B", 4096, dtype="float13")


def test_with_kv_heads_not_dividing_num_heads_raises_naming_it():
    with pytest.raises(ValueError, match=r"num_kv_heads=3 does not divide num_heads=32"):
        with_kv_heads("Llama-3-8B", 3)


def test_dtypes_scale_the_cache_fp32_double_fp8_half_int4_quarter():
    bf16 = kv_cache_bytes("Llama-3-8B", 4096)
    assert kv_cache_bytes("Llama-3-8B", 4096, dtype="float32") == 2 * bf16
    assert kv_cache_bytes("Llama-3-8B", 4096, dtype="fp8") == bf16 // 2
    int4 = kv_cache_bytes("Llama-3-8B", 4096, dtype="int4")
    assert int4 == bf16 // 4 and isinstance(int4, int)


def test_resolve_shape_reads_plain_object_attributes():
    cfg = SimpleNamespace(num_layers=30, num_kv_heads=3, head_dim=64)
    shape = resolve_shape(cfg)
    assert (shape.num_layers, shape.num_kv_heads, shape.head_dim) == (30, 3, 64)
    assert kv_bytes_per_token(cfg) == 23040


def test_resolve_shape_reads_model_dot_config():
    model = SimpleNamespace(config=SimpleNamespace(num_layers=30, num_heads=9, num_kv_heads=3, head_dim=64,
                                                   name="tiny", context_len=8192))
    shape = resolve_shape(model)
    assert shape == ModelShape("tiny", 30, 9, 3, 64, 8192)
    assert shape.attention_kind == "GQA"


def test_resolve_shape_reads_dict():
    shape = resolve_shape({"num_layers": 32, "num_heads": 32, "num_kv_heads": 8, "head_dim": 128})
    assert kv_bytes_per_token(shape) == kv_bytes_per_token("Llama-3-8B")


def test_resolve_shape_reads_hugging_face_config_names():
    hf = {"num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3, "hidden_size": 576,
          "max_position_embeddings": 8192}
    assert kv_bytes_per_token(hf) == kv_bytes_per_token("SmolLM2-135M")


def test_max_context_for_budget_is_the_floor_inverse_of_kv_cache_bytes():
    assert max_context_for_budget("Llama-3-8B", 16 * GiB) == 131072
    assert max_context_for_budget("Llama-3-8B", 16 * GiB - 1) == 131071
    assert max_context_for_budget("Llama-3-8B", 16 * GiB, batch=4) == 32768


def test_format_bytes_known_figures():
    assert format_bytes(512 * MiB) == "512 MiB"
    assert format_bytes(16 * GiB) == "16 GiB"
    assert format_bytes(26843545600, binary=False) == "26.8 GB"
    assert format_bytes(GiB // 2) == "512 MiB"
    assert format_bytes(23040) == "22.5 KiB"
    assert format_bytes(100) == "100 B"
