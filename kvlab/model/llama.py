"""A compact Llama forward pass whose attention reads and writes K/V only through a cache.

embed → [RMSNorm → attention → residual → RMSNorm → SwiGLU MLP → residual] × L → RMSNorm → logits

The model keeps no sequence state: the cache layout (kvlab.cache) owns every K/V tensor and decides
how attention reads them. References: Touvron et al. 2023 (Llama), Su et al. 2021 (RoPE),
Ainslie et al. 2023 (GQA).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kvlab.kernels.cpu_gemv import load_gemv

from .config import LlamaConfig
from .projection import GEMV_MAX_ROWS, Projection


@dataclass
class LayerWeights:
    attn_norm: torch.Tensor  # [hidden]
    wqkv: Projection  # [(num_heads + 2 * num_kv_heads) * head_dim, hidden]  Q, K, V fused
    wo: Projection  # [hidden, num_heads * head_dim]
    ffn_norm: torch.Tensor  # [hidden]
    w_gate_up: Projection  # [2 * ffn, hidden]  gate and up fused
    w_down: Projection  # [hidden, ffn]


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """weight · x / sqrt(mean(x²) + eps), computed in float32. On a CPU in float32, kvlab's C++ RMSNorm where the
    kernels are built: the fused decode's own, so that the two paths round alike (and one call, not F.rms_norm's six
    operations: 61 a step); elsewhere F.rms_norm, one fused op."""
    if x.dtype == torch.float32:
        kernels = load_gemv() if x.device.type == "cpu" else None
        if kernels is not None:
            return kernels.rms_norm(x.contiguous(), weight, eps)
        return F.rms_norm(x, weight.shape, weight, eps)
    x32 = x.float()
    normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * normed.to(x.dtype)


def rope_tables(config: LlamaConfig, device, max_len: int | None = None):
    """cos/sin for every position: two [max_len, head_dim] fp32 tables (HF rotate_half layout)."""
    max_len = max_len or config.context_len
    inv_freq = 1.0 / (config.rope_base ** (torch.arange(0, config.head_dim, 2, dtype=torch.float64) / config.head_dim))
    angles = torch.outer(torch.arange(max_len, dtype=torch.float64), inv_freq)  # [max_len, head_dim/2]
    angles = torch.cat([angles, angles], dim=-1)  # [max_len, head_dim]
    return angles.cos().float().to(device), angles.sin().float().to(device)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [B, T, H, D]; cos, sin: [B, T, 1, D]."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)


class LlamaModel:
    def __init__(self, config: LlamaConfig, embed: torch.Tensor, layers: list[LayerWeights],
                 final_norm: torch.Tensor, lm_head: Projection):
        self.config = config
        self.embed = embed  # [vocab, hidden]
        self.layers = layers
        self.final_norm = final_norm  # [hidden]
        self.lm_head = lm_head  # [vocab, hidden] (when tied, a Projection sharing the embedding's memory)
        self.cos, self.sin = rope_tables(config, embed.device)
        self.fused_decode = self.can_fuse_decode  # the default where it can: see fused_decode
        self._weight_bytes: dict[tuple, int] = {}  # weight_bytes() by its arguments and the projections' read_blocks

    @property
    def can_fuse_decode(self) -> bool:
        """Every weight streams through the compiled CPU kernels (float32 on a CPU, the kernel built)."""
        return all(p.streams_on_cpu for p in self.projections())

    @property
    def fused_decode(self) -> bool:
        """True: a CPU decode step (one new token a sequence, up to GEMV_MAX_ROWS sequences, over a cache that
        offers a decode_view) runs each layer as one C++ call (kvlab.kernels.cpu_decode_layer), the default where
        the kernels are built. False: the readable Python forward below, the reference it is tested against (bit
        for bit on the paged caches; over a contiguous cache, within attention's summation order). Same tokens."""
        return self._fused_decode

    @fused_decode.setter
    def fused_decode(self, value: bool) -> None:
        if value and not self.can_fuse_decode:
            raise ValueError("fused_decode=True needs every weight on kvlab's compiled CPU kernels; this model has not "
                             "(loaded on CUDA, in another dtype, or the kernel did not build)")
        self._fused_decode = bool(value)

    @property
    def device(self) -> torch.device:
        return self.embed.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.dtype

    def layer_projections(self) -> list[Projection]:
        """Every layer's weight matrices in forward order (QKV, output, gate-up, down), the lm_head not included."""
        return [p for layer in self.layers for p in (layer.wqkv, layer.wo, layer.w_gate_up, layer.w_down)]

    def projections(self) -> list[Projection]:
        """layer_projections() and the lm_head: every matrix a forward pass multiplies by."""
        return self.layer_projections() + [self.lm_head]

    @property
    def can_read_blocks(self) -> bool:
        """Some weights have their GGUF blocks and the CPU kernel is built (float32 on a CPU; for SmolLM2, all)."""
        return any(p.blocks is not None for p in self.projections())

    @property
    def decode_reads_blocks(self) -> bool:
        """True when products of up to GEMV_MAX_ROWS rows (decode, short prefills) on a CPU read the GGUF file's
        4-/8-bit blocks: the default where the kernel built. Set it False to read the float32 weights instead,
        as HF transformers does. Same weights, same tokens. Only weights that have blocks are switched."""
        return any(p.reads_blocks for p in self.projections())

    @decode_reads_blocks.setter
    def decode_reads_blocks(self, value: bool) -> None:
        if value and not self.can_read_blocks:
            raise ValueError("decode_reads_blocks=True needs the weights' GGUF blocks and the compiled CPU kernel; "
                             "this model has none (loaded on CUDA, in another dtype, or the kernel did not build)")
        for p in self.projections():
            p.read_blocks = bool(value)

    def weight_bytes(self, rows: int = 1, head_rows: int | None = None) -> int:
        """Bytes of weights one forward pass reads (the embedding row lookup aside: the lm_head read) when `rows`
        token rows pass through the layers and `head_rows` through the lm_head (default: rows, as when every
        position's logits are computed; a generation step computes one row per sequence).
        On a CPU, products of up to GEMV_MAX_ROWS rows read the GGUF file's blocks, longer ones float32."""
        head_rows = rows if head_rows is None else head_rows
        layers = self.layer_projections()
        key = (rows, head_rows, tuple(p.read_blocks for p in layers), self.lm_head.read_blocks)  # all it depends on
        if key not in self._weight_bytes:  # once per shape: the engine asks at every step
            self._weight_bytes[key] = (self.norm_weight_bytes() + sum(p.nbytes_read(rows) for p in layers)
                                       + self.lm_head.nbytes_read(head_rows))
        return self._weight_bytes[key]

    def dense_weight_bytes(self) -> int:
        """Bytes of weights a forward pass reads in the working dtype (float32 on a CPU): what F.linear reads,
        and what HF transformers reads at every step after dequantizing the GGUF file at load."""
        return self.norm_weight_bytes() + sum(p.numel() * p.element_size() for p in self.projections())

    def norm_weight_bytes(self) -> int:
        """The RMSNorm weights: read by every forward pass, in the working dtype."""
        norms = [self.final_norm] + [n for layer in self.layers for n in (layer.attn_norm, layer.ffn_norm)]
        return sum(n.numel() * n.element_size() for n in norms)

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, cache, last_index: torch.Tensor | None = None,
                all_positions: bool = False) -> torch.Tensor:
        """Logits for one step of a batch whose bookkeeping `cache.begin_step` already prepared.

        input_ids: [B, T] (right-padded); last_index: [B] which position's logits to return
        (default: the last valid token of each row). Returns logits [B, vocab] in float32, or with
        all_positions=True every position's: [B, T, vocab] (perplexity needs them).
        """
        cfg = self.config
        step = cache.current_step
        assert step is not None, "call cache.begin_step(...) before forward"
        batch, new_len = input_ids.shape
        assert step.positions.shape == (batch, new_len)
        if self._fused_decode and new_len == 1 and batch <= GEMV_MAX_ROWS and not all_positions:
            view = cache.decode_view()
            if view is not None:
                return self._fused_decode_step(input_ids, view, step.positions[:, 0])
        cos = self.cos[step.positions].unsqueeze(2)  # [B, T, 1, D]
        sin = self.sin[step.positions].unsqueeze(2)
        q_size, kv_size = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim

        x = F.embedding(input_ids, self.embed)  # [B, T, hidden]
        for index, layer in enumerate(self.layers):
            h = rms_norm(x, layer.attn_norm, cfg.rms_eps)
            qkv = layer.wqkv(h)  # [B, T, q_size + 2 * kv_size]
            qk = qkv[..., : q_size + kv_size].view(batch, new_len, cfg.num_heads + cfg.num_kv_heads, cfg.head_dim)
            q, k = apply_rope(qk, cos, sin).split([cfg.num_heads, cfg.num_kv_heads], dim=2)  # [B, T, Hq|Hkv, D]
            v = qkv[..., q_size + kv_size:].view(batch, new_len, cfg.num_kv_heads, cfg.head_dim)  # [B, T, Hkv, D]
            cache.write(index, k, v)
            attn = cache.attend(index, q)  # [B, T, Hq, D]
            x = x + layer.wo(attn.reshape(batch, new_len, q_size))
            h = rms_norm(x, layer.ffn_norm, cfg.rms_eps)
            gate, up = layer.w_gate_up(h).chunk(2, dim=-1)  # [B, T, ffn] each
            x = x + layer.w_down(F.silu(gate) * up)

        if all_positions:
            return self.lm_head(rms_norm(x, self.final_norm, cfg.rms_eps)).float()  # [B, T, vocab]
        if last_index is None:
            last_index = step.q_lens - 1
        x_last = x[torch.arange(batch, device=x.device), last_index]  # [B, hidden]
        return self.lm_head(rms_norm(x_last, self.final_norm, cfg.rms_eps)).float()  # [B, vocab]

    def _fused_decode_step(self, input_ids: torch.Tensor, view, positions: torch.Tensor) -> torch.Tensor:
        """forward() for one new token a sequence, a layer a C++ call that stores its K/V and attends by itself."""
        from kvlab.kernels.cpu_decode_layer import decode_layer

        cfg = self.config
        x = F.embedding(input_ids[:, 0], self.embed)  # [B, hidden]
        cos, sin = self.cos[positions], self.sin[positions]  # [B, D]
        for index, layer in enumerate(self.layers):
            x = decode_layer(x, layer, view.k_pools[index], view.v_pools[index], view.block_tables,
                             view.context_lens, view.slots, cos, sin, cfg.num_heads, cfg.rms_eps)
        return self.lm_head(rms_norm(x, self.final_norm, cfg.rms_eps)).float()  # [B, vocab]
