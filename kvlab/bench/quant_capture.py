"""Real K/V of one prompt, full precision and read back from a quantized cache, for the quantization figures.

The prompt is prefilled twice by the same model: through a full-precision PagedCache and through a
QuantizedPagedCache of the chosen scheme. Three versions of each layer's K (and V) come out:

    k      the full-precision run's keys (what an unquantized cache holds);
    k_in   the keys the quantized run's layer handed its cache — the quantizer's input. Equal to k at layer 0;
           deeper, they drift from k, because every earlier layer attended over quantized K/V;
    k_hat  the same keys read back from the quantized pool and dequantized (kernels.quant_decode.dequantize_sequence).
           kivi2 keeps its newest, partly filled block in full precision: those tokens are read from the
           sequence's recent slot and are exact.

|k_in − k_hat| is the quantization error of the scheme; |k − k_in| the drift from earlier layers' errors.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from kvlab.cache import PagedCache, QuantizedPagedCache, QuantScheme, blocks_for

OUTLIER_FACTOR = 6.0  # a channel is an outlier when its mean |K| is this many times the head's median channel's


@dataclass(frozen=True)
class KVCapture:
    """One prompt's K/V at every layer: full precision, handed to the quantized cache, read back from it."""

    scheme: QuantScheme
    token_ids: list[int]
    k: torch.Tensor  # [L, T, Hkv, D] fp32, the full-precision run
    v: torch.Tensor  # [L, T, Hkv, D]
    k_in: torch.Tensor  # [L, T, Hkv, D] what the quantized run's layers handed the cache
    v_in: torch.Tensor  # [L, T, Hkv, D]
    k_hat: torch.Tensor  # [L, T, Hkv, D] read back from the quantized cache, dequantized
    v_hat: torch.Tensor  # [L, T, Hkv, D]
    exact_from: int  # tokens at positions ≥ exact_from are held in full precision (kivi2's newest block); else T
    bytes_per_token: int  # the quantized cache's K + V bytes per token, all layers
    block_size: int

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_layers(self) -> int:
        return self.k.shape[0]

    @property
    def label(self) -> str:
        return scheme_label(self.scheme.name, self.scheme.group_size)

    def quant_error(self, layer: int, head: int, values: bool = False) -> torch.Tensor:
        """|x_in − x_hat| [T, D] of one layer and KV head: the scheme's quantization error (x = K, or V)."""
        given, read = (self.v_in, self.v_hat) if values else (self.k_in, self.k_hat)
        return (given[layer, :, head] - read[layer, :, head]).abs()

    def mean_quant_error(self, layer: int, head: int | None = None, values: bool = False) -> float:
        """Mean quantization error over the quantized tokens (kivi2's exact tail left out), one head or all."""
        heads = range(self.k.shape[2]) if head is None else [head]
        errors = torch.stack([self.quant_error(layer, h, values)[: self.exact_from] for h in heads])
        return errors.mean().item() if errors.numel() else 0.0

    def mean_drift(self, layer: int, values: bool = False) -> float:
        """Mean |x − x_in|: how far the quantized run's own K (or V) already is from the full-precision run's."""
        full, given = (self.v, self.v_in) if values else (self.k, self.k_in)
        return (full[layer] - given[layer]).abs().mean().item()


def scheme_label(name: str, group_size: int | None) -> str:
    """"int4 g32", "kivi2 g32", "int8 g64"; a name alone when there is no group (the full-precision baseline)."""
    return name if group_size is None else f"{name} g{group_size}"


class _RecordingQuantizedCache(QuantizedPagedCache):
    """The quantized layout, keeping a copy of what each layer hands it to store (the quantizer's input)."""

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        self.handed[layer] = (k[0].float().clone(), v[0].float().clone())  # [T, Hkv, D] each (batch of one)
        super().write(layer, k, v)


def _prefill(model, cache, token_ids: list[int]) -> None:
    cache.add_sequence(0, len(token_ids))
    cache.begin_step([0], [len(token_ids)], [token_ids])
    try:
        model.forward(torch.tensor([token_ids], device=model.device), cache)
    except BaseException:
        cache.abort_step()
        raise
    cache.end_step()


