"""KV cache layouts. Each one owns where K/V live and how attention reads them (see base.KVCache)."""
from .base import KVCache, Step
from ..checks import positive_int
from .block_allocator import BlockAllocator, PoolExhausted, blocks_for, check_block_size
from .caching_allocator import CachingBlockAllocator
from .contiguous import ContiguousCache
from .none import NoCache
from .paged import PagedCache
from .prefix_cached import PrefixCachedPagedCache, PrefixEvent, PrefixStats
from .prefix_index import PrefixIndex, chain_hash
from .quantization import SCHEMES as QUANT_SCHEMES, QuantScheme, make_scheme
from .quantized import QuantizedPagedCache
from .swap import SwappedOut, swap_in, swap_out
from .tier import TIER_KINDS, BlockTier, TierCorrupt, TierError, TierFull, TierUnavailable
from .region_allocator import NoFreeRegion, RegionAllocator  # the fragmentation lab's contiguous allocator

CACHE_LAYOUTS = ("none", "contiguous", "paged", "prefix", "quantized")
EXACT_LAYOUTS = CACHE_LAYOUTS[:4]  # these give HF's tokens exactly; "quantized" trades exactness for memory


LAYOUT_OPTIONS = {  # the keyword options each named layout takes (beside max_batch and max_len)
    "none": (),
    "contiguous": (),
    "paged": ("block_size", "num_blocks", "backend"),
    "prefix": ("block_size", "num_blocks", "backend", "hash_fn", "tier"),
    "quantized": ("block_size", "num_blocks", "backend", "scheme", "group_size", "max_seqs"),
}


def check_cache_options(name: str, options: dict) -> None:
    """ValueError for an unknown layout or an option it does not take (a misspelt `blok_size`), listing the options."""
    if name not in LAYOUT_OPTIONS:
        raise ValueError(f"unknown cache {name!r}; choose one of {', '.join(CACHE_LAYOUTS)}")
    unknown = sorted(set(options) - set(LAYOUT_OPTIONS[name]))
    if unknown:
        accepted = ", ".join(LAYOUT_OPTIONS[name]) or "none"
        raise ValueError(f"cache {name!r} takes no option {', '.join(map(repr, unknown))}; its options: {accepted}")


def make_cache(name: str, config, device, dtype, max_batch: int, max_len: int, **options) -> KVCache:
    """A cache layout by name, sized for `max_batch` sequences of at most `max_len` tokens."""
    check_cache_options(name, options)
    if name == "none":
        return NoCache(config, device, dtype, **options)
    if name == "contiguous":
        return ContiguousCache(config, device, dtype, max_batch=max_batch, max_len=max_len, **options)
    block_size = check_block_size(options.pop("block_size", 16))
    num_blocks = options.pop("num_blocks", None)
    if num_blocks is None:
        num_blocks = max_batch * blocks_for(max_len, block_size)
    positive_int("num_blocks", num_blocks)
    if name == "quantized":
        options.setdefault("max_seqs", max_batch)
    layout = {"paged": PagedCache, "prefix": PrefixCachedPagedCache, "quantized": QuantizedPagedCache}[name]
    return layout(config, device, dtype, num_blocks=num_blocks, block_size=block_size, **options)


__all__ = ["KVCache", "Step", "NoCache", "ContiguousCache", "PagedCache", "BlockAllocator", "PoolExhausted",
           "blocks_for", "RegionAllocator", "PrefixCachedPagedCache", "PrefixEvent", "PrefixStats", "PrefixIndex",
           "CachingBlockAllocator", "chain_hash", "LAYOUT_OPTIONS", "check_cache_options", "NoFreeRegion", "CACHE_LAYOUTS", "EXACT_LAYOUTS", "make_cache",
           "QuantizedPagedCache", "QuantScheme", "make_scheme", "QUANT_SCHEMES",
           "BlockTier", "TIER_KINDS", "TierError", "TierFull", "TierCorrupt", "TierUnavailable", "SwappedOut", "swap_in",
           "swap_out"]
