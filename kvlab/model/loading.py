"""load_model: GGUF file → (LlamaModel, Tokenizer), with a local cache of the dequantized weights.

Cold: parse the GGUF, dequantize every tensor with `gguf`, build the tokenizer (~5 s on 2 CPU cores).
Warm: memory-map one torch file holding the fused float32 weights and the tokenizer (< 1 s).
The cache lives in $KVLAB_CACHE_DIR (default ~/.cache/kvlab) and is keyed by the GGUF file's size and mtime.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
import threading
import time

import numpy as np
import torch

from . import gguf_file
from .config import LlamaConfig
from .llama import LayerWeights, LlamaModel
from .projection import Projection
from .tokenizer import Tokenizer

CACHE_FORMAT = 1


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pick_device(choice: str = "auto") -> torch.device:
    """A notebook's DEVICE parameter → a device. "auto" honours $KVLAB_DEVICE (the test suite sets it to cpu so
    that executed notebooks compare equal on any machine), else CUDA when available."""
    if choice == "auto":
        choice = os.environ.get("KVLAB_DEVICE", "auto")
    if choice == "auto":
        return default_device()
    if choice not in ("cpu", "cuda"):
        raise ValueError(f"DEVICE must be 'auto', 'cpu' or 'cuda', got {choice!r}")
    if choice == "cuda" and not torch.cuda.is_available():
        raise ValueError("DEVICE='cuda' but torch sees no CUDA device on this machine")
    return torch.device(choice)


def default_dtype(device: torch.device) -> torch.dtype:
    """float32 on a CPU, bfloat16 on CUDA."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def weights_cache_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("KVLAB_CACHE_DIR", pathlib.Path.home() / ".cache" / "kvlab"))


def _cache_path(gguf_path: pathlib.Path) -> pathlib.Path:
    stat = gguf_path.stat()
    key = hashlib.sha1(f"{gguf_path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{CACHE_FORMAT}".encode()).hexdigest()[:16]
    return weights_cache_dir() / f"{gguf_path.stem}-{key}.pt"


def _fuse(arrays: dict[str, np.ndarray], config: LlamaConfig) -> dict[str, torch.Tensor]:
    """GGUF tensor names → kvlab's fused float32 weights."""
    t = {name: torch.from_numpy(a) for name, a in arrays.items()}
    fused = {"embed": t["token_embd.weight"], "final_norm": t["output_norm.weight"]}
    if not config.tied_embeddings:
        fused["lm_head"] = t["output.weight"]
    for i in range(config.num_layers):
        p = f"blk.{i}."
        fused[f"{i}.attn_norm"] = t[p + "attn_norm.weight"]
        fused[f"{i}.wqkv"] = torch.cat([t[p + "attn_q.weight"], t[p + "attn_k.weight"], t[p + "attn_v.weight"]])
        fused[f"{i}.wo"] = t[p + "attn_output.weight"]
        fused[f"{i}.ffn_norm"] = t[p + "ffn_norm.weight"]
        fused[f"{i}.w_gate_up"] = torch.cat([t[p + "ffn_gate.weight"], t[p + "ffn_up.weight"]])
        fused[f"{i}.w_down"] = t[p + "ffn_down.weight"]
    return fused


def _read_gguf(path: pathlib.Path) -> tuple[LlamaConfig, Tokenizer, dict[str, torch.Tensor]]:
    reader = gguf_file.open_reader(path)
    meta = gguf_file.read_metadata(reader)
    config = LlamaConfig.from_gguf_metadata(meta)
    tokenizer = Tokenizer.from_gguf_metadata(meta)
    arrays = gguf_file.read_tensors(reader, config.num_heads, config.num_kv_heads)
    return config, tokenizer, _fuse(arrays, config)


def _build(config: LlamaConfig, weights: dict[str, torch.Tensor], device, dtype) -> LlamaModel:
    def w(name: str) -> torch.Tensor:
        return weights[name].to(device=device, dtype=dtype)

    def p(name: str) -> Projection:
        return Projection(w(name))

    layers = [LayerWeights(w(f"{i}.attn_norm"), p(f"{i}.wqkv"), p(f"{i}.wo"), w(f"{i}.ffn_norm"), p(f"{i}.w_gate_up"),
                           p(f"{i}.w_down")) for i in range(config.num_layers)]
    embed = w("embed")
    lm_head = Projection(embed) if config.tied_embeddings else p("lm_head")
    return LlamaModel(config, embed, layers, w("final_norm"), lm_head)


def load_model(path: str | os.PathLike | None = None, device: str | torch.device | None = None,
               dtype: torch.dtype | None = None, use_cache: bool = True, verbose: bool = False):
    """Load SmolLM2-135M-Instruct (or another Llama GGUF) → (model, tokenizer).

    device: "cpu" or "cuda" (default: CUDA when available); dtype: default float32 on CPU, bfloat16 on CUDA.
    use_cache: read/write the dequantized weights under ~/.cache/kvlab for a fast warm load.
    """
    start = time.perf_counter()
    gguf_path = pathlib.Path(path) if path is not None else gguf_file.find_model_file()
    if not gguf_path.is_file():
        raise FileNotFoundError(f"no GGUF file at {gguf_path}")
    device = torch.device(device) if device is not None else default_device()
    dtype = dtype or default_dtype(device)
    cache_path = _cache_path(gguf_path)
    source = "gguf"
    writer = None
    if use_cache and cache_path.is_file():
        blob = torch.load(cache_path, mmap=True, weights_only=True)
        config = LlamaConfig(**blob["config"])
        tokenizer = Tokenizer.from_state(blob["tokenizer"])
        weights = blob["weights"]
        source = "cache"
    else:
        config, tokenizer, weights = _read_gguf(gguf_path)
        if use_cache:  # written in the background: the model is usable at once
            writer = threading.Thread(target=_write_cache, args=(cache_path, config, tokenizer, weights), daemon=False)
            writer.start()
    model = _build(config, weights, device, dtype)
    model.load_seconds = time.perf_counter() - start
    model.load_source = source
    model.cache_writer = writer  # the background thread writing the weights cache, or None
    if verbose:
        print(f"loaded {config.name} from {source} in {model.load_seconds:.1f} s on {device} ({dtype})")
    return model, tokenizer


def _write_cache(cache_path: pathlib.Path, config: LlamaConfig, tokenizer: Tokenizer, weights) -> None:
    try:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_path.with_suffix(f".{os.getpid()}.tmp")
        torch.save({"config": dataclasses.asdict(config), "tokenizer": tokenizer.to_state(), "weights": weights}, tmp)
        tmp.replace(cache_path)
    except OSError as err:  # a read-only home must not stop the lab
        print(f"kvlab: could not write the weights cache at {cache_path}: {err}")
