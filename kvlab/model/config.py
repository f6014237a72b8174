"""The shape of a Llama-architecture model, read from a GGUF file's metadata."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LlamaConfig:
    name: str
    num_layers: int
    hidden_size: int
    ffn_size: int
    num_heads: int  # query heads
    num_kv_heads: int  # key/value heads (GQA: fewer than num_heads)
    head_dim: int
    vocab_size: int
    context_len: int
    rope_base: float
    rms_eps: float
    tied_embeddings: bool
    bos_token_id: int
    eos_token_id: int

    def __post_init__(self) -> None:
        assert self.num_heads % self.num_kv_heads == 0, "query heads must split evenly over KV heads"
        assert self.num_heads * self.head_dim == self.hidden_size

    @property
    def group_size(self) -> int:
        """Query heads that share one KV head."""
        return self.num_heads // self.num_kv_heads

    @classmethod
    def from_gguf_metadata(cls, meta: dict) -> "LlamaConfig":
        arch = meta["general.architecture"]
        if arch != "llama":
            raise ValueError(f"kvlab runs Llama-architecture models; this file is {arch!r}")
        hidden = int(meta["llama.embedding_length"])
        heads = int(meta["llama.attention.head_count"])
        return cls(
            name=str(meta.get("general.name", "llama")),
            num_layers=int(meta["llama.block_count"]),
            hidden_size=hidden,
            ffn_size=int(meta["llama.feed_forward_length"]),
            num_heads=heads,
            num_kv_heads=int(meta.get("llama.attention.head_count_kv", heads)),
            head_dim=hidden // heads,
            vocab_size=int(meta.get("llama.vocab_size", len(meta.get("tokenizer.ggml.tokens", [])))),
            context_len=int(meta["llama.context_length"]),
            rope_base=float(meta.get("llama.rope.freq_base", 10000.0)),
            rms_eps=float(meta["llama.attention.layer_norm_rms_epsilon"]),
            tied_embeddings=bool(meta["tied_embeddings"]),
            bos_token_id=int(meta["tokenizer.ggml.bos_token_id"]),
            eos_token_id=int(meta["tokenizer.ggml.eos_token_id"]),
        )
