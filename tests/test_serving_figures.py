"""The serving figures and the serving lab draw what the engine's step log says, from real runs of the real model
(tiny requests on a StepClock: the same schedule on every machine)."""
from __future__ import annotations

import math

import pytest

import kvlab
from kvlab.engine.metrics import percentile
from kvlab.traces import chat_requests
from kvlab.viz.paged_figures import pool_figure
from kvlab.viz.serving_figures import (FUTURE_OPACITY, STATES, batch_composition_figure, gantt_figure,
                                       latency_throughput_figure, pool_snapshot, running_metrics,
                                       running_metrics_figure, slot_occupancy_figure, step_composition_figure,
                                       step_cost_figure, timeline)
from kvlab.viz.serving_widget import LAB_MAX_OUTPUT, LAB_MAX_PROMPT, PRESETS, ServingLab, lab_requests

TEXT = ("The KV cache keeps the keys and values of every earlier token, so that a new token attends to them "
        "instead of recomputing them at every step of generation.")
BLOCK = 4  # tokens per block: a few tokens fill a block, so a tiny pool runs out fast


@pytest.fixture(scope="module")
def prompt_ids(tokenizer):
    ids = tokenizer.encode(TEXT)
    return [ids[i: i + 6] for i in range(0, 24, 6)]  # four 6-token prompts of real text


def requests(prompt_ids, outputs, arrivals=(0, 0, 0, 0)):
    return [kvlab.Request(p, n, float(a)) for p, n, a in zip(prompt_ids, outputs, arrivals)]


def serve(model, tokenizer, reqs, **options):
    options = {"cache": "paged", "block_size": BLOCK, "max_num_batched_tokens": 16, "stop_at_eos": False,
               "clock": kvlab.StepClock(), **options}
    return kvlab.serve(model, tokenizer, reqs, **options)


@pytest.fixture(scope="module")
def roomy(model, tokenizer, prompt_ids):
    """Two slots, staggered arrivals, a pool with room for everyone: requests queue but nobody is preempted."""
    return serve(model, tokenizer, requests(prompt_ids, [3, 6, 4, 5], [0, 0, 1, 4]), max_num_seqs=2)


@pytest.fixture(scope="module")
def tiny_pool(model, tokenizer, prompt_ids):
    """Three slots and 6 blocks of 4 tokens; each request grows to 13 tokens (4 blocks): the pool runs out."""
    return serve(model, tokenizer, requests(prompt_ids, [8, 8, 8, 8]), max_num_seqs=3, num_blocks=6)


def cells_in(fig, name: str, seq_id: int) -> list[float]:
    """Where a trace of the Gantt chart draws cells / markers for one request (x of each)."""
    for trace in fig.data:
        if trace.name == name:
            xs = trace.base if trace.type == "bar" else trace.x
            return sorted(x for y, x in zip(trace.y, xs) if y == f"seq {seq_id}")
    return []


def test_gantt_has_a_row_per_request_and_a_cell_for_every_step_the_log_places_it_in(roomy):
    fig = gantt_figure(roomy)
    rows = set(fig.layout.yaxis.categoryarray)
    assert rows == {f"seq {o.seq_id}" for o in roomy.outputs} and len(rows) == 4
    drawn = {f"seq {o.seq_id}": set() for o in roomy.outputs}
    for trace in fig.data:
        if trace.type == "bar":
            for y, base in zip(trace.y, trace.base):
                drawn[y].add(int(base + 0.5))  # step k's cell spans k − ½ … k + ½
    for o in roomy.outputs:
        logged = {s.index for s in roomy.steps
                  if o.seq_id in {*s.decode, *dict(s.prefill), *s.running, *s.waiting, *s.finished}}
        assert drawn[f"seq {o.seq_id}"] == logged
    # the staggered arrivals with two slots make requests wait: waiting cells exist, and only where the log says
    waiting = [(y, int(b + 0.5)) for t in fig.data if t.name == STATES["waiting"][1] for y, b in zip(t.y, t.base)]
    assert waiting and all(int(y.split()[1]) in roomy.steps[k].waiting for y, k in waiting)


