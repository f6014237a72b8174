from .generate import generate
from .result import GenerationResult, GenerationStats

__all__ = ["generate", "GenerationResult", "GenerationStats"]
