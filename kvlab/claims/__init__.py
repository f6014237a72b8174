"""The claims ledger (CLAIMS.md measured live) and the interview drill built on it: see ledger.py and quiz.py."""
from .ledger import KINDS, Finding, Lab, make_lab, measure_claim, read_claims, run_ledger

__all__ = ["KINDS", "Finding", "Lab", "make_lab", "measure_claim", "read_claims", "run_ledger"]
