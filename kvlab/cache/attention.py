"""Plain-torch attention over gathered K/V: the reference every layout and kernel is checked against."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def causal_mask(q_positions: torch.Tensor, kv_lens: torch.Tensor, span: int) -> torch.Tensor | None:
    """Which of `span` key positions each query may see: [B, 1, T, span] bool, or None when every query sees
    all of them (one new token per sequence and every sequence exactly `span` long: a batch-1 decode step)."""
    if q_positions.shape[1] == 1 and bool((kv_lens == span).all()):
        return None
    key_pos = torch.arange(span, device=q_positions.device)
    allowed = (key_pos[None, None, :] <= q_positions[:, :, None]) & (key_pos[None, None, :] < kv_lens[:, None, None])
    return allowed[:, None, :, :]


def attend_masked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor | None) -> torch.Tensor:
    """q: [B, T, Hq, D]; k, v: [B, S, Hkv, D]; allowed: causal_mask(...) for S keys. Returns [B, T, Hq, D]."""
    batch, new_len, num_heads, head_dim = q.shape
    assert k.shape[0] == batch and k.shape == v.shape and num_heads % k.shape[2] == 0
    assert allowed is None or allowed.shape == (batch, 1, new_len, k.shape[1])
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),  # [B, H, T|S, D]
        attn_mask=allowed, enable_gqa=num_heads != k.shape[2],
    )
    return out.transpose(1, 2)  # [B, T, Hq, D]


def attend_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_positions: torch.Tensor,
                     kv_lens: torch.Tensor) -> torch.Tensor:
    """Causal GQA attention.

    q: [B, T, Hq, D] new queries at absolute positions q_positions [B, T];
    k, v: [B, S, Hkv, D] the sequence's keys/values at positions 0..S-1, of which kv_lens [B] are real.
    Query at position p sees keys at positions ≤ p (and < kv_len). Returns [B, T, Hq, D].
    """
    return attend_masked(q, k, v, causal_mask(q_positions, kv_lens, k.shape[1]))
