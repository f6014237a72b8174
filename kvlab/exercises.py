"""Check-yourself helpers for the notebooks: your answer beside the right one, pass or fail, and why."""
from __future__ import annotations


def check_number(question: str, answer: float | None, expected: float, rel_tolerance: float, why: str) -> None:
    """Print whether `answer` is within rel_tolerance of `expected`, with the reasoning."""
    if answer is None:
        print(f"{question}\n→ Put your answer in the variable above and run this cell again.")
        return
    error = abs(answer - expected) / abs(expected)
    verdict = "PASS" if error <= rel_tolerance else "NOT YET"
    print(f"{question}\n{verdict}: you said {answer:g}, the answer is {expected:.4g} ({error:.0%} off).")
    print(f"Why: {why}")
