"""The interview drill: the questions behind CLAIMS.md, checked, with the derivation or the reason shown.

Two kinds of question:
  * NumericQuestion — a number, checked within a relative tolerance; the answer is computed from kvlab's own
    memory math and model shapes (kvlab.memory), never typed in, and the derivation is shown either way;
  * ChoiceQuestion — one right choice; every wrong choice carries the reason it is wrong.

`Quiz` keeps the running score: a question's first answer counts, later tries are feedback only. Bad input (not
a number, a choice that does not exist, an unknown question) raises ValueError naming the value and leaves the
score unchanged. The widget (kvlab.viz.quiz_widget) only draws this; each question names the claim whose
measurement (kvlab.claims.measure_claim) its "measure it" button runs.
"""
from __future__ import annotations

import dataclasses
import math

from kvlab.memory import GB, GiB, PRESETS, kv_bytes_per_token, kv_bytes_per_token_per_layer, kv_cache_bytes


@dataclasses.dataclass(frozen=True)
class Checked:
    correct: bool
    message: str  # one line: right or not, your answer beside the right one
    explanation: str  # the derivation (numeric) or why the chosen answer is right or wrong (choice)


@dataclasses.dataclass(frozen=True)
class NumericQuestion:
    key: str
    claim: int  # the CLAIMS.md number it drills; its measurement is the "measure it" button
    prompt: str
    answer: float
    unit: str
    rel_tolerance: float
    derivation: str

    def check(self, given) -> Checked:
        value = parse_number(given, self.key)
        error = abs(value - self.answer) / abs(self.answer)
        correct = error <= self.rel_tolerance
        verdict = "Right" if correct else "Not quite"
        message = (f"{verdict}: you said {value:g} {self.unit}, the answer is {self.answer:.4g} {self.unit} "
                   f"({error:.1%} off; within {self.rel_tolerance:.0%} counts)")
        return Checked(correct, message, self.derivation)


@dataclasses.dataclass(frozen=True)
class Choice:
    text: str
    why: str  # why it is right, or why it is wrong


@dataclasses.dataclass(frozen=True)
class ChoiceQuestion:
    key: str
    claim: int
    prompt: str
    choices: tuple[Choice, ...]
    right: int  # index of the right choice

    def __post_init__(self):
        assert 0 <= self.right < len(self.choices), (self.key, self.right)
        assert len(self.choices) >= 2, self.key

    def check(self, given) -> Checked:
        index = parse_choice(given, len(self.choices), self.key)
        chosen, right = self.choices[index], self.choices[self.right]
        if index == self.right:
            return Checked(True, f"Right: {chosen.text}", chosen.why)
        return Checked(False, f"Not quite: {chosen.text!r} is wrong. The answer: {right.text}",
                       f"Why yours is wrong: {chosen.why} Why the answer is right: {right.why}")


Question = NumericQuestion | ChoiceQuestion


def parse_number(given, key: str = "") -> float:
    """A number from a float, an int or a text box ("4096", "4,096", " 16.0 "); anything else → ValueError."""
    where = f" for question {key!r}" if key else ""
    if isinstance(given, bool):
        raise ValueError(f"answer{where} must be a number, got {given!r}")
    if isinstance(given, (int, float)):
        value = float(given)
    elif isinstance(given, str):
        try:
            value = float(given.strip().replace(",", "").replace("_", ""))
        except ValueError:
            raise ValueError(f"answer{where} is not a number: {given!r}") from None
    else:
        raise ValueError(f"answer{where} must be a number, got {given!r}")
    if not math.isfinite(value):
        raise ValueError(f"answer{where} must be a finite number, got {given!r}")
    return value


def parse_choice(given, count: int, key: str = "") -> int:
    where = f" for question {key!r}" if key else ""
    if isinstance(given, bool) or not isinstance(given, int):
        raise ValueError(f"choice{where} must be an index 0–{count - 1}, got {given!r}")
    if not 0 <= given < count:
        raise ValueError(f"choice{where} must be an index 0–{count - 1}, got {given!r}")
    return given


class Quiz:
    """The questions and the running score: a question's first answer counts; bad input changes nothing."""

    def __init__(self, questions: tuple[Question, ...] | None = None):
        self.questions = tuple(questions if questions is not None else QUESTIONS)
        keys = [q.key for q in self.questions]
        assert len(set(keys)) == len(keys), f"duplicate question keys: {keys}"
        self.first_answers: dict[str, bool] = {}  # key → was the first answer right

    def question(self, key: str) -> Question:
        for q in self.questions:
            if q.key == key:
                return q
        raise ValueError(f"no question {key!r}; known: {[q.key for q in self.questions]}")

    def answer(self, key: str, given) -> Checked:
        checked = self.question(key).check(given)  # raises before the score changes
        self.first_answers.setdefault(key, checked.correct)
        return checked

    @property
    def score(self) -> tuple[int, int]:
        """(right at the first try, answered)."""
        return sum(self.first_answers.values()), len(self.first_answers)

    def score_line(self) -> str:
        right, answered = self.score
        return f"score: {right} of {answered} answered right at the first try ({len(self.questions)} questions)"


