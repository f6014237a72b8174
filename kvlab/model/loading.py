"""load_model: GGUF file → (LlamaModel, Tokenizer), with a local cache of the dequantized weights.

Cold: parse the GGUF, dequantize every tensor with `gguf`, build the tokenizer (~5 s on 2 CPU cores).
Warm: memory-map one torch file holding the fused float32 weights, their GGUF blocks and the tokenizer (< 1 s).
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

CACHE_FORMAT = 2  # 2: the quantized blocks are cached too


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


def _fused_names(config: LlamaConfig) -> dict[str, list[str]]:
    """kvlab's fused weights → the GGUF tensors stacked (as rows) to make each."""
    names = {"embed": ["token_embd.weight"], "final_norm": ["output_norm.weight"]}
    if not config.tied_embeddings:
        names["lm_head"] = ["output.weight"]
    for i in range(config.num_layers):
        p = f"blk.{i}."
        names[f"{i}.attn_norm"] = [p + "attn_norm.weight"]
        names[f"{i}.wqkv"] = [p + "attn_q.weight", p + "attn_k.weight", p + "attn_v.weight"]
        names[f"{i}.wo"] = [p + "attn_output.weight"]
        names[f"{i}.ffn_norm"] = [p + "ffn_norm.weight"]
        names[f"{i}.w_gate_up"] = [p + "ffn_gate.weight", p + "ffn_up.weight"]
        names[f"{i}.w_down"] = [p + "ffn_down.weight"]
    return names


def _fuse(arrays: dict[str, np.ndarray], config: LlamaConfig) -> dict[str, torch.Tensor]:
    """GGUF tensor names → kvlab's fused float32 weights."""
    return {name: torch.cat([torch.from_numpy(arrays[part]) for part in parts])
            for name, parts in _fused_names(config).items()}


def _fuse_blocks(blocks: dict[str, tuple[str, np.ndarray]], config: LlamaConfig) -> dict[str, dict]:
    """GGUF quantized tensors → kvlab's fused weights as blocks: {"format": "Q4_1", "blocks": uint8 [out, bytes]}.
    A fused weight whose parts are not all in one block format has none (it is read as float32)."""
    fused = {}
    for name, parts in _fused_names(config).items():
        formats = {blocks[part][0] for part in parts if part in blocks}
        if len(formats) == 1 and all(part in blocks for part in parts):
            fused[name] = {"format": formats.pop(), "blocks": torch.cat([torch.from_numpy(blocks[p][1]) for p in parts])}
    return fused


def _read_gguf(path: pathlib.Path) -> tuple[LlamaConfig, Tokenizer, dict[str, torch.Tensor], dict[str, dict]]:
    reader = gguf_file.open_reader(path)
    meta = gguf_file.read_metadata(reader)
    config = LlamaConfig.from_gguf_metadata(meta)
    tokenizer = Tokenizer.from_gguf_metadata(meta)
    arrays = gguf_file.read_tensors(reader, config.num_heads, config.num_kv_heads)
    blocks = gguf_file.read_blocks(reader, config.num_heads, config.num_kv_heads)
    return config, tokenizer, _fuse(arrays, config), _fuse_blocks(blocks, config)


def _build(config: LlamaConfig, weights: dict[str, torch.Tensor], blocks: dict[str, dict], device, dtype) -> LlamaModel:
    """blocks are kept only where the CPU block kernel can use them: float32 on a CPU."""
    keep_blocks = torch.device(device).type == "cpu" and dtype == torch.float32

    def w(name: str) -> torch.Tensor:
        return weights[name].to(device=device, dtype=dtype)

    def p(name: str, weight: torch.Tensor | None = None) -> Projection:
        quantized = blocks.get(name) if keep_blocks else None
        return Projection(w(name) if weight is None else weight, **({} if quantized is None else
                          {"blocks": quantized["blocks"], "block_format": quantized["format"]}))

    layers = [LayerWeights(w(f"{i}.attn_norm"), p(f"{i}.wqkv"), p(f"{i}.wo"), w(f"{i}.ffn_norm"), p(f"{i}.w_gate_up"),
                           p(f"{i}.w_down")) for i in range(config.num_layers)]
    embed = w("embed")
    lm_head = p("embed", embed) if config.tied_embeddings else p("lm_head")
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
        weights, blocks = blob["weights"], blob["blocks"]
        source = "cache"
    else:
        config, tokenizer, weights, blocks = _read_gguf(gguf_path)
        if use_cache:  # written in the background: the model is usable at once
            writer = threading.Thread(target=_write_cache, args=(cache_path, config, tokenizer, weights, blocks),
                                      daemon=False)
            writer.start()
    model = _build(config, weights, blocks, device, dtype)
    model.load_seconds = time.perf_counter() - start
    model.load_source = source
    model.cache_writer = writer  # the background thread writing the weights cache, or None
    if verbose:
        print(f"loaded {config.name} from {source} in {model.load_seconds:.1f} s on {device} ({dtype})")
    return model, tokenizer


def _write_cache(cache_path: pathlib.Path, config: LlamaConfig, tokenizer: Tokenizer, weights, blocks) -> None:
    try:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_path.with_suffix(f".{os.getpid()}.tmp")
        torch.save({"config": dataclasses.asdict(config), "tokenizer": tokenizer.to_state(), "weights": weights,
                    "blocks": blocks}, tmp)
        tmp.replace(cache_path)
        for older in cache_path.parent.glob(f"{cache_path.name.rsplit('-', 1)[0]}-*.pt"):  # other formats, old mtimes
            if older != cache_path:
                older.unlink(missing_ok=True)
    except OSError as err:  # a read-only home must not stop the lab
        print(f"kvlab: could not write the weights cache at {cache_path}: {err}")
