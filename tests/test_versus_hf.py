"""The versus-hf benchmark compares like with like: same prompt, same tokens, and reports the bandwidth bound."""
from __future__ import annotations

import pytest

from kvlab.bench.versus_hf import compare_with_hf

pytestmark = pytest.mark.oracle


@pytest.fixture(scope="module")
def hf_model():
    from kvlab.bench.versus_hf import load_hf_model

    return load_hf_model()


def test_report_has_identical_tokens_and_a_consistent_bound(model, tokenizer, hf_model):
    report = compare_with_hf(model, tokenizer, "The capital of France is", new_tokens=6, runs=1, hf_model=hf_model)
    assert report["tokens_identical"] and report["tokens_identical_before_first_difference"] == 6
    assert report["bytes_per_step"] > model.weight_bytes()  # the weights and the K/V so far
    assert report["bound_tok_s"] == pytest.approx(report["copy_gb_s"] * 1e9 / report["bytes_per_step"])
    assert report["kvlab_fraction_of_bound"] == pytest.approx(report["kvlab_decode_tok_s"] / report["bound_tok_s"])
    assert report["ratio"] == pytest.approx(report["kvlab_decode_tok_s"] / report["hf_decode_tok_s"])


@pytest.mark.parametrize("kwargs, named", [({"new_tokens": 1}, "new_tokens"), ({"runs": 0}, "runs")])
def test_bad_arguments_are_named(model, tokenizer, kwargs, named):
    with pytest.raises(ValueError, match=named):
        compare_with_hf(model, tokenizer, "x", hf_model=object(), **kwargs)
