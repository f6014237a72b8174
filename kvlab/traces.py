"""Request traces for the serving engine: real-text prompts, long-tailed lengths, arrivals in seconds.

    requests = kvlab.traces.chat_requests(tokenizer, 64, seed=0, rate_per_s=2.0)     # Poisson, 2 req/s
    bursty = kvlab.traces.chat_requests(tokenizer, 64, arrival="gamma", burstiness=0.25)
    result = kvlab.serve(model, tokenizer, requests)

Lengths come from the fragmentation lab's ShareGPT-like chat distribution (kvlab.workload: log-normal, prompt
mean 161, output mean 338, σ = 1 of the log), capped at max_prompt / max_output. A prompt is the token ids of
real text — the standard library's docstrings (kvlab.corpus), cut to the sampled length at a docstring's start —
chosen so that decoding and re-encoding it gives the same ids back (a ShareGPT file stores text). The output
length is the request's max_new_tokens; replay with stop_at_eos=False to make every request generate exactly it.

Arrivals (seconds, the first request at 0), as vLLM's benchmark draws them:
  poisson      gaps exponential with mean 1 / rate_per_s (rate_per_s = inf: all at once);
  gamma        gaps gamma-distributed with shape k = burstiness and mean 1 / rate_per_s (vLLM's --burstiness):
               coefficient of variation 1/√k, so k < 1 is burstier than Poisson, k = 1 is Poisson;
  all-at-once  every request at 0.
Lengths and arrivals use separate random.Random streams of the seed: the same requests at any rate or process.

Files: save_trace / load_trace (this module's JSON: prompt text, token ids or a prompt_len, output_len,
arrival_s, with a version) and save_sharegpt / load_sharegpt (the conversation format vLLM's benchmarks read).
"""
from __future__ import annotations

import functools
import json
import math
import pathlib
import random
from dataclasses import dataclass

from .checks import positive_int
from .corpus import stdlib_docstrings
from .engine import Request
from .workload import CHAT_OUTPUT_MEAN, CHAT_PROMPT_MEAN, CHAT_SIGMA, DISTRIBUTIONS, _lengths

ARRIVALS = ("poisson", "gamma", "all-at-once")
CHAT_RATE_PER_S = 1.0  # default: a request a second
MAX_PROMPT = 1024  # vLLM's ShareGPT sampler drops prompts over 1,024 tokens; here they are capped
MAX_OUTPUT = 1024
TRACE_FORMAT, TRACE_VERSION = "kvlab-trace", 1


@dataclass(frozen=True)
class SizedRequest:
    """A request known by its lengths only (no tokenizer to hand): `to_request` gives it a real-text prompt."""
    prompt_len: int
    max_new_tokens: int
    arrival_s: float = 0.0

    def __post_init__(self) -> None:
        positive_int("prompt_len", self.prompt_len)
        Request([0], self.max_new_tokens, self.arrival_s)  # the same checks as a Request's

    def to_request(self, tokenizer, start: int = 0) -> Request:
        return Request(text_ids(tokenizer, self.prompt_len, start), self.max_new_tokens, self.arrival_s)


# --- arrivals and lengths -------------------------------------------------------------------------------------

def _number(what: str, value, low: float, inclusive: bool, allow_inf: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)
    ok = ok and (value >= low if inclusive else value > low) and (allow_inf or math.isfinite(value))
    if not ok:
        bound = f"≥ {low}" if inclusive else f"> {low}"
        raise ValueError(f"{what} must be a {'' if allow_inf else 'finite '}number {bound}, got {value!r}")
    return float(value)


def arrival_times(num_requests: int, rate_per_s: float = CHAT_RATE_PER_S, arrival: str = "poisson",
                  burstiness: float = 1.0, seed: int = 0) -> list[float]:
    """Arrival time in seconds of each of `num_requests` requests, the first at 0 (see the module docstring)."""
    positive_int("num_requests", num_requests)
    if arrival not in ARRIVALS:
        raise ValueError(f"unknown arrival {arrival!r}; choose one of {', '.join(ARRIVALS)}")
    rate = _number("rate_per_s", rate_per_s, 0, inclusive=False, allow_inf=True)
    shape = _number("burstiness", burstiness, 0, inclusive=False)
    if arrival == "all-at-once" or rate == math.inf:
        return [0.0] * num_requests
    rng = random.Random(f"kvlab-arrivals-{seed}")
    gap = (lambda: rng.expovariate(rate)) if arrival == "poisson" else (lambda: rng.gammavariate(shape, 1 / (rate * shape)))
    times = [0.0]
    for _ in range(num_requests - 1):
        times.append(times[-1] + gap())
    return times


