"""The quantization figures draw the measured numbers they are given; on the real model, the error heatmaps are
exactly |K − K̂| of the reference quantizers, and they show why KIVI quantizes keys per channel."""
from __future__ import annotations

import pytest
import torch

from kvlab.bench.quant_capture import (OUTLIER_FACTOR, capture_kv, full_precision_kv, outlier_channels,
                                       strongest_outlier)
from kvlab.cache.quantization import dequantize_channels, dequantize_tokens, quantize_channels, quantize_tokens
from kvlab.viz.quant_figures import accuracy_figure, channel_absmax_figure, error_heatmaps, memory_figure

PROMPT = ("The KV cache keeps the keys and values of every earlier token, so that a new token attends to them "
          "instead of recomputing them. Quantizing the cache")  # 34 tokens: two full blocks and a partial one


def rows() -> list[dict]:
    def row(scheme, group, bytes_per_token, delta, agreement):
        return {"scheme": scheme, "group_size": group, "bytes_per_token": bytes_per_token,
                "memory_vs_model_dtype": bytes_per_token / 46080, "memory_vs_bf16": bytes_per_token / 23040,
                "perplexity": 20.0 + delta, "perplexity_delta": delta, "agreement": agreement,
                "identical_prompts": 0, "first_difference": [3]}
    return [row("float32 (none)", None, 46080, 0.0, 1.0), row("int8", 64, 11880, 0.01, 0.9),
            row("int4", 32, 6480, 2.9, 0.3), row("kivi2", 32, 5040, 4.7, 0.4)]


# --- fabricated rows --------------------------------------------------------------------------------------------
def test_memory_figure_draws_one_bar_per_scheme_against_full_precision_and_bf16_lines():
    fig = memory_figure(rows())
    bars, = fig.data
    assert list(bars.y) == ["int8 g64", "int4 g32", "kivi2 g32"]  # the baseline is a line, not a bar
    assert list(bars.x) == [11880, 6480, 5040]
    assert bars.text[1] == "6.33 KiB · 0.28× bf16"
    assert sorted(shape.x0 for shape in fig.layout.shapes) == [23040, 46080]
    assert {a.text for a in fig.layout.annotations} == {"float32: 45 KiB", "bf16: 22.5 KiB"}


def test_accuracy_figure_places_each_scheme_at_its_memory_and_perplexity_increase():
    fig = accuracy_figure(rows(), corpus="4 × 256 tokens")
    baseline, schemes, agreement = fig.data
    assert (list(baseline.x), list(baseline.y)) == ([46080], [0.0])
    assert list(schemes.x) == [11880, 6480, 5040] and list(schemes.y) == [0.01, 2.9, 4.7]
    assert list(schemes.text) == ["int8 g64", "int4 g32", "kivi2 g32"]
    assert list(agreement.y) == [90, 30, 40]
    assert "4 × 256 tokens" in fig.layout.title.text


def test_row_figures_refuse_rows_without_a_quantized_scheme():
    for figure in (memory_figure, accuracy_figure):
        with pytest.raises(ValueError, match="at least one quantized row"):
            figure(rows()[:1])


def test_channel_absmax_figure_marks_a_planted_outlier_channel_and_not_a_one_token_spike():
    k = torch.randn(40, 64, generator=torch.Generator().manual_seed(0))  # [T, D]
    k[:, 23] += 12.0  # large at every token: an outlier channel
    k[0, 7] = 30.0  # large at one token only: a spike, not an outlier channel
    assert outlier_channels(k) == [23]
    fig = channel_absmax_figure(k, where="planted")
    max_bars, mean_bars = fig.data
    assert max_bars.y[7] == pytest.approx(30.0) and mean_bars.y[23] == pytest.approx(k[:, 23].abs().mean().item())
    red = [c for c, colour in enumerate(mean_bars.marker.color) if colour != mean_bars.marker.color[0]]
    assert red == [23]
    assert fig.layout.title.text.startswith("planted: outlier channels 23")
    with pytest.raises(ValueError, match="one head's keys"):
        channel_absmax_figure(k[:, None, :])


# --- a real capture ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def captures(model, tokenizer):
    ids = tokenizer.encode(PROMPT)
    reference = full_precision_kv(model, ids)
    return {name: capture_kv(model, tokenizer, ids, name, 32 if name != "int8" else None, reference=reference)
            for name in ("int4", "kivi2", "int8")}


