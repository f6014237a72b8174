"""Request traces for the fragmentation lab: who arrives when, with how long a prompt and how long an answer.

A trace is what a serving system sees: requests arriving over time, each with a prompt already known and an
output length it does not know in advance (the replay knows it, to say when the request finishes; only the
"contiguous-exact" oracle layout is allowed to use it for reserving memory).

`chat_trace` is a fixed synthetic stand-in for ShareGPT, the chat dataset the PagedAttention paper replays
(Kwon et al. 2023, Fig. 11: ShareGPT prompts average 161 tokens, outputs 338, both long-tailed). Lengths are
log-normal with those means and σ = 1 (of the log), which puts the medians near 98 prompt and 205 output tokens
and about 1 % of prompts over 1,000 tokens and 1 % of outputs over 2,000: most chats are short, a few are very
long — the spread that makes reserving for the worst case so wasteful. Arrivals are a Poisson process.
Pure standard library: deterministic given the seed (random.Random), no numpy.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

DISTRIBUTIONS = ("lognormal", "uniform", "fixed")
CHAT_PROMPT_MEAN = 161  # ShareGPT mean input tokens (Kwon et al. 2023, Fig. 11)
CHAT_OUTPUT_MEAN = 338  # ShareGPT mean output tokens (same figure)
CHAT_SIGMA = 1.0  # σ of log-length: median = mean · e^(−σ²/2) ≈ 0.61 · mean
CHAT_ARRIVAL_RATE = 2.0  # requests per decode step: a busy server, the queue never drains early


def _whole(what: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{what} must be an integer ≥ {minimum}, got {value!r}")
    return value


@dataclass(frozen=True)
class Request:
    arrival_step: int  # the decode step at which it joins the queue
    prompt_len: int  # tokens cached by its prefill
    output_len: int  # tokens it generates before it finishes

    def __post_init__(self) -> None:
        _whole("arrival_step", self.arrival_step, 0)
        _whole("prompt_len", self.prompt_len, 1)
        _whole("output_len", self.output_len, 1)

    @property
    def total_len(self) -> int:
        """Tokens it holds when it finishes: prompt + output."""
        return self.prompt_len + self.output_len


def validate_trace(requests: Iterable[Any], max_len: int | None = None) -> tuple[Request, ...]:
    """Requests (Request, (arrival, prompt, output) tuples or dicts) checked one by one, as Requests.

    ValueError names the first bad one: "request 3 has output_len 0 (must be ≥ 1)"; arrivals must not go
    back in time; prompt + output must fit in max_len when given.
    """
    checked: list[Request] = []
    for i, item in enumerate(requests):
        if isinstance(item, Request):
            values = (item.arrival_step, item.prompt_len, item.output_len)
        elif isinstance(item, Mapping):
            values = (item.get("arrival_step"), item.get("prompt_len"), item.get("output_len"))
        else:
            values = tuple(item)
            if len(values) != 3:
                raise ValueError(f"request {i} is {item!r}: expected (arrival_step, prompt_len, output_len)")
        for field, value, minimum in zip(("arrival_step", "prompt_len", "output_len"), values, (0, 1, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"request {i} has {field} {value!r} (must be an integer ≥ {minimum})")
        request = Request(*values)
        if checked and request.arrival_step < checked[-1].arrival_step:
            raise ValueError(f"request {i} arrives at step {request.arrival_step}, before request {i - 1} "
                             f"(step {checked[-1].arrival_step}): sort the trace by arrival")
        if max_len is not None and request.total_len > max_len:
            raise ValueError(f"request {i} has prompt_len {request.prompt_len} + output_len {request.output_len} = "
                             f"{request.total_len} tokens, over max_len {max_len}")
        checked.append(request)
    if not checked:
        raise ValueError("a trace needs at least one request")
    return tuple(checked)


@dataclass(frozen=True)
class Trace:
    requests: tuple[Request, ...]
    name: str
    max_len: int  # the longest a sequence may get: the model's context, or a serving cap

    def __post_init__(self) -> None:
        _whole("max_len", self.max_len, 2)
        object.__setattr__(self, "requests", validate_trace(self.requests, self.max_len))

    def __len__(self) -> int:
        return len(self.requests)

    def __iter__(self):
        return iter(self.requests)

    def __getitem__(self, i: int) -> Request:
        return self.requests[i]

    def describe(self) -> str:
        prompts = sorted(r.prompt_len for r in self.requests)
        outputs = sorted(r.output_len for r in self.requests)
        n = len(self.requests)
        return (f"{self.name}: {n} requests over {self.requests[-1].arrival_step + 1} steps; prompt mean "
                f"{sum(prompts) / n:.0f} (median {prompts[n // 2]}, max {prompts[-1]}), output mean "
                f"{sum(outputs) / n:.0f} (median {outputs[n // 2]}, max {outputs[-1]}); max_len {self.max_len}")


def _lengths(rng: random.Random, distribution: str, mean: float, sigma: float):
    if distribution == "fixed":
        return lambda: mean
    if distribution == "uniform":  # 1 … 2·mean − 1, mean `mean`
        return lambda: rng.uniform(1, 2 * mean - 1)
    mu = math.log(mean) - sigma**2 / 2  # E[exp(N(mu, σ²))] = exp(mu + σ²/2) = mean
    return lambda: rng.lognormvariate(mu, sigma)


def synthetic_trace(distribution: str = "lognormal", prompt_mean: int = CHAT_PROMPT_MEAN,
                    output_mean: int = CHAT_OUTPUT_MEAN, num_requests: int = 200, seed: int = 0, max_len: int = 2048,
                    arrival_rate: float = CHAT_ARRIVAL_RATE, sigma: float = CHAT_SIGMA,
                    name: str | None = None) -> Trace:
    """`num_requests` requests with lengths drawn from `distribution` ("lognormal", "uniform" or "fixed") around
    the given means, arriving as a Poisson process of `arrival_rate` requests per step.

    Prompts are clipped to 1 … max_len − 1 and outputs to 1 … max_len − prompt, so every request fits max_len
    (clipping a long tail lowers its mean a little). Same arguments, same trace.
    """
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"unknown distribution {distribution!r}; choose one of {', '.join(DISTRIBUTIONS)}")
    _whole("num_requests", num_requests, 1)
    _whole("max_len", max_len, 2)
    _whole("prompt_mean", prompt_mean, 1)
    _whole("output_mean", output_mean, 1)
    if prompt_mean >= max_len:
        raise ValueError(f"prompt_mean {prompt_mean} leaves no room for output in max_len {max_len}")
    if not isinstance(arrival_rate, (int, float)) or isinstance(arrival_rate, bool) or not arrival_rate > 0:
        raise ValueError(f"arrival_rate must be a positive number of requests per step, got {arrival_rate!r}")
    if not isinstance(sigma, (int, float)) or isinstance(sigma, bool) or not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma!r}")
    rng = random.Random(seed)
    prompt, output = _lengths(rng, distribution, prompt_mean, sigma), _lengths(rng, distribution, output_mean, sigma)
    clock, requests = 0.0, []
    for _ in range(num_requests):
        p = min(max(1, round(prompt())), max_len - 1)
        o = min(max(1, round(output())), max_len - p)
        requests.append(Request(int(clock), p, o))
        clock += rng.expovariate(arrival_rate)
    label = name or f"{distribution} (prompt mean {prompt_mean}, output mean {output_mean}, seed {seed})"
    return Trace(tuple(requests), label, max_len)


def chat_trace(num_requests: int = 200, seed: int = 0, max_len: int = 2048) -> Trace:
    """The lab's fixed ShareGPT-like chat trace (see the module docstring for its distribution)."""
    return synthetic_trace("lognormal", CHAT_PROMPT_MEAN, CHAT_OUTPUT_MEAN, num_requests, seed, max_len,
                           CHAT_ARRIVAL_RATE, CHAT_SIGMA, name=f"chat (ShareGPT-like, seed {seed})")