def _numeric_questions() -> tuple[NumericQuestion, ...]:
    llama3, llama2_13b, smol = PRESETS["Llama-3-8B"], PRESETS["Llama-2-13B"], PRESETS["SmolLM2-135M"]
    per_layer = kv_bytes_per_token_per_layer(llama3, "bfloat16")
    at_128k = kv_cache_bytes(llama3, 131072, 1, "bfloat16")
    batch_8 = kv_cache_bytes(llama2_13b, 4096, 8, "bfloat16")
    smol_fp32 = kv_bytes_per_token(smol, "float32")
    alpha, k = 0.8, 4
    tokens_per_pass = (1 - alpha ** (k + 1)) / (1 - alpha)
    return (
        NumericQuestion(
            "llama3-bytes-per-layer", 6,
            "Llama-3-8B (32 layers, 32 query heads, 8 KV heads, head_dim 128) in bf16: how many bytes of KV cache "
            "does one token take in one layer?", per_layer, "bytes", 0.02,
            f"2 (K and V) × {llama3.num_kv_heads} KV heads × {llama3.head_dim} × 2 bytes = {per_layer:,} bytes. "
            f"The query heads do not count: only K/V heads are cached."),
        NumericQuestion(
            "llama3-128k", 6,
            "And one Llama-3-8B request at 128K tokens (131,072), bf16: how many GiB is its KV cache?",
            at_128k / GiB, "GiB", 0.05,
            f"{per_layer:,} bytes × {llama3.num_layers} layers × 131,072 tokens = {at_128k:,} bytes = "
            f"{at_128k / GiB:.0f} GiB ({at_128k / GB:.1f} GB) — more than the 16 GB of its bf16 weights."),
        NumericQuestion(
            "llama2-13b-batch", 8,
            "Llama-2-13B (40 layers, 40 heads, no GQA, head_dim 128) serving 8 requests of 4,096 tokens in bf16: "
            "how many GB (10⁹ bytes) of KV cache?", batch_8 / GB, "GB", 0.05,
            f"2 × 40 heads × 128 × 2 bytes = {kv_bytes_per_token_per_layer(llama2_13b):,} bytes a token a layer; "
            f"× 40 layers × 4,096 tokens × 8 requests = {batch_8 / GB:.1f} GB."),
        NumericQuestion(
            "gqa-ratio", 10,
            "Llama-3-8B has 32 query heads and 8 KV heads. How many times smaller is its KV cache than the same "
            "model with full multi-head attention (32 KV heads)?", llama3.num_heads / llama3.num_kv_heads, "×", 0.0,
            f"The cache scales with the KV heads: {llama3.num_heads} / {llama3.num_kv_heads} = "
            f"{llama3.num_heads // llama3.num_kv_heads}×. The attention FLOPs do not shrink: every query head "
            f"still attends over every cached token."),
        NumericQuestion(
            "smollm2-fp32", 6,
            "This lab's model, SmolLM2-135M (30 layers, 3 KV heads, head_dim 64), with its cache in float32 on a "
            "CPU: bytes of KV cache per token, all layers?", smol_fp32, "bytes", 0.02,
            f"2 × 3 KV heads × 64 × 4 bytes × 30 layers = {smol_fp32:,} bytes (45 KiB) a token."),
        NumericQuestion(
            "decode-intensity", 4,
            "A batch-1 decode step multiplies every bf16 weight by one activation (a multiply-add: 2 FLOP). "
            "How many FLOP per byte of weights read is that?", 1.0, "FLOP/byte", 0.1,
            "2 FLOP per weight ÷ 2 bytes per bf16 weight = 1 FLOP/byte — hundreds of times below a GPU's ridge "
            "(an H100: ~990 TFLOP/s ÷ ~3.35 TB/s ≈ 295 FLOP/byte), so the step waits on memory. A batch of B "
            "tokens reuses each weight B times: B FLOP/byte."),
        NumericQuestion(
            "reserved-empty", 11,
            "A server reserves a contiguous 32,768-token row for a request that holds 100 tokens. What percent of "
            "the row is empty?", 100 * (1 - 100 / 32768), "%", 0.005,
            f"1 − 100 / 32,768 = {1 - 100 / 32768:.2%}: the row is reserved for the longest the request might "
            f"become, not the length it has."),
        NumericQuestion(
            "paged-tail", 12,
            "With paged blocks of 16 tokens, at most how many token slots can one sequence leave empty?", 15,
            "slots", 0.0,
            "Only its last block is partly filled: at most 16 − 1 = 15 slots (a sequence of 16n + 1 tokens). "
            "That is internal fragmentation, bounded but not removed; there is no external fragmentation, "
            "since any free block fits any sequence."),
        NumericQuestion(
            "spec-tokens-per-pass", 22,
            f"Speculative decoding with k = {k} drafted tokens, each accepted independently with probability "
            f"α = {alpha}: how many tokens does one verify pass yield on average (the bonus token included)?",
            tokens_per_pass, "tokens", 0.03,
            f"(1 − α^(k+1)) / (1 − α) = (1 − {alpha}^{k + 1}) / {1 - alpha:.1f} = {tokens_per_pass:.2f}: the "
            f"first rejection ends the run, so later drafts count only if all before them were accepted."),
    )


