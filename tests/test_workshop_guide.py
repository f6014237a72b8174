"""docs/workshop.md stays honest: it names every notebook and path of the course map, its CPU timing table is the
recorded JSON's, its schedules are kvlab.course.PATHS', and its relative links lead to files in the repository.
Each check is a function of the guide's text; the tests below also run it on a broken copy to show it can fail."""
from __future__ import annotations

import json
import pathlib
import re

import pytest

from kvlab.course import NOTEBOOKS, PATHS, Path

ROOT = pathlib.Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "workshop.md"
CPU_TIMES = ROOT / "benchmarks" / "results" / "notebook_times_cpu-x86-64-2-threads.json"
SCHEDULED = ("90-minute workshop", "half-day workshop")  # the paths the guide gives a timed schedule for


def guide_text() -> str:
    return GUIDE.read_text()


def cpu_report() -> dict:
    return json.loads(CPU_TIMES.read_text())


def seconds(value: float) -> str:
    """How the guide prints a time: whole seconds."""
    return f"{value:.0f}"


def between(text: str, begin: str, end: str) -> str:
    start = text.index(begin) + len(begin)
    return text[start:text.index(end, start)]


def table_rows(block: str) -> list[list[str]]:
    """The body rows of the one markdown table in `block`, as stripped cells (header and rule dropped)."""
    lines = [line.strip() for line in block.strip().splitlines() if line.strip().startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]


# ---- the checks ----

def missing_notebooks(text: str) -> list[str]:
    return [nb.file for nb in NOTEBOOKS if nb.file not in text]


def missing_paths(text: str) -> list[str]:
    return [path.name for path in PATHS if path.name not in text]


def timing_mismatches(text: str, report: dict) -> list[str]:
    """Every notebook in the report has one row whose run-all time, slowest cell and date are the report's, rounded
    as printed; no row names a notebook the report lacks; the total row is the report's total."""
    problems, seen = [], set()
    for cells in table_rows(between(text, "<!-- cpu-times:begin -->", "<!-- cpu-times:end -->")):
        name = re.search(r"\d\d_\w+\.ipynb", cells[0])
        if name is None:  # the total row
            if cells[1].strip("*") != seconds(report["total_s"]):
                problems.append(f"total {cells[1]} != {seconds(report['total_s'])}")
            continue
        name = name.group(0)
        row = report["notebooks"].get(name)
        if row is None:
            problems.append(f"{name}: in the guide's table, not in the JSON")
            continue
        seen.add(name)
        expected = [seconds(row["total_s"]), seconds(row["slowest_cells"][0]["seconds"]), row["executed"]]
        printed = [cells[1], cells[2], cells[4]]
        if printed != expected:
            problems.append(f"{name}: guide says {printed}, the JSON {expected}")
    problems += [f"{name}: in the JSON, no row in the guide" for name in sorted(set(report["notebooks"]) - seen)]
    return problems


def stop_minutes(what: str) -> tuple[str, int] | None:
    """PATHS' "what to do (N min)" → ("what to do", N); None when the stop gives no minutes."""
    match = re.fullmatch(r"(.*) \((\d+) min\)", what)
    return (match.group(1), int(match.group(2))) if match else None


def minutes_mismatch(path: Path) -> str | None:
    minutes = [stop_minutes(what) for _, what in path.stops]
    if None in minutes:
        return f"{path.name}: a stop without minutes"
    total = sum(m for _, m in minutes)
    return None if total == path.minutes else f"{path.name}: stops add up to {total} min, the path says {path.minutes}"


def schedule_mismatches(text: str, path: Path) -> list[str]:
    """The guide's schedule for `path` is its stops in order: clock (minutes so far), minutes, notebook, what to do."""
    rows = table_rows(between(text, f"<!-- schedule: {path.name} -->", "<!-- /schedule -->"))
    expected, clock = [], 0
    for file, what in path.stops:
        doing, minutes = stop_minutes(what)
        expected.append([f"{clock // 60}:{clock % 60:02d}", str(minutes), f"`{file}`", doing])
        clock += minutes
    if rows == expected:
        return []
    return [f"{path.name}: row {i}: guide {row}, PATHS {want}"
            for i, (row, want) in enumerate(zip(rows, expected)) if row != want] or \
           [f"{path.name}: {len(rows)} rows in the guide, {len(expected)} stops in PATHS"]


