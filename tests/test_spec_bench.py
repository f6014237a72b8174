"""The speculative-decoding benchmark at tiny sizes on the real model: every part measured, standard JSON, the
claim beside the numbers, the same tokens as plain decoding, a verify pass timed at each width, the layer sweep's
choice, and a CLI that fails when tokens changed; its figures draw what it measured."""
from __future__ import annotations

import json

import pytest

from kvlab.bench import spec
from kvlab.bench.__main__ import main
from kvlab.spec import layer_candidates
from kvlab.viz.spec_figures import layer_sweep_figure, speedup_figure, tokens_per_pass_figure, verify_cost_figure

TINY = dict(new_tokens=8, ks=(2,), sweep_k=2, sweep_tokens=6, context=32, widths=(1, 3), repeats=1)


@pytest.fixture(scope="module")
def report(model, tokenizer):
    return spec.run(model, tokenizer, progress=False, **TINY)


def test_report_has_every_part_and_the_claim_and_saves_as_standard_json(report, tmp_path):
    assert {"device", "date", "prompts", "sizes", "layer_sweep", "speed", "verify_cost", "same_tokens", "claims",
            "runtime_s", "load_average"} <= set(report)
    assert [c["id"] for c in report["claims"]] == ["22"]
    assert all(c["claim"] == spec.CLAIM and c["measured"] and c["verdict"] and c["why"] for c in report["claims"])
    path = spec.save(report, tmp_path)
    assert path.name.startswith("spec_cpu")
    json.dumps(json.loads(path.read_text()), allow_nan=False)


def test_every_prompt_drafter_and_k_is_measured_with_the_same_tokens(report):
    rows = report["speed"]["rows"]
    assert {(r["prompt"], r["drafter"], r["k"]) for r in rows} == {(p, d, 2) for p in report["prompts"]
                                                                   for d in ("ngram", "self")}
    assert report["same_tokens"] and all(r["same_tokens"] for r in rows)
    for r in rows:
        assert r["speedup"] == pytest.approx(r["tok_s"] / r["plain_tok_s"])
        if r["proposed"]:
            assert r["alpha"] == pytest.approx(r["accepted"] / r["proposed"])
            assert 1 <= r["tokens_per_pass"] <= 3


def test_the_sweep_measures_each_candidate_and_chooses_one(report, model):
    sweep = report["layer_sweep"]
    assert [r["name"] for r in sweep["rows"]] == list(layer_candidates(model.config.num_layers))
    assert sweep["best"] in {r["name"] for r in sweep["rows"]}
    assert all(0 < r["weight_bytes"] < sweep["target_weight_bytes"] for r in sweep["rows"])


def test_the_verify_pass_is_timed_at_each_width_against_a_decode_step(report):
    verify = report["verify_cost"]
    assert [r["width"] for r in verify["rows"]] == [1, 3] and verify["rows"][0]["relative"] == 1.0
    assert verify["rows"][1]["weight_bytes"] >= verify["rows"][0]["weight_bytes"]


def test_the_figures_draw_the_report(report):
    assert len(speedup_figure(report).data) == 4  # two drafters × two prompt kinds
    assert len(verify_cost_figure(report).data[0].x) == 2
    assert len(layer_sweep_figure(report).data) == 2
    tokens_per_pass_figure(report)


def test_the_cli_fails_when_tokens_changed(monkeypatch):
    monkeypatch.setattr("kvlab.load_model", lambda device: (None, None))
    monkeypatch.setattr(spec, "run", lambda model, tokenizer, **sizes: {"same_tokens": False})
    monkeypatch.setattr(spec, "print_report", lambda report: None)
    with pytest.raises(SystemExit, match="differ from plain greedy"):
        main(["spec", "--no-save"])