def test_decode_cells_equal_generated_tokens_minus_the_one_the_prefill_emitted(roomy):
    fig = gantt_figure(roomy)
    decode = STATES["decode"][1]
    for o in roomy.outputs:
        assert o.num_preemptions == 0
        expected = [s.index - 0.5 for s in roomy.steps if o.seq_id in s.decode]
        assert cells_in(fig, decode, o.seq_id) == expected
        assert len(expected) == len(o.token_ids) - 1
        finished = cells_in(fig, "finished", o.seq_id)
        assert finished == [next(s.index for s in roomy.steps if o.seq_id in s.finished) + 0.5]


def test_a_tiny_pool_preempts_and_the_gantt_marks_each_preemption_where_the_log_has_it(tiny_pool):
    assert tiny_pool.num_preemptions > 0
    fig = gantt_figure(tiny_pool)
    line = timeline(tiny_pool.steps, tiny_pool.outputs)
    logged = sorted((seq, s.index) for s in tiny_pool.steps for seq in s.preempted)
    assert sorted(line.preempted) == logged
    for o in tiny_pool.outputs:
        marks = cells_in(fig, "preempted", o.seq_id)
        assert marks == sorted(k - 0.5 for seq, k in logged if seq == o.seq_id)
        assert len(marks) == o.num_preemptions
        if o.num_preemptions:  # it prefilled again what it had: recompute cells, after its first preemption
            recompute = cells_in(fig, STATES["recompute"][1], o.seq_id)
            assert recompute and min(recompute) > min(marks)
        # every token came out of exactly one drawn cell: a decode cell or a prefill that caught up
        emitted = [c for c in line.of(o.seq_id) if c.emitted]
        assert len(emitted) == len(o.token_ids)
        assert len(line.of(o.seq_id, "decode")) == len(o.token_ids) - sum(c.kind != "decode" for c in emitted)


def test_gantt_replay_fades_the_later_steps_and_draws_now_at_the_end_of_the_step(roomy):
    k = 3
    fig = gantt_figure(roomy, upto_step=k)
    now = [s for s in fig.layout.shapes if s.name == "now"]
    assert len(now) == 1 and now[0].x0 == now[0].x1 == k + 0.5
    assert any(f"after step {k}" in a.text for a in fig.layout.annotations)
    for trace in fig.data:
        for step, opacity in zip(trace.customdata, trace.marker.opacity):
            assert opacity == (1.0 if step <= k else FUTURE_OPACITY)
    timed = gantt_figure(roomy, upto_step=k, x="time")
    assert [s for s in timed.layout.shapes if s.name == "now"][0].x0 == roomy.steps[k].end_s
    with pytest.raises(ValueError, match="upto_step"):
        gantt_figure(roomy, upto_step=len(roomy.steps))


def test_running_metrics_grow_with_the_replay_and_end_at_the_results_metrics(roomy):
    series = [running_metrics(roomy, s.index) for s in roomy.steps]
    tokens = [m["output_tokens"] for m in series]
    assert tokens == sorted(tokens) and tokens[-1] == roomy.output_tokens
    assert tokens[0] == roomy.steps[0].tokens_out
    final, metrics = series[-1], roomy.metrics()
    for key in ("throughput_tok_s", "ttft_p50_s", "ttft_p99_s"):
        assert math.isclose(final[key], metrics[key])
    k = 2
    firsts = [o.ttft_s for o in roomy.outputs if o.first_token_s <= roomy.steps[k].end_s]
    assert series[k]["first_tokens"] == len(firsts) and series[k]["ttft_p50_s"] == percentile(firsts, 50)
    fig = running_metrics_figure(roomy, upto_step=k)
    assert list(fig.data[0].y) == [m["throughput_tok_s"] for m in series]
    assert sorted(fig.data[1].customdata) == sorted(o.seq_id for o in roomy.outputs)  # one TTFT point per request
    assert {s.x0 for s in fig.layout.shapes if s.name == "now"} == {k}


