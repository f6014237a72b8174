"""The measurement helpers report what they measured, with the bytes beside the time."""
from __future__ import annotations

import json

import torch

from kvlab.bench import decode, measure_copy_bandwidth, median_seconds
from kvlab.kernels import cpu_paged_attention


def test_median_seconds_is_the_median_of_the_timed_runs():
    calls = []
    assert median_seconds(lambda: calls.append(1), "cpu", warmup=2, repeats=5) >= 0
    assert len(calls) == 7


def test_copy_bandwidth_counts_read_and_write():
    bw = measure_copy_bandwidth("cpu", megabytes=8, repeats=3)
    assert bw.bytes_moved == 2 * 8 * 2**20 and bw.gb_per_s > 0


def test_torch_paged_decode_and_the_cpu_kernel_equal_sdpa_on_the_same_kv():
    inputs = decode.make_inputs(3, 37, 4, num_q_heads=8, num_kv_heads=2, head_dim=16, dtype=torch.float32,
                                device=torch.device("cpu"))
    query, k_pool, v_pool, tables, lens, k_contig, v_contig = inputs
    expected = decode.sdpa_decode(query, k_contig, v_contig)
    contenders = decode.cpu_contenders(*inputs)
    assert set(contenders) == {"sdpa", "gather"} | ({"kernel"} if cpu_paged_attention.available() else set())
    for name, fn in contenders.items():
        torch.testing.assert_close(fn(), expected, msg=name)


def test_alternating_medians_takes_turns_and_returns_a_median_each():
    from kvlab.bench.timers import alternating_medians

    order = []
    medians = alternating_medians({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, warmup=1,
                                  rounds=3, calls_per_round=2)
    assert order == ["a", "b"] + ["a", "a", "b", "b"] * 3 and set(medians) == {"a", "b"}


def test_decode_inputs_are_drawn_on_the_target_device_and_repeat_with_the_seed(monkeypatch):
    drawn_on = []
    randn = torch.randn

    def spying_randn(*args, **kwargs):
        drawn_on.append(torch.device(kwargs.get("device", "cpu")))
        return randn(*args, **kwargs)

    monkeypatch.setattr(torch, "randn", spying_randn)
    args = dict(num_q_heads=9, num_kv_heads=3, head_dim=16, dtype=torch.bfloat16, device=torch.device("cpu"))
    first, again, other = (decode.make_inputs(2, 37, 4, seed=seed, **args) for seed in (0, 0, 1))
    assert drawn_on == [torch.device("cpu")] * 9  # pools and query, each drawn where it lives, in its dtype
    assert first[1].dtype == torch.bfloat16 and first[3].dtype == torch.int32
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[1], other[1]) and not torch.equal(first[3], other[3])


def test_decode_benchmark_reports_bytes_and_bandwidth_and_saves_json(tmp_path):
    report = decode.run(torch.device("cpu"), batches=[2], contexts=[64], block_size=16, dtype=torch.float32,
                        progress=False, rounds=2)
    (case,) = report["cases"]
    kv_bytes = 2 * 2 * 64 * 3 * 64 * 4  # K+V × batch × context × kv heads (SmolLM2's 3) × head dim × fp32
    assert kv_bytes < case["bytes_moved"] < kv_bytes * 1.1
    assert abs(case["paged_gb_s"] - case["bytes_moved"] / case["paged_s"] / 1e9) < 1e-9
    assert report["threads"] == torch.get_num_threads()
    if cpu_paged_attention.available():  # both paged paths timed: the kernel is "paged", the gather path beside it
        assert abs(case["gather_over_sdpa_time"] - case["gather_s"] / case["sdpa_s"]) < 1e-9
        assert report["path"].startswith("C++ kernel in place")
    path = decode.save(report, tmp_path)
    assert path.name.startswith("decode_cpu") and json.loads(path.read_text())["cases"][0]["context"] == 64


def test_matmul_roof_counts_two_flops_per_term_and_is_positive():
    from kvlab.bench import measure_matmul_flops

    mm = measure_matmul_flops("cpu", size=128)
    assert mm.flops == 2 * 128 ** 3 and mm.dtype == "float32"
    assert mm.flops_per_s == mm.flops / mm.seconds > 0


def test_device_roofs_are_measured_once_per_process_and_give_the_roofline(monkeypatch):
    from kvlab.bench import roofs

    calls = []
    monkeypatch.setattr(roofs, "_measured", {})
    monkeypatch.setattr(roofs, "measure_copy_bandwidth", lambda device: calls.append("copy") or
                        roofs.CopyBandwidth("cpu", bytes_moved=10**9, seconds=0.1))  # 10 GB/s
    monkeypatch.setattr(roofs, "measure_matmul_flops", lambda device, dtype: calls.append("mm") or
                        roofs.MatmulThroughput("cpu", "float32", size=1000, seconds=0.02))  # 100 GFLOP/s
    first = roofs.device_roofs("cpu")
    assert roofs.device_roofs("cpu") is first and calls == ["copy", "mm"]
    assert first.ridge_flop_per_byte == 10.0
    assert first.attainable_flops_per_s(1.0) == 1e10  # bandwidth-bound: 1 FLOP/byte × 10 GB/s
    assert first.attainable_flops_per_s(100.0) == 1e11  # compute-bound: the matmul roof
    roofs.device_roofs("cpu", refresh=True)
    assert calls == ["copy", "mm", "copy", "mm"]


def test_grouped_decode_reads_each_kv_head_once_and_equals_sdpa():
    from kvlab.bench import gqa

    query, _, _, _, _, k, v = decode.make_inputs(3, 37, 4, num_q_heads=8, num_kv_heads=2, head_dim=16,
                                                 dtype=torch.float32, device=torch.device("cpu"))
    torch.testing.assert_close(gqa.grouped_decode(query, k, v), decode.sdpa_decode(query, k, v))


def test_mha_gqa_mqa_report_the_same_problem_with_a_quarter_and_one_sixteenth_of_the_kv_bytes():
    from kvlab.bench import gqa

    report = gqa.run(torch.device("cpu"), batch=1, context=64)
    rows = {r["variant"]: r for r in report["rows"]}
    assert [rows[v]["num_kv_heads"] for v in ("MHA", "GQA", "MQA")] == [16, 4, 1]
    assert rows["GQA"]["bytes_vs_mha"] == 0.25 and rows["MQA"]["bytes_vs_mha"] == 1 / 16
    assert rows["SmolLM2 (GQA 3:1)"]["num_q_heads"] == 9 and rows["SmolLM2 (GQA 3:1)"]["num_kv_heads"] == 3
    assert all(r["seconds"] > 0 and r["gb_s"] == r["bytes_moved"] / r["seconds"] / 1e9 for r in rows.values())
