"""llama.cpp's own batched greedy decode, through llama-cpp-python's C API: the bar kvlab's CPU decode is held to.

One llama.cpp context per batch size B (n_seq_max = B). A generation prefills the B prompts in one llama_batch
(sequence s at seq_id s, logits only at each prompt's last token), then runs a step per new token: one llama_batch
of B tokens, token s at seq_id s and its next position, logits for all B; greedy = argmax of each row.
Used: llama_batch_init, llama_decode, llama_get_logits_ith, llama_memory_clear (all in llama-cpp-python 0.3.36).

What one decode step reads (the bandwidth bound of versus_llamacpp):
  weights: every tensor of the GGUF file as stored (Q4_1 layers, the Q8_0 token embedding as the tied lm_head,
           float32 norms) — the token embedding table counts only where it is also the lm_head: as an input it is
           looked up by row;
  K/V:     f16, 2 (K and V) · layers · kv_heads · head_dim · 2 B per token of context, per sequence; the
           context is the live one (versus_llamacpp: its mean over the decode steps), as kvlab counts its own,
           not the padded cells llama.cpp's attention may also touch.

llama-cpp-python is optional (`make bench-deps`: it compiles llama.cpp); importing this module does not need it.
"""
from __future__ import annotations

import functools
import logging
import pathlib
import time
from dataclasses import dataclass

import numpy as np

from ..memory import kv_bytes_per_token

INSTALL_HINT = ("llama-cpp-python is not installed. `make bench-deps` (or `pip install -e \".[bench]\"`) installs "
                "it into .venv: it compiles llama.cpp from source (about 10 min on 2 cores). It is never part of "
                "`make test`.")
BATCHED_DECODE_API = ("llama_batch_init", "llama_batch_free", "llama_decode", "llama_get_logits_ith",
                      "llama_get_memory", "llama_memory_clear", "llama_init_from_model", "llama_model_load_from_file")
KV_DTYPE = "float16"  # llama.cpp's default K/V type: f16
CONTEXT_SETTINGS = ("llama.cpp's default context parameters (K/V f16, flash attention auto), CPU only, "
                    "n_seq_max = batch, n_threads = n_threads_batch = threads")


def import_llama_cpp():
    """The llama_cpp module, or ModuleNotFoundError saying how to install it."""
    try:
        import llama_cpp
    except ImportError as error:
        raise ModuleNotFoundError(INSTALL_HINT, name="llama_cpp") from error
    return llama_cpp


def llama_cpp_available() -> bool:
    try:
        import_llama_cpp()
    except ModuleNotFoundError:
        return False
    return True


@functools.lru_cache(maxsize=4)  # opening the file's reader takes about a second
def gguf_weight_bytes_per_step(path: str | pathlib.Path) -> int:
    """Bytes of the GGUF file's tensors one decode step reads, as stored: all of them, except the token embedding
    table where a separate output.weight exists (then the embedding is only looked up by row)."""
    from ..model.gguf_file import open_reader

    tensors = {t.name: int(t.n_bytes) for t in open_reader(path).tensors}
    tied = "output.weight" not in tensors
    return sum(tensors.values()) - (0 if tied else tensors["token_embd.weight"])


def f16_kv_bytes_per_token(config) -> int:
    """K and V of one token of context at f16: 2 · layers · kv_heads · head_dim · 2 B (SmolLM2: 23,040 B)."""
    return kv_bytes_per_token(config, KV_DTYPE)


@dataclass(frozen=True)
class TimedGeneration:
    ttft_s: float  # the B prompts prefilled, first tokens picked
    total_s: float  # to the last token
    token_ids: list[list[int]]  # [B][new_tokens]

    @property
    def decode_tokens_per_s(self) -> float:
        """Tokens of the steps after the first, summed over the batch, per second of those steps."""
        decoded = sum(len(ids) - 1 for ids in self.token_ids)
        return decoded / (self.total_s - self.ttft_s)


