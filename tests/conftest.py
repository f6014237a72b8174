"""Shared fixtures: the real model is loaded once per test session."""
from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(max(1, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def model_and_tokenizer():
    import kvlab

    return kvlab.load_model(device="cpu")


@pytest.fixture(scope="session")
def model(model_and_tokenizer):
    return model_and_tokenizer[0]


@pytest.fixture(scope="session")
def tokenizer(model_and_tokenizer):
    return model_and_tokenizer[1]


@pytest.fixture(scope="session")
def hf_oracle():
    """HF transformers loading the same GGUF file in float32: the outside oracle."""
    transformers = pytest.importorskip("transformers")
    from kvlab.model.gguf_file import find_model_file

    path = find_model_file()
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    hf_model.eval()
    return hf_model, hf_tokenizer