def chat_lengths(num_requests: int, seed: int = 0, prompt_mean: float = CHAT_PROMPT_MEAN,
                 output_mean: float = CHAT_OUTPUT_MEAN, distribution: str = "lognormal", max_prompt: int = MAX_PROMPT,
                 max_output: int = MAX_OUTPUT, sigma: float = CHAT_SIGMA) -> list[tuple[int, int]]:
    """(prompt_len, output_len) of each request, drawn around the means and capped at 1 … max (capping the
    long tail lowers the means a little)."""
    positive_int("num_requests", num_requests)
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"unknown distribution {distribution!r}; choose one of {', '.join(DISTRIBUTIONS)}")
    _number("prompt_mean", prompt_mean, 1, inclusive=True)
    _number("output_mean", output_mean, 1, inclusive=True)
    _number("sigma", sigma, 0, inclusive=False)
    positive_int("max_prompt", max_prompt)
    positive_int("max_output", max_output)
    rng = random.Random(seed)
    prompt, output = _lengths(rng, distribution, prompt_mean, sigma), _lengths(rng, distribution, output_mean, sigma)
    return [(min(max(1, round(prompt())), max_prompt), min(max(1, round(output())), max_output))
            for _ in range(num_requests)]


# --- real text of a given length ------------------------------------------------------------------------------

def _bos(tokenizer) -> list[int]:
    return [tokenizer.bos_token_id] if getattr(tokenizer, "add_bos", False) else []


def _body_ids(tokenizer, text: str) -> list[int]:
    """Token ids of `text` without the BOS the tokenizer may prepend."""
    ids = tokenizer.encode(text)
    return ids[len(_bos(tokenizer)):]


@functools.lru_cache(maxsize=4)
def _corpus(tokenizer) -> tuple[list[int], list[int]]:
    """(the token ids of every stdlib docstring joined by blank lines, encoded as one text; the token where
    each docstring starts). The whole text is encoded at once so that any cut of it decodes to text that
    encodes back the same way (docstrings encoded one by one and joined would not: a blank line is one token
    at a text's end, two before a word)."""
    docs = [doc for _, doc in stdlib_docstrings()]
    text = "\n\n".join(docs)
    encoding = tokenizer.backend.encode(text, add_special_tokens=False)  # kvlab.model.Tokenizer: offsets too
    char_starts, at = [], 0
    for doc in docs:
        char_starts.append(at)
        at += len(doc) + 2
    starts, k = [], 0
    for t, (begin, _) in enumerate(encoding.offsets):
        while k < len(char_starts) and begin >= char_starts[k]:
            starts.append(t)
            k += 1
    return list(encoding.ids), starts


def text_ids(tokenizer, num_tokens: int, start: int = 0, bos: bool = True) -> list[int]:
    """`num_tokens` token ids of real text (BOS first if the tokenizer adds one and `bos`), beginning at the
    start of docstring number `start` (mod their count) and running on through the next ones: the first start
    from there whose cut decodes to text that re-encodes to the very same ids."""
    positive_int("num_tokens", num_tokens)
    ids, starts = _corpus(tokenizer)
    head = _bos(tokenizer) if bos else []
    body = max(0, num_tokens - len(head))
    candidates = []
    for k in range(len(starts)):
        s = starts[(start + k) % len(starts)]
        cut = head + [ids[(s + j) % len(ids)] for j in range(body)]
        if (tokenizer.encode(tokenizer.decode(cut)) if bos else _body_ids(tokenizer, tokenizer.decode(cut))) == cut:
            return cut
        candidates.append(cut)
    return candidates[0]  # no cut reads back exactly (never seen): still real text of the right length


