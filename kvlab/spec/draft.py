"""What a drafter proposes for one sequence, and the numbers speculative decoding keeps."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class Draft:
    tokens: list[int]  # proposed next tokens, 1 ≤ len ≤ k
    probs: torch.Tensor | None  # [len(tokens), vocab] the draft distribution q each was drawn from; None: one-hot


@dataclass(frozen=True)
class SpecRow:
    """One sequence's speculation in one engine step (StepRecord.speculation)."""
    seq_id: int
    drafted: tuple[int, ...]
    accepted: int  # drafts accepted, a prefix of `drafted`
    emitted: tuple[int, ...]  # tokens appended: the accepted drafts, then the target's own (corrected or bonus)
    blocks_rolled_back: int  # blocks the rejected drafts had taken, given back to the pool


@dataclass
class SpecStats:
    """Totals over a run. α = accepted / proposed; tokens per pass counts the target's own token too."""
    drafter: str
    k: int
    proposed: int = 0
    accepted: int = 0
    passes: int = 0  # target verifications (one per drafted sequence per step)
    emitted: int = 0
    proposed_at: list[int] = field(default_factory=list)  # per draft position 1..k: drafts proposed there
    accepted_at: list[int] = field(default_factory=list)
    draft_s: float = 0.0  # wall time proposing
    verify_s: float = 0.0  # wall time of the target's verification passes
    blocks_rolled_back: int = 0

    def __post_init__(self) -> None:
        self.proposed_at = self.proposed_at or [0] * self.k
        self.accepted_at = self.accepted_at or [0] * self.k

    def add(self, row: SpecRow) -> None:
        self.proposed += len(row.drafted)
        self.accepted += row.accepted
        self.passes += 1
        self.emitted += len(row.emitted)
        self.blocks_rolled_back += row.blocks_rolled_back
        for i in range(len(row.drafted)):
            self.proposed_at[i] += 1
            self.accepted_at[i] += i < row.accepted

    @property
    def acceptance_rate(self) -> float:
        """α: the share of proposed drafts the target accepted."""
        return self.accepted / self.proposed if self.proposed else float("nan")

    @property
    def tokens_per_pass(self) -> float:
        """Tokens each verification emitted (accepted drafts + the target's own)."""
        return self.emitted / self.passes if self.passes else float("nan")

    def acceptance_by_position(self) -> list[float]:
        """P(draft i accepted | draft i proposed), i = 1..k (a draft is proposed only after i − 1 others)."""
        return [a / p if p else float("nan") for a, p in zip(self.accepted_at, self.proposed_at)]

    def summary(self) -> str:
        return (f"{self.drafter} drafts, k={self.k}: {self.accepted} of {self.proposed} accepted "
                f"(α = {self.acceptance_rate:.2f}), {self.tokens_per_pass:.2f} tokens per target pass; "
                f"draft {self.draft_s * 1e3:.0f} ms, verify {self.verify_s * 1e3:.0f} ms")


def expected_tokens_per_pass(alpha: float, k: int) -> float:
    """(1 − α^(k+1)) / (1 − α): tokens per verification when each draft is accepted with probability α on its
    own (i.i.d.), the target's own token included (Leviathan et al. 2023)."""
    if alpha >= 1.0:
        return k + 1.0
    return (1 - alpha ** (k + 1)) / (1 - alpha)
