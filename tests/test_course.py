"""The course map (kvlab.course) matches the notebooks on disk, its paths add up, and the claims ledger covers
every claim of CLAIMS.md."""
from __future__ import annotations

import pathlib

import pytest

from kvlab.claims.ledger import CLAIMS_FILE, GPU_BENCHMARKS, MEASUREMENTS, _load_measurements, read_claims
from kvlab.course import NOTEBOOKS, PATHS, notebook, notebooks_on_disk

SHARED_CLAIMS = pathlib.Path(__file__).resolve().parents[2] / "shared" / "CLAIMS.md"


def test_every_notebook_in_the_map_exists_and_every_notebook_on_disk_is_in_the_map():
    mapped = [nb.file for nb in NOTEBOOKS]
    assert mapped == sorted(mapped), "the map is in notebook order"
    assert mapped == notebooks_on_disk(), (f"in the map, not on disk: {sorted(set(mapped) - set(notebooks_on_disk()))}; "
                                           f"on disk, not in the map: {sorted(set(notebooks_on_disk()) - set(mapped))}")


def test_the_map_check_fails_for_a_notebook_missing_from_it(tmp_path):
    for nb in NOTEBOOKS:
        (tmp_path / nb.file).write_text("{}")
    (tmp_path / "12_new.ipynb").write_text("{}")
    assert notebooks_on_disk(tmp_path) != [nb.file for nb in NOTEBOOKS]


def test_every_path_stops_at_mapped_notebooks_and_its_minutes_add_up():
    for path in PATHS:
        for file, _ in path.stops:
            notebook(file)  # raises for a notebook not in the map
        if path.name != "self-study":  # self-study is at the reader's pace
            minutes = sum(int(what.rsplit("(", 1)[1].split()[0]) for _, what in path.stops)
            assert minutes == path.minutes, (path.name, minutes)
    names = {p.name for p in PATHS}
    assert {"90-minute workshop", "half-day workshop", "self-study", "30-minute interview cram"} <= names
    with pytest.raises(ValueError, match="no notebook 'nope'"):
        notebook("nope")


def test_the_ledger_measures_every_claim_and_the_map_names_each_claims_notebook():
    _load_measurements()
    claims = read_claims()
    assert sorted(claims) == list(range(1, len(claims) + 1)) and len(claims) >= 24
    assert sorted(MEASUREMENTS) == sorted(claims)
    for number, (file, _) in MEASUREMENTS.items():
        assert number in notebook(file).claims, f"claim {number}'s notebook {file} does not list it in the map"
    assert set(GPU_BENCHMARKS) <= set(claims)


@pytest.mark.skipif(not SHARED_CLAIMS.is_file(), reason="the team's ../shared/CLAIMS.md is not beside this checkout")
def test_the_packaged_claims_are_the_teams_claims():
    assert CLAIMS_FILE.read_text() == SHARED_CLAIMS.read_text(), "copy ../shared/CLAIMS.md to kvlab/claims/CLAIMS.md"