def reference_k_hat(capture, layer: int, head: int) -> torch.Tensor:
    """K̂ [T, D] recomputed from the captured quantizer input with kvlab.cache.quantization's references."""
    scheme, x, exact = capture.scheme, capture.k_in[layer, :, head], capture.exact_from  # x [T, D]
    if not scheme.keys_per_channel:
        return dequantize_tokens(scheme, *quantize_tokens(scheme, x))
    bs = capture.block_size
    blocks = [dequantize_channels(scheme, *quantize_channels(scheme, x[s: s + bs])) for s in range(0, exact, bs)]
    return torch.cat(blocks + [x[exact:]])  # the newest, partly filled block is kept exact


def test_capture_reads_back_what_the_cache_holds_and_only_the_quantized_run_drifts(captures):
    int4, kivi2 = captures["int4"], captures["kivi2"]
    num_tokens = int4.num_tokens
    assert int4.k.shape == int4.k_hat.shape == (30, num_tokens, 3, 64)
    assert torch.equal(int4.k_in[0], int4.k[0])  # layer 0 sees the same embeddings in both runs
    assert int4.mean_drift(20) > 0  # deeper, the quantized run's own keys differ: earlier layers attended to K̂
    assert int4.exact_from == num_tokens and kivi2.exact_from == (num_tokens // 16) * 16 < num_tokens
    assert torch.equal(kivi2.k_hat[:, kivi2.exact_from:], kivi2.k_in[:, kivi2.exact_from:])  # recent slot: exact
    assert int4.bytes_per_token == 6480 and kivi2.bytes_per_token < int4.bytes_per_token


def test_error_heatmaps_show_abs_k_and_exactly_the_reference_quantizers_error(captures):
    layer, head = 12, 1
    fig = error_heatmaps([captures["int4"], captures["kivi2"]], layer, head)
    magnitude, int4_error, kivi2_error = fig.data
    assert torch.allclose(torch.tensor(magnitude.z), captures["int4"].k[layer, :, head].abs())
    for shown, capture in ((int4_error, captures["int4"]), (kivi2_error, captures["kivi2"])):
        expected = (capture.k_in[layer, :, head] - reference_k_hat(capture, layer, head)).abs()  # [T, D]
        assert torch.allclose(torch.tensor(shown.z), expected, atol=1e-6)
        assert shown.zmax == max(int4_error.zmax, kivi2_error.zmax)  # one colour scale
    titles = [a.text for a in fig.layout.annotations]
    mean = captures["int4"].quant_error(layer, head).mean().item()
    assert f"int4 g32: keys per token, groups of 32<br>mean |K − K̂| {mean:.3f}" in titles
    assert any(t.startswith("kivi2 g32: keys per channel, 16-token blocks") for t in titles)
    line, = fig.layout.shapes  # kivi2's exact newest block starts below this line
    assert line.y0 == captures["kivi2"].exact_from - 0.5


def test_error_heatmaps_with_values_add_the_v_row_from_the_same_reference(captures):
    capture, layer, head = captures["int8"], 5, 0
    fig = error_heatmaps(capture, layer, head, values=True)
    assert len(fig.data) == 4
    scheme, v = capture.scheme, capture.v_in[layer, :, head]
    expected = (v - dequantize_tokens(scheme, *quantize_tokens(scheme, v))).abs()
    assert torch.allclose(torch.tensor(fig.data[3].z), expected, atol=1e-6)
    with pytest.raises(ValueError, match="out of range"):
        error_heatmaps(capture, 30, 0)


def test_kivi2_per_channel_spares_the_channels_that_share_a_per_token_scale_with_an_outlier(captures):
    """KIVI's argument, on the real model: a key channel that is large at every token sets the per-token scale
    of its int4 group, so its group's other channels get coarse steps; kivi2 gives every channel its own range,
    and at 2 bits beats 4-bit int4 there — while int4 codes the outlier itself almost exactly (it is ±7 steps)."""
    int4, kivi2 = captures["int4"], captures["kivi2"]
    layer, head, channel, ratio = strongest_outlier(int4.k)
    assert ratio >= OUTLIER_FACTOR and channel in outlier_channels(int4.k[layer, :, head])
    quantized = slice(0, kivi2.exact_from)  # kivi2's exact tail left out of both
    int4_error = int4.quant_error(layer, head)[quantized].mean(0)  # [D] mean over tokens
    kivi2_error = kivi2.quant_error(layer, head)[quantized].mean(0)
    group = range((channel // 32) * 32, (channel // 32 + 1) * 32)
    neighbours = [c for c in group if c != channel]
    elsewhere = [c for c in range(64) if c not in group]
    assert kivi2_error[neighbours].mean() < int4_error[neighbours].mean()
    assert int4_error[elsewhere].mean() < kivi2_error[elsewhere].mean()  # away from the outlier, 4 bits win
    assert int4_error[channel] < kivi2_error[channel]
    assert int4_error[channel] < int4_error[neighbours].mean() / 10
