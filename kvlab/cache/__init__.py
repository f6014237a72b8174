"""KV cache layouts. Each one owns where K/V live and how attention reads them (see base.KVCache)."""
from .base import KVCache, Step
from .block_allocator import BlockAllocator, PoolExhausted, blocks_for
from .caching_allocator import CachingBlockAllocator
from .contiguous import ContiguousCache
from .none import NoCache
from .paged import PagedCache
from .prefix_cached import PrefixCachedPagedCache, PrefixEvent, PrefixStats
from .prefix_index import PrefixIndex, chain_hash
from .quantization import SCHEMES as QUANT_SCHEMES, QuantScheme, make_scheme
from .quantized import QuantizedPagedCache
from .region_allocator import NoFreeRegion, RegionAllocator  # the fragmentation lab's contiguous allocator

CACHE_LAYOUTS = ("none", "contiguous", "paged", "prefix", "quantized")
EXACT_LAYOUTS = CACHE_LAYOUTS[:4]  # these give HF's tokens exactly; "quantized" trades exactness for memory


def make_cache(name: str, config, device, dtype, max_batch: int, max_len: int, **options) -> KVCache:
    """A cache layout by name, sized for `max_batch` sequences of at most `max_len` tokens."""
    if name == "none":
        return NoCache(config, device, dtype, **options)
    if name == "contiguous":
        return ContiguousCache(config, device, dtype, max_batch=max_batch, max_len=max_len, **options)
    if name in ("paged", "prefix", "quantized"):
        block_size = options.pop("block_size", 16)
        num_blocks = options.pop("num_blocks", None) or max_batch * blocks_for(max_len, block_size)
        if name == "quantized":
            options.setdefault("max_seqs", max_batch)
        layout = {"paged": PagedCache, "prefix": PrefixCachedPagedCache, "quantized": QuantizedPagedCache}[name]
        return layout(config, device, dtype, num_blocks=num_blocks, block_size=block_size, **options)
    raise ValueError(f"unknown cache {name!r}; choose one of {', '.join(CACHE_LAYOUTS)}")


__all__ = ["KVCache", "Step", "NoCache", "ContiguousCache", "PagedCache", "BlockAllocator", "PoolExhausted",
           "blocks_for", "RegionAllocator", "PrefixCachedPagedCache", "PrefixEvent", "PrefixStats", "PrefixIndex",
           "CachingBlockAllocator", "chain_hash", "NoFreeRegion", "CACHE_LAYOUTS", "EXACT_LAYOUTS", "make_cache",
           "QuantizedPagedCache", "QuantScheme", "make_scheme", "QUANT_SCHEMES"]
