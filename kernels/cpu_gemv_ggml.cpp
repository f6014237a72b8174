// y = x @ Wᵀ where W is kept as the GGUF file stores it: GGML Q4_1 or Q8_0 blocks of 32 weights.
//
// x [M, K] float32 contiguous; blocks [N, K/32 · block bytes] uint8, one weight row per tensor row → y [M, N].
//   Q4_1 block, 20 B: d (fp16), m (fp16), 16 bytes of nibbles; weight j = d·q_j + m,
//                     q_j = low nibble of byte j for j < 16, high nibble of byte j − 16 for j ≥ 16.
//   Q8_0 block, 34 B: d (fp16), 32 int8 q; weight j = d·q_j.
// Bytes: reads N·K/32·block bytes (every block once, whatever M is) + M·K·4, writes M·N·4. FLOP: 2·M·N·K
// (the dequantization's multiply-add is not counted: it is not part of the model's arithmetic).
//
// The weights are rebuilt in registers, and they are bit for bit the float32 weights HF transformers gets from
// gguf's dequantize: d·q is exact in float32 (an 11-bit fp16 mantissa times a 4- or 8-bit integer needs at
// most 19 bits of the 24), so d·q + m rounds once whether or not the compiler fuses it. What differs from a
// float32 product is only the summation order, as with cpu_gemv.cpp, and 6.4× (Q4_1) or 3.8× (Q8_0) fewer
// bytes to read than float32: decode is memory-bound, so fewer bytes is faster.
// ATen's tensor header, not torch/extension.h: 3 s to compile instead of 48 s on 2 cores (the op registration
// lives in cpu_gemv.cpp alone)
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/Parallel.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstring>

#include "cpu_kernels.h"
#if defined(__AVX2__) || defined(__F16C__)
#include <immintrin.h>
#endif

namespace {

constexpr int64_t kBlock = 32;       // weights per block, both formats
constexpr int64_t kRowsPerTask = 4;  // weight rows per parallel task
// Each block asks for the bytes this far ahead of it: the hardware prefetcher alone left the unpacking waiting on
// memory at every product's start. The 121 products of a SmolLM2 step on 2 EPYC cores: 5.2 ms without, 4.7 ms at
// 512 B, 4.3 ms at 2-4 KB, 4.9 ms at 8 KB. A prefetch never faults, so reading past the last row is harmless.
constexpr int64_t kPrefetchBytes = 2048;

inline float fp16_at(const uint8_t* p) {
  uint16_t bits;
  std::memcpy(&bits, p, sizeof bits);
#if defined(__F16C__)
  return _cvtsh_ss(bits);
#else
  return c10::detail::fp16_ieee_to_fp32_value(bits);
#endif
}

// The vector registers this build has: 16 float lanes (AVX-512), 8 (AVX2 + FMA), or none (plain C++ loops).
#if defined(__AVX512F__)
#define KVLAB_SIMD 1
struct Simd {
  using V = __m512;
  static constexpr int kLanes = 16;
  static V zero() { return _mm512_setzero_ps(); }
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static V fmadd(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
};
#elif defined(__AVX2__) && defined(__FMA__)
#define KVLAB_SIMD 1
struct Simd {
  using V = __m256;
  static constexpr int kLanes = 8;
  static V zero() { return _mm256_setzero_ps(); }
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static V fmadd(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
};
#endif

// Each format: decode(block, w[32]) in plain C++, and decode_simd(block, w[32 / lanes]) with this build's vectors.
struct Q4_1 {
  static constexpr int64_t kBytes = 20;
  static inline void decode(const uint8_t* block, float* w) {
    const float d = fp16_at(block), m = fp16_at(block + 2);
    const uint8_t* q = block + 4;
    for (int j = 0; j < 16; ++j) {
      w[j] = d * static_cast<float>(q[j] & 0x0F) + m;
      w[j + 16] = d * static_cast<float>(q[j] >> 4) + m;
    }
  }
#if defined(__AVX512F__)
  // The 16 values a block's weights can take, d·q + m for q = 0..15, then one lookup per weight.
  static inline void decode_simd(const uint8_t* block, __m512* w) {  // w[2]: weights 0-15, 16-31
    const __m512 q_values = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512 values = _mm512_fmadd_ps(_mm512_set1_ps(fp16_at(block)), q_values, _mm512_set1_ps(fp16_at(block + 2)));
    const __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i*>(block + 4));
    const __m128i nibble = _mm_set1_epi8(0x0F);
    w[0] = _mm512_permutexvar_ps(_mm512_cvtepu8_epi32(_mm_and_si128(q, nibble)), values);
    w[1] = _mm512_permutexvar_ps(_mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(q, 4), nibble)), values);
  }
#elif defined(KVLAB_SIMD)
  static inline void decode_simd(const uint8_t* block, __m256* w) {  // w[4]: weights 0-7, 8-15, 16-23, 24-31
    const __m256 d = _mm256_set1_ps(fp16_at(block)), m = _mm256_set1_ps(fp16_at(block + 2));
    const __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i*>(block + 4));
    const __m128i nibble = _mm_set1_epi8(0x0F);
    const __m128i lo = _mm_and_si128(q, nibble), hi = _mm_and_si128(_mm_srli_epi16(q, 4), nibble);
    const __m128i parts[4] = {lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)};
    for (int i = 0; i < 4; ++i) w[i] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(parts[i])), m);
  }
