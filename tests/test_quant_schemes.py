"""The KV quantization schemes in plain torch (kvlab/cache/quantization.py): packing, round-trip error within the
documented bound (and the bound meaningful), the stored dtypes and ranges, bad arguments refused with a message
naming the value, and the bytes each scheme stores per token.
"""
from __future__ import annotations

import pytest
import torch

import kvlab  # noqa: F401  (switches Triton's interpreter on before anything imports triton)
import kvlab.cache.quantization as quantization
from kvlab.cache.quantization import (FP8_MAX, SCHEMES, dequantize_channels, dequantize_tokens, make_scheme,
                                      pack_codes, quantize_channels, quantize_tokens, roundtrip_error_bound,
                                      supports_float8, unpack_codes)

HEAD_DIM = 64
GROUP_SIZES = {"int8": [8, 32, 64], "fp8": [8, 32, 64], "int4": [8, 16, 32, 64], "kivi2": [8, 16, 32, 64]}


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def roundtrip(scheme, x: torch.Tensor) -> torch.Tensor:
    codes, scale, minimum = quantize_tokens(scheme, x)
    return dequantize_tokens(scheme, codes, scale, minimum)


def roundtrip_channels(scheme, x: torch.Tensor) -> torch.Tensor:
    codes, scale, minimum = quantize_channels(scheme, x)
    return dequantize_channels(scheme, codes, scale, minimum)


def assert_within_bound(scheme, x: torch.Tensor, y: torch.Tensor, per_channel: bool = False) -> None:
    assert torch.isfinite(y).all(), f"{scheme.name}: non-finite dequantized values"
    err = (y - x.float()).abs()
    bound = roundtrip_error_bound(scheme, x, per_channel=per_channel)
    worst = (err / bound).max().item()
    assert bool((err <= bound).all()), (f"{scheme.name} group {scheme.group_size}: error exceeds the bound "
                                  f"(worst error/bound {worst:.3f}, max error {err.max().item():.3g})")


