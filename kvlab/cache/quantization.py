"""KV cache quantization schemes: what is stored per token, and the plain-torch quantize/dequantize references.

Four schemes, all storing integer (or fp8) codes plus float16 scales:

    int8   symmetric, per token and KV head: groups of `group_size` channels (default: the whole head) share
           scale = absmax / 127; code = round(x / scale) in [-127, 127].
    fp8    float8 e4m3 codes, per token and KV head: scale = absmax / 448 maps the group onto fp8's range,
           code = fp8(x / scale) (round_to_fp8: ties away from zero, |x / scale| < 2^-6 → 0). Same bytes as int8; the codes are spaced
           logarithmically instead of evenly.
    int4   symmetric, groups of `group_size` channels per token: scale = absmax / 7, code in [-7, 7] stored
           as an unsigned nibble (code + 8); two codes per byte.
    kivi2  KIVI (Liu et al. 2024), asymmetric 2-bit (4 levels: code = round((x − min) / scale), scale =
           (max − min) / 3), four codes per byte. Keys are quantized *per channel* over the tokens of one
           block (outlier channels get their own range); values per token in groups of `group_size`
           channels. A block is quantized only once it is full: the most recent, partly filled block of
           each sequence stays in full precision.

Packing (int4, kivi2): a byte holds PACK = 8 / bits codes of channels that are (group / PACK) apart, within a
packing group of P channels (the scale group; for kivi2 keys, the whole head):
    channel c → byte (c // P) · (P / PACK) + c % (P / PACK), bits [shift, shift + bits) with
    shift = ((c % P) // (P / PACK)) · bits.
So a tile of codes unpacks with a shift and a mask per channel — no interleaving.

Rounding is floor(x + 0.5) everywhere (the kernels use the same), and every scale is rounded to float16
*before* the codes are computed, so that the codes are the ones that fit the stored scale.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

SCHEMES = ("int8", "fp8", "int4", "kivi2")
BITS_TO_SCHEME = {8: "int8", 4: "int4", 2: "kivi2"}
DEFAULT_GROUP = {"int8": None, "fp8": None, "int4": 32, "kivi2": 32}  # None: the whole head
GROUP_SIZES = (8, 16, 32, 64, 128, 256)
FP8_MAX = 448.0  # largest finite float8 e4m3 (fn) value
FP8_MIN_NORMAL = 2.0 ** -6  # values below it are stored as 0: an error under absmax · 2^-6 / 448, and no
# subnormal codes, whose rounding Triton's interpreter gets wrong
SCALE_DTYPE = torch.float16
SCALE_BYTES = 2


@dataclass(frozen=True)
class QuantScheme:
    """One quantization scheme for a cache with heads of `head_dim` channels."""

    name: str
    bits: int
    group_size: int  # channels sharing one scale per token (kivi2: the values' groups)
    head_dim: int

    @property
    def pack(self) -> int:
        """Codes per stored byte (1 for int8 and fp8)."""
        return 8 // self.bits

    @property
    def code_bytes(self) -> int:
        """Bytes of codes per token and head."""
        return self.head_dim * self.bits // 8

    @property
    def num_groups(self) -> int:
        return self.head_dim // self.group_size

    @property
    def symmetric(self) -> bool:
        return self.name != "kivi2"

    @property
    def keys_per_channel(self) -> bool:
        return self.name == "kivi2"

    @property
    def keeps_recent(self) -> bool:
        """The most recent, partly filled block stays in full precision."""
        return self.name == "kivi2"

    @property
    def qmax(self) -> int:
        """Largest code magnitude (symmetric) or largest code (asymmetric)."""
        return {"int8": 127, "int4": 7, "kivi2": 3}.get(self.name, 0)

    @property
    def code_dtype(self) -> torch.dtype:
        return {"int8": torch.int8, "fp8": torch.float8_e4m3fn}.get(self.name, torch.uint8)

    def bytes_per_token_head(self, block_size: int) -> float:
        """K + V bytes of one token and KV head in the quantized pool (residual blocks not counted)."""
        groups = self.num_groups * SCALE_BYTES * (1 if self.symmetric else 2)  # scale (+ min) per group
        value = self.code_bytes + groups
        if self.keys_per_channel:  # scale + min per channel, shared by the block's tokens
            key = self.code_bytes + 2 * self.head_dim * SCALE_BYTES / block_size
        else:
            key = value
        return key + value

    def describe(self) -> str:
        if self.name == "kivi2":
            return (f"kivi2: 2-bit, keys per channel over each block, values per token in groups of "
                    f"{self.group_size}; the newest block in full precision")
        group = "per token and head" if self.group_size == self.head_dim else f"groups of {self.group_size} channels"
        return f"{self.name}: {group}"


def supports_float8(device: torch.device | str) -> bool:
    """float8 e4m3 conversions: on CUDA from compute capability 8.9 (Ada, Hopper); emulated on a CPU."""
    device = torch.device(device)
    if device.type != "cuda":
        return True
    return torch.cuda.get_device_capability(device) >= (8, 9)


def make_scheme(name: str | None = None, head_dim: int = 64, group_size: int | None = None, *,
                bits: int | None = None, device: torch.device | str = "cpu") -> QuantScheme:
    """A scheme by name ("int8", "fp8", "int4", "kivi2") or by bit width (8, 4, 2); raises ValueError naming
    the bad value: unknown name, unsupported bit width, a group size that is not a supported power of two or
    does not divide head_dim, fp8 on a GPU without float8."""
    if name is None:
        if bits not in BITS_TO_SCHEME:
            raise ValueError(f"bit width {bits!r} is not supported; use one of {sorted(BITS_TO_SCHEME, reverse=True)} "
                             f"(or name='fp8')")
        name = BITS_TO_SCHEME[bits]
    if name not in SCHEMES:
        raise ValueError(f"unknown quantization scheme {name!r}; choose one of {', '.join(SCHEMES)}")
    scheme_bits = 2 if name == "kivi2" else 4 if name == "int4" else 8
    if bits is not None and bits != scheme_bits:
        raise ValueError(f"bit width {bits!r} does not match scheme {name!r} ({scheme_bits} bits)")
    if group_size is None:
        group_size = DEFAULT_GROUP[name] or head_dim
        group_size = min(group_size, head_dim)
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size not in GROUP_SIZES:
        raise ValueError(f"group_size {group_size!r} is not supported; use one of {', '.join(map(str, GROUP_SIZES))}")
    if head_dim % group_size:
        raise ValueError(f"group_size {group_size} does not divide head_dim {head_dim}")
    if name == "fp8" and not supports_float8(device):
        capability = ".".join(map(str, torch.cuda.get_device_capability(torch.device(device))))
        raise ValueError(f"fp8 needs float8 support (CUDA compute capability ≥ 8.9); device {device} has "
                         f"compute capability {capability}: choose int8 there")
    return QuantScheme(name, scheme_bits, group_size, head_dim)


# --- packing ------------------------------------------------------------------------------------------------
def pack_codes(codes: torch.Tensor, bits: int, pack_group: int) -> torch.Tensor:
    """codes [..., D] integers in [0, 2**bits) → uint8 [..., D·bits/8], PACK codes per byte (see module doc)."""
    pack = 8 // bits
    *lead, dim = codes.shape
    assert dim % pack_group == 0 and pack_group % pack == 0
    parts = codes.to(torch.uint8).reshape(*lead, dim // pack_group, pack, pack_group // pack)
    packed = torch.zeros(*lead, dim // pack_group, pack_group // pack, dtype=torch.uint8, device=codes.device)
    for i in range(pack):
        packed |= parts[..., i, :] << (i * bits)
    return packed.reshape(*lead, dim // pack)


def unpack_codes(packed: torch.Tensor, bits: int, pack_group: int) -> torch.Tensor:
    """The inverse of pack_codes: uint8 [..., D·bits/8] → int64 [..., D] in [0, 2**bits)."""
    pack = 8 // bits
    *lead, width = packed.shape
    dim = width * pack
    bytes_ = packed.long().reshape(*lead, dim // pack_group, 1, pack_group // pack)
    shifts = (torch.arange(pack, device=packed.device) * bits)[:, None]  # [PACK, 1]
    return ((bytes_ >> shifts) & ((1 << bits) - 1)).reshape(*lead, dim)


# --- per-token quantization (int8, fp8, int4, kivi2 values) ----------------------------------------------
def _round(x: torch.Tensor) -> torch.Tensor:
    return torch.floor(x + 0.5)


def _to_scale(x: torch.Tensor) -> torch.Tensor:
    """Round to the stored float16 and back; saturate instead of overflowing to inf."""
    return x.clamp(max=torch.finfo(SCALE_DTYPE).max).to(SCALE_DTYPE).float()


def round_to_fp8(y: torch.Tensor) -> torch.Tensor:
    """float32 → the nearest float8 e4m3 value, still in float32 (so the cast to fp8 after it is exact):
    3 mantissa bits, ties away from zero, |y| < 2^-6 → 0, saturating at ±448. Written out with the exponent
    bits rather than left to a cast, so the Triton store kernel can compute the very same values (Triton's
    interpreter rounds 124.3 to 64 in its own cast: a carry into the exponent is lost)."""
    magnitude = y.abs().float()
    exponent = ((magnitude.view(torch.int32) >> 23) & 0xFF) - 127  # floor(log2 |y|) for normal floats
    step = ((exponent - 3 + 127).clamp(min=1) << 23).view(torch.float32)  # 2^(exponent - 3): one mantissa step
    rounded = (_round(magnitude / step) * step).clamp(max=FP8_MAX)
    rounded = torch.where(magnitude < FP8_MIN_NORMAL, torch.zeros_like(rounded), rounded)
    return torch.copysign(rounded, y.float())


def quantize_tokens(scheme: QuantScheme, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """x [..., D] → codes [..., code_bytes] (scheme.code_dtype), scale [..., G] fp16, minimum [..., G] fp16 or
    None (symmetric). Groups of scheme.group_size consecutive channels share a scale."""
    assert x.shape[-1] == scheme.head_dim
    *lead, dim = x.shape
    groups = x.float().reshape(*lead, scheme.num_groups, scheme.group_size)  # [..., G, gs]
    if scheme.symmetric:
        top = FP8_MAX if scheme.name == "fp8" else scheme.qmax
        scale = _to_scale(groups.abs().amax(-1) / top)  # [..., G]
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))[..., None]
        if scheme.name == "fp8":
            codes = round_to_fp8(groups / safe).to(torch.float8_e4m3fn).reshape(*lead, dim)
            return codes, scale.to(SCALE_DTYPE), None
        q = _round(groups / safe).clamp(-scheme.qmax, scheme.qmax).reshape(*lead, dim)
        if scheme.bits == 8:
            return q.to(torch.int8), scale.to(SCALE_DTYPE), None
        return pack_codes(q + 8, scheme.bits, scheme.group_size), scale.to(SCALE_DTYPE), None
    low = _to_scale(groups.amin(-1)).clamp(min=-torch.finfo(SCALE_DTYPE).max)  # [..., G] the group's minimum
    scale = _to_scale((groups.amax(-1) - low) / scheme.qmax)
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))[..., None]
    q = _round((groups - low[..., None]) / safe).clamp(0, scheme.qmax).reshape(*lead, dim)
    return pack_codes(q, scheme.bits, scheme.group_size), scale.to(SCALE_DTYPE), low.to(SCALE_DTYPE)


def dequantize_tokens(scheme: QuantScheme, codes: torch.Tensor, scale: torch.Tensor,
                      minimum: torch.Tensor | None = None) -> torch.Tensor:
    """The inverse of quantize_tokens, in float32: [..., D]."""
    if scheme.bits == 8:
        q = codes.float()
    else:
        q = unpack_codes(codes, scheme.bits, scheme.group_size).float()
        if scheme.symmetric:
            q = q - 8
    *lead, dim = q.shape
    groups = q.reshape(*lead, scheme.num_groups, scheme.group_size) * scale.float()[..., None]
    if minimum is not None:
        groups = groups + minimum.float()[..., None]
    return groups.reshape(*lead, dim)


# --- per-channel quantization over a block of tokens (kivi2 keys) ------------------------------------------
def quantize_channels(scheme: QuantScheme, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x [T, ..., D], the T tokens of one block → codes [T, ..., D/4] uint8 (packed across the head),
    scale [..., D] fp16, minimum [..., D] fp16: one (scale, minimum) per channel, over the block's tokens."""
    assert scheme.keys_per_channel and x.shape[-1] == scheme.head_dim
    x = x.float()
    low = _to_scale(x.amin(0)).clamp(min=-torch.finfo(SCALE_DTYPE).max)  # [..., D]
    scale = _to_scale((x.amax(0) - low) / scheme.qmax)
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = _round((x - low) / safe).clamp(0, scheme.qmax)
    return pack_codes(q, scheme.bits, scheme.head_dim), scale.to(SCALE_DTYPE), low.to(SCALE_DTYPE)


