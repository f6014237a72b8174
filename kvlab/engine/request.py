"""A request (what a client sends) and a sequence (what the engine tracks while it serves one).

A Request is a prompt, how many tokens it may generate and when it arrives. A Sequence is the engine's state
for one output: its tokens so far (prompt + generated), which queue it is in, and the times a client would
measure — arrival, first scheduled, each token, finish — from which TTFT, TPOT and ITL follow.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Mapping

from ..checks import positive_int

REQUEST_KEYS = ("prompt", "max_new_tokens", "arrival_s")


@dataclass(frozen=True)
class Request:
    prompt: str | list[int]  # text, or token ids
    max_new_tokens: int = 64
    arrival_s: float = 0.0  # seconds after the engine starts (its clock)

    def __post_init__(self) -> None:
        if isinstance(self.prompt, str):
            if not self.prompt:
                raise ValueError("the request's prompt is empty")
        else:
            ids = list(self.prompt)
            if not ids:
                raise ValueError("the request's prompt is an empty list of token ids")
            if any(isinstance(t, bool) or not isinstance(t, int) for t in ids):
                raise ValueError(f"a prompt is text or a list of int token ids, got {self.prompt!r:.80}")
            object.__setattr__(self, "prompt", ids)
        positive_int("max_new_tokens", self.max_new_tokens)
        arrival = self.arrival_s
        if isinstance(arrival, bool) or not isinstance(arrival, (int, float)) or not math.isfinite(arrival) or arrival < 0:
            raise ValueError(f"arrival_s must be a finite number ≥ 0, got {arrival!r}")
        object.__setattr__(self, "arrival_s", float(arrival))

    @classmethod
    def of(cls, item: Request | Mapping[str, Any], index: int | None = None) -> Request:
        """A Request, or a dict with the same keys (prompt, max_new_tokens, arrival_s)."""
        if isinstance(item, Request):
            return item
        where = f"request {index}" if index is not None else "request"
        if not isinstance(item, Mapping):
            raise ValueError(f"{where} must be a kvlab.Request or a dict with keys {', '.join(REQUEST_KEYS)}, "
                             f"got {type(item).__name__}")
        unknown = sorted(set(item) - set(REQUEST_KEYS))
        if unknown:
            raise ValueError(f"{where} has unknown keys {unknown}; a request has {', '.join(REQUEST_KEYS)}")
        if "prompt" not in item:
            raise ValueError(f"{where} has no 'prompt'")
        try:
            return cls(**item)
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None


class Status(Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class Sequence:
    """One output being generated. `token_ids` = prompt + generated; the cache holds K/V for a prefix of it."""
    seq_id: int
    request_index: int  # position of its request in submission order
    prompt_ids: list[int]
    max_new_tokens: int
    arrival_s: float
    token_ids: list[int] = field(default_factory=list)
    status: Status = Status.WAITING
    num_samples: int = 1  # > 1: forks into that many sequences once its prompt is prefilled (parallel sampling)
    prefilled: bool = False  # its context is in the cache and it decodes one token a step (reset by preemption)
    finish_reason: str | None = None  # "eos" or "length"
    cached_prompt_tokens: int = 0  # prompt tokens a prefix cache served at its first admission
    num_preemptions: int = 0
    first_scheduled_s: float | None = None
    first_token_s: float | None = None
    finish_s: float | None = None
    token_times_s: list[float] = field(default_factory=list)  # when each generated token came out

    def __post_init__(self) -> None:
        if not self.token_ids:
            self.token_ids = list(self.prompt_ids)

    @property
    def num_generated(self) -> int:
        return len(self.token_ids) - len(self.prompt_ids)

    @property
    def output_ids(self) -> list[int]:
        return self.token_ids[len(self.prompt_ids):]

    @property
    def max_kv_tokens(self) -> int:
        """Most tokens whose K/V it will ever hold: prompt + output − 1 (the last token is never fed back)."""
        return len(self.prompt_ids) + self.max_new_tokens - 1