def test_batch_composition_stacks_each_steps_prefill_and_decode_tokens_under_the_budget(tiny_pool):
    fig = batch_composition_figure(tiny_pool)
    assert list(fig.data[0].y) == [s.prefill_tokens for s in tiny_pool.steps]
    assert list(fig.data[1].y) == [s.decode_tokens for s in tiny_pool.steps]
    assert any(s.y0 == 16 for s in fig.layout.shapes)  # max_num_batched_tokens, read from the result
    assert all(s.prefill_tokens + s.decode_tokens <= 16 for s in tiny_pool.steps)
    step = next(s for s in tiny_pool.steps if s.prefill and s.decode)
    one = step_composition_figure(step, budget=16)
    chunks = {t.name: t.x[0] for t in one.data if t.name != "unused budget"}
    assert chunks == {**{f"seq {s}": 1 for s in step.decode}, **{f"seq {s}": n for s, n in step.prefill}}
    assert sum(t.x[0] for t in one.data) == 16


def test_static_batching_keeps_fewer_slots_busy_than_continuous_on_the_same_requests(model, tokenizer, prompt_ids):
    reqs = requests(prompt_ids, [2, 8, 2, 8])  # all at once; each static batch waits for its longest request
    runs = {policy: serve(model, tokenizer, reqs, max_num_seqs=2, policy=policy) for policy in ("static", "continuous")}
    fig = slot_occupancy_figure(runs)
    assert [t.name.split(":")[0] for t in fig.data[::2]] == ["static", "continuous"]
    for trace_occupancy, trace_kv, run in zip(fig.data[::2], fig.data[1::2], runs.values()):
        assert list(trace_occupancy.y) == [s.occupancy for s in run.steps]
        assert list(trace_kv.y) == [s.kv_usage for s in run.steps]
    assert runs["static"].mean_occupancy() < runs["continuous"].mean_occupancy()
    assert len(runs["static"].steps) > len(runs["continuous"].steps)


def test_latency_throughput_figure_puts_each_rate_at_its_throughput_under_the_ttft_line():
    points = [{"rate_per_s": 4, "throughput_tok_s": 60, "ttft_p50_s": 0.3, "ttft_p99_s": 2.0},
              (1, 20, 0.05, 0.1), (2, 40, 0.1, 0.4)]
    fig = latency_throughput_figure(points)
    p50, p99 = fig.data
    assert list(p50.x) == [20, 40, 60] and list(p50.y) == pytest.approx([50, 100, 300])
    assert list(p99.y) == pytest.approx([100, 400, 2000]) and list(p99.text) == ["1 req/s", "2 req/s", "4 req/s"]
    assert [s.y0 for s in fig.layout.shapes] == [500] and fig.layout.annotations[0].text == "TTFT 500 ms"
    with pytest.raises(ValueError, match="a point is"):
        latency_throughput_figure([(1, 2, 3)])


def test_step_cost_figure_draws_each_measured_batch_beside_the_flat_cost_line():
    rows = [{"batch": 4, "step_ms": 25.0, "tok_s": 160.0}, {"batch": 1, "step_ms": 20.0, "tok_s": 50.0}]
    step, measured, flat = step_cost_figure(rows).data
    assert list(step.x) == [1, 4] and list(step.y) == [20.0, 25.0]
    assert list(measured.y) == [50.0, 160.0] and list(flat.y) == [50.0, 200.0]  # batch 4 at batch 1's step cost
    with pytest.raises(ValueError, match="no step costs"):
        step_cost_figure([])


def test_a_pool_snapshot_draws_the_same_pool_as_the_live_cache(model, tokenizer, prompt_ids):
    engine = kvlab.build_engine(model, tokenizer, requests(prompt_ids, [8, 8, 8, 8]), cache="paged", num_blocks=6,
                                block_size=BLOCK, max_num_seqs=3, max_num_batched_tokens=16, stop_at_eos=False,
                                clock=kvlab.StepClock())
    for _ in range(3):
        engine.step()
    snapshot = pool_snapshot(engine.cache)
    live, copied = pool_figure(engine.cache), pool_figure(snapshot)
    assert live.data[0].z == copied.data[0].z and live.data[0].text == copied.data[0].text
    assert live.layout.title.text == copied.layout.title.text
    engine.step()  # the cache moves on; the snapshot does not
    assert pool_figure(snapshot).data[0].text == copied.data[0].text
    engine.abandon()