def full_precision_kv(model, token_ids: list[int], block_size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Prefill through a full-precision PagedCache; K, V [L, T, Hkv, D] fp32 read back from its pools."""
    num_tokens = len(token_ids)
    cache = PagedCache(model.config, model.device, model.dtype, num_blocks=blocks_for(num_tokens, block_size),
                       block_size=block_size)
    _prefill(model, cache, token_ids)
    table = torch.tensor(cache.block_tables[0], device=model.device)
    heads, dim = model.config.num_kv_heads, model.config.head_dim

    def read(pools) -> torch.Tensor:
        return torch.stack([pool[table].reshape(-1, heads, dim)[:num_tokens] for pool in pools]).float().cpu()

    return read(cache.k_pools), read(cache.v_pools)


def quantized_kv(cache: QuantizedPagedCache, seq_id: int, layer: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """What a quantized cache holds for one sequence and layer, dequantized: K, V [T, Hkv, D] fp32 and the
    position from which tokens are held in full precision (kivi2's recent slot; T for the other schemes)."""
    from kvlab.kernels.quant_decode import dequantize_sequence  # imported when used, like the cache's kernels

    scheme, pool, length = cache.scheme, cache.pools[layer], cache.lengths[seq_id]
    exact_from = (length // cache.block_size) * cache.block_size if scheme.keeps_recent else length
    table = torch.tensor(cache.block_tables[seq_id], device=cache.device)
    heads, dim = cache.config.num_kv_heads, cache.config.head_dim
    if exact_from:
        k, v = dequantize_sequence(scheme, pool, table, exact_from)  # [exact_from, Hkv, D]
    else:
        k = v = torch.zeros(0, heads, dim, device=cache.device)
    if exact_from < length:  # kivi2: the newest block, full precision in the sequence's recent slot
        slot = cache.recent_slots[seq_id]
        k = torch.cat([k, pool.recent_k[slot, : length - exact_from].float()])
        v = torch.cat([v, pool.recent_v[slot, : length - exact_from].float()])
    return k.float().cpu(), v.float().cpu(), exact_from


def capture_kv(model, tokenizer, prompt, scheme: str | QuantScheme = "int4", group_size: int | None = None,
               block_size: int = 16, reference: tuple[torch.Tensor, torch.Tensor] | None = None) -> KVCapture:
    """Prefill `prompt` (text, or token ids) through a full-precision and a quantized cache of the same model.

    reference: full_precision_kv(model, ids) of this prompt from an earlier call, to skip that run.
    Raises ValueError (from make_scheme) for an unknown scheme or a group size it cannot use."""
    token_ids = tokenizer.encode(prompt) if isinstance(prompt, str) else [int(t) for t in prompt]
    if not token_ids:
        raise ValueError("the prompt is empty")
    num_tokens = len(token_ids)
    cache = _RecordingQuantizedCache(model.config, model.device, model.dtype,
                                     num_blocks=blocks_for(num_tokens, block_size), block_size=block_size,
                                     scheme=scheme, group_size=group_size, max_seqs=1)
    k, v = reference if reference is not None else full_precision_kv(model, token_ids, block_size)
    if k.shape[1] != num_tokens:
        raise ValueError(f"the reference K/V has {k.shape[1]} tokens, the prompt {num_tokens}")
    cache.handed = {}
    _prefill(model, cache, token_ids)
    read = [quantized_kv(cache, 0, layer) for layer in range(model.config.num_layers)]
    k_in = torch.stack([cache.handed[layer][0] for layer in range(model.config.num_layers)]).cpu()
    v_in = torch.stack([cache.handed[layer][1] for layer in range(model.config.num_layers)]).cpu()
    cache.free_sequence(0)
    return KVCapture(scheme=cache.scheme, token_ids=token_ids, k=k, v=v, k_in=k_in, v_in=v_in,
                     k_hat=torch.stack([r[0] for r in read]), v_hat=torch.stack([r[1] for r in read]),
                     exact_from=read[0][2], bytes_per_token=cache.bytes_per_token(), block_size=block_size)


# --- outlier channels ----------------------------------------------------------------------------------------
# An outlier channel is large at every token (KIVI, Liu et al. 2024: "a few fixed channels"), so it is found by
# its typical magnitude, mean |K| over the tokens — not by max |K|, which one token's spike can set alone.
def channel_absmax(k: torch.Tensor) -> torch.Tensor:
    """k [T, ..., D] → max |k| over the tokens, per channel: [..., D]."""
    return k.abs().amax(0)


def channel_mean_abs(k: torch.Tensor) -> torch.Tensor:
    """k [T, ..., D] → mean |k| over the tokens, per channel: [..., D]."""
    return k.abs().mean(0)


def outlier_channels(k: torch.Tensor, factor: float = OUTLIER_FACTOR) -> list[int]:
    """Channels of one head's keys k [T, D] whose mean |K| is at least `factor` × the median channel's."""
    typical = channel_mean_abs(k)  # [D]
    return (typical >= factor * typical.median()).nonzero().flatten().tolist()


def strongest_outlier(k: torch.Tensor) -> tuple[int, int, int, float]:
    """k [L, T, Hkv, D] → (layer, head, channel, ratio) of the channel whose mean |K| stands out most from its
    head's median channel (ratio: how many times larger)."""
    typical = k.abs().mean(1)  # [L, Hkv, D]
    ratio = typical.amax(-1) / typical.median(-1).values  # [L, Hkv]
    layer, head = divmod(int(ratio.argmax()), ratio.shape[1])
    return layer, head, int(typical[layer, head].argmax()), ratio[layer, head].item()
