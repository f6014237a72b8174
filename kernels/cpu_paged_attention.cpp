// Paged decode attention on a CPU: one new query per sequence over its K/V, read where they lie in the pool.
//
// query [B, Hq, D] contiguous; k_pool, v_pool [num_blocks, block_size, Hkv, D] (same strides, contiguous along
// D; float32, float16 or bfloat16); block_tables [B, max_blocks], context_lens [B] (int32 or int64, contiguous)
// → out [B, Hq, D] in the query's dtype.
// Bytes: reads 2 · Σ context · Hkv · D · elem (every cached K and V once) + B · Hq · D · elem (the query)
// + 4 B per used block-table entry; writes B · Hq · D · elem. With splits, 2 · B · splits · Hq · (D + 2) · 4 B
// of fp32 scratch more.
//
// One task per (sequence, split of its context). A task walks its tokens through the block table in tiles of
// kTile tokens (a tile may span several small blocks or part of a big one) and visits each token once for all
// KV heads, so a block's K and V are read front to back, the order the hardware prefetcher streams. Each K
// and V row serves all G query heads of its group (GQA-native): G scores per K row, an online-softmax update
// per tile (running max and sum in fp32, exp2 with log2(e) folded into the query's scale), then G
// accumulations per V row into registers. Nothing is gathered into a contiguous copy. A batch too small to
// give every thread several tasks has its contexts cut into splits (flash-decoding), and a second pass
// combines the splits by their running max and sum.
//
// Vector code: AVX-512 (16 lanes) or AVX2 + FMA (8 lanes), whichever the build has (-march=native), and plain
// C++ for the rest: a build without either, and head dims that are not a multiple of the lanes.
// ATen's tensor header, not torch/extension.h: 3 s to compile instead of 48 s on 2 cores (the op registration
// lives in cpu_gemv.cpp alone)
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "cpu_kernels.h"
#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace {

constexpr int64_t kTile = 32;           // tokens scored before each online-softmax update
constexpr int64_t kMinSplitTiles = 2;   // a split of the context spans at least this many tiles
constexpr int64_t kTasksPerThread = 4;  // splits are added until every thread has about this many tasks
constexpr int64_t kMaxSplits = 64;
constexpr int64_t kMaxHeadDim = 512;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;
// 2^f for f ∈ [-0.5, 0.5] by its Taylor series in f·ln 2 to degree 7: relative error < 1e-8, below float32's
constexpr float kExp2Poly[8] = {1.f, 1.f, 1.f / 2, 1.f / 6, 1.f / 24, 1.f / 120, 1.f / 720, 1.f / 5040};
// below 2^-126 a weight is 0: that small next to the running maximum's weight of 1, it changes no float32 sum
constexpr float kExp2Floor = -126.9f;

// One float per "vector": the plain C++ path.
struct Scalar {
  using V = float;
  static constexpr int64_t kLanes = 1;
  static V zero() { return 0.f; }
  static V set1(float x) { return x; }
  static V load(const float* p) { return *p; }
  static void store(float* p, V v) { *p = v; }
  static V add(V a, V b) { return a + b; }
  static V sub(V a, V b) { return a - b; }
  static V mul(V a, V b) { return a * b; }
  static V fmadd(V a, V b, V c) { return a * b + c; }
  static V max(V a, V b) { return std::max(a, b); }
  static float reduce_add(V v) { return v; }
  static float reduce_max(V v) { return v; }
  static V exp2_nonpositive(V x) {  // 2^x = 2^n · 2^f, n = round(x), for x ≤ 0
    x = std::max(x, kExp2Floor);  // also turns -inf (an empty running max) into a weight of 0
    const int n = static_cast<int>(x - 0.5f);  // x − 0.5 < 0: truncation toward zero rounds x
    const float y = (x - static_cast<float>(n)) * kLn2;
    float p = kExp2Poly[7];
    for (int k = 6; k >= 0; --k) p = p * y + kExp2Poly[k];
    const int bits = (n + 127) << 23;  // 2^n as a float; n = -127 gives 0
    float two_n;
    std::memcpy(&two_n, &bits, sizeof two_n);
    return p * two_n;
  }
};