def dequantize_channels(scheme: QuantScheme, codes: torch.Tensor, scale: torch.Tensor,
                        minimum: torch.Tensor) -> torch.Tensor:
    """The inverse of quantize_channels, in float32: [T, ..., D]."""
    q = unpack_codes(codes, scheme.bits, scheme.head_dim).float()
    return q * scale.float() + minimum.float()


def roundtrip_error_bound(scheme: QuantScheme, x: torch.Tensor, per_channel: bool = False) -> torch.Tensor:
    """The largest |x − dequantize(quantize(x))| allowed per element, [...x.shape]: half a quantization step
    (the group's range over its levels), plus the float16 rounding of the scale (and minimum) carried through.
    fp8: e4m3 keeps 3 mantissa bits, so a relative 1/16 of the value plus half its smallest subnormal step.
    A scale below 2^-14 is a float16 subnormal, rounded to a fixed 2^-25: when it rounds down the top code
    clamps, adding up to (top code) · 2^-25 — the absolute term, which matters only for groups under ~1e-2."""
    x = x.float()
    eps = 2.0 ** -10  # float16 relative rounding, with margin
    subnormal = (FP8_MAX if scheme.name == "fp8" else scheme.qmax) * 2.0 ** -25 + 2.0 ** -25  # scale, minimum
    if per_channel:
        span = x.amax(0) - x.amin(0)
        step = span / scheme.qmax
        return (step / 2 + eps * (x.abs().amax(0) + span) + subnormal).expand_as(x)
    *lead, dim = x.shape
    groups = x.reshape(*lead, scheme.num_groups, scheme.group_size)
    absmax = groups.abs().amax(-1, keepdim=True)
    if scheme.name == "fp8":
        scale = absmax / FP8_MAX
        bound = groups.abs() / 16 + scale * 2.0 ** -10 + eps * absmax
    elif scheme.symmetric:
        bound = (absmax / scheme.qmax) / 2 + eps * absmax
    else:
        span = groups.amax(-1, keepdim=True) - groups.amin(-1, keepdim=True)
        bound = (span / scheme.qmax) / 2 + eps * (absmax + span)
    return (bound + subnormal).expand_as(groups).reshape(x.shape)