_CHOICE_QUESTIONS = (
    ChoiceQuestion("prefill-per-token", 4, "Why is prefill cheaper per token than decode?", (
        Choice("Prefill reads every weight once for all the prompt's tokens; decode reads every weight for one "
               "token", "Decode moves the same bytes as prefill for one token instead of hundreds: it is bound by "
               "memory bandwidth, prefill by arithmetic."),
        Choice("Prefill skips attention", "Prefill computes attention over the whole prompt (causal); it is the "
               "larger attention of the two."),
        Choice("Decode's attention is O(n²) a token", "One decode step attends over n cached keys: O(n) a token; "
               "at short context the weights, not attention, dominate the step."),
        Choice("Prefill's tokens are already in the cache", "Prefill is what writes them into the cache; nothing "
               "is there before it."),
    ), right=0),
    ChoiceQuestion("which-tokens-decode-reads", 17, "Which cached tokens does one decode step read in a "
                   "full-attention layer?", (
        Choice("Only the most recent ones: older tokens are read less often", "Full attention computes a weight "
               "for every cached key, every step; that is what makes offloading old blocks costly to fetch back."),
        Choice("Every cached token's K and V, every step", "softmax(q·Kᵀ) needs every key, and the weighted sum "
               "needs every value: the whole cache is read each step. Only sliding-window or sparse attention "
               "reads less."),
        Choice("Only the tokens with large attention weights", "It must read a key to know its weight is small: "
               "skipping tokens is an approximation (sparse attention), not what standard attention does."),
    ), right=1),
    ChoiceQuestion("paging-fragmentation", 12, "What fragmentation does a paged KV cache leave?", (
        Choice("None: paging removes fragmentation", "The last block of each sequence is partly empty: internal "
               "fragmentation, up to block_size − 1 slots a sequence."),
        Choice("External: free blocks too scattered to use", "Any free block can hold any sequence's next tokens "
               "(the block table maps them), so scattered free blocks are all usable."),
        Choice("Internal, in each sequence's last block", "Blocks are fixed-size; a sequence fills all but its "
               "last, which holds 1 … block_size tokens."),
    ), right=2),
    ChoiceQuestion("copy-on-write", 15, "Two samples of one prompt share its KV blocks. When is a shared block "
                   "copied?", (
        Choice("When a sequence is about to write into a block another sequence also references",
               "A block with reference count > 1 is read-only: the writer gets a private copy first, so full "
               "prefix blocks (never written again) stay shared."),
        Choice("At the fork, for every block", "That is what sharing avoids: copying at the fork costs the whole "
               "prompt's cache per sample."),
        Choice("Never: shared blocks are written in place", "The other sample would then read tokens it never "
               "generated."),
    ), right=0),
    ChoiceQuestion("continuous-batching", 19, "Why does continuous batching raise throughput over static "
                   "batching?", (
        Choice("It makes each forward pass faster", "A step over the same batch costs the same; what changes is "
               "how full the batch is."),
        Choice("A finished request's place is refilled at the next step, not when the whole batch finishes",
               "Static batching runs until its longest request ends, with finished slots idle; continuous "
               "batching keeps the batch full, and a decode step costs nearly the same for a fuller batch."),
        Choice("It skips the prefill", "Every request is still prefilled; chunked prefill only spreads it across "
               "steps."),
    ), right=1),
    ChoiceQuestion("cache-complexity", 2, "With a KV cache, is generating n tokens O(n) work?", (
        Choice("Yes, exactly O(n)", "Each step still attends over all t cached keys, so attention totals O(n²)."),
        Choice("The weights' work is O(n), attention's stays O(n²): O(n) only while the context is short",
               "Per step: the weights cost the same, attention grows with t; attention matches the weights' "
               "work only past a context of thousands of tokens on small models."),
        Choice("No: it is O(n³) without and O(n²) with", "Without a cache each step reruns all t tokens "
               "(O(t) in the weights, O(t²) in attention); the textbook O(n²) → O(n) counts the weights only."),
    ), right=1),
    ChoiceQuestion("speculation-fails", 22, "When does speculative decoding fail to speed decoding up?", (
        Choice("When the text is long", "Length does not matter; what matters is how often the draft is "
               "accepted."),
        Choice("When the draft's acceptance rate is low next to its cost", "Each pass costs a verify (and a "
               "draft); with few tokens accepted a pass yields little more than one token, for more than one "
               "step's time."),
        Choice("Never: it always yields k tokens a pass", "Only the accepted prefix of the k drafts is kept; "
               "the first rejection ends the run."),
    ), right=1),
)

QUESTIONS: tuple[Question, ...] = _numeric_questions() + _CHOICE_QUESTIONS