# --- packing ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", [4, 2])
def test_pack_unpack_round_trip_is_exact_for_every_pack_group(bits):
    top = (1 << bits) - 1
    for pack_group in (8, 16, 32, 64):
        codes = torch.randint(0, top + 1, (3, 5, HEAD_DIM), generator=gen(pack_group))
        codes[0, 0] = 0
        codes[0, 1] = top
        packed = pack_codes(codes, bits, pack_group)
        assert packed.dtype == torch.uint8 and packed.shape == (3, 5, HEAD_DIM * bits // 8)
        assert torch.equal(unpack_codes(packed, bits, pack_group), codes), f"pack group {pack_group}"
        assert (packed[0, 0] == 0).all()  # all-zero codes → zero bytes
        assert (packed[0, 1] == 255).all()  # all-max codes → every bit set


def test_pack_codes_byte_layout_int4_by_hand():
    # P = 8 channels, PACK = 2 codes per byte, P/PACK = 4: channel c → byte (c // 8)·4 + c % 4, shift ((c % 8)//4)·4
    codes = torch.tensor([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 0])
    packed = pack_codes(codes, 4, 8)
    assert packed.tolist() == [0x51, 0x62, 0x73, 0x84, 0xD9, 0xEA, 0xFB, 0x0C]
    assert unpack_codes(packed, 4, 8).tolist() == codes.tolist()


def test_pack_codes_byte_layout_2bit_by_hand():
    # P = 8, PACK = 4, P/PACK = 2: channel c → byte (c // 8)·2 + c % 2, shift ((c % 8)//2)·2
    codes = torch.tensor([0, 1, 2, 3, 3, 2, 1, 0])
    packed = pack_codes(codes, 2, 8)
    # byte 0: c0 | c2 << 2 | c4 << 4 | c6 << 6 = 0 + 8 + 48 + 64; byte 1: c1 | c3 << 2 | c5 << 4 | c7 << 6 = 1 + 12 + 32
    assert packed.tolist() == [120, 45]
    # a 16-channel group: channel c → byte c % 4, shift (c // 4)·2; codes c // 4 make every byte 3,2,1,0 high to low
    codes16 = torch.arange(16) // 4
    assert pack_codes(codes16, 2, 16).tolist() == [0b11100100] * 4
    assert pack_codes(torch.arange(16) % 4, 2, 16).tolist() == [0, 0b01010101, 0b10101010, 0b11111111]


def test_pack_codes_formula_matches_docstring_for_every_channel():
    for bits, pack_group in [(4, 16), (2, 32), (2, 64)]:
        pack = 8 // bits
        sub = pack_group // pack
        for c in range(0, HEAD_DIM, 5):
            codes = torch.zeros(HEAD_DIM, dtype=torch.long)
            codes[c] = 1
            packed = pack_codes(codes, bits, pack_group)
            byte = (c // pack_group) * sub + c % sub
            shift = ((c % pack_group) // sub) * bits
            expected = torch.zeros_like(packed)
            expected[byte] = 1 << shift
            assert torch.equal(packed, expected), f"bits {bits}, pack group {pack_group}, channel {c}"


# --- round trip within the bound ---------------------------------------------------------------------------
@pytest.mark.parametrize("name,scale", [
    pytest.param(name, scale, id=f"{name}-{scale:g}") for name in SCHEMES for scale in (1e-3, 1.0, 1e3)])
def test_roundtrip_error_within_bound_on_random_normal_data(name, scale):
    for group in GROUP_SIZES[name]:
        scheme = make_scheme(name, HEAD_DIM, group)
        x = torch.randn(64, 4, HEAD_DIM, generator=gen(group)) * scale
        assert_within_bound(scheme, x, roundtrip(scheme, x))


@pytest.mark.parametrize("name,value", [("int8", 30.49 * 127 * 2.0 ** -24), ("fp8", 3.49 * 448 * 2.0 ** -24)],
                         ids=["int8-2.3e-4", "fp8-9.3e-5"])
def test_roundtrip_error_within_bound_when_the_float16_scale_is_subnormal(name, value):
    # int8: scale = value / 127 = 30.49 subnormal float16 steps (2^-24) → stored as 30 steps → x / scale = 129
    # → the code clamps to 127 → dequantized 127·30·2^-24 = 2.271e-4: error 3.7e-6, more than half a step (1.1e-6);
    # fp8 alike: value / 448 = 3.49 steps, stored as 3 → x / scale = 521 clamps to 448: error 1.3e-5. The bound's
    # absolute term (top code · 2^-25) is there for exactly this.
    scheme = make_scheme(name, 8, 8)
    x = torch.zeros(1, 8)
    x[0, 0] = value
    assert_within_bound(scheme, x, roundtrip(scheme, x))


def adversarial(kind: str, shape: tuple[int, ...], group: int, seed: int = 0) -> torch.Tensor:
    g = gen(seed)
    if kind == "outlier":  # one huge value in every group of channels
        x = torch.randn(shape, generator=g)
        groups = x.view(-1, group)
        where = torch.randint(0, group, (groups.shape[0],), generator=g)
        sign = torch.where(torch.rand(groups.shape[0], generator=g) < 0.5, -1.0, 1.0)
        groups[torch.arange(groups.shape[0]), where] = 1000.0 * sign
        return x
    if kind == "equal_positive":
        return torch.full(shape, 0.37)  # not a float16 value: the stored minimum / scale rounds
    if kind == "equal_negative":
        return torch.full(shape, -2.71)
    if kind == "zeros":
        return torch.zeros(shape)
    if kind == "single_nonzero":
        x = torch.zeros(shape)
        x.view(-1)[x.numel() // 3] = 3.3
        return x
    if kind == "alternating":
        return torch.where(torch.arange(shape[-1]) % 2 == 0, 1.7, -1.7).expand(shape).clone()
    if kind == "fp16_limits":
        x = torch.where(torch.rand(shape, generator=g) < 0.5, -6e4, 6e4) * torch.rand(shape, generator=g).add(1) / 2
        x.view(-1)[0], x.view(-1)[1] = 65504.0, -65504.0
        return x
    raise AssertionError(kind)


ADVERSARIAL = ["outlier", "equal_positive", "equal_negative", "zeros", "single_nonzero", "alternating", "fp16_limits"]


@pytest.mark.parametrize("kind", ADVERSARIAL)
def test_roundtrip_error_within_bound_on_adversarial_data(kind):
    for name in SCHEMES:
        for group in GROUP_SIZES[name]:
            scheme = make_scheme(name, HEAD_DIM, group)
            x = adversarial(kind, (6, 2, HEAD_DIM), group)
            assert_within_bound(scheme, x, roundtrip(scheme, x))


@pytest.mark.parametrize("kind", ADVERSARIAL)
def test_kivi2_per_channel_roundtrip_within_bound_on_adversarial_data(kind):
    scheme = make_scheme("kivi2", HEAD_DIM)
    for tokens in (1, 4, 16):
        x = adversarial(kind, (tokens, 2, HEAD_DIM), HEAD_DIM)
        assert_within_bound(scheme, x, roundtrip_channels(scheme, x), per_channel=True)


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3])
def test_kivi2_per_channel_roundtrip_within_bound_on_random_normal_data(scale):
    scheme = make_scheme("kivi2", HEAD_DIM)
    x = torch.randn(16, 3, HEAD_DIM, generator=gen(1)) * scale
    assert_within_bound(scheme, x, roundtrip_channels(scheme, x), per_channel=True)


def test_all_zeros_dequantize_to_exact_zero_with_finite_scales():
    for name in SCHEMES:
        for group in GROUP_SIZES[name]:
            scheme = make_scheme(name, HEAD_DIM, group)
            codes, scale, minimum = quantize_tokens(scheme, torch.zeros(3, HEAD_DIM))
            assert torch.isfinite(scale.float()).all() and torch.isfinite(codes.float()).all()
            assert minimum is None or torch.isfinite(minimum.float()).all()
            y = dequantize_tokens(scheme, codes, scale, minimum)
            assert torch.equal(y, torch.zeros(3, HEAD_DIM)), f"{name} group {group}"
    kivi = make_scheme("kivi2", HEAD_DIM)
    codes, scale, minimum = quantize_channels(kivi, torch.zeros(16, 2, HEAD_DIM))
    assert torch.isfinite(scale.float()).all() and torch.isfinite(minimum.float()).all()
    assert torch.equal(dequantize_channels(kivi, codes, scale, minimum), torch.zeros(16, 2, HEAD_DIM))


def test_int8_error_on_standard_normal_is_below_one_percent_of_absmax_and_reaches_the_bound():
    scheme = make_scheme("int8", HEAD_DIM)
    x = torch.randn(256, HEAD_DIM, generator=gen(2))
    err = (roundtrip(scheme, x) - x).abs()
    absmax = x.abs().amax(-1, keepdim=True)
    assert (err < 0.01 * absmax).all()
    bound = roundtrip_error_bound(scheme, x)
    assert (bound < 0.01 * absmax).all()  # the bound itself is tight enough to mean something
    assert (err / bound).max() > 0.5  # and the error comes near it: half a step is really reached


def test_error_grows_as_bits_shrink_int8_then_int4_then_2bit():
    x = torch.randn(256, HEAD_DIM, generator=gen(3))
    mean_err = {name: (roundtrip(make_scheme(name, HEAD_DIM, 32), x) - x).abs().mean().item()
                for name in ("int8", "int4", "kivi2")}
    assert mean_err["int8"] * 8 < mean_err["int4"], mean_err  # 127 vs 7 levels: ~18× apart
    assert mean_err["int4"] * 2 < mean_err["kivi2"], mean_err


def test_fp8_relative_error_is_bounded_by_its_three_mantissa_bits():
    scheme = make_scheme("fp8", HEAD_DIM)
    x = torch.randn(256, HEAD_DIM, generator=gen(4))
    y = roundtrip(scheme, x)
    big = x.abs() > 0.05 * x.abs().amax(-1, keepdim=True)  # away from fp8's subnormals
    rel = ((y - x).abs() / x.abs())[big]
    assert rel.max() <= 1 / 16 + 1e-3
    assert rel.max() > 1 / 64  # really 3 bits, not an exact copy


def test_kivi2_per_channel_keys_beat_per_token_2bit_when_one_channel_is_an_outlier():
    scheme = make_scheme("kivi2", HEAD_DIM, 32)
    x = torch.randn(16, 2, HEAD_DIM, generator=gen(5))
    x[..., 7] = 40.0 + torch.randn(16, 2, generator=gen(6))  # keys have outlier channels with a large offset
    per_channel = (roundtrip_channels(scheme, x) - x).abs()
    per_token = (roundtrip(scheme, x) - x).abs()
    others = torch.arange(HEAD_DIM) != 7
    assert per_channel[..., others].mean() * 4 < per_token[..., others].mean()
    assert per_channel.max() < per_token.max()


# --- stored dtypes and ranges -------------------------------------------------------------------------------
def test_int8_codes_are_int8_within_plus_minus_127_and_absmax_maps_to_127():
    scheme = make_scheme("int8", HEAD_DIM, 16)
    x = torch.randn(32, HEAD_DIM, generator=gen(7)) * 5
    codes, scale, minimum = quantize_tokens(scheme, x)
    assert codes.dtype == torch.int8 and codes.shape == (32, HEAD_DIM)
    assert scale.dtype == torch.float16 and scale.shape == (32, HEAD_DIM // 16) and minimum is None
    assert codes.min() >= -127 and codes.max() <= 127
    top = codes.view(32, -1, 16).abs().amax(-1)
    assert (top == 127).sum() >= top.numel() * 0.9  # the group's absmax lands on ±127 (bar scale rounding)


def test_fp8_codes_are_float8_e4m3_within_448():
    scheme = make_scheme("fp8", HEAD_DIM)
    codes, scale, minimum = quantize_tokens(scheme, torch.randn(32, HEAD_DIM, generator=gen(8)) * 100)
    assert codes.dtype == torch.float8_e4m3fn and scale.dtype == torch.float16 and minimum is None
    values = codes.float()
    assert torch.isfinite(values).all() and values.abs().max() <= FP8_MAX
    assert values.abs().amax(-1).min() >= 400  # the range is used


def test_int4_codes_are_packed_uint8_nibbles_from_1_to_15():
    scheme = make_scheme("int4", HEAD_DIM, 32)
    x = torch.randn(32, HEAD_DIM, generator=gen(9))
    x[0] = 0.0
    codes, scale, minimum = quantize_tokens(scheme, x)
    assert codes.dtype == torch.uint8 and codes.shape == (32, HEAD_DIM // 2)
    assert scale.dtype == torch.float16 and scale.shape == (32, 2) and minimum is None
    nibbles = unpack_codes(codes, 4, 32)
    assert nibbles.min() >= 1 and nibbles.max() <= 15
    assert (nibbles[0] == 8).all()  # zero is stored as code 0 + 8
    assert nibbles.min() == 1 and nibbles.max() == 15  # ±7 both reached


def test_kivi2_codes_are_2bit_with_group_min_at_0_and_max_at_3():
    scheme = make_scheme("kivi2", HEAD_DIM, 16)
    x = torch.randn(32, HEAD_DIM, generator=gen(10))
    codes, scale, minimum = quantize_tokens(scheme, x)
    assert codes.dtype == torch.uint8 and codes.shape == (32, HEAD_DIM // 4)
    assert scale.dtype == torch.float16 and minimum.dtype == torch.float16 and minimum.shape == (32, 4)
    q = unpack_codes(codes, 2, 16).view(32, 4, 16)
    groups = x.view(32, 4, 16)
    at_min = groups.argmin(-1, keepdim=True)
    at_max = groups.argmax(-1, keepdim=True)
    assert (q.gather(-1, at_min) == 0).all() and (q.gather(-1, at_max) == 3).all()
    assert torch.allclose(minimum.float(), groups.amin(-1), rtol=2 ** -10, atol=0)
    ramp = torch.linspace(-1, 1, HEAD_DIM).repeat(1, 1)
    assert set(unpack_codes(quantize_tokens(scheme, ramp)[0], 2, 16).unique().tolist()) == {0, 1, 2, 3}


def test_kivi2_per_channel_scales_are_per_channel_float16():
    scheme = make_scheme("kivi2", HEAD_DIM)
    x = torch.randn(16, 2, HEAD_DIM, generator=gen(11))
    codes, scale, minimum = quantize_channels(scheme, x)
    assert codes.dtype == torch.uint8 and codes.shape == (16, 2, HEAD_DIM // 4)
    assert scale.dtype == minimum.dtype == torch.float16 and scale.shape == minimum.shape == (2, HEAD_DIM)
    q = unpack_codes(codes, 2, HEAD_DIM)
    assert (q.amin(0) == 0).all() and (q.amax(0) == 3).all()  # each channel spans all four levels over the block


# --- bad arguments ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,named", [
    (dict(name="int3"), "'int3'"),
    (dict(bits=3), "3"),
    (dict(bits=None), "None"),
    (dict(name="int8", bits=4), "4"),
    (dict(name="kivi2", bits=4), "'kivi2'"),
    (dict(name="fp8", bits=4), "4"),
    (dict(name="int4", group_size=48), "48"),
    (dict(name="int4", group_size=0), "0"),
    (dict(name="int4", group_size=True), "True"),
    (dict(name="int4", group_size=32.0), "32.0"),
    (dict(name="int8", head_dim=32, group_size=64), "64"),
], ids=["unknown-name", "bits-3", "no-name-no-bits", "int8-with-bits-4", "kivi2-with-bits-4", "fp8-with-bits-4",
        "group-48", "group-0", "group-True", "group-float", "group-64-head-32"])
def test_make_scheme_rejects_bad_arguments_naming_the_value(kwargs, named):
    kwargs = {"head_dim": HEAD_DIM, **kwargs}
    name = kwargs.pop("name", None)
    with pytest.raises(ValueError) as info:
        make_scheme(name, **kwargs)
    assert named in str(info.value)


def test_make_scheme_group_not_dividing_head_dim_names_both():
    with pytest.raises(ValueError, match=r"group_size 64 does not divide head_dim 32"):
        make_scheme("int4", 32, 64)


def test_make_scheme_by_bits_and_defaults():
    assert make_scheme(bits=8, head_dim=64) == make_scheme("int8", 64, 64)
    assert make_scheme(bits=4, head_dim=64).group_size == 32
    assert make_scheme(bits=2, head_dim=64).name == "kivi2"
    assert make_scheme("int4", 16).group_size == 16  # default group capped at head_dim
    assert make_scheme("fp8", 64).group_size == 64


def test_fp8_refused_on_a_gpu_without_float8_naming_the_capability(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert not supports_float8("cuda:0")
    with pytest.raises(ValueError, match=r"fp8.*cuda:0.*8\.0") as info:
        make_scheme("fp8", 64, device="cuda:0")
    assert "int8" in str(info.value)  # says what to use instead
    assert make_scheme("int8", 64, device="cuda:0").name == "int8"  # only fp8 is refused
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 9))
    assert supports_float8("cuda:0") and make_scheme("fp8", 64, device="cuda:0").name == "fp8"


def test_fp8_refused_when_supports_float8_is_false(monkeypatch):
    monkeypatch.setattr(quantization, "supports_float8", lambda device: False)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    with pytest.raises(ValueError, match=r"7\.5"):
        make_scheme("fp8", 64, device="cuda:0")


def test_supports_float8_is_true_on_cpu():
    assert supports_float8("cpu") and supports_float8(torch.device("cpu"))


# --- bytes --------------------------------------------------------------------------------------------------
def test_bytes_per_token_head_by_hand():
    assert make_scheme("int8", 64).bytes_per_token_head(16) == 2 * (64 + 2)
    assert make_scheme("fp8", 64).bytes_per_token_head(16) == 2 * (64 + 2)
    assert make_scheme("int8", 64, 16).bytes_per_token_head(16) == 2 * (64 + 4 * 2)
    assert make_scheme("int4", 64, 32).bytes_per_token_head(16) == 2 * (32 + 4)
    # kivi2, D = 64, group 32, block 16: values 16 B codes + 2 groups × (scale + min) × 2 B = 24;
    # keys 16 B codes + (scale + min) × 64 channels × 2 B shared by 16 tokens = 16 + 16 = 32
    assert make_scheme("kivi2", 64, 32).bytes_per_token_head(16) == 24 + 32
    # block 64: keys 16 + 256/64 = 20
    assert make_scheme("kivi2", 64, 32).bytes_per_token_head(64) == 24 + 20


def test_bytes_per_token_head_orders_int8_above_int4_above_kivi2_below_fp16():
    for block_size in (16, 64):
        sizes = [make_scheme(name, 64).bytes_per_token_head(block_size) for name in ("int8", "int4", "kivi2")]
        assert sizes[0] > sizes[1] > sizes[2], sizes
        assert sizes[0] < 2 * 64 * 2  # all below fp16 K + V
