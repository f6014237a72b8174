"""The interview drill as a widget: one card per question of kvlab.claims.quiz, a running score, and a
"measure it" button on each card that runs the claim's live measurement (kvlab.claims.measure_claim) on the
loaded model and shows its verdict and the number that decides it.

The widget only draws: checking is Quiz.answer's, measuring is the ledger's. A bad answer (not a number, no
choice) shows its message in red and leaves the score as it was.
"""
from __future__ import annotations

import html

import ipywidgets as widgets

from ..claims.quiz import ChoiceQuestion, Quiz
from .serving_widget import ERROR_COLOUR

RIGHT_COLOUR, WRONG_COLOUR = "#0b6e4f", "#8a5a00"


class QuizLab:
    """`QuizLab(quiz, measure)` — measure(claim_number) -> Finding (e.g. functools.partial(measure_claim, lab)),
    or None when no model is loaded (the buttons then say so). `answer(key, value)` is a card's check button;
    `measure(key)` its measure-it button; `widget` the view."""

    def __init__(self, quiz: Quiz | None = None, measure=None, findings: dict | None = None):
        self.quiz = quiz or Quiz()
        self._measure = measure
        self.findings = dict(findings or {})  # claim number → Finding, measured already (the ledger's run)
        self.score = widgets.HTML(self._score_html()).add_class("kvlab-quiz-score")
        self.cards = {q.key: self._card(q) for q in self.quiz.questions}
        self.widget = widgets.VBox([self.score, *[c["box"] for c in self.cards.values()]]).add_class("kvlab-quiz")

    # --- actions -----------------------------------------------------------------------------------------
    def answer(self, key: str, value) -> None:
        card = self.cards[key]
        try:
            checked = self.quiz.answer(key, value)
        except ValueError as error:
            card["feedback"].value = f'<span style="color:{ERROR_COLOUR}">{html.escape(str(error), quote=False)}</span>'
            return
        colour = RIGHT_COLOUR if checked.correct else WRONG_COLOUR
        card["feedback"].value = (f'<div style="color:{colour}"><b>{html.escape(checked.message)}</b></div>'
                                  f'<div>{html.escape(checked.explanation)}</div>')
        self.score.value = self._score_html()

    def measure(self, key: str) -> None:
        card, question = self.cards[key], self.quiz.question(key)
        if question.claim not in self.findings:
            if self._measure is None:
                card["measured"].value = "load the model (the setup cell) to measure this live"
                return
            card["measured"].value = f"measuring claim {question.claim} live…"
            self.findings[question.claim] = self._measure(question.claim)
        finding = self.findings[question.claim]
        card["measured"].value = (f"<b>claim {finding.number}, measured here: {html.escape(finding.verdict)}</b> — "
                                  f"{html.escape(finding.evidence)} <i>({finding.seconds:.1f} s; explained in "
                                  f"{html.escape(finding.notebook)})</i>")

    # --- view --------------------------------------------------------------------------------------------
    def _score_html(self) -> str:
        return f"<b>{html.escape(self.quiz.score_line())}</b>"

    def _card(self, question) -> dict:
        title = widgets.HTML(f"<b>{html.escape(question.prompt)}</b>")
        if isinstance(question, ChoiceQuestion):
            entry = widgets.RadioButtons(options=[(c.text, i) for i, c in enumerate(question.choices)], value=None,
                                         layout=widgets.Layout(width="auto")).add_class("kvlab-quiz-choices")
            unit = widgets.HTML("")
        else:
            entry = widgets.Text(placeholder="your answer", layout=widgets.Layout(width="160px")
                                 ).add_class("kvlab-quiz-number")
            unit = widgets.HTML(html.escape(question.unit))
        check = widgets.Button(description="check", button_style="primary").add_class("kvlab-quiz-check")
        measure = widgets.Button(description="measure it", tooltip=f"run claim {question.claim}'s measurement"
                                 ).add_class("kvlab-quiz-measure")
        feedback = widgets.HTML().add_class("kvlab-quiz-feedback")
        measured = widgets.HTML().add_class("kvlab-quiz-measured")
        check.on_click(lambda _: self.answer(question.key, entry.value))
        measure.on_click(lambda _: self.measure(question.key))
        box = widgets.VBox([title, widgets.HBox([entry, unit, check, measure]), feedback, measured],
                           layout=widgets.Layout(border="1px solid #ddd", padding="6px", margin="4px 0")
                           ).add_class("kvlab-quiz-card").add_class(f"kvlab-quiz-{question.key}")
        return dict(box=box, entry=entry, feedback=feedback, measured=measured)
