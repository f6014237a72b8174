"""The quantization lab measures the chosen scheme on the real model when measure is pressed, and shows those
measurements: the cache's bytes per token, the greedy texts side by side, the error heatmap, perplexity."""
from __future__ import annotations

import html

import pytest
import traitlets

import kvlab
from kvlab.bench.quant_accuracy import perplexity, quantized_cache
from kvlab.bench.quant_capture import strongest_outlier
from kvlab.viz.quant_widget import QuantizationLab, group_note, quantization_lab

def rows_of(z) -> list[list[float]]:
    return [list(row) for row in z]


SMALL = dict(new_tokens=8, ppl_windows=1, ppl_tokens=64)  # the widget's defaults are 24 tokens and 2 × 128


@pytest.fixture(scope="module")
def lab(model, tokenizer):
    return quantization_lab(model, tokenizer, scheme="int4", group_size=32, compare="kivi2", **SMALL)


def test_a_new_lab_waits_for_the_button_and_offers_only_group_sizes_that_divide_the_head(model, tokenizer):
    fresh = QuantizationLab(model, tokenizer, **SMALL)
    assert fresh.result is None and "press measure" in fresh.status.value
    assert list(fresh.group_buttons.options) == [8, 16, 32, 64]  # 128 and 256 do not divide head_dim 64
    with pytest.raises(traitlets.TraitError):
        fresh.group_buttons.value = 128
    assert fresh.measure_button.description == "measure"
    assert list(fresh.scheme_menu.options) == ["int8", "fp8", "int4", "kivi2"]
    fresh.scheme_menu.value = "kivi2"
    assert "values only" in fresh.group_help.value and "per channel" in fresh.group_help.value
    with pytest.raises(ValueError, match="unknown quantization scheme"):
        QuantizationLab(model, tokenizer, scheme="int3", **SMALL)


def test_group_note_says_what_the_group_means_for_each_scheme():
    assert group_note("int8", 64, 64, 16) == ("int8: one float16 scale per token and KV head for the whole head "
                                              "(the default).")
    assert group_note("int4", 16, 64, 16) == "int4: one float16 scale per token and KV head for each 16 channels."
    assert "each block of 16 tokens" in group_note("kivi2", 32, 64, 16)


def test_first_measurement_shows_int4_and_picks_the_layer_with_the_strongest_outlier(lab):
    assert lab.result["scheme"] == "int4" and lab.capture.scheme.name == "int4"
    assert lab.compare_capture.scheme.name == "kivi2"
    layer, head, _, _ = strongest_outlier(lab.baseline.k)
    assert (lab.layer_slider.value, lab.head_buttons.value) == (layer, head)
    assert "measured int4 g32 in" in lab.status.value and lab.message.value == ""
    assert f"{lab.cache.bytes_per_token():,} bytes per token" in lab.memory_text.value


def test_measure_after_choosing_kivi2_updates_memory_texts_and_heatmap_from_the_new_cache(lab, model, tokenizer):
    view = lab.error_view
    before_z = [rows_of(trace.z) for trace in view.data]
    lab.scheme_menu.value, lab.compare_menu.value = "kivi2", "int4"
    lab.measure_button.click()

    expected = quantized_cache(model, "kivi2", 32, 16).bytes_per_token()
    assert lab.cache.scheme.name == "kivi2" and lab.cache.bytes_per_token() == expected
    assert f"<b>kivi2 g32: {expected:,} bytes per token</b>" in lab.memory_text.value
    assert lab.result["bytes_per_token"] == expected
    assert [t.x for t in lab.memory_view.data] == [(expected,)]  # the small bar, against the two lines

    # the side-by-side texts: the lab's quantized continuation is what kvlab.generate gives through kivi2
    again = kvlab.generate(model, tokenizer, [lab.prompt_ids], max_new_tokens=8, stop_at_eos=False, cache="quantized",
                           scheme="kivi2", group_size=32)
    assert lab.result["token_ids"] == again.token_ids[0]
    first = lab.result["first_difference"][0]
    assert first == next((i for i, (a, b) in enumerate(zip(again.token_ids[0], lab.baseline.token_ids)) if a != b), 8)
    same = html.escape(tokenizer.decode(again.token_ids[0][:first]))
    assert "<th>kivi2 g32</th>" in lab.texts.value and same in lab.texts.value
    if first < 8:
        assert f"identical for the first {first} of 8 tokens" in lab.texts.value
        assert lab.texts.value.count("class='kvlab-diff'") == 2  # both columns marked from the first difference
        assert html.escape(tokenizer.decode(again.token_ids[0][first:])) in lab.texts.value
    else:
        assert "identical for all 8 tokens" in lab.texts.value and "kvlab-diff" not in lab.texts.value

    assert lab.error_view is view  # the same live figure, redrawn in place
    assert [rows_of(t.z) for t in view.data] != before_z
    layer, head = lab.layer_slider.value, lab.head_buttons.value
    assert rows_of(view.data[1].z) == lab.capture.quant_error(layer, head).tolist()
    assert "kivi2 g32" in view.layout.annotations[1].text and "int4 g32" in view.layout.annotations[2].text


def test_perplexity_line_is_the_measured_perplexity_through_the_chosen_cache(lab, model):
    row = lab.result
    measured = perplexity(model, lab.baseline.windows,
                          lambda n: quantized_cache(model, row["scheme"], row["group_size"], n))
    assert row["perplexity"] == pytest.approx(measured, rel=1e-6)
    assert row["perplexity_delta"] == pytest.approx(measured - lab.baseline.perplexity, rel=1e-6)
    assert f"({row['perplexity_delta']:+.3f})" in lab.perplexity_text.value.replace("<b>", "").replace("</b>", "")


def test_layer_slider_redraws_the_heatmap_from_the_captures_without_measuring_again(lab):
    result, capture = lab.result, lab.capture
    lab.layer_slider.value = 2
    lab.head_buttons.value = 1
    assert lab.result is result and lab.capture is capture
    assert lab.error_view.layout.title.text.startswith("Layer 2, KV head 1:")
    assert rows_of(lab.error_view.data[0].z) == capture.k[2, :, 1].abs().tolist()
    assert lab.absmax_view.layout.title.text.startswith("Layer 2, KV head 1:")


def test_a_group_size_the_head_cannot_take_is_refused_with_a_message_and_changes_nothing(lab):
    result = lab.result
    with pytest.raises(ValueError, match="group_size 128 does not divide head_dim 64"):
        lab.measure("int4", 128)
    with pytest.raises(ValueError, match="group_size 48 is not supported"):
        lab.measure("int4", 48)
    assert lab.result is result and lab.group_buttons.value in lab.group_options


def test_choosing_a_scheme_moves_the_group_to_its_usual_size(lab):
    """int8 / fp8 start at one scale per head (64 channels), int4 / kivi2 at groups of 32 — so picking int8 gives
    int8's usual 11,880 B per token rather than keeping int4's 32-channel groups."""
    lab.scheme_menu.value = "int8"
    assert lab.group_buttons.value == 64
    lab.scheme_menu.value = "kivi2"
    assert lab.group_buttons.value == 32
