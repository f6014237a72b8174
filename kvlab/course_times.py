"""How long each notebook takes to run, read from what papermill recorded when it executed them.

papermill writes `metadata.papermill.duration` (seconds, kernel start included) and start / end times into every
notebook it executes, and the same per cell. The committed notebooks were executed that way on the project's
CPU, so their own metadata is the measurement; a folder of notebooks executed on a GPU (papermill with
`-p DEVICE cuda`, anywhere, e.g. a scratch folder) is read the same way.

    python -m kvlab.course_times notebooks                       # → benchmarks/results/notebook_times_<device>.json
    python -m kvlab.course_times /tmp/gpu_run --device "NVIDIA H200"

The device is read from the notebooks' outputs (the mode banner names a GPU; CPU runs print
"CPU (x86_64, 2 threads)") unless it is given. A notebook without papermill metadata (not executed by papermill,
or being written) is skipped with the reason, not guessed.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import re

from kvlab.bench.results import RESULTS, save_result

SLOWEST = 3  # cells listed per notebook
GPU_BANNER = re.compile(r"GPU mode — (.+?), (?:bfloat16|float16|float32)\b")
CPU_LABEL = re.compile(r"CPU \([^()]*\d+ threads?\)")  # kvlab.bench.roofs.device_label on a CPU
BARE_CPU = "CPU"  # a CPU-mode banner that does not name the threads


def _outputs_text(notebook: dict) -> str:
    parts = []
    for cell in notebook.get("cells", []):
        for output in cell.get("outputs", []):
            text = output.get("text") or output.get("data", {}).get("text/plain") or ""
            parts.append("".join(text) if isinstance(text, list) else text)
    return "\n".join(parts)


def notebook_device(notebook: dict) -> str | None:
    """The device a notebook ran on, as its outputs say: the GPU's name from the banner, the CPU label, "CPU"
    when only the banner's CPU mode says so, None when nothing does."""
    text = _outputs_text(notebook)
    if gpu := GPU_BANNER.search(text):
        return gpu.group(1)
    if cpu := CPU_LABEL.search(text):
        return cpu.group(0)
    return BARE_CPU if "CPU mode —" in text else None


def _cell_label(source: str) -> str:
    """The first line of a cell that says what it does (not a # NBVAL_… marker or a blank line)."""
    for line in source.splitlines():
        line = line.strip()
        if line and not line.startswith("# NBVAL"):
            return line if len(line) <= 80 else line[:77] + "..."
    return ""


def _cell_times(notebook: dict) -> list[dict]:
    rows, section = [], ""
    for index, cell in enumerate(notebook.get("cells", [])):
        source = "".join(cell.get("source", ""))
        if cell.get("cell_type") == "markdown":
            headings = [line.lstrip("# ").strip() for line in source.splitlines() if line.startswith("#")]
            section = headings[-1] if headings else section
            continue
        seconds = cell.get("metadata", {}).get("papermill", {}).get("duration")
        if cell.get("cell_type") == "code" and seconds is not None:
            rows.append({"cell": index, "seconds": round(seconds, 3), "section": section, "code": _cell_label(source)})
    return rows


def notebook_time(notebook: dict, slowest: int = SLOWEST) -> dict | None:
    """One papermill-executed notebook's timing; None if papermill did not record a duration."""
    papermill = notebook.get("metadata", {}).get("papermill", {})
    if papermill.get("duration") is None:
        return None
    cells = _cell_times(notebook)
    return {
        "total_s": round(papermill["duration"], 3),
        "cells_s": round(sum(c["seconds"] for c in cells), 3),  # the rest is the kernel starting and stopping
        "executed": papermill.get("start_time", "")[:10],
        "start_time": papermill.get("start_time"),
        "device": notebook_device(notebook),
        "parameters": papermill.get("parameters", {}),  # what papermill injected (-p …); {} = the CPU defaults
        "exception": bool(papermill.get("exception")),
        "slowest_cells": sorted(cells, key=lambda c: -c["seconds"])[:slowest],
    }


def _folder_device(per_notebook: dict[str, dict]) -> str:
    """The one device the notebooks name; a banner that only says "CPU mode" agrees with any CPU label."""
    found = {row["device"] for row in per_notebook.values() if row["device"]}
    named = found - {BARE_CPU}
    if BARE_CPU in found and any(not name.startswith("CPU") for name in named):
        named.add(BARE_CPU)
    if len(named) == 1:
        return named.pop()
    if not named and found:
        return BARE_CPU
    if not found:
        raise ValueError("no notebook's output names its device (no mode banner ran?); pass device=")
    raise ValueError(f"the notebooks ran on different devices {sorted(named)}; time one device's run at a time, "
                     "or pass device= to label them as one")


def notebook_times(folder: str | pathlib.Path, device: str | None = None, slowest: int = SLOWEST) -> dict:
    """Every NN_*.ipynb in `folder`: its papermill duration, execution date and slowest cells, as a report in
    benchmarks/results' shape (device, date first). Notebooks without papermill metadata go to "skipped"."""
    folder = pathlib.Path(folder)
    paths = sorted(folder.glob("[0-9][0-9]_*.ipynb"))
    if not paths:
        raise ValueError(f"no NN_*.ipynb notebooks in {folder}")
    timed, skipped = {}, {}
    for path in paths:
        row = notebook_time(json.loads(path.read_text()), slowest)
        if row is None:
            skipped[path.name] = "no metadata.papermill.duration: not executed by papermill (yet)"
        else:
            timed[path.name] = row
    if not timed:
        raise ValueError(f"none of the {len(paths)} notebooks in {folder} has papermill durations: {sorted(skipped)}")
    return {
        "device": device or _folder_device(timed),
        "date": max(row["executed"] for row in timed.values()),  # the latest execution among them
        "source": "papermill's metadata.papermill.duration in each notebook (total, kernel start included) "
                  "and in each cell; read by python -m kvlab.course_times",
        "total_s": round(sum(row["total_s"] for row in timed.values()), 3),
        "notebooks": timed,
        "skipped": skipped,
    }


def print_times(report: dict) -> None:
    print(f"{report['device']}, executed up to {report['date']}: {report['total_s']:.0f} s in all")
    for name, row in report["notebooks"].items():
        worst = row["slowest_cells"][0] if row["slowest_cells"] else None
        slowest = f"slowest cell {worst['seconds']:.1f} s ({worst['section'] or worst['code']})" if worst else ""
        print(f"  {name:40s} {row['total_s']:7.1f} s  {row['executed']}  {slowest}")
    for name, why in report["skipped"].items():
        print(f"  {name:40s} skipped: {why}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", nargs="?", default="notebooks", help="papermill-executed notebooks (default: notebooks)")
    parser.add_argument("--device", help="label for the file name and report, e.g. 'NVIDIA H200' (default: read "
                                         "from the notebooks' outputs)")
    parser.add_argument("--out", default=str(RESULTS), help="results folder (default: benchmarks/results)")
    args = parser.parse_args(argv)
    report = notebook_times(args.folder, args.device)
    print_times(report)
    print("wrote", save_result("notebook_times", report, pathlib.Path(args.out)))


if __name__ == "__main__":
    main()