@pytest.fixture(scope="module")
def lab(model, tokenizer, prompt_ids):
    reqs = requests(prompt_ids, [6, 6, 6, 6], [0, 0, 1, 2])
    return ServingLab(model, tokenizer, requests_fn=lambda n, rate: reqs[:n], num_requests=4, max_num_seqs=3,
                      max_num_batched_tokens=16, block_size=BLOCK, step_s=1.0)


def now_x(view) -> float:
    return next(s.x0 for s in view.layout.shapes if s.name == "now")


def faded(view) -> int:
    """Gantt cells and markers drawn faded: after the replayed step."""
    return sum(o < 1 for t in view.data for o in t.marker.opacity)


def test_lab_step_and_slider_redraw_the_replay_at_the_chosen_step(lab):
    assert lab.slider.value == 0 and lab.slider.max == len(lab.result.steps) - 1 >= 4
    assert now_x(lab.gantt_view) == 0.5 and "Step 0 " in lab.step_label.value
    pool_before, faded_before = lab.pool_view.data[0].text, faded(lab.gantt_view)
    lab.step_button.click()  # no front end shows the plots here: the step makes them anew
    assert lab.slider.value == 1 and now_x(lab.gantt_view) == 1.5 and "Step 1 " in lab.step_label.value
    drawn_in_step_1 = sum(1 for c in timeline(lab.result.steps, lab.result.outputs).cells if c.step == 1)
    markers_in_step_1 = len(lab.result.steps[1].finished) + len(lab.result.steps[1].preempted)
    assert faded(lab.gantt_view) == faded_before - drawn_in_step_1 - markers_in_step_1
    assert now_x(lab.metrics_view) == 1 and now_x(lab.occupancy_view) == 1

    views = lab._views()
    for view in views:
        view._view_count = 1  # as a browser showing them reports: now the replay edits the shown plots in place
    lab.slider.value = 4
    assert all(a is b for a, b in zip(lab._views(), views)) and all(a is b for a, b in zip(lab.plots.children, views))
    assert now_x(lab.gantt_view) == 4.5 and "Step 4 " in lab.step_label.value
    assert [list(t.marker.opacity) for t in lab.gantt_view.data] == \
        [list(t.marker.opacity) for t in gantt_figure(lab.result, upto_step=4).data]
    assert now_x(lab.metrics_view) == 4 and now_x(lab.occupancy_view) == 4
    assert lab.pool_view.layout.title.text.startswith("After step 4:")
    assert lab.pool_view.data[0].text != pool_before  # the blocks moved on
    assert lab.batch_view.layout.title.text.startswith("Step 4:")
    lab.slider.value = lab.slider.max
    lab.step_button.click()  # past the end: stays on the last step
    assert lab.slider.value == lab.slider.max and lab.message.value == ""
    for view in views:
        view._view_count = 0


def test_lab_bad_control_values_give_a_message_and_keep_the_last_run(lab):
    result = lab.result
    for control, bad, words in ((lab.pool, "lots", "pool blocks must be a whole number"),
                                (lab.pool, "2", "the pool has only 2"),
                                (lab.max_num_seqs, 0, "max_num_seqs must be a positive integer"),
                                (lab.budget, -5, "max_num_batched_tokens"),
                                (lab.rate, -1.0, "request rate"),
                                (lab.num_requests, 0, "number of requests")):
        good = control.value
        control.value = bad
        lab.run_button.click()
        assert words in lab.message.value and "Traceback" not in lab.message.value, (bad, lab.message.value)
        assert lab.result is result and not lab.run_button.disabled
        control.value = good
    with pytest.raises(ValueError, match="the run has steps 0 to"):
        lab.show_step(len(result.steps))
    with pytest.raises(ValueError, match="unknown policy"):
        ServingLab(lab.model, lab.tokenizer, policy="fifo", run=False)


