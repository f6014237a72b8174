"""The CPU matrix-vector kernel and the Projection that uses it compute x @ Wᵀ like F.linear, for any shape."""
from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from kvlab.kernels.cpu_gemv import cpu_gemv, gemv_bytes, gemv_reference, load_gemv
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
    assert 538_000_000 <= model.weight_bytes() < 540_000_000