def github_anchor(heading: str) -> str:
    """The id GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def broken_links(text: str, base: pathlib.Path = GUIDE.parent, root: pathlib.Path = ROOT) -> list[str]:
    """Relative links that do not lead to a file or folder inside `root`, and in-page anchors with no heading."""
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    anchors = {github_anchor(line.lstrip("#")) for line in prose.splitlines() if line.startswith("#")}
    problems = []
    for target in re.findall(r"\]\(([^)\s]+)\)", prose):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        if not file:
            if anchor not in anchors:
                problems.append(f"#{anchor}: no such heading")
            continue
        resolved = (base / file).resolve()
        if not resolved.is_relative_to(root.resolve()) or not resolved.exists():
            problems.append(f"{target}: no such file in the repository")
    return problems


# ---- the guide as it is ----

def test_guide_names_every_notebook_of_the_course_map():
    assert missing_notebooks(guide_text()) == []


def test_guide_names_every_path():
    assert missing_paths(guide_text()) == []


def test_cpu_timing_table_is_the_recorded_json_rounded_to_seconds():
    report = cpu_report()
    assert report["notebooks"], "the JSON times no notebook"
    assert timing_mismatches(guide_text(), report) == []


@pytest.mark.parametrize("name", SCHEDULED)
def test_schedule_is_the_course_maps_path(name):
    path = next(p for p in PATHS if p.name == name)
    assert schedule_mismatches(guide_text(), path) == []


@pytest.mark.parametrize("name", SCHEDULED)
def test_scheduled_paths_minutes_add_up_to_their_total(name):  # the guide says they do
    assert minutes_mismatch(next(p for p in PATHS if p.name == name)) is None


def test_every_relative_link_resolves_to_a_file_in_the_repository():
    assert broken_links(guide_text()) == []


# ---- each check fails on a broken copy ----

def broken_copy(tmp_path: pathlib.Path, old: str, new: str) -> str:
    text = guide_text()
    assert old in text, f"the guide no longer contains {old!r}: update this test"
    copy = tmp_path / "workshop.md"
    copy.write_text(text.replace(old, new, 1))
    return copy.read_text()


def test_a_notebook_or_path_dropped_from_the_guide_is_caught(tmp_path):
    copy = tmp_path / "workshop.md"
    copy.write_text(guide_text().replace("07_gqa.ipynb", "07_mqa.ipynb"))  # every mention of it
    assert missing_notebooks(copy.read_text()) == ["07_gqa.ipynb"]
    copy.write_text(guide_text().replace("half-day workshop", "long workshop"))
    assert missing_paths(copy.read_text()) == ["half-day workshop"]


def test_a_wrong_missing_or_extra_timing_row_is_caught(tmp_path):
    report = cpu_report()
    name, row = next(iter(report["notebooks"].items()))
    printed = f"| {seconds(row['total_s'])} | {seconds(row['slowest_cells'][0]['seconds'])} |"
    wrong = f"| {int(seconds(row['total_s'])) + 1} | {seconds(row['slowest_cells'][0]['seconds'])} |"
    assert any(name in p for p in timing_mismatches(broken_copy(tmp_path, printed, wrong), report))
    dropped = {**report, "notebooks": {n: r for n, r in report["notebooks"].items() if n != name}}
    assert any("not in the JSON" in p for p in timing_mismatches(guide_text(), dropped))
    added = {**report, "notebooks": {**report["notebooks"], "12_new.ipynb": row}}
    assert timing_mismatches(guide_text(), added) == ["12_new.ipynb: in the JSON, no row in the guide"]
    retimed = {**report, "total_s": report["total_s"] + 60}
    assert any(p.startswith("total") for p in timing_mismatches(guide_text(), retimed))


def test_a_schedule_that_drifts_from_paths_is_caught(tmp_path):
    path = next(p for p in PATHS if p.name == "90-minute workshop")
    row = "| 0:25 | 20 | `02_paged_attention.ipynb` |"
    text = broken_copy(tmp_path, row, row.replace("| 20 |", "| 25 |"))
    assert schedule_mismatches(text, path) != []
    longer = Path(path.name, path.minutes, path.audience, path.stops + (("07_gqa.ipynb", "fewer KV heads (10 min)"),))
    assert schedule_mismatches(guide_text(), longer) != []
    assert minutes_mismatch(longer) == "90-minute workshop: stops add up to 100 min, the path says 90"


def test_a_link_to_a_missing_file_or_out_of_the_repository_or_to_no_heading_is_caught(tmp_path):
    link = "[Makefile](../Makefile)"
    assert broken_links(broken_copy(tmp_path, link, "[Makefile](../Makefile.old)")) == [
        "../Makefile.old: no such file in the repository"]
    assert broken_links(broken_copy(tmp_path, link, "[hosts](../../../../../../etc/hosts)")) != []
    anchor = "(#7--troubleshooting)"
    assert broken_links(broken_copy(tmp_path, anchor, "(#8--troubleshooting)")) == [
        "#8--troubleshooting: no such heading"]