def test_lab_small_pool_preset_runs_a_new_replay_that_preempts(lab):
    before = lab.result
    assert before.num_preemptions == 0
    lab.preset.value = "small pool: preemption"
    assert lab.pool.value == PRESETS["small pool: preemption"]["pool"] == "8"
    lab.run_button.click()
    assert lab.message.value == "" and lab.result is not before and lab.result.num_preemptions > 0
    assert lab.slider.value == 0 and lab.slider.max == len(lab.result.steps) - 1
    marks = next(t for t in lab.gantt_view.data if t.name == "preempted")
    assert len(marks.x) == lab.result.num_preemptions
    assert set(lab.runs) == {"continuous"}  # the same policy: the new run replaced the old one


def test_lab_swap_preset_swaps_to_the_tier_gives_the_same_tokens_and_draws_the_traffic(lab):
    lab.preset.value = "small pool: preemption"
    lab.run_button.click()
    recomputed = lab.result
    lab.preset.value = "small pool: swap to the tier"
    assert lab.preemption.value == "swap" and lab.pool.value == "8"
    lab.run_button.click()
    swapped = lab.result
    assert lab.message.value == "" and swapped.token_ids == recomputed.token_ids
    moved = [len(s.swapped_out) for s in swapped.steps]
    assert sum(moved) == swapped.num_preemptions > 0
    out = next(t for t in lab.tier_view.data if t.name == "swapped out")
    assert list(out.y) == moved
    in_tier = next(t for t in lab.tier_view.data if t.name == "in the tier")
    assert max(in_tier.y) > 0 and in_tier.y[-1] == 0, "blocks go to the tier and all come back"
    lab.show_step(1)
    assert {sh.x0 for sh in lab.tier_view.layout.shapes if sh.name == "now"} == {1}


def test_lab_requests_are_chat_shaped_real_text_within_the_labs_sizes_arriving_in_order(tokenizer):
    reqs = lab_requests(tokenizer, 12, rate_per_s=5.0, seed=3)
    assert len(reqs) == 12 and reqs == lab_requests(tokenizer, 12, rate_per_s=5.0, seed=3)
    assert reqs == chat_requests(tokenizer, 12, seed=3, rate_per_s=5.0, prompt_mean=32, output_mean=16,
                                 max_prompt=48, max_output=24)
    assert all(1 <= len(r.prompt) <= LAB_MAX_PROMPT and 1 <= r.max_new_tokens <= LAB_MAX_OUTPUT for r in reqs)
    assert len({len(r.prompt) for r in reqs}) > 3  # long-tailed lengths, not one size
    arrivals = [r.arrival_s for r in reqs]
    assert arrivals[0] == 0 and arrivals == sorted(arrivals) and arrivals[-1] > 0
    assert all(tokenizer.decode(r.prompt).strip() for r in reqs)  # real text
    with pytest.raises(ValueError, match="rate_per_s"):
        lab_requests(tokenizer, 3, rate_per_s=0)


def test_lab_keeps_the_last_run_of_each_policy_side_by_side_in_the_occupancy_plot(lab):
    continuous = lab.runs["continuous"][1]
    lab.policy.value = "static"
    lab.run_button.click()
    assert lab.message.value == "" and lab.result.policy == "static" and lab.runs["continuous"][1] is continuous
    names = [t.name for t in lab.occupancy_view.data if t.showlegend is not False]
    assert [n.split(":")[0] for n in names] == ["continuous", "static"]
    assert list(lab.occupancy_view.data[2].y) == [s.occupancy for s in lab.result.steps]


def test_a_lab_made_without_running_has_no_plots_until_run(model, tokenizer, prompt_ids):
    reqs = requests(prompt_ids, [2, 2, 2, 2])
    lab = ServingLab(model, tokenizer, requests_fn=lambda n, rate: reqs[:n], num_requests=2, block_size=BLOCK,
                     step_s=1.0, run=False)
    assert lab.result is None and lab.plots.children == () and lab.step_button.disabled
    lab.step_button.click()  # disabled in the browser; in Python it says why
    assert "press run" in lab.message.value
    lab.run_button.click()
    assert len(lab.plots.children) == 6 and not lab.step_button.disabled
    assert lab.gantt_view.layout.yaxis.categoryarray == ("seq 0", "seq 1")