#if defined(__AVX512F__)
#define KVLAB_ATTENTION_SIMD "avx512"
struct Simd {
  using V = __m512;
  static constexpr int64_t kLanes = 16;
  static V zero() { return _mm512_setzero_ps(); }
  static V set1(float x) { return _mm512_set1_ps(x); }
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
  static V add(V a, V b) { return _mm512_add_ps(a, b); }
  static V sub(V a, V b) { return _mm512_sub_ps(a, b); }
  static V mul(V a, V b) { return _mm512_mul_ps(a, b); }
  static V fmadd(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static V max(V a, V b) { return _mm512_max_ps(a, b); }
  static float reduce_add(V v) { return _mm512_reduce_add_ps(v); }
  static float reduce_max(V v) { return _mm512_reduce_max_ps(v); }
  static V exp2_nonpositive(V x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(kExp2Floor));
    const V n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const V y = _mm512_mul_ps(_mm512_sub_ps(x, n), _mm512_set1_ps(kLn2));
    V p = _mm512_set1_ps(kExp2Poly[7]);
    for (int k = 6; k >= 0; --k) p = _mm512_fmadd_ps(p, y, _mm512_set1_ps(kExp2Poly[k]));
    const __m512i bits = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
    return _mm512_mul_ps(p, _mm512_castsi512_ps(bits));
  }
};
#elif defined(__AVX2__) && defined(__FMA__)
#define KVLAB_ATTENTION_SIMD "avx2"
struct Simd {
  using V = __m256;
  static constexpr int64_t kLanes = 8;
  static V zero() { return _mm256_setzero_ps(); }
  static V set1(float x) { return _mm256_set1_ps(x); }
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static V sub(V a, V b) { return _mm256_sub_ps(a, b); }
  static V mul(V a, V b) { return _mm256_mul_ps(a, b); }
  static V fmadd(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V max(V a, V b) { return _mm256_max_ps(a, b); }
  static float reduce_add(V v) {
    __m128 x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    x = _mm_add_ps(x, _mm_movehl_ps(x, x));
    return _mm_cvtss_f32(_mm_add_ss(x, _mm_movehdup_ps(x)));
  }
  static float reduce_max(V v) {
    __m128 x = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    x = _mm_max_ps(x, _mm_movehl_ps(x, x));
    return _mm_cvtss_f32(_mm_max_ss(x, _mm_movehdup_ps(x)));
  }
  static V exp2_nonpositive(V x) {
    x = _mm256_max_ps(x, _mm256_set1_ps(kExp2Floor));
    const V n = _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const V y = _mm256_mul_ps(_mm256_sub_ps(x, n), _mm256_set1_ps(kLn2));
    V p = _mm256_set1_ps(kExp2Poly[7]);
    for (int k = 6; k >= 0; --k) p = _mm256_fmadd_ps(p, y, _mm256_set1_ps(kExp2Poly[k]));
    const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
  }
};
#else
#define KVLAB_ATTENTION_SIMD "plain"
using Simd = Scalar;
#endif

struct Shape {
  int64_t batch, num_q_heads, num_kv_heads, group, head_dim, block_size, num_blocks, max_blocks, num_splits;
  int64_t pool_block_stride, pool_row_stride, pool_head_stride;  // the same for K and V (checked)
  float qk_scale;  // softmax scale × log2(e): scores in the exp2 domain
};

// One thread's working memory, reused across its tasks.
struct Scratch {
  std::vector<float> q, acc, scores, max, sum;  // q, acc [Hq, D]; scores [Hq, kTile]; max, sum [Hq]
  std::vector<float> k_rows, v_rows;            // half precision: the tile's rows widened, [kTile, Hkv, D]
  std::vector<const float*> k_ptr, v_ptr;       // [kTile]: each token's K and V rows (KV head 0; the others follow)
  explicit Scratch(const Shape& s)
      : q(s.num_q_heads * s.head_dim), acc(s.num_q_heads * s.head_dim), scores(s.num_q_heads * kTile),
        max(s.num_q_heads), sum(s.num_q_heads), k_rows(kTile * s.num_kv_heads * s.head_dim),
        v_rows(kTile * s.num_kv_heads * s.head_dim), k_ptr(kTile), v_ptr(kTile) {}
};

// q · k for a row of D floats: D / lanes products summed in two chains, then across the lanes.
template <class S, int64_t kChunks>
inline float dot(const float* __restrict q, const float* __restrict k, int64_t chunks) {
  if constexpr (kChunks > 0) chunks = kChunks;
  typename S::V even = S::zero(), odd = S::zero();
  int64_t c = 0;
  for (; c + 2 <= chunks; c += 2) {
    even = S::fmadd(S::load(q + c * S::kLanes), S::load(k + c * S::kLanes), even);
    odd = S::fmadd(S::load(q + (c + 1) * S::kLanes), S::load(k + (c + 1) * S::kLanes), odd);
  }
  if (c < chunks) even = S::fmadd(S::load(q + c * S::kLanes), S::load(k + c * S::kLanes), even);
  return S::reduce_add(S::add(even, odd));
}

// Online softmax over one head's n new scores (exp2 domain), in place: the new running max, the weights
// 2^(score − max), and alpha = 2^(old max − new max), by which what was summed so far shrinks.
template <class S>
inline float softmax_tile(float* __restrict p, int64_t n, float& running_max, float& running_sum) {
  typename S::V top = S::set1(-std::numeric_limits<float>::infinity());
  int64_t i = 0;
  for (; i + S::kLanes <= n; i += S::kLanes) top = S::max(top, S::load(p + i));
  float tile_max = S::reduce_max(top);
  for (; i < n; ++i) tile_max = std::max(tile_max, p[i]);
  const float new_max = std::max(running_max, tile_max);  // finite: a tile holds at least one token
  const float alpha = Scalar::exp2_nonpositive(running_max - new_max);
  typename S::V sum = S::zero();
  const typename S::V shift = S::set1(new_max);
  for (i = 0; i + S::kLanes <= n; i += S::kLanes) {
    const typename S::V weight = S::exp2_nonpositive(S::sub(S::load(p + i), shift));
    S::store(p + i, weight);
    sum = S::add(sum, weight);
  }
  float tile_sum = S::reduce_add(sum);
  for (; i < n; ++i) tile_sum += (p[i] = Scalar::exp2_nonpositive(p[i] - new_max));
  running_sum = running_sum * alpha + tile_sum;
  running_max = new_max;
  return alpha;
}

// acc [D] = alpha · acc + Σ_i p[i] · v_i over the tile's n V rows, acc in registers (two sets: two
// independent chains of multiply-adds).
template <class S, int64_t kChunks>
inline void accumulate(float* __restrict acc, float alpha, const float* __restrict p, const float* const* v_rows,
                       int64_t v_offset, int64_t n, int64_t chunks) {
  constexpr int64_t kRegs = kChunks > 0 ? kChunks : kMaxHeadDim;
  if constexpr (kChunks > 0) chunks = kChunks;
  typename S::V even[kRegs], odd[kRegs];
  const typename S::V scale = S::set1(alpha);
  for (int64_t c = 0; c < chunks; ++c) even[c] = S::mul(S::load(acc + c * S::kLanes), scale), odd[c] = S::zero();
  int64_t i = 0;
  for (; i + 2 <= n; i += 2) {
    const float* __restrict v0 = v_rows[i] + v_offset;
    const float* __restrict v1 = v_rows[i + 1] + v_offset;
    const typename S::V p0 = S::set1(p[i]), p1 = S::set1(p[i + 1]);
    for (int64_t c = 0; c < chunks; ++c) {
      even[c] = S::fmadd(p0, S::load(v0 + c * S::kLanes), even[c]);
      odd[c] = S::fmadd(p1, S::load(v1 + c * S::kLanes), odd[c]);
    }
  }
  if (i < n) {
    const float* __restrict v0 = v_rows[i] + v_offset;
    const typename S::V p0 = S::set1(p[i]);
    for (int64_t c = 0; c < chunks; ++c) even[c] = S::fmadd(p0, S::load(v0 + c * S::kLanes), even[c]);
  }
  for (int64_t c = 0; c < chunks; ++c) S::store(acc + c * S::kLanes, S::add(even[c], odd[c]));
}

template <typename scalar_t>
inline void widen(const scalar_t* __restrict from, float* __restrict to, int64_t n) {
  for (int64_t i = 0; i < n; ++i) to[i] = static_cast<float>(from[i]);
}

// The softmax-weighted sum of one sequence's values over tokens [begin, end), for every query head, left
// unnormalised in scratch.acc [Hq, D] with the running max (log2 domain) and sum in scratch.max/sum [Hq].
// S: the vector type; kD: the head dim when it is known at compile time (the loops unroll), else 0.
template <class S, int64_t kD, typename scalar_t, typename index_t>
void attend_range(const Shape& s, const scalar_t* query, const scalar_t* k_pool, const scalar_t* v_pool,
                  const index_t* table, int64_t begin, int64_t end, Scratch& w) {
  constexpr int64_t kChunks = kD / S::kLanes;
  const int64_t G = s.group, D = kD > 0 ? kD : s.head_dim, chunks = D / S::kLanes;
  const int64_t Hkv = s.num_kv_heads, Hq = s.num_q_heads;
  for (int64_t i = 0; i < Hq * D; ++i) w.q[i] = static_cast<float>(query[i]) * s.qk_scale;
  std::fill(w.acc.begin(), w.acc.end(), 0.f);
  std::fill(w.max.begin(), w.max.end(), -std::numeric_limits<float>::infinity());
  std::fill(w.sum.begin(), w.sum.end(), 0.f);
  // a token's KV heads lie head_stride apart: in the pool, or (half precision) in the tile's float32 copy
  const int64_t head_stride = std::is_same_v<scalar_t, float> ? s.pool_head_stride : D;
  int64_t logical = begin / s.block_size, row = begin % s.block_size;  // walk the table: no division per token
  for (int64_t tile = begin; tile < end; tile += kTile) {
    const int64_t n = std::min(kTile, end - tile);
    for (int64_t i = 0; i < n; ++i) {  // where each token's K and V rows are
      const int64_t offset = static_cast<int64_t>(table[logical]) * s.pool_block_stride + row * s.pool_row_stride;
      if constexpr (std::is_same_v<scalar_t, float>) {
        w.k_ptr[i] = k_pool + offset;
        w.v_ptr[i] = v_pool + offset;
      } else {  // half precision: widen the tile's rows once, then the same float32 code
        for (int64_t h = 0; h < Hkv; ++h) {
          widen(k_pool + offset + h * s.pool_head_stride, &w.k_rows[(i * Hkv + h) * D], D);
          widen(v_pool + offset + h * s.pool_head_stride, &w.v_rows[(i * Hkv + h) * D], D);
        }
        w.k_ptr[i] = &w.k_rows[i * Hkv * D];
        w.v_ptr[i] = &w.v_rows[i * Hkv * D];
      }
      if (++row == s.block_size) row = 0, ++logical;
    }
    for (int64_t i = 0; i < n; ++i)  // scores [Hq, n]: each K row read once for its whole query group
      for (int64_t h = 0; h < Hkv; ++h)
        for (int64_t g = 0; g < G; ++g)
          w.scores[(h * G + g) * kTile + i] =
              dot<S, kChunks>(&w.q[(h * G + g) * D], w.k_ptr[i] + h * head_stride, chunks);
    for (int64_t head = 0; head < Hq; ++head) {
      const float alpha = softmax_tile<S>(&w.scores[head * kTile], n, w.max[head], w.sum[head]);
      accumulate<S, kChunks>(&w.acc[head * D], alpha, &w.scores[head * kTile], w.v_ptr.data(), head / G * head_stride,
                             n, chunks);
    }
  }
}

// Splits of each context: enough for kTasksPerThread tasks per thread, none shorter than kMinSplitTiles tiles.
int64_t choose_splits(int64_t batch, int64_t max_context) {
  const int64_t wanted = kTasksPerThread * at::get_num_threads();
  if (batch >= wanted) return 1;
  const int64_t longest = std::max<int64_t>(1, (max_context + kTile - 1) / kTile / kMinSplitTiles);
  return std::min({(wanted + batch - 1) / batch, longest, kMaxSplits});
}

// The checks that need the values: every context ≥ 1 and within the table, every used entry inside the pool.
// Returns the longest context.
template <typename index_t>
int64_t check_tables(const Shape& s, const at::Tensor& block_tables, const at::Tensor& context_lens) {
  const index_t* lens = context_lens.data_ptr<index_t>();
  const index_t* tables = block_tables.data_ptr<index_t>();
  int64_t longest = 0;
  for (int64_t b = 0; b < s.batch; ++b) {
    const int64_t n = lens[b], needed = (n + s.block_size - 1) / s.block_size;
    TORCH_CHECK_VALUE(n >= 1, "context_lens[", b, "] = ", n, " must be at least 1");
    TORCH_CHECK_VALUE(needed <= s.max_blocks, "context_lens[", b, "] = ", n, " needs ", needed, " blocks of ",
                      s.block_size, " tokens but block_tables has only ", s.max_blocks, " columns");
    longest = std::max(longest, n);
  }
  for (int64_t b = 0; b < s.batch; ++b) {
    for (int64_t j = 0; j < (lens[b] + s.block_size - 1) / s.block_size; ++j) {
      const int64_t id = tables[b * s.max_blocks + j];
      TORCH_CHECK_VALUE(0 <= id && id < s.num_blocks, "block_tables[", b, ", ", j, "] = ", id,
                        " is outside the pool of ", s.num_blocks, " blocks");
    }
  }
  return longest;
}

template <typename scalar_t, typename index_t>
void run(const Shape& s, const at::Tensor& query, const at::Tensor& k_pool, const at::Tensor& v_pool,
         const at::Tensor& block_tables, const at::Tensor& context_lens, at::Tensor& out) {
  const int64_t Hq = s.num_q_heads, D = s.head_dim, splits = s.num_splits;
  const scalar_t* q = query.data_ptr<scalar_t>();
  const scalar_t* k = k_pool.data_ptr<scalar_t>();
  const scalar_t* v = v_pool.data_ptr<scalar_t>();
  const index_t* tables = block_tables.data_ptr<index_t>();
  const index_t* lens = context_lens.data_ptr<index_t>();
  scalar_t* o = out.data_ptr<scalar_t>();
  // with splits, each (sequence, split)'s unnormalised output [B, splits, Hq, D] and running max, sum [.., Hq, 2]
  std::vector<float> partial(splits > 1 ? s.batch * splits * Hq * D : 0);
  std::vector<float> stats(splits > 1 ? s.batch * splits * Hq * 2 : 0);
  auto attend = &attend_range<Scalar, 0, scalar_t, index_t>;  // the head dims the lab supports: vectors, unrolled
  if (D == 16) attend = &attend_range<Simd, 16, scalar_t, index_t>;
  if (D == 32) attend = &attend_range<Simd, 32, scalar_t, index_t>;
  if (D == 64) attend = &attend_range<Simd, 64, scalar_t, index_t>;
  if (D == 128) attend = &attend_range<Simd, 128, scalar_t, index_t>;
  if (D == 256) attend = &attend_range<Simd, 256, scalar_t, index_t>;
  at::parallel_for(0, s.batch * splits, 1, [&](int64_t first, int64_t last) {
    Scratch w(s);
    for (int64_t task = first; task < last; ++task) {  // (sequence, split)
      const int64_t seq = task / splits, split = task % splits, context = lens[seq];
      const int64_t per_split = ((context + kTile - 1) / kTile + splits - 1) / splits * kTile;  // whole tiles
      const int64_t begin = std::min(context, split * per_split), end = std::min(context, begin + per_split);
      attend(s, q + seq * Hq * D, k, v, tables + seq * s.max_blocks, begin, end, w);
      if (splits == 1) {
        for (int64_t head = 0; head < Hq; ++head) {
          scalar_t* row = o + (seq * Hq + head) * D;
          const float inverse = 1.f / w.sum[head];
          for (int64_t d = 0; d < D; ++d) row[d] = static_cast<scalar_t>(w.acc[head * D + d] * inverse);
        }
      } else {  // a split past the end of a short context saw nothing: max -inf, sum 0, weight 0 below
        std::copy(w.acc.begin(), w.acc.end(), partial.begin() + task * Hq * D);
        for (int64_t head = 0; head < Hq; ++head)
          stats[(task * Hq + head) * 2] = w.max[head], stats[(task * Hq + head) * 2 + 1] = w.sum[head];
      }
    }
  });
  if (splits == 1) return;
  for (int64_t seq = 0; seq < s.batch; ++seq) {  // out = Σ 2^(max_s − top) · acc_s / Σ 2^(max_s − top) · sum_s
    for (int64_t head = 0; head < Hq; ++head) {
      float top = -std::numeric_limits<float>::infinity();  // finite: split 0 always holds a token
      for (int64_t split = 0; split < splits; ++split)
        top = std::max(top, stats[((seq * splits + split) * Hq + head) * 2]);
      float total = 0.f, row[kMaxHeadDim] = {};
      for (int64_t split = 0; split < splits; ++split) {
        const int64_t at = (seq * splits + split) * Hq + head;
        const float weight = Scalar::exp2_nonpositive(stats[at * 2] - top);
        total += weight * stats[at * 2 + 1];
        for (int64_t d = 0; d < D; ++d) row[d] += weight * partial[at * D + d];
      }
      for (int64_t d = 0; d < D; ++d) o[(seq * Hq + head) * D + d] = static_cast<scalar_t>(row[d] / total);
    }
  }
}

}  // namespace

