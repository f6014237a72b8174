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
