from .config import LlamaConfig
from .llama import LlamaModel
from .loading import load_model, pick_device
from .tokenizer import Tokenizer

__all__ = ["LlamaConfig", "LlamaModel", "Tokenizer", "load_model", "pick_device"]