class LlamaCppEngine:
    """llama.cpp on one GGUF file, CPU only, `threads` threads; room for `context_per_seq` tokens a sequence."""

    def __init__(self, path: str | pathlib.Path, threads: int, context_per_seq: int):
        self.lib = import_llama_cpp()
        missing = [name for name in BATCHED_DECODE_API if not hasattr(self.lib, name)]
        if missing:
            raise NotImplementedError(f"not exposed by llama-cpp-python {self.lib.__version__}: {', '.join(missing)}")
        logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)  # its log callback: errors only
        self.version = self.lib.__version__
        self.threads, self.context_per_seq = threads, context_per_seq
        self.lib.llama_backend_init()
        params = self.lib.llama_model_default_params()
        params.n_gpu_layers = 0
        self.model = self.lib.llama_model_load_from_file(str(path).encode(), params)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {path}")
        self.n_vocab = self.lib.llama_vocab_n_tokens(self.lib.llama_model_get_vocab(self.model))
        self.contexts: dict[int, object] = {}  # batch size → llama_context with n_seq_max = that batch

    def _context(self, batch: int):
        if batch not in self.contexts:
            params = self.lib.llama_context_default_params()
            per_seq = -(-self.context_per_seq // 256) * 256  # llama.cpp pads contexts to 256 cells
            params.n_ctx, params.n_seq_max = batch * per_seq, batch
            params.n_batch = params.n_ubatch = max(512, batch * self.context_per_seq)
            params.n_threads = params.n_threads_batch = self.threads
            context = self.lib.llama_init_from_model(self.model, params)
            if not context:
                raise RuntimeError(f"llama.cpp could not make a context for batch {batch}")
            self.contexts[batch] = context
        return self.contexts[batch]

    def generate(self, prompt_ids: list[int], batch: int, new_tokens: int) -> TimedGeneration:
        """Greedy: the same prompt as `batch` sequences, new_tokens each, every step one llama_decode."""
        if len(prompt_ids) + new_tokens > self.context_per_seq:
            raise ValueError(f"{len(prompt_ids)} prompt + {new_tokens} new tokens exceed this engine's "
                             f"context_per_seq={self.context_per_seq}")
        lib, context = self.lib, self._context(batch)
        lib.llama_memory_clear(lib.llama_get_memory(context), True)
        tokens = lib.llama_batch_init(batch * len(prompt_ids), 0, 1)
        try:
            start = time.perf_counter()
            last = len(prompt_ids) - 1
            self._decode(context, tokens, [(t, p, s, p == last) for s in range(batch) for p, t in enumerate(prompt_ids)])
            out = [[self._argmax(context, s * len(prompt_ids) + last)] for s in range(batch)]
            ttft = time.perf_counter() - start
            for step in range(1, new_tokens):
                self._decode(context, tokens, [(out[s][-1], last + step, s, True) for s in range(batch)])
                for s in range(batch):
                    out[s].append(self._argmax(context, s))
            total = time.perf_counter() - start
        finally:
            lib.llama_batch_free(tokens)
        return TimedGeneration(ttft, total, out)

    def _decode(self, context, tokens, entries: list[tuple[int, int, int, bool]]) -> None:
        """One llama_decode of (token, position, seq_id, wants logits) entries."""
        for i, (token, position, seq_id, wants_logits) in enumerate(entries):
            tokens.token[i], tokens.pos[i], tokens.n_seq_id[i] = token, position, 1
            tokens.seq_id[i][0], tokens.logits[i] = seq_id, int(wants_logits)
        tokens.n_tokens = len(entries)
        status = self.lib.llama_decode(context, tokens)
        if status != 0:
            raise RuntimeError(f"llama_decode returned {status} for a batch of {len(entries)} tokens")

    def _argmax(self, context, index: int) -> int:
        logits = np.ctypeslib.as_array(self.lib.llama_get_logits_ith(context, index), shape=(self.n_vocab,))
        return int(logits.argmax())

    def close(self) -> None:
        for context in self.contexts.values():
            self.lib.llama_free(context)
        self.contexts.clear()
        if self.model:
            self.lib.llama_model_free(self.model)
            self.model = None