#endif
};

struct Q8_0 {
  static constexpr int64_t kBytes = 34;
  static inline void decode(const uint8_t* block, float* w) {
    const float d = fp16_at(block);
    const int8_t* q = reinterpret_cast<const int8_t*>(block + 2);
    for (int j = 0; j < 32; ++j) w[j] = d * static_cast<float>(q[j]);
  }
#if defined(__AVX512F__)
  static inline void decode_simd(const uint8_t* block, __m512* w) {  // w[2]: weights 0-15, 16-31
    const __m512 d = _mm512_set1_ps(fp16_at(block));
    for (int i = 0; i < 2; ++i) {
      const __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i*>(block + 2 + 16 * i));
      w[i] = _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q)));
    }
  }
#elif defined(KVLAB_SIMD)
  static inline void decode_simd(const uint8_t* block, __m256* w) {  // w[4]: weights 0-7, 8-15, 16-23, 24-31
    const __m256 d = _mm256_set1_ps(fp16_at(block));
    for (int i = 0; i < 4; ++i) {
      const __m128i q = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(block + 2 + 8 * i));
      w[i] = _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)));
    }
  }
#endif
};

// out[m] = w · x[m] for MB rows of x: each block is decoded once and multiplied by all MB rows.
// 32 partial sums per x row, summed in a fixed order: the result does not depend on the thread count.
template <class Format, int MB>
inline void dot_row(const uint8_t* row, const float* __restrict x, int64_t K, float* out, int64_t out_stride) {
  alignas(64) float lanes[MB][kBlock];
#if defined(KVLAB_SIMD)
  constexpr int kVectors = kBlock / Simd::kLanes;
  typename Simd::V partial[MB][kVectors];
  for (int m = 0; m < MB; ++m)
    for (int i = 0; i < kVectors; ++i) partial[m][i] = Simd::zero();
  for (int64_t b = 0; b < K / kBlock; ++b) {
    typename Simd::V w[kVectors];  // the block's 32 weights, float32
    __builtin_prefetch(row + b * Format::kBytes + kPrefetchBytes);
    Format::decode_simd(row + b * Format::kBytes, w);
    for (int m = 0; m < MB; ++m) {
      const float* xb = x + m * K + b * kBlock;
      for (int i = 0; i < kVectors; ++i) partial[m][i] = Simd::fmadd(w[i], Simd::load(xb + Simd::kLanes * i), partial[m][i]);
    }
  }
  for (int m = 0; m < MB; ++m)
    for (int i = 0; i < kVectors; ++i) Simd::store(lanes[m] + Simd::kLanes * i, partial[m][i]);
#else
  for (int m = 0; m < MB; ++m)
    for (int j = 0; j < kBlock; ++j) lanes[m][j] = 0.f;
  float w[kBlock];
  for (int64_t b = 0; b < K / kBlock; ++b) {
    __builtin_prefetch(row + b * Format::kBytes + kPrefetchBytes);
    Format::decode(row + b * Format::kBytes, w);
    for (int m = 0; m < MB; ++m) {
      const float* xb = x + m * K + b * kBlock;
      for (int j = 0; j < kBlock; ++j) lanes[m][j] += w[j] * xb[j];
    }
  }
#endif
  for (int m = 0; m < MB; ++m) {
    float sum = 0.f;
    for (int j = 0; j < kBlock; ++j) sum += lanes[m][j];
    out[m * out_stride] = sum;
  }
}

