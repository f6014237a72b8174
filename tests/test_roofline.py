"""Roofline points on the real model: counted FLOP and bytes, measured times, on the right side of the ridge."""
from __future__ import annotations

import pytest
import torch

from kvlab.bench.roofline import (Point, latency_throughput, layer_weight_count, measure_attention, measure_decode,
                                  measure_prefill, step_flops)
from kvlab.bench.roofs import device_roofs


def test_step_flops_count_matmuls_and_causal_attention_by_hand(model):
    cfg = model.config
    layers = layer_weight_count(model)
    assert layers == cfg.num_layers * 576 * (960 + 576 + 3072 + 1536)  # wqkv, wo, gate+up, down
    # one sequence, 2 cached tokens, 3 new: queries see 3, 4 and 5 keys
    attention = 4 * cfg.num_layers * cfg.num_heads * cfg.head_dim * (3 + 4 + 5)
    assert step_flops(model, 1, 2, 3) == 2 * 3 * layers + 2 * 49152 * 576 + attention
    assert step_flops(model, 4, 2, 3) == 4 * step_flops(model, 1, 2, 3)


def test_decode_is_left_of_the_ridge_and_prefill_right_of_it(model):
    roofs = device_roofs(model.device)
    prefill = measure_prefill(model, batch=1, prompt_len=128, repeats=1)
    decode_default = measure_decode(model, batch=1, context=32, repeats=2)  # the GGUF blocks, where the kernel built
    reads_blocks = model.decode_reads_blocks
    try:
        model.decode_reads_blocks = False  # float32 weights: 2 FLOP per 4 bytes
        decode = measure_decode(model, batch=1, context=32, repeats=2)
    finally:
        model.decode_reads_blocks = reads_blocks
    assert decode.intensity < 1 < roofs.ridge_flop_per_byte < prefill.intensity
    assert decode.seconds > 0 and prefill.seconds > 0
    assert prefill.seconds_per_token < decode.seconds_per_token  # the lesson, measured
    assert decode.context == 32 + (2 + 1) // 2 and decode.bytes > model.dense_weight_bytes()
    assert prefill.bytes > 0.8 * model.dense_weight_bytes()  # 128 rows: F.linear on the float32 layers (lm_head: 1 row)
    assert decode_default.flops == decode.flops
    if model.can_read_blocks:  # the same FLOP from 5.6× fewer bytes
        assert model.weight_bytes(rows=1) < decode_default.bytes < decode.bytes / 5 and decode_default.weights


def test_attention_point_counts_the_kv_bytes(model):
    point = measure_attention(model, batch=2, context=40)
    cfg = model.config
    kv = 2 * 2 * 40 * cfg.num_kv_heads * cfg.head_dim * 4
    assert kv < point.bytes < kv * 1.1  # plus queries, outputs and block tables
    assert point.flops == 4 * 2 * cfg.num_heads * 40 * cfg.head_dim


def test_latency_throughput_measures_each_batch(model, tokenizer):
    rows = latency_throughput(model, tokenizer, [1, 2], prompt_len=8, new_tokens=3)
    assert [r["batch"] for r in rows] == [1, 2]
    assert all(r["ttft_s"] > 0 and r["decode_tokens_per_s"] > 0 for r in rows)


@pytest.mark.parametrize("bad", [0, -1, 2.5])
def test_bad_sizes_are_named(model, bad):
    with pytest.raises(ValueError, match="batch"):
        measure_decode(model, batch=bad, context=8)
    with pytest.raises(ValueError, match="prompt_len"):
        measure_prefill(model, batch=1, prompt_len=bad)


def test_context_past_the_model_limit_is_refused(model):
    with pytest.raises(ValueError, match="8192"):
        measure_decode(model, batch=1, context=8190)


def test_point_derived_numbers():
    p = Point("x", "decode", batch=2, tokens=1, context=10, flops=4e9, bytes=2e9, seconds=0.5)
    assert (p.intensity, p.flops_per_s, p.gb_per_s, p.seconds_per_token) == (2.0, 8e9, 4.0, 0.25)
    assert p.as_dict()["gb_per_s"] == 4.0


def test_roofline_lab_adds_three_measured_points_per_press(model):
    from kvlab.viz.roofline_widget import roofline_lab

    lab = roofline_lab(model, device_roofs(model.device), batches=(1, 2), contexts=(16, 32), prompt_lens=(8,),
                       batch=1, context=16, prompt_len=8)
    assert [p.kind for p in lab.points] == ["prefill", "decode", "attention"]
    lab.batch.value = 2
    lab.measure()
    assert len(lab.points) == 6 and lab.points[-1].batch == 2
    names = {t.name for t in lab.figure.data}
    assert {"prefill", "decode", "attention", "roofline (measured)"} <= names
    assert "FLOP/byte" in lab.message.value
    lab.reset()
    assert lab.points == [] and [t.name for t in lab.figure.data] == ["roofline (measured)"]


def test_roofline_lab_weights_toggle_measures_the_blocks_and_leaves_the_model_as_it_was(model):
    from kvlab.viz.roofline_widget import roofline_lab

    if not model.can_read_blocks:
        pytest.skip("no GGUF blocks here: the CPU kernel did not build (or KVLAB_CPU_GEMV=0)")
    assert model.decode_reads_blocks  # the model's default; the lab starts on float32 and must not change it
    lab = roofline_lab(model, device_roofs(model.device), batches=(1,), contexts=(16,), prompt_lens=(8,),
                       batch=1, context=16, prompt_len=8)
    float32 = {p.kind: p for p in lab.points}
    lab.weights.value = "GGUF blocks"
    blocks = {p.kind: p for p in lab.measure()}
    assert model.decode_reads_blocks
    assert float32["decode"].weights == "" and blocks["decode"].weights == "GGUF blocks"
    assert blocks["decode"].label == "decode, batch 1, context 16, GGUF blocks"
    assert blocks["prefill"].weights == "GGUF blocks"  # 8 rows: a short prefill runs the kernel too
    assert blocks["decode"].flops == float32["decode"].flops
    assert blocks["decode"].intensity > 5 * float32["decode"].intensity  # same FLOP, 5.6× fewer bytes
    decode_trace = next(t for t in lab.figure.data if t.name == "decode")
    assert list(decode_trace.customdata) == ["B1", "B1 blocks"] and decode_trace.mode == "markers+text"
    assert lab.figure.layout.width == 900