def chat_requests(tokenizer, num_requests: int, seed: int = 0, rate_per_s: float = CHAT_RATE_PER_S,
                  arrival: str = "poisson", burstiness: float = 1.0, prompt_mean: float = CHAT_PROMPT_MEAN,
                  output_mean: float = CHAT_OUTPUT_MEAN, distribution: str = "lognormal",
                  max_prompt: int = MAX_PROMPT, max_output: int = MAX_OUTPUT) -> list[Request] | list[SizedRequest]:
    """`num_requests` chat-like requests: Requests with real-text token-id prompts, or SizedRequests (lengths
    only) when tokenizer is None. Same arguments, same requests; request i's prompt starts at a docstring of
    its own (a seeded shuffle), so prompts share no prefix until there are more requests than docstrings."""
    times = arrival_times(num_requests, rate_per_s, arrival, burstiness, seed)
    lengths = chat_lengths(num_requests, seed, prompt_mean, output_mean, distribution, max_prompt, max_output)
    sized = [SizedRequest(p, o, t) for (p, o), t in zip(lengths, times)]
    if tokenizer is None:
        return sized
    order = list(range(len(_corpus(tokenizer)[1])))
    random.Random(f"kvlab-prompts-{seed}").shuffle(order)
    return [s.to_request(tokenizer, order[i % len(order)]) for i, s in enumerate(sized)]


# --- files ------------------------------------------------------------------------------------------------------

def save_trace(path, requests) -> pathlib.Path:
    """Write Requests / SizedRequests as {"format", "version", "requests": [{"prompt" (text or token ids) or
    "prompt_len", "output_len", "arrival_s"}, …]}."""
    entries = []
    for i, r in enumerate(requests):
        if isinstance(r, SizedRequest):
            entries.append({"prompt_len": r.prompt_len, "output_len": r.max_new_tokens, "arrival_s": r.arrival_s})
        else:
            r = Request.of(r, i)
            entries.append({"prompt": r.prompt, "output_len": r.max_new_tokens, "arrival_s": r.arrival_s})
    path = pathlib.Path(path)
    path.write_text(json.dumps({"format": TRACE_FORMAT, "version": TRACE_VERSION, "requests": entries}) + "\n")
    return path


def load_trace(path, tokenizer=None) -> list[Request]:
    """The Requests of a save_trace file (a bare list of entries is read as version 1). A prompt_len entry gets
    a real-text prompt of that length, which needs the tokenizer. ValueError names the bad entry."""
    data = json.loads(pathlib.Path(path).read_text())
    if isinstance(data, dict):
        if data.get("format") != TRACE_FORMAT or data.get("version") != TRACE_VERSION:
            raise ValueError(f"{path} is not a {TRACE_FORMAT} file of version {TRACE_VERSION} (format "
                             f"{data.get('format')!r}, version {data.get('version')!r})")
        data = data.get("requests")
    if not isinstance(data, list) or not data:
        raise ValueError(f"{path} holds no list of requests")
    requests = []
    for i, entry in enumerate(data):
        if not isinstance(entry, dict) or sorted(entry) not in (["arrival_s", "output_len", "prompt"],
                                                                ["arrival_s", "output_len", "prompt_len"]):
            raise ValueError(f"trace entry {i} is {entry!r:.120}: expected keys prompt (or prompt_len), output_len, "
                             f"arrival_s")
        try:
            if "prompt_len" in entry:
                if tokenizer is None:
                    raise ValueError(f"prompt_len {entry['prompt_len']!r} needs a tokenizer to make a prompt")
                sized = SizedRequest(entry["prompt_len"], entry["output_len"], entry["arrival_s"])
                requests.append(sized.to_request(tokenizer, i))
            else:
                requests.append(Request(entry["prompt"], entry["output_len"], entry["arrival_s"]))
        except (ValueError, TypeError) as error:
            raise ValueError(f"trace entry {i}: {error}") from None
    return requests


def _text(tokenizer, ids: list[int]) -> str:
    """Text that encodes back to `ids`: special tokens (a chat template's) kept, a leading BOS left to encode."""
    head = _bos(tokenizer)
    return tokenizer.decode(ids[len(head):] if ids[:len(head)] == head else ids, skip_special_tokens=False)


