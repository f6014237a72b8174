"""The course: every notebook with the question it answers and what it measures, and the paths through them.

One table that notebook 00's map, the docs site's index, the workshop guide and the tests read, so a notebook
added to notebooks/ without a row here (or a row without its notebook) fails a test.
"""
from __future__ import annotations

import dataclasses
import pathlib

NOTEBOOK_DIR = pathlib.Path(__file__).resolve().parents[1] / "notebooks"


@dataclasses.dataclass(frozen=True)
class Notebook:
    file: str  # "01_why_kv_cache.ipynb"
    title: str
    question: str  # the question it answers, in one line
    measures: str  # what it measures live
    claims: tuple[int, ...]  # CLAIMS.md numbers it tests

    @property
    def number(self) -> int:
        return int(self.file[:2])

    @property
    def stem(self) -> str:
        return self.file.removesuffix(".ipynb")


NOTEBOOKS: tuple[Notebook, ...] = (
    Notebook("00_start_here.ipynb", "Start here",
             "What is this lab, does it run here, and which path should I take?",
             "the setup: device and mode, model load time, the C++ CPU kernel, the Triton kernels", ()),
    Notebook("01_why_kv_cache.ipynb", "Why generation needs a KV cache",
             "Where do the keys and values of earlier tokens come from: recomputed, or kept?",
             "step time with and without a cache, same text both ways; the cache's bytes for known models",
             (1, 2, 3, 6, 7, 8, 9)),
    Notebook("02_paged_attention.ipynb", "Paged attention",
             "How much of a contiguous cache's reserved memory ever holds a token, and what does paging cost?",
             "reserved vs used slots, block tables, paged vs contiguous decode time and tokens", (11, 12, 13)),
    Notebook("03_fragmentation.ipynb", "Fragmentation",
             "Where does KV memory go: reserved, internal and external fragmentation?",
             "a live block pool and a request trace replayed through three allocators", (11, 12, 13)),
    Notebook("04_prefix_caching.ipynb", "Prefix caching",
             "Can a shared system prompt be computed once, and how much TTFT does that save?",
             "TTFT cold vs warm, blocks shared by reference, copy-on-write, the radix of prefixes", (14, 15)),
    Notebook("05_quantization.ipynb", "Quantizing the KV cache",
             "How much memory, accuracy and time do int8 / fp8 / int4 / 2-bit K/V cost or save?",
             "bytes per token with scales, perplexity and token agreement, decode time by scheme", (16, 18)),
    Notebook("06_decode_is_bandwidth_bound.ipynb", "Decode is bandwidth-bound",
             "Why is one generated token so expensive when it is a thousand times less arithmetic than prefill?",
             "the roofline of this device: copy bandwidth, matmul FLOP/s, prefill vs decode per token",
             (4, 5, 18, 21, 23)),
    Notebook("07_gqa.ipynb", "MHA, GQA, MQA",
             "What do fewer KV heads buy, and does decode time follow the bytes?",
             "K/V bytes and decode time with 1, 3 and 9 KV heads over the same model", (10,)),
    Notebook("08_continuous_batching.ipynb", "Continuous batching",
             "What should the next forward pass compute when requests arrive and stop whenever they like?",
             "static vs continuous batching, chunked prefill, preemption: TTFT, TPOT, ITL, throughput",
             (19, 20, 21, 24)),
    Notebook("09_offload.ipynb", "Offloading to a slower tier",
             "When the cache does not fit, is moving blocks to host memory or disk cheaper than recomputing?",
             "tier bandwidth, swap vs recompute by length, prefix hits from the tier, memory pressure", (17,)),
    Notebook("10_speculative_decoding.ipynb", "Speculative decoding",
             "Can a cheap guess of k tokens, checked in one pass, make decoding faster?",
             "acceptance rate, tokens per pass, speedup by k and text kind, verify cost by width", (22,)),
    Notebook("11_claims_and_interview_prep.ipynb", "The claims ledger and interview drill",
             "Which of the things people are told about the KV cache hold, and by how much are the others off?",
             "every claim in CLAIMS.md measured small and live, then a quiz with measure-it buttons",
             tuple(range(1, 25))),
)


@dataclasses.dataclass(frozen=True)
class Path:
    name: str
    minutes: int
    audience: str
    stops: tuple[tuple[str, str], ...]  # (notebook file, what to do there)


PATHS: tuple[Path, ...] = (
    Path("90-minute workshop", 90, "a room meeting the KV cache for the first time", (
        ("00_start_here.ipynb", "check every laptop runs the lab (5 min)"),
        ("01_why_kv_cache.ipynb", "cache vs recompute, the memory table (20 min)"),
        ("02_paged_attention.ipynb", "block tables and the reserved-memory figure (20 min)"),
        ("04_prefix_caching.ipynb", "the shared system prompt, TTFT cold vs warm (15 min)"),
        ("08_continuous_batching.ipynb", "the serving lab: static vs continuous (20 min)"),
        ("11_claims_and_interview_prep.ipynb", "the quiz, in pairs (10 min)"),
    )),
    Path("half-day workshop", 210, "engineers who will run or tune an inference server", (
        ("00_start_here.ipynb", "setup check (10 min)"),
        ("01_why_kv_cache.ipynb", "cache vs recompute (20 min)"),
        ("06_decode_is_bandwidth_bound.ipynb", "the roofline: why decode waits on memory (25 min)"),
        ("02_paged_attention.ipynb", "paging (20 min)"),
        ("03_fragmentation.ipynb", "where memory goes (15 min)"),
        ("04_prefix_caching.ipynb", "prefix caching (15 min)"),
        ("05_quantization.ipynb", "KV quantization (20 min)"),
        ("07_gqa.ipynb", "fewer KV heads (10 min)"),
        ("08_continuous_batching.ipynb", "the scheduler (25 min)"),
        ("09_offload.ipynb", "a slower tier (15 min)"),
        ("10_speculative_decoding.ipynb", "speculative decoding (15 min)"),
        ("11_claims_and_interview_prep.ipynb", "the ledger and quiz (20 min)"),
    )),
    Path("self-study", 360, "one reader, at their own pace, every exercise done", tuple(
        (nb.file, "read, run, move the widgets, do the exercises") for nb in NOTEBOOKS)),
    Path("30-minute interview cram", 30, "a candidate before a systems interview", (
        ("11_claims_and_interview_prep.ipynb", "read the ledger's verdicts, take the quiz (20 min)"),
        ("06_decode_is_bandwidth_bound.ipynb", "the roofline figure: decode is bound by bytes (5 min)"),
        ("01_why_kv_cache.ipynb", "the memory table: bytes per token for known models (5 min)"),
    )),
)


def notebook(file_or_number: str | int) -> Notebook:
    for nb in NOTEBOOKS:
        if file_or_number in (nb.file, nb.number, nb.stem):
            return nb
    raise ValueError(f"no notebook {file_or_number!r} in the course map; "
                     f"known: {[nb.file for nb in NOTEBOOKS]}")


def notebooks_on_disk(folder: pathlib.Path = NOTEBOOK_DIR) -> list[str]:
    return sorted(p.name for p in folder.glob("[0-9][0-9]_*.ipynb"))
