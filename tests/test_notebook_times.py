"""kvlab.course_times reads the durations papermill wrote into executed notebooks (tiny synthetic ones here)."""
from __future__ import annotations

import json

import pytest

from kvlab.course_times import main, notebook_times

CPU_BANNER = ("CPU mode — float32, torch reference paths, small sizes. Triton kernels, where a notebook uses them, run "
              "in the interpreter: their timings say nothing about speed. CPU (x86_64, 2 threads); model loaded.")
GPU_BANNER = "GPU mode — NVIDIA H200, bfloat16, compiled kernels, large sizes. Every time below is measured."


def cell(source, seconds=None, banner=None, kind="code"):
    metadata = {"papermill": {"duration": seconds, "status": "completed"}} if seconds is not None else {}
    outputs = [{"output_type": "display_data", "data": {"text/plain": [banner]}, "metadata": {}}] if banner else []
    if kind == "markdown":
        return {"cell_type": "markdown", "metadata": metadata, "source": source}
    return {"cell_type": "code", "metadata": metadata, "source": source, "outputs": outputs, "execution_count": 1}


def executed(duration, start, cells, parameters=None):
    return {"nbformat": 4, "nbformat_minor": 5, "cells": cells,
            "metadata": {"papermill": {"duration": duration, "start_time": start, "end_time": start,
                                       "parameters": parameters or {}, "exception": None}}}


def write(folder, name, notebook):
    (folder / name).write_text(json.dumps(notebook))


def cpu_notebook(duration=12.5, start="2026-12-02T10:00:00+00:00"):
    return executed(duration, start, [
        cell("# 01 · A title", kind="markdown"),
        cell("DEVICE = 'auto'", 0.01),
        cell("# NBVAL_IGNORE_OUTPUT\nimport kvlab\nmodel = load()", 1.5, banner=CPU_BANNER),
        cell("Text.\n\n## 2 · The slow part", 0.002, kind="markdown"),
        cell("# NBVAL_IGNORE_OUTPUT\nrun = measure(model)", 8.25),
        cell("print(run)", 0.5),
    ])


def test_durations_dates_and_slowest_cells_come_from_papermill_metadata(tmp_path):
    write(tmp_path, "01_first.ipynb", cpu_notebook())
    report = notebook_times(tmp_path, slowest=2)
    row = report["notebooks"]["01_first.ipynb"]
    assert row["total_s"] == 12.5 and row["cells_s"] == pytest.approx(10.26)
    assert row["executed"] == "2026-12-02" and report["date"] == "2026-12-02"
    assert [c["seconds"] for c in row["slowest_cells"]] == [8.25, 1.5]  # slowest first, markdown cells not counted
    assert row["slowest_cells"][0] == {"cell": 4, "seconds": 8.25, "section": "2 · The slow part",
                                       "code": "run = measure(model)"}  # the NBVAL marker is not the label


def test_notebook_without_papermill_metadata_is_skipped_with_a_note(tmp_path):
    write(tmp_path, "01_first.ipynb", cpu_notebook())
    unexecuted = cpu_notebook()
    del unexecuted["metadata"]["papermill"]
    write(tmp_path, "00_start_here.ipynb", unexecuted)
    report = notebook_times(tmp_path)
    assert list(report["notebooks"]) == ["01_first.ipynb"]
    assert "papermill" in report["skipped"]["00_start_here.ipynb"]
    assert report["total_s"] == 12.5


def test_a_folder_where_no_notebook_was_run_by_papermill_is_refused(tmp_path):
    unexecuted = cpu_notebook()
    del unexecuted["metadata"]["papermill"]
    write(tmp_path, "00_start_here.ipynb", unexecuted)
    with pytest.raises(ValueError, match="papermill"):
        notebook_times(tmp_path)
    with pytest.raises(ValueError, match="no NN_"):
        notebook_times(tmp_path / "nowhere")


def test_device_is_read_from_the_cpu_label_or_the_gpu_banner(tmp_path):
    write(tmp_path, "01_first.ipynb", cpu_notebook())
    bare = cpu_notebook(3.0, "2026-11-23T10:00:00+00:00")  # a banner without the thread count agrees with it
    bare["cells"][2]["outputs"][0]["data"]["text/plain"] = ["CPU mode — float32, small sizes. The allocators."]
    write(tmp_path, "03_third.ipynb", bare)
    report = notebook_times(tmp_path)
    assert report["device"] == "CPU (x86_64, 2 threads)" and report["notebooks"]["03_third.ipynb"]["device"] == "CPU"
    assert report["date"] == "2026-12-02"  # the latest execution

    gpu = tmp_path / "gpu"
    gpu.mkdir()
    write(gpu, "02_second.ipynb", executed(4.0, "2027-01-05T09:00:00+00:00",
                                           [cell("load()", 2.0, banner=GPU_BANNER)], {"DEVICE": "cuda"}))
    report = notebook_times(gpu)
    assert report["device"] == "NVIDIA H200"
    assert report["notebooks"]["02_second.ipynb"]["parameters"] == {"DEVICE": "cuda"}


def test_notebooks_from_two_devices_are_refused_unless_labelled(tmp_path):
    write(tmp_path, "01_first.ipynb", cpu_notebook())
    write(tmp_path, "02_second.ipynb", executed(4.0, "2027-01-05T09:00:00+00:00", [cell("x", 2.0, banner=GPU_BANNER)]))
    with pytest.raises(ValueError, match="different devices"):
        notebook_times(tmp_path)
    assert notebook_times(tmp_path, device="mixed lab machines")["device"] == "mixed lab machines"


def test_main_writes_notebook_times_named_after_the_device(tmp_path, capsys):
    write(tmp_path, "02_second.ipynb", executed(4.0, "2027-01-05T09:00:00+00:00", [cell("x", 2.0, banner=GPU_BANNER)]))
    main([str(tmp_path), "--out", str(tmp_path / "results")])
    written = json.loads((tmp_path / "results" / "notebook_times_nvidia-h200.json").read_text())
    assert written["device"] == "NVIDIA H200" and written["notebooks"]["02_second.ipynb"]["total_s"] == 4.0
    assert "notebook_times_nvidia-h200.json" in capsys.readouterr().out