def save_sharegpt(path, requests, tokenizer) -> pathlib.Path:
    """Write requests as ShareGPT conversations: [{"id", "conversations": [{"from": "human", "value": prompt
    text}, {"from": "gpt", "value": real text of exactly output_len tokens}], "arrival_s"}] (vLLM's loader
    ignores the extra arrival_s key)."""
    entries = []
    for i, r in enumerate(requests):
        r = r.to_request(tokenizer, i) if isinstance(r, SizedRequest) else Request.of(r, i)
        prompt = r.prompt if isinstance(r.prompt, str) else _text(tokenizer, r.prompt)
        reply = tokenizer.decode(text_ids(tokenizer, r.max_new_tokens, i + 1, bos=False))
        entries.append({"id": f"kvlab-{i}", "conversations": [{"from": "human", "value": prompt},
                                                               {"from": "gpt", "value": reply}],
                        "arrival_s": r.arrival_s})
    path = pathlib.Path(path)
    path.write_text(json.dumps(entries, ensure_ascii=False) + "\n")
    return path


def load_sharegpt(path, tokenizer, max_output: int | None = None, max_prompt: int | None = None,
                  num_requests: int | None = None, rate_per_s: float = math.inf, arrival: str = "poisson",
                  burstiness: float = 1.0, seed: int = 0) -> list[Request]:
    """Requests from a ShareGPT file, as vLLM's sharegpt loader reads one: conversations with fewer than two
    turns are skipped; the prompt is turn 0 (the human's), the output length the token count of turn 1 (the
    first gpt reply, BOS not counted), capped at max_output. Unlike vLLM: file order (no shuffle), no minimum
    length; prompts over max_prompt tokens and empty replies are skipped. Arrivals: the entries' arrival_s
    where every entry has one (save_sharegpt writes them), else drawn as arrival_times(rate_per_s, …)."""
    for what, value in (("max_output", max_output), ("max_prompt", max_prompt), ("num_requests", num_requests)):
        if value is not None:
            positive_int(what, value)
    data = json.loads(pathlib.Path(path).read_text())
    if not isinstance(data, list):
        raise ValueError(f"{path} is not a ShareGPT file (a JSON list of conversations)")
    kept = []  # (entry index, prompt ids, output_len, arrival_s or None)
    for i, entry in enumerate(data):
        turns = entry.get("conversations") if isinstance(entry, dict) else None
        if not isinstance(turns, list):
            raise ValueError(f"ShareGPT entry {i} has no 'conversations' list: {entry!r:.120}")
        if len(turns) < 2:
            continue
        values = [t.get("value") if isinstance(t, dict) else None for t in turns[:2]]
        if not all(isinstance(v, str) for v in values):
            raise ValueError(f"ShareGPT entry {i} ({entry.get('id', 'no id')}): its first two turns need a text 'value'")
        if not values[0]:
            raise ValueError(f"ShareGPT entry {i} ({entry.get('id', 'no id')}) has an empty prompt")
        prompt, output_len = tokenizer.encode(values[0]), len(_body_ids(tokenizer, values[1]))
        if output_len == 0 or (max_prompt is not None and len(prompt) > max_prompt):
            continue
        kept.append((i, prompt, output_len if max_output is None else min(output_len, max_output), entry.get("arrival_s")))
        if len(kept) == num_requests:
            break
    if not kept:
        raise ValueError(f"{path} has no conversation with a prompt and a reply")
    missing = [i for i, _, _, t in kept if t is None]
    if len(missing) == len(kept):
        times = arrival_times(len(kept), rate_per_s, arrival, burstiness, seed)
    elif missing:
        raise ValueError(f"ShareGPT entry {missing[0]} has no arrival_s, while others have one")
    else:
        times = [t for _, _, _, t in kept]
    requests = []
    for (i, prompt, output_len, _), t in zip(kept, times):
        try:
            requests.append(Request(prompt, output_len, t))
        except ValueError as error:
            raise ValueError(f"ShareGPT entry {i}: {error}") from None
    return requests
