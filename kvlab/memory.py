"""KV memory math and model presets.

During generation every layer keeps a Key and a Value vector for every past token, for every
KV head. So the cache of one sequence batch takes

    bytes = 2 (K and V) x layers x kv_heads x head_dim x bytes_per_element x tokens x batch

Only the *KV* heads count: grouped-query attention (GQA) lets several query heads share one
K/V head, and multi-query attention (MQA) keeps a single one, which shrinks the cache by
num_heads / num_kv_heads compared with plain multi-head attention (MHA).
Pure standard library: no torch, no numpy.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Mapping

from .checks import positive_int

MiB = 2**20
GiB = 2**30
GB = 10**9


@dataclass(frozen=True)
class ModelShape:
    """The attention dimensions that decide the KV cache size (context_len 0 = unknown)."""

    name: str
    num_layers: int
    num_heads: int  # query heads
    num_kv_heads: int
    head_dim: int
    context_len: int  # the model's maximum context
    source: str = ""

    def __post_init__(self) -> None:
        for field in ("num_layers", "num_heads", "num_kv_heads", "head_dim"):
            positive_int(field, getattr(self, field))
        if isinstance(self.context_len, bool) or not isinstance(self.context_len, int) or self.context_len < 0:
            raise ValueError(f"context_len must be a non-negative integer, got {self.context_len!r}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_kv_heads={self.num_kv_heads} does not divide num_heads={self.num_heads}")

    @property
    def attention_kind(self) -> str:
        if self.num_kv_heads == self.num_heads:
            return "MHA"
        return "MQA" if self.num_kv_heads == 1 else "GQA"

    @property
    def group_size(self) -> int:
        """How many query heads share one K/V head."""
        return self.num_heads // self.num_kv_heads


DTYPE_BYTES: dict[str, float] = {
    "float32": 4, "fp32": 4, "bfloat16": 2, "bf16": 2, "float16": 2, "fp16": 2, "half": 2,
    "fp8": 1, "float8": 1, "int8": 1, "int4": 0.5,
}

_PRESET_LIST = [
    # meta-llama/Llama-2-7b-hf config.json: num_hidden_layers=32, num_attention_heads=32,
    # num_key_value_heads=32, hidden_size=4096 (head_dim 128), max_position_embeddings=4096
    ModelShape("Llama-2-7B", 32, 32, 32, 128, 4096, "meta-llama/Llama-2-7b-hf config.json"),
    # meta-llama/Llama-2-13b-hf config.json: num_hidden_layers=40, num_attention_heads=40,
    # num_key_value_heads=40, hidden_size=5120 (head_dim 128), max_position_embeddings=4096
    ModelShape("Llama-2-13B", 40, 40, 40, 128, 4096, "meta-llama/Llama-2-13b-hf config.json"),
    # meta-llama/Llama-2-70b-hf config.json: num_hidden_layers=80, num_attention_heads=64,
    # num_key_value_heads=8, hidden_size=8192 (head_dim 128), max_position_embeddings=4096
    ModelShape("Llama-2-70B", 80, 64, 8, 128, 4096, "meta-llama/Llama-2-70b-hf config.json"),
    # meta-llama/Meta-Llama-3-8B config.json: num_hidden_layers=32, num_attention_heads=32,
    # num_key_value_heads=8, hidden_size=4096 (head_dim 128), max_position_embeddings=8192.
    # context_len is Llama-3.1-8B's 131072 (same shape, RoPE-scaled to 128K context).
    ModelShape("Llama-3-8B", 32, 32, 8, 128, 131072, "meta-llama/Meta-Llama-3-8B / Llama-3.1-8B config.json"),
    # meta-llama/Meta-Llama-3-70B config.json: num_hidden_layers=80, num_attention_heads=64,
    # num_key_value_heads=8, hidden_size=8192 (head_dim 128), max_position_embeddings=8192;
    # context_len is Llama-3.1-70B's 131072 (same shape).
    ModelShape("Llama-3-70B", 80, 64, 8, 128, 131072, "meta-llama/Meta-Llama-3-70B / Llama-3.1-70B config.json"),
    # mistralai/Mistral-7B-v0.1 config.json: num_hidden_layers=32, num_attention_heads=32,
    # num_key_value_heads=8, hidden_size=4096 (head_dim 128), max_position_embeddings=32768
    # (v0.1 also has sliding_window=4096, which this full-cache math ignores)
    ModelShape("Mistral-7B", 32, 32, 8, 128, 32768, "mistralai/Mistral-7B-v0.1 config.json"),
    # google/gemma-7b config.json: num_hidden_layers=28, num_attention_heads=16,
    # num_key_value_heads=16, head_dim=256 (hidden_size=3072), max_position_embeddings=8192
    ModelShape("Gemma-7B", 28, 16, 16, 256, 8192, "google/gemma-7b config.json"),
    # google/gemma-2-9b config.json: num_hidden_layers=42, num_attention_heads=16,
    # num_key_value_heads=8, head_dim=256 (hidden_size=3584), max_position_embeddings=8192
    ModelShape("Gemma-2-9B", 42, 16, 8, 256, 8192, "google/gemma-2-9b config.json"),
    # tiiuae/falcon-7b config.json: num_hidden_layers=32, num_attention_heads=71,
    # multi_query=true (1 kv head), hidden_size=4544 (head_dim 64), 2048-token context
    ModelShape("Falcon-7B", 32, 71, 1, 64, 2048, "tiiuae/falcon-7b config.json"),
    # HuggingFaceTB/SmolLM2-135M config.json: num_hidden_layers=30, num_attention_heads=9,
    # num_key_value_heads=3, hidden_size=576 (head_dim 64), max_position_embeddings=8192
    ModelShape("SmolLM2-135M", 30, 9, 3, 64, 8192, "HuggingFaceTB/SmolLM2-135M config.json"),
]
PRESETS: dict[str, ModelShape] = {m.name: m for m in _PRESET_LIST}
_PRESETS_LOWER = {k.lower(): v for k, v in PRESETS.items()}

# Our field name -> alternative names, so Hugging Face style configs resolve too.
_ALIASES = {
    "num_layers": ("num_hidden_layers", "n_layer"),
    "num_heads": ("num_attention_heads", "n_head"),
    "num_kv_heads": ("num_key_value_heads",),
    "context_len": ("max_position_embeddings",),
}


def _whole(x: float) -> int | float:
    return int(x) if float(x).is_integer() else x


def dtype_bytes(dtype: Any) -> float:
    """Bytes per element for a dtype name (or a torch dtype, e.g. torch.bfloat16)."""
    key = str(dtype).lower().removeprefix("torch.")
    if key not in DTYPE_BYTES:
        raise ValueError(f"unknown dtype {dtype!r}; known: {', '.join(DTYPE_BYTES)}")
    return DTYPE_BYTES[key]


def resolve_shape(model: Any) -> ModelShape:
    """A ModelShape from a preset name, a ModelShape, a dict, a config-like object, or a model (.config)."""
    if isinstance(model, ModelShape):
        return model
    if isinstance(model, str):
        if model.lower() not in _PRESETS_LOWER:
            raise ValueError(f"unknown model preset {model!r}; known presets: {', '.join(PRESETS)}")
        return _PRESETS_LOWER[model.lower()]

    def get(key: str) -> Any:
        for k in (key, *_ALIASES.get(key, ())):
            v = model.get(k) if isinstance(model, Mapping) else getattr(model, k, None)
            if v is not None:
                return v
        return None

    layers, kv, head_dim, heads = get("num_layers"), get("num_kv_heads"), get("head_dim"), get("num_heads")
    kv = kv if kv is not None else heads  # HF configs omit num_key_value_heads for MHA models
    if head_dim is None and heads and get("hidden_size"):
        head_dim = get("hidden_size") // heads
    if layers is None or kv is None or head_dim is None:
        if not isinstance(model, Mapping) and getattr(model, "config", None) is not None:
            return resolve_shape(model.config)
        raise ValueError(f"cannot read num_layers / num_kv_heads / head_dim from {model!r}")
    name = get("name") or get("name_or_path") or type(model).__name__
    return ModelShape(str(name), layers, heads if heads is not None else kv, kv, head_dim, get("context_len") or 0)


def kv_bytes_per_token_per_layer(model: Any, dtype: Any = "bfloat16") -> int | float:
    """2 (K and V) x num_kv_heads x head_dim x bytes per element."""
    s = resolve_shape(model)
    return _whole(2 * s.num_kv_heads * s.head_dim * dtype_bytes(dtype))


def kv_bytes_per_token(model: Any, dtype: Any = "bfloat16") -> int | float:
    """KV bytes one token adds to the cache, over all layers."""
    return _whole(kv_bytes_per_token_per_layer(model, dtype) * resolve_shape(model).num_layers)


def kv_cache_bytes(model: Any, context_len: int, batch: int = 1, dtype: Any = "bfloat16") -> int | float:
    """Total KV cache bytes for `batch` sequences of `context_len` tokens."""
    positive_int("context_len", context_len)
    positive_int("batch", batch)
    total = kv_bytes_per_token(model, dtype) * context_len * batch
    assert total > 0
    return _whole(total)


def max_context_for_budget(model: Any, budget_bytes: float, batch: int = 1, dtype: Any = "bfloat16") -> int:
    """How many tokens per sequence fit in `budget_bytes` of KV cache (floor)."""
    if isinstance(budget_bytes, bool) or not isinstance(budget_bytes, (int, float)) or budget_bytes < 0:
        raise ValueError(f"budget_bytes must be a non-negative number, got {budget_bytes!r}")
    positive_int("batch", batch)
    tokens = int(budget_bytes // (kv_bytes_per_token(model, dtype) * batch))
    assert tokens >= 0
    return tokens


def with_kv_heads(model: Any, num_kv_heads: int, name: str | None = None) -> ModelShape:
    """The same model with a different number of K/V heads (an MHA / GQA / MQA variant)."""
    s = resolve_shape(model)
    positive_int("num_kv_heads", num_kv_heads)
    if s.num_heads % num_kv_heads:
        raise ValueError(f"num_kv_heads={num_kv_heads} does not divide num_heads={s.num_heads} of {s.name}")
    return replace(s, num_kv_heads=num_kv_heads, name=name or f"{s.name} ({num_kv_heads} kv heads)")


def format_bytes(n: float, binary: bool = True) -> str:
    """Human-readable size: '512 MiB', '16 GiB', '26.8 GB' (binary=False uses powers of 1000)."""
    if isinstance(n, bool) or not isinstance(n, (int, float)) or n < 0:
        raise ValueError(f"n must be a non-negative number of bytes, got {n!r}")
    base = 1024 if binary else 1000
    units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"] if binary else ["B", "KB", "MB", "GB", "TB", "PB"]
    i = 0
    while i < len(units) - 1 and n >= base ** (i + 1):
        i += 1
    value = n / base**i
    decimals = 0 if value >= 100 else 1 if value >= 10 else 2  # up to 3 significant digits
    text = f"{value:.{decimals}f}"
    if float(text) >= base and i < len(units) - 1:  # e.g. 1023.99 MiB would print as "1024 MiB"
        i, text = i + 1, "1"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return f"{text} {units[i]}"
