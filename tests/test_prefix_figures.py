"""The prefix-caching figures draw exactly the measured numbers they are given."""
from __future__ import annotations

from kvlab.viz.prefix_figures import prompt_tokens_figure, ttft_figure


def scenario_report() -> dict:
    rows = [{"label": "first question", "prompt_tokens": 1100, "cached_tokens": 0, "computed_tokens": 1100,
             "cold_ttft_s": 2.5, "warm_ttft_s": 2.4},
            {"label": "a much longer second question that needs cutting", "prompt_tokens": 1090,
             "cached_tokens": 1072, "computed_tokens": 18, "cold_ttft_s": 2.4, "warm_ttft_s": 0.1}]
    return {"name": "chatbot", "requests": rows, "cold_ttft_s": 2.45, "warm_ttft_s": 0.1, "ttft_reduction": 0.96,
            "hit_rate": 1072 / 2190}


def test_ttft_figure_shows_cold_and_warm_milliseconds_per_request_and_the_median_reduction():
    fig = ttft_figure(scenario_report())
    cold, warm = fig.data
    assert list(cold.y) == [2500, 2400] and list(warm.y) == [2400, 100]
    assert cold.x[1].startswith("2. a much longer") and cold.x[1].endswith("…") and len(cold.x[1]) <= 31
    assert "1072 from the cache, 18 computed" in warm.hovertext[1]
    assert "2450 ms cold → 100 ms warm (96% less" in fig.layout.title.text


def test_prompt_tokens_figure_stacks_cached_and_prefilled_tokens():
    fig = prompt_tokens_figure(scenario_report())
    cached, computed = fig.data
    assert list(cached.x) == [0, 1072] and list(computed.x) == [1100, 18]
    assert fig.layout.barmode == "stack" and "49% of prompt tokens" in fig.layout.title.text