// The Python wrapper (cpu_paged_attention.py) checks shapes, dtypes and devices and names a bad one; the values
// of context_lens and block_tables are checked here, always (a bad block id would read outside the pool), in
// one pass over the used table entries. num_splits = 0 chooses.
at::Tensor paged_decode(const at::Tensor& query, const at::Tensor& k_pool, const at::Tensor& v_pool,
                           const at::Tensor& block_tables, const at::Tensor& context_lens, double scale,
                           int64_t num_splits) {
  // what the wrapper guarantees, checked again: the C++ must never read outside a tensor
  TORCH_CHECK(query.dim() == 3 && k_pool.dim() == 4 && v_pool.sizes() == k_pool.sizes(), "paged_decode: shapes");
  TORCH_CHECK(query.device().is_cpu() && k_pool.device().is_cpu() && v_pool.device().is_cpu(), "paged_decode: CPU only");
  TORCH_CHECK(query.scalar_type() == k_pool.scalar_type() && v_pool.scalar_type() == k_pool.scalar_type(),
              "paged_decode: one dtype for the query and the pools");
  TORCH_CHECK(query.is_contiguous() && k_pool.strides() == v_pool.strides() && k_pool.stride(3) == 1,
              "paged_decode: a contiguous query; pools sharing strides, contiguous along D");
  TORCH_CHECK(block_tables.dim() == 2 && block_tables.is_contiguous() && context_lens.is_contiguous() &&
              block_tables.scalar_type() == context_lens.scalar_type(), "paged_decode: contiguous tables and lengths");
  TORCH_CHECK(query.size(2) == k_pool.size(3) && query.size(2) <= kMaxHeadDim && query.size(1) % k_pool.size(2) == 0 &&
              block_tables.size(0) == query.size(0) && context_lens.size(0) == query.size(0), "paged_decode: shapes");
  TORCH_CHECK_VALUE(num_splits >= 0, "num_splits = ", num_splits, " must be a positive integer");
  Shape s;
  s.batch = query.size(0), s.num_q_heads = query.size(1), s.head_dim = query.size(2);
  s.num_blocks = k_pool.size(0), s.block_size = k_pool.size(1), s.num_kv_heads = k_pool.size(2);
  s.group = s.num_q_heads / s.num_kv_heads, s.max_blocks = block_tables.size(1);
  s.pool_block_stride = k_pool.stride(0), s.pool_row_stride = k_pool.stride(1), s.pool_head_stride = k_pool.stride(2);
  s.qk_scale = static_cast<float>(scale) * kLog2e;
  const bool wide_index = block_tables.scalar_type() == at::kLong;
  TORCH_CHECK(wide_index || block_tables.scalar_type() == at::kInt, "paged_decode: int32 or int64 tables");
  const int64_t longest = wide_index ? check_tables<int64_t>(s, block_tables, context_lens)
                                     : check_tables<int32_t>(s, block_tables, context_lens);
  s.num_splits = num_splits > 0 ? num_splits : choose_splits(s.batch, longest);
  auto out = at::empty_like(query);
  if (s.batch == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, query.scalar_type(), "paged_decode", [&] {
    if (wide_index)
      run<scalar_t, int64_t>(s, query, k_pool, v_pool, block_tables, context_lens, out);
    else
      run<scalar_t, int32_t>(s, query, k_pool, v_pool, block_tables, context_lens, out);
  });
  return out;
}

int64_t paged_decode_splits(int64_t batch, int64_t max_context) { return choose_splits(batch, max_context); }

std::string attention_simd_path() { return KVLAB_ATTENTION_SIMD; }
