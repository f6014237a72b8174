"""The roofline and GQA figures draw what they are given: measured points under measured roofs, bars per variant."""
from __future__ import annotations

from kvlab.bench.roofline import Point
from kvlab.bench.roofs import CopyBandwidth, MatmulThroughput, Roofs
from kvlab.viz.gqa_figures import bytes_per_token_figure, gqa_figure
from kvlab.viz.roofline_figures import (attention_bandwidth_figure, batch_tradeoff_figure, per_token_figure,
                                        roofline_figure)

ROOFS = Roofs(CopyBandwidth("cpu", bytes_moved=20 * 10**9, seconds=1.0),  # 20 GB/s
              MatmulThroughput("cpu", "float32", size=1000, seconds=0.02))  # 2e9 FLOP / 0.02 s = 100 GFLOP/s


def _point(kind, batch=1, context=64, intensity=1.0, seconds=0.01):
    return Point(f"{kind} b{batch} c{context}", kind, batch, 1 if kind != "prefill" else 32, context,
                 flops=intensity * 1e6, bytes=1e6, seconds=seconds)


def test_roofline_bends_at_the_measured_ridge_and_carries_every_point():
    assert ROOFS.ridge_flop_per_byte == 5.0
    points = [_point("decode", intensity=0.5), _point("prefill", intensity=50), _point("attention", intensity=1.5)]
    fig = roofline_figure(ROOFS, points)
    roof = fig.data[0]
    assert list(roof.x)[1] == 5.0 and list(roof.y)[1:] == [100e9, 100e9]  # ridge, then the flat compute roof
    assert roof.y[0] == roof.x[0] * 20e9  # the sloped bandwidth roof
    by_name = {t.name: t for t in fig.data[1:]}
    assert set(by_name) == {"decode", "prefill", "attention"}
    assert list(by_name["prefill"].x) == [50.0] and list(by_name["prefill"].y) == [50e6 / 0.01]


def test_attention_bandwidth_has_a_line_per_batch_sorted_by_context():
    points = [_point("attention", b, c, seconds=c * 1e-6) for b in (1, 4) for c in (512, 128)]
    fig = attention_bandwidth_figure(points, copy_gb_s=20.0)
    assert [t.name for t in fig.data] == ["batch 1", "batch 4"]
    assert list(fig.data[0].x) == [128, 512]


def test_per_token_and_batch_figures():
    fig = per_token_figure([_point("prefill", seconds=0.032)], [_point("decode", seconds=0.02)])
    assert [round(y, 6) for y in fig.data[0].y] == [1.0, 20.0]  # ms per token: 32 ms / 32 tokens, 20 ms / 1
    rows = [{"batch": 1, "ttft_s": 0.1, "decode_tokens_per_s": 30.0}, {"batch": 4, "ttft_s": 0.4,
                                                                       "decode_tokens_per_s": 90.0}]
    fig = batch_tradeoff_figure(rows)
    assert list(fig.data[0].y) == [100.0, 400.0] and list(fig.data[1].y) == [30.0, 90.0]


def test_gqa_figure_pairs_bytes_and_time_relative_to_mha():
    rows = [{"variant": v, "num_q_heads": 16, "num_kv_heads": kv, "bytes_vs_mha": b, "time_vs_mha": t, "seconds": t}
            for v, kv, b, t in [("MHA", 16, 1.0, 1.0), ("GQA", 4, 0.25, 0.3), ("MQA", 1, 0.0625, 0.1)]]
    rows.append({"variant": "SmolLM2 (GQA 3:1)", "num_q_heads": 9, "num_kv_heads": 3, "seconds": 0.2})
    report = {"device": "CPU", "dtype": "float32", "batch": 4, "context": 2048, "rows": rows}
    fig = gqa_figure(report)
    assert [list(t.y) for t in fig.data] == [[1.0, 0.25, 0.0625], [1.0, 0.3, 0.1]]  # SmolLM2 has no MHA twin here
    fig = bytes_per_token_figure([("MHA", 69120), ("GQA", 23040)])
    assert list(fig.data[0].y) == [69120, 23040]


def test_recorded_gpu_runs_skip_cpu_recordings(tmp_path):
    import json

    from kvlab.bench.results import recorded_gpu_runs

    for device in ("CPU (x86_64, 2 threads)", "NVIDIA H200"):
        (tmp_path / f"gqa_{device[:3].lower()}.json").write_text(json.dumps({"device": device}))
    (tmp_path / "roofline_nvidia.json").write_text(json.dumps({"device": "NVIDIA H100"}))
    assert recorded_gpu_runs("gqa", tmp_path) == [{"device": "NVIDIA H200"}]
    assert recorded_gpu_runs("quant", tmp_path) == []
