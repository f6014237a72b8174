"""A cheap deterministic stand-in for the model, for scheduler soak tests only (never in the lab).

A 2-layer Llama with seeded random weights and a 64-token vocabulary: the same forward pass, through the
same caches, as SmolLM2 — only small enough that a thousand requests take seconds.
"""
from __future__ import annotations

import torch

from kvlab.model.config import LlamaConfig
from kvlab.model.llama import LayerWeights, LlamaModel
from kvlab.model.projection import Projection

STAND_IN = LlamaConfig(name="stand-in", num_layers=2, hidden_size=32, ffn_size=64, num_heads=4, num_kv_heads=2,
                       head_dim=8, vocab_size=64, context_len=256, rope_base=10000.0, rms_eps=1e-5,
                       tied_embeddings=True, bos_token_id=1, eos_token_id=2)


def stand_in_model(seed: int = 0, config: LlamaConfig = STAND_IN) -> LlamaModel:
    g = torch.Generator().manual_seed(seed)

    def weight(rows: int, cols: int) -> Projection:
        return Projection(torch.randn(rows, cols, generator=g) / cols ** 0.5 * 2)

    cfg = config
    qkv_rows = (cfg.num_heads + 2 * cfg.num_kv_heads) * cfg.head_dim
    layers = [LayerWeights(attn_norm=torch.ones(cfg.hidden_size), wqkv=weight(qkv_rows, cfg.hidden_size),
                           wo=weight(cfg.hidden_size, cfg.num_heads * cfg.head_dim), ffn_norm=torch.ones(cfg.hidden_size),
                           w_gate_up=weight(2 * cfg.ffn_size, cfg.hidden_size), w_down=weight(cfg.hidden_size, cfg.ffn_size))
              for _ in range(cfg.num_layers)]
    embed = torch.randn(cfg.vocab_size, cfg.hidden_size, generator=g)
    return LlamaModel(cfg, embed, layers, torch.ones(cfg.hidden_size), Projection(embed))
