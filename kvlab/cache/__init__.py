"""KV cache layouts. Each one owns where K/V live and how attention reads them (see base.KVCache)."""
from .base import KVCache, Step
from .contiguous import ContiguousCache
from .none import NoCache

CACHE_LAYOUTS = ("none", "contiguous")


def make_cache(name: str, config, device, dtype, max_batch: int, max_len: int, **options) -> KVCache:
    """A cache layout by name, sized for `max_batch` sequences of at most `max_len` tokens."""
    if name == "none":
        return NoCache(config, device, dtype, **options)
    if name == "contiguous":
        return ContiguousCache(config, device, dtype, max_batch=max_batch, max_len=max_len, **options)
    raise ValueError(f"unknown cache {name!r}; choose one of {', '.join(CACHE_LAYOUTS)}")


__all__ = ["KVCache", "Step", "NoCache", "ContiguousCache", "CACHE_LAYOUTS", "make_cache"]
