"""The CPU matrix-vector kernel and the Projection that uses it compute x @ Wᵀ like F.linear, for any shape."""
from __future__ import annotations

import os
import platform

import pytest
import torch
import torch.nn.functional as F

import numpy as np

from kvlab.kernels.cpu_gemv import (BLOCK_BYTES, block_row_bytes, cpu_gemv, cpu_gemv_blocks, dequantize_reference,
                                    gemv_blocks_bytes, gemv_blocks_reference, gemv_bytes, gemv_reference, load_gemv)
from kvlab.model.projection import GEMV_MAX_ROWS, Projection

needs_kernel = pytest.mark.skipif(load_gemv() is None, reason="the CPU kernel could not be built here")


def test_the_kernel_builds_under_ci():
    """Off CI a machine without a compiler falls back to F.linear (with a warning); CI must test the kernel."""
    if os.environ.get("CI") and os.environ.get("KVLAB_CPU_GEMV", "1") != "0":
        assert load_gemv() is not None, "kvlab's CPU matrix-vector kernel did not build (see the warning)"


@needs_kernel
@pytest.mark.parametrize("m, n, k", [(1, 1, 1), (1, 7, 5), (1, 960, 576), (3, 1023, 64), (16, 3, 200), (2, 5, 15),
                                     (1, 4, 33), (4, 49, 1536), (7, 33, 70)])  # rows in groups of 4, 2, 1
def test_cpu_gemv_matches_the_reference_on_odd_shapes(m, n, k):
    gen = torch.Generator().manual_seed(m * 1000 + n + k)
    x, weight = torch.randn(m, k, generator=gen), torch.randn(n, k, generator=gen)
    torch.testing.assert_close(cpu_gemv(x, weight), gemv_reference(x, weight), rtol=1e-5, atol=1e-4)  # sum order


@needs_kernel
def test_cpu_gemv_each_output_is_its_own_row_dot_product():
    weight = torch.zeros(6, 20)
    weight[4, 17] = 3.0  # only output 4 sees input 17 (past the 16-lane body: the tail loop)
    x = torch.zeros(2, 20)
    x[1, 17] = 2.0
    expected = torch.zeros(2, 6)
    expected[1, 4] = 6.0
    assert torch.equal(cpu_gemv(x, weight), expected)


@needs_kernel
def test_cpu_gemv_rejects_bad_shapes_and_dtypes_naming_them():
    with pytest.raises(RuntimeError, match="K=5"):
        cpu_gemv(torch.randn(1, 4), torch.randn(3, 5))
    with pytest.raises(RuntimeError, match="float32"):
        cpu_gemv(torch.randn(1, 4).double(), torch.randn(3, 4).double())


def test_gemv_bytes_count_every_weight_once():
    assert gemv_bytes(1, 960, 576) == (960 * 576 + 576 + 960) * 4


@needs_kernel
@pytest.mark.parametrize("lead", [(1, 1), (1,), (3, 5), (GEMV_MAX_ROWS + 1,), (0,)])
def test_projection_matches_f_linear_on_both_sides_of_the_row_threshold(lead):
    gen = torch.Generator().manual_seed(len(lead))
    weight = torch.randn(37, 24, generator=gen)
    projection = Projection(weight)
    assert projection.streams_on_cpu and projection.weight.data_ptr() == weight.data_ptr()  # no copy
    x = torch.randn(*lead, 24, generator=gen)
    y = projection(x)
    assert y.shape == (*lead, 37)
    torch.testing.assert_close(y, F.linear(x, weight), rtol=1e-5, atol=1e-4)


def test_bf16_projection_uses_f_linear():
    weight = torch.randn(5, 8).bfloat16()
    projection = Projection(weight)
    assert not projection.streams_on_cpu
    x = torch.randn(2, 8).bfloat16()
    assert torch.equal(projection(x), F.linear(x, weight))


