"""The interview drill's checking logic (kvlab.claims.quiz) and its widget's actions, without a browser."""
from __future__ import annotations

import math

import pytest

from kvlab.claims.quiz import QUESTIONS, Choice, ChoiceQuestion, NumericQuestion, Quiz, parse_number
from kvlab.memory import PRESETS, kv_cache_bytes

NUMERIC = NumericQuestion("n", 6, "how many?", 4096.0, "bytes", 0.02, "2 × 8 × 128 × 2")
CHOICE = ChoiceQuestion("c", 12, "which?", (Choice("wrong one", "because A"), Choice("right one", "because B")),
                        right=1)


def test_a_right_number_and_one_within_tolerance_count_as_right_and_show_the_derivation():
    assert NUMERIC.check(4096).correct and NUMERIC.check("4,096").correct and NUMERIC.check(" 4096.0 ").correct
    near = NUMERIC.check(4096 * 1.019)  # 1.9 % off, tolerance 2 %
    assert near.correct and "1.9% off" in near.message and near.explanation == "2 × 8 × 128 × 2"


def test_a_number_outside_the_tolerance_is_wrong_and_names_the_right_answer():
    far = NUMERIC.check(4096 * 1.03)
    assert not far.correct and "the answer is 4096 bytes" in far.message and far.explanation == "2 × 8 × 128 × 2"
    assert not NUMERIC.check(512).correct  # the classic slip: bytes counted for one head


@pytest.mark.parametrize("bad", ["abc", "", "4 KB", float("nan"), math.inf, None, True, [4096]])
def test_a_bad_numeric_answer_raises_naming_the_value(bad):
    with pytest.raises(ValueError, match="question 'n'") as error:
        NUMERIC.check(bad)
    assert repr(bad) in str(error.value) or str(bad) in str(error.value)


def test_a_choice_is_right_or_wrong_with_the_reason_each_wrong_choice_is_wrong():
    right = CHOICE.check(1)
    assert right.correct and right.explanation == "because B"
    wrong = CHOICE.check(0)
    assert not wrong.correct and "because A" in wrong.explanation and "because B" in wrong.explanation
    assert "right one" in wrong.message


@pytest.mark.parametrize("bad", [2, -1, None, "1", 1.0, True])
def test_a_choice_that_does_not_exist_raises_naming_it(bad):
    with pytest.raises(ValueError, match=r"index 0–1, got"):
        CHOICE.check(bad)


def test_the_score_counts_first_answers_and_bad_input_leaves_it_unchanged():
    quiz = Quiz((NUMERIC, CHOICE))
    assert quiz.score == (0, 0)
    with pytest.raises(ValueError):
        quiz.answer("n", "four thousand")
    assert quiz.score == (0, 0)
    quiz.answer("n", 100)  # wrong first
    quiz.answer("n", 4096)  # right later: feedback only
    assert quiz.score == (0, 1)
    quiz.answer("c", 1)
    assert quiz.score == (1, 2) and "1 of 2" in quiz.score_line()
    with pytest.raises(ValueError, match="no question 'x'"):
        quiz.answer("x", 1)
    assert quiz.score == (1, 2)


def test_the_numeric_answers_come_from_kvlabs_memory_math():
    questions = {q.key: q for q in QUESTIONS}
    assert questions["llama3-bytes-per-layer"].answer == 4096  # 2 × 8 × 128 × 2
    assert questions["llama3-128k"].answer == pytest.approx(16.0)  # GiB
    assert questions["llama2-13b-batch"].answer == pytest.approx(kv_cache_bytes(PRESETS["Llama-2-13B"], 4096, 8) / 1e9)
    assert questions["llama2-13b-batch"].answer == pytest.approx(26.8, abs=0.05)
    assert questions["spec-tokens-per-pass"].answer == pytest.approx(3.3616)
    assert questions["gqa-ratio"].check(4).correct and not questions["gqa-ratio"].check(4.01).correct


def test_every_question_drills_a_measured_claim_and_every_wrong_choice_says_why():
    from kvlab.claims.ledger import MEASUREMENTS, _load_measurements

    _load_measurements()
    for q in QUESTIONS:
        assert q.claim in MEASUREMENTS, q.key
        if isinstance(q, ChoiceQuestion):
            assert all(len(c.why) > 20 for c in q.choices), q.key


def test_the_widget_checks_scores_shows_bad_input_in_red_and_measures_through_the_ledger():
    pytest.importorskip("ipywidgets")
    from kvlab.viz.quiz_widget import QuizLab

    measured = []

    class Finding:
        number, verdict, evidence, seconds, notebook = 6, "holds", "4096 bytes", 0.1, "01_why_kv_cache.ipynb"

    lab = QuizLab(Quiz((NUMERIC, CHOICE)), measure=lambda n: measured.append(n) or Finding())
    lab.answer("n", "nope")
    assert "not a number: 'nope'" in lab.cards["n"]["feedback"].value and "0 of 0" in lab.score.value
    lab.answer("n", "4096")
    assert "Right" in lab.cards["n"]["feedback"].value and "1 of 1" in lab.score.value
    lab.answer("c", None)  # no choice made
    assert "got None" in lab.cards["c"]["feedback"].value and "1 of 1" in lab.score.value
    lab.measure("n")
    lab.measure("n")  # measured once, then remembered
    assert measured == [6] and "holds" in lab.cards["n"]["measured"].value
    idle = QuizLab(Quiz((NUMERIC,)))
    idle.measure("n")
    assert "load the model" in idle.cards["n"]["measured"].value
