"""The versus-hf benchmark compares like with like: same prompt, same tokens, and reports the bandwidth bound."""
from __future__ import annotations

import pytest

from kvlab.bench.versus_hf import HF, KVLAB_BLOCKS, KVLAB_FLOAT32, compare_with_hf

pytestmark = pytest.mark.oracle


@pytest.fixture(scope="module")
def hf_model():
    from kvlab.bench.versus_hf import load_hf_model

    return load_hf_model()


def test_report_has_identical_tokens_and_a_consistent_bound(model, tokenizer, hf_model):
    report = compare_with_hf(model, tokenizer, "The capital of France is", new_tokens=6, runs=1, hf_model=hf_model)
    engines = report["engines"]
    blocks = model.can_read_blocks  # False where the CPU kernel did not build: float32 only
    assert list(engines) == [HF, KVLAB_FLOAT32] + ([KVLAB_BLOCKS] if blocks else [])
    assert report["kvlab_default"] == (KVLAB_BLOCKS if blocks else KVLAB_FLOAT32)
    assert model.decode_reads_blocks == blocks  # the comparison switched engines and put the default back
    for name, e in engines.items():
        assert e["tokens_identical"] and e["identical_before_first_difference"] == 6, name
        assert e["bound_tok_s"] == pytest.approx(report["copy_gb_s"] * 1e9 / e["bytes_per_step"])
        assert e["fraction_of_bound"] == pytest.approx(e["decode_tok_s"] / e["bound_tok_s"])
    # the weights and the K/V so far: float32 for HF and kvlab's float32 engine, the file's blocks for the default
    assert engines[HF]["bytes_per_step"] == engines[KVLAB_FLOAT32]["bytes_per_step"] > model.dense_weight_bytes()
    default = engines[report["kvlab_default"]]
    assert report["ratio"] == pytest.approx(default["decode_tok_s"] / engines[HF]["decode_tok_s"])
    if blocks:
        assert model.weight_bytes(rows=1) < engines[KVLAB_BLOCKS]["bytes_per_step"] < model.dense_weight_bytes() / 5


@pytest.mark.parametrize("kwargs, named", [({"new_tokens": 1}, "new_tokens"), ({"runs": 0}, "runs")])
def test_bad_arguments_are_named(model, tokenizer, kwargs, named):
    with pytest.raises(ValueError, match=named):
        compare_with_hf(model, tokenizer, "x", hf_model=object(), **kwargs)