def test_model_projections_and_the_tied_lm_head(model):
    layer = model.layers[3]
    x = torch.randn(1, 1, model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    for projection in (layer.wqkv, layer.w_gate_up, model.lm_head):
        torch.testing.assert_close(projection(x), F.linear(x, projection.weight), rtol=1e-4, atol=1e-4)
    assert model.lm_head.weight.data_ptr() == model.embed.data_ptr()  # tied: one copy in memory
    assert 538_000_000 <= model.dense_weight_bytes() < 540_000_000


# ---- the same product on GGML Q4_1 / Q8_0 blocks ----

def quantize(weight: torch.Tensor, block_format: str) -> torch.Tensor:
    """Blocks made by the gguf package's own quantizer (the format's outside definition)."""
    from gguf import GGMLQuantizationType, quants

    blocks = quants.quantize(weight.numpy(), getattr(GGMLQuantizationType, block_format))
    return torch.from_numpy(np.ascontiguousarray(blocks))


@pytest.mark.parametrize("block_format", sorted(BLOCK_BYTES))
def test_dequantize_reference_matches_gguf_bit_for_bit(block_format):
    from gguf import GGMLQuantizationType, quants

    weight = torch.randn(7, 96, generator=torch.Generator().manual_seed(1))
    blocks = quantize(weight, block_format)
    assert blocks.shape == (7, block_row_bytes(block_format, 96)) and blocks.dtype == torch.uint8
    expected = quants.dequantize(blocks.numpy(), getattr(GGMLQuantizationType, block_format))
    assert torch.equal(dequantize_reference(blocks, block_format), torch.from_numpy(np.asarray(expected, np.float32)))


@needs_kernel
@pytest.mark.parametrize("block_format", sorted(BLOCK_BYTES))
@pytest.mark.parametrize("m, n, k", [(1, 1, 32), (1, 7, 64), (1, 960, 576), (3, 1023, 32), (16, 3, 1536),
                                     (2, 5, 96), (4, 49, 1536), (7, 33, 160), (0, 4, 32)])
def test_cpu_gemv_blocks_matches_the_reference_on_odd_shapes(block_format, m, n, k):
    gen = torch.Generator().manual_seed(m * 1000 + n + k)
    x, blocks = torch.randn(m, k, generator=gen), quantize(torch.randn(n, k, generator=gen), block_format)
    torch.testing.assert_close(cpu_gemv_blocks(x, blocks, block_format), gemv_blocks_reference(x, blocks, block_format),
                               rtol=1e-5, atol=1e-4)  # summation order


@needs_kernel
@pytest.mark.parametrize("block_format", sorted(BLOCK_BYTES))
def test_cpu_gemv_blocks_rebuilds_the_exact_float32_weights(block_format):
    """x = the identity picks out each weight alone (w · 1 plus zeros): the kernel's weights are the reference's."""
    blocks = quantize(torch.randn(9, 64, generator=torch.Generator().manual_seed(2)) * 3, block_format)
    assert torch.equal(cpu_gemv_blocks(torch.eye(64), blocks, block_format), dequantize_reference(blocks, block_format).t())


@needs_kernel
def test_cpu_gemv_blocks_rejects_bad_input_naming_it():
    blocks = quantize(torch.randn(3, 64), "Q4_1")
    with pytest.raises(RuntimeError, match="K=32"):
        cpu_gemv_blocks(torch.randn(1, 32), blocks, "Q4_1")  # rows of 40 B are 64 weights
    with pytest.raises(ValueError, match="'Q5_0'"):
        cpu_gemv_blocks(torch.randn(1, 64), blocks, "Q5_0")
    with pytest.raises(ValueError, match="48 weights"):
        cpu_gemv_blocks(torch.randn(1, 48), blocks, "Q4_1")
    with pytest.raises(RuntimeError, match="float32"):
        cpu_gemv_blocks(torch.randn(1, 64).double(), blocks, "Q4_1")
    with pytest.raises(ValueError, match=r"uint8 \[3, 40\]"):
        Projection(torch.randn(3, 64), blocks=blocks[:, :20].contiguous(), block_format="Q4_1")


def test_gemv_blocks_bytes_count_every_block_once():
    assert gemv_blocks_bytes("Q4_1", 1, 960, 576) == 960 * 18 * 20 + (576 + 960) * 4
    assert gemv_blocks_bytes("Q8_0", 2, 10, 64) == 10 * 2 * 34 + (2 * 64 + 2 * 10) * 4


@needs_kernel
@pytest.mark.parametrize("rows", [1, 3, GEMV_MAX_ROWS, GEMV_MAX_ROWS + 1])
def test_projection_with_blocks_reads_them_up_to_the_row_threshold(rows):
    blocks = quantize(torch.randn(40, 64, generator=torch.Generator().manual_seed(rows)), "Q4_1")
    from_blocks = dequantize_reference(blocks, "Q4_1")
    # a float32 weight that is NOT the blocks' weights, so the result shows which of the two was read
    projection = Projection(from_blocks + 1.0, blocks=blocks, block_format="Q4_1")
    x = torch.randn(rows, 64)
    read = from_blocks if rows <= GEMV_MAX_ROWS else from_blocks + 1.0
    torch.testing.assert_close(projection(x), F.linear(x, read), rtol=1e-5, atol=1e-4)
    assert projection.nbytes_read(rows) == (40 * 40 if rows <= GEMV_MAX_ROWS else 40 * 64 * 4)
    projection.read_blocks = False  # the float32 weight on both sides of the threshold, 6.4× the bytes
    torch.testing.assert_close(projection(x), F.linear(x, from_blocks + 1.0), rtol=1e-5, atol=1e-4)
    assert projection.nbytes_read(rows) == 40 * 64 * 4


@needs_kernel
def test_the_models_blocks_are_its_float32_weights_bit_for_bit(model):
    """What the file stores (Q4_1 layers, Q8_0 embedding) and what HF dequantizes at load are the same weights."""
    for projection in (model.layers[0].wqkv, model.layers[29].w_down, model.lm_head):
        assert projection.reads_blocks
        assert torch.equal(dequantize_reference(projection.blocks, projection.block_format), projection.weight)
    assert {model.layers[0].wqkv.block_format, model.lm_head.block_format} == {"Q4_1", "Q8_0"}
    assert 96_000_000 < model.weight_bytes(rows=1) < 98_000_000  # what a batch-1 decode step reads
    # more rows than the kernel takes, through the layers and the lm_head (every position's logits): float32
    assert model.weight_bytes(rows=GEMV_MAX_ROWS + 1) == model.dense_weight_bytes()


@needs_kernel
def test_a_bf16_model_keeps_no_blocks():
    from kvlab.model.loading import load_model

    model, _ = load_model(device="cpu", dtype=torch.bfloat16)
    assert not model.can_read_blocks and not model.decode_reads_blocks
    assert model.weight_bytes(rows=1) == model.dense_weight_bytes()  # bf16: F.linear, 2 bytes a weight
    model.decode_reads_blocks = False  # allowed: nothing to switch
    with pytest.raises(ValueError, match="decode_reads_blocks=True"):
        model.decode_reads_blocks = True


@needs_kernel
def test_decode_reads_blocks_switches_every_projection(model):
    assert model.decode_reads_blocks
    try:
        model.decode_reads_blocks = False
        assert not any(p.reads_blocks for p in model.projections())
        assert model.weight_bytes(rows=1) == model.dense_weight_bytes()
    finally:
        model.decode_reads_blocks = True
    assert model.weight_bytes(rows=1) < model.dense_weight_bytes() / 5


@needs_kernel
def test_gemv_bench_times_three_ways_and_counts_each_ones_bytes(model):
    from kvlab.bench import gemv

    report = gemv.run(model, repeats=1)
    ways = report["ways"]
    assert list(ways) == ["F.linear (MKL; what HF runs)", "kvlab cpu_gemv, float32", "kvlab cpu_gemv, GGUF blocks"]
    assert ways["F.linear (MKL; what HF runs)"]["bytes"] == ways["kvlab cpu_gemv, float32"]["bytes"] == report["bytes"]
    assert ways["kvlab cpu_gemv, GGUF blocks"]["bytes"] == model.weight_bytes(rows=1) - model.norm_weight_bytes()
    assert all(w["gb_s"] == pytest.approx(w["bytes"] / w["seconds"] / 1e9) for w in ways.values())


@needs_kernel
@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86 instruction-set variants")
@pytest.mark.parametrize("variant, path", [(("-mno-avx512f",), "avx2"),
                                           (("-mno-avx512f", "-mno-avx2", "-mno-fma", "-mno-f16c"), "plain")],
                         ids=["avx2", "plain-c++"])
def test_every_instruction_set_path_of_the_blocks_kernel_is_right(variant, path):
    """This CPU picks one path (AVX-512, AVX2 or plain C++); build the others too and check them the same way."""
    from kvlab.kernels.cpu_gemv import build_gemv

    module = build_gemv(variant)  # ~30 s the first time, then cached
    assert module.blocks_simd_path() == path
    gen = torch.Generator().manual_seed(5)
    for block_format, gemv in (("Q4_1", module.gemv_q4_1), ("Q8_0", module.gemv_q8_0)):
        x, blocks = torch.randn(3, 96, generator=gen), quantize(torch.randn(11, 96, generator=gen), block_format)
        torch.testing.assert_close(gemv(x, blocks), gemv_blocks_reference(x, blocks, block_format), rtol=1e-5, atol=1e-4)
        assert torch.equal(gemv(torch.eye(96), blocks), dequantize_reference(blocks, block_format).t())
    x, weight = torch.randn(2, 40, generator=gen), torch.randn(7, 40, generator=gen)
    torch.testing.assert_close(module.gemv(x, weight), gemv_reference(x, weight), rtol=1e-5, atol=1e-4)