template <class Format>
at::Tensor gemv_blocks(const at::Tensor& x, const at::Tensor& blocks, const char* name) {
  TORCH_CHECK(x.dim() == 2 && blocks.dim() == 2, name, ": x must be [M, K] and blocks [N, bytes], got ", x.sizes(),
              " and ", blocks.sizes());
  TORCH_CHECK(x.scalar_type() == at::kFloat, name, ": x must be float32, got ", x.scalar_type());
  TORCH_CHECK(blocks.scalar_type() == at::kByte, name, ": blocks must be uint8, got ", blocks.scalar_type());
  TORCH_CHECK(x.device().is_cpu() && blocks.device().is_cpu(), name, ": CPU tensors only");
  TORCH_CHECK(x.is_contiguous() && blocks.is_contiguous(), name, ": x and blocks must be contiguous");
  const int64_t M = x.size(0), K = x.size(1), N = blocks.size(0);
  TORCH_CHECK(K % kBlock == 0, name, ": K=", K, " is not a multiple of the block size ", kBlock);
  TORCH_CHECK(blocks.size(1) == K / kBlock * Format::kBytes, name, ": a row of blocks for K=", K, " is ",
              K / kBlock * Format::kBytes, " bytes, got ", blocks.size(1));
  auto y = at::empty({M, N}, x.options());
  const float* xp = x.data_ptr<float>();
  const uint8_t* bp = blocks.data_ptr<uint8_t>();
  float* yp = y.data_ptr<float>();
  const int64_t row_bytes = blocks.size(1);
  const int64_t tasks = (N + kRowsPerTask - 1) / kRowsPerTask;
  at::parallel_for(0, tasks, 16, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n0 = task * kRowsPerTask, n1 = std::min(N, n0 + kRowsPerTask);
      for (int64_t n = n0; n < n1; ++n) {
        const uint8_t* row = bp + n * row_bytes;
        int64_t m = 0;
        for (; m + 4 <= M; m += 4) dot_row<Format, 4>(row, xp + m * K, K, yp + m * N + n, N);
        for (; m + 2 <= M; m += 2) dot_row<Format, 2>(row, xp + m * K, K, yp + m * N + n, N);
        for (; m < M; ++m) dot_row<Format, 1>(row, xp + m * K, K, yp + m * N + n, N);
      }
    }
  });
  return y;
}

}  // namespace

std::string blocks_simd_path() {
#if defined(__AVX512F__)
  return "avx512";
#elif defined(KVLAB_SIMD)
  return "avx2";
#else
  return "plain";
#endif
}

at::Tensor gemv_q4_1(const at::Tensor& x, const at::Tensor& blocks) {
  return gemv_blocks<Q4_1>(x, blocks, "gemv_q4_1");
}

at::Tensor gemv_q8_0(const at::Tensor& x, const at::Tensor& blocks) {
  return gemv_blocks<Q8_0>(x, blocks, "gemv_q8_0");
}
