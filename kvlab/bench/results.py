"""Benchmark results as JSON files under benchmarks/results/, one per kind and device."""
from __future__ import annotations

import json
import pathlib
import re

RESULTS = pathlib.Path("benchmarks/results")


def result_path(kind: str, device: str, folder: pathlib.Path = RESULTS) -> pathlib.Path:
    """benchmarks/results/<kind>_<device slug>.json, e.g. quant_nvidia-h200.json."""
    slug = re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-")
    return pathlib.Path(folder) / f"{kind}_{slug}.json"


def save_result(kind: str, report: dict, folder: pathlib.Path = RESULTS) -> pathlib.Path:
    path = result_path(kind, report["device"], folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path


def recorded_gpu_runs(kind: str, folder: str | pathlib.Path = RESULTS) -> list[dict]:
    """The committed results of `kind` recorded on a GPU (not a CPU), oldest file name first — what a notebook's
    "recorded on <device>, <date>" panel shows beside its live CPU numbers."""
    reports = [json.loads(p.read_text()) for p in sorted(pathlib.Path(folder).glob(f"{kind}_*.json"))]
    return [r for r in reports if not r["device"].startswith("CPU")]


def merge_sizes(defaults: dict, overrides: dict) -> dict:
    """A benchmark's sizes: its defaults for the device, overridden by keyword — a name it does not have is refused."""
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise ValueError(f"unknown sizes {unknown}; the sizes are {', '.join(defaults)}")
    return defaults | overrides
