// y = x @ Wᵀ for a few rows of x: batch-1 (or small-batch) decode's matrix-vector product on a CPU.
//
// x [M, K] float32, W [N, K] float32 row-major, both contiguous → y [M, N] float32.
// Bytes: reads N·K·4 (every weight once, whatever M is) + M·K·4, writes M·N·4. FLOP: 2·M·N·K.
//
// Each thread takes a contiguous range of weight rows and streams them front to back: the one access
// pattern the hardware prefetcher follows at full memory bandwidth. Per row, 16 independent partial sums
// (one AVX-512 register, or two AVX2 ones, when the compiler vectorises the j loop) hide the add latency;
// they are summed in a fixed order, so a result does not depend on the thread count.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "cpu_kernels.h"
#include <ATen/Parallel.h>

#include <algorithm>
#include <string>

namespace {

constexpr int64_t kLanes = 16;
constexpr int64_t kRowsPerTask = 4;  // weight rows a task keeps in L1 while every x row passes over them

// out[m] = w · x[m] for MB rows of x at once: each 16-number piece of the weight row is loaded once and
// multiplied by all MB rows (kept in L1), so a small batch reads W no more often than batch 1 does.
template <int MB>
inline void dot_row(const float* __restrict w, const float* __restrict x, int64_t K, float* out, int64_t out_stride) {
  float partial[MB][kLanes] = {};
  int64_t k = 0;
  for (; k + kLanes <= K; k += kLanes) {
    for (int m = 0; m < MB; ++m) {
#pragma omp simd
      for (int64_t j = 0; j < kLanes; ++j) partial[m][j] += w[k + j] * x[m * K + k + j];
    }
  }
  for (int m = 0; m < MB; ++m) {
    float tail = 0.f;
    for (int64_t t = k; t < K; ++t) tail += w[t] * x[m * K + t];
    float sum = 0.f;
    for (int64_t j = 0; j < kLanes; ++j) sum += partial[m][j];
    out[m * out_stride] = sum + tail;
  }
}

}  // namespace

at::Tensor gemv(const at::Tensor& x, const at::Tensor& w) {
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2, "gemv: x must be [M, K] and w [N, K], got ", x.sizes(), " and ", w.sizes());
  TORCH_CHECK(x.size(1) == w.size(1), "gemv: x has K=", x.size(1), " but w has K=", w.size(1));
  TORCH_CHECK(x.scalar_type() == at::kFloat && w.scalar_type() == at::kFloat, "gemv: float32 only");
  TORCH_CHECK(x.device().is_cpu() && w.device().is_cpu(), "gemv: CPU tensors only");
  TORCH_CHECK(x.is_contiguous() && w.is_contiguous(), "gemv: x and w must be contiguous");
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  auto y = at::empty({M, N}, x.options());
  const float* xp = x.data_ptr<float>();
  const float* wp = w.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  const int64_t tasks = (N + kRowsPerTask - 1) / kRowsPerTask;
  at::parallel_for(0, tasks, 16, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n0 = task * kRowsPerTask, n1 = std::min(N, n0 + kRowsPerTask);
      for (int64_t n = n0; n < n1; ++n) {
        int64_t m = 0;
        for (; m + 4 <= M; m += 4) dot_row<4>(wp + n * K, xp + m * K, K, yp + m * N + n, N);
        for (; m + 2 <= M; m += 2) dot_row<2>(wp + n * K, xp + m * K, K, yp + m * N + n, N);
        for (; m < M; ++m) dot_row<1>(wp + n * K, xp + m * K, K, yp + m * N + n, N);
      }
    }
  });
  return y;
}

// Registered as torch operators, torch.ops.<build name>.<op> (kernels/cpu_gemv.py loads them): torch/library.h
// compiles in ~8 s where pybind's torch/extension.h takes ~48 s on 2 cores, in every build of every variant.
TORCH_LIBRARY(TORCH_EXTENSION_NAME, m) {
  m.def("gemv", &gemv);                    // y = x @ w.T: x [M, K], w [N, K], float32 on the CPU
  m.def("gemv_q4_1", &gemv_q4_1);          // y = x @ W.T, W as GGML Q4_1 blocks [N, K/32*20] uint8; x [M, K] float32
  m.def("gemv_q8_0", &gemv_q8_0);          // y = x @ W.T, W as GGML Q8_0 blocks [N, K/32*34] uint8; x [M, K] float32
  m.def("blocks_simd_path", &blocks_simd_path);  // the vector code this build's block kernels use: avx512, avx2, plain
  // paged decode attention: query [B, Hq, D], pools [blocks, block_size, Hkv, D], block_tables [B, max_blocks],
  // context_lens [B], scale, num_splits (0: chosen) -> [B, Hq, D]
  m.def("paged_decode", &paged_decode);
  m.def("paged_decode_splits", &paged_decode_splits);  // the splits paged_decode chooses for (batch, longest context)
  m.def("attention_simd_path", &attention_simd_path);  // the vector code this build's attention uses
  // a decode step's decoder layer: x [B, hidden], the layer's weights with their formats, the pools, tables, context
  // lengths and slots of the new tokens, the RoPE rows -> the new x [B, hidden] (cpu_decode_layer.py)
  // The schema says the op writes the pools (a!, b!): the new token's K and V land in them.
  m.def("decode_layer(Tensor x, Tensor attn_norm, Tensor wqkv, str wqkv_format, Tensor wo, str wo_format, "
        "Tensor ffn_norm, Tensor w_gate_up, str gate_up_format, Tensor w_down, str down_format, Tensor(a!) k_pool, "
        "Tensor(b!) v_pool, Tensor block_tables, Tensor context_lens, Tensor slots, Tensor cos, Tensor sin, "
        "int num_heads, int num_kv_heads, float eps, float scale) -> Tensor", &decode_layer);
  m.def("rms_norm", &rms_norm);  // x [..., n] float32, weight [n], eps -> [..., n]: the CPU forward's RMSNorm
}
