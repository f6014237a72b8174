// One decoder layer of a decode step — one new token per sequence — in one call, on a CPU.
//
//   h = RMSNorm(x) → qkv = h Wqkvᵀ → RoPE(q, k) → store k, v at their slots → attention over the cache
//   → x += attn Woᵀ → h = RMSNorm(x) → [g | u] = h Wguᵀ → x += (SiLU(g) · u) Wdownᵀ
//
// x [B, hidden] float32 (B ≤ 16: decode's matrix-vector products), every weight as a float32 matrix ("F32") or
// as the GGUF file's blocks ("Q4_1", "Q8_0"); the pools [num_blocks, block_size, Hkv, D] float32, the block
// tables [B, max_blocks] int32, context_lens [B] int32 (tokens each query sees, its own included), slots [B]
// int64 (block id · block_size + offset of each new token); cos, sin [B, D] the RoPE rows of each position.
// Returns the new x [B, hidden].
// Bytes: every weight of the layer once (as stored: blocks or float32) + the attention's K/V
// (2 · Σ context · Hkv · D · 4) + x and the activations (a few KB); the cache write 2 · B · Hkv · D · 4.
//
// Why: the Python forward (kvlab/model/llama.py) runs about twenty torch operations a layer, each a few
// microseconds of Python and dispatch around a few nanoseconds of arithmetic on one token's 576 numbers; at
// batch 1 on a CPU those add up to more than the matrix products themselves. Here they are one call: the
// products are the same kernels (cpu_gemv.cpp, cpu_gemv_ggml.cpp) and the attention the same paged kernel
// (cpu_paged_attention.cpp), called directly; RMSNorm is rms_norm below, which the Python forward calls too on a
// CPU; SiLU is ATen's own operator; RoPE, the residual adds and the cache write are plain loops computing what the
// torch operations compute, in the same order, rounded the same way (no fused multiply-add here: this file is
// compiled with fp-contract off).
// So the result is bit for bit the Python forward's wherever that forward attends with the same paged kernel
// (the paged caches on a CPU); over a contiguous cache the Python forward attends with SDPA instead, and the
// two differ by attention's summation order only.
#pragma GCC optimize("fp-contract=off")

#include <ATen/core/Tensor.h>
#include <ATen/ops/clone.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/Parallel.h>
#include <ATen/ops/silu.h>

#include <cmath>
#include <cstring>
#include <string>

#include "cpu_kernels.h"

namespace {

constexpr int64_t kNormLanes = 16;  // partial sums of squares per row, added in a fixed order

// y = w · (x / sqrt(mean(x²) + eps)) for one row of n values (F.rms_norm's formula, in float32). The sum of squares
// runs in kNormLanes partial sums, so it does not depend on the thread count (ATen's own order is not reproducible).
void rms_norm_row(const float* __restrict x, const float* __restrict w, float* __restrict y, int64_t n, float eps) {
  float partial[kNormLanes] = {};
  int64_t i = 0;
  for (; i + kNormLanes <= n; i += kNormLanes) {
#pragma omp simd
    for (int64_t j = 0; j < kNormLanes; ++j) partial[j] += x[i + j] * x[i + j];
  }
  float sum = 0.f;
  for (; i < n; ++i) sum += x[i] * x[i];
  for (int64_t j = 0; j < kNormLanes; ++j) sum += partial[j];
  const float inverse = 1.f / std::sqrt(sum / static_cast<float>(n) + eps);
  for (int64_t k = 0; k < n; ++k) y[k] = (x[k] * inverse) * w[k];
}

// y [B, out] = x [B, in] · Wᵀ, W stored as `format` says.
at::Tensor project(const at::Tensor& x, const at::Tensor& weight, const std::string& format) {
  if (format == "Q4_1") return gemv_q4_1(x, weight);
  if (format == "Q8_0") return gemv_q8_0(x, weight);
  return gemv(x, weight);  // "F32": decode_layer checked every format first
}

// x [B, hidden] ← x + y, elementwise (what torch's x + y computes).
void add_into(const at::Tensor& x, const at::Tensor& y) {
  float* xp = x.data_ptr<float>();
  const float* yp = y.data_ptr<float>();
  for (int64_t i = 0, n = x.numel(); i < n; ++i) xp[i] += yp[i];
}

// RoPE on `heads` heads of D values starting at row + first_head · D, rotate-half layout (HF's):
//   out[i] = x[i] · cos[i] + r[i] · sin[i],  r = [−x[D/2:], x[:D/2]]   (apply_rope in kvlab/model/llama.py)
void rope(const float* in, float* out, int64_t heads, int64_t D, const float* cos, const float* sin) {
  const int64_t half = D / 2;
  for (int64_t h = 0; h < heads; ++h, in += D, out += D) {
    for (int64_t i = 0; i < D; ++i) {
      const float rotated = i < half ? -in[i + half] : in[i - half];
      const float a = in[i] * cos[i];
      const float b = rotated * sin[i];
      out[i] = a + b;
    }
  }
}

void check_format(const std::string& format) {
  TORCH_CHECK_VALUE(format == "F32" || format == "Q4_1" || format == "Q8_0", "decode_layer: weight format '",
                    format, "' is not F32, Q4_1 or Q8_0");
}

// y [B, columns] came out of a product: its width must be what the layer adds it to (else add_into reads past it)
void check_width(const at::Tensor& y, int64_t columns, const char* what) {
  TORCH_CHECK_VALUE(y.size(1) == columns, "decode_layer: ", what, " gives ", y.size(1), " values a token, not ",
                    columns);
}

void check_inputs(const at::Tensor& x, const at::Tensor& k_pool, const at::Tensor& v_pool,
                  const at::Tensor& block_tables, const at::Tensor& context_lens, const at::Tensor& slots,
                  const at::Tensor& cos, const at::Tensor& sin, int64_t num_heads, int64_t num_kv_heads) {
  for (const at::Tensor* t : {&x, &k_pool, &v_pool, &block_tables, &context_lens, &slots, &cos, &sin})
    TORCH_CHECK(t->device().is_cpu(), "decode_layer: every tensor must be on the CPU, got one on ", t->device());
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous(),
              "decode_layer: x must be a contiguous float32 CPU tensor [B, hidden], got ", x.sizes());
  const int64_t B = x.size(0);
  TORCH_CHECK(k_pool.dim() == 4 && k_pool.sizes() == v_pool.sizes() && k_pool.is_contiguous() &&
                  v_pool.is_contiguous() && k_pool.scalar_type() == at::kFloat && v_pool.scalar_type() == at::kFloat,
              "decode_layer: pools must be contiguous float32 [num_blocks, block_size, Hkv, D], got ",
              k_pool.sizes(), " and ", v_pool.sizes());
  const int64_t D = k_pool.size(3);
  TORCH_CHECK_VALUE(num_kv_heads > 0 && k_pool.size(2) == num_kv_heads && num_heads % num_kv_heads == 0 &&
                        D % 2 == 0 && num_heads * D == x.size(1),
                    "decode_layer: ", num_heads, " query heads and ", num_kv_heads, " KV heads of ", D,
                    " do not fit pools of ", k_pool.size(2), " heads of ", D, " and x of ", x.size(1));
  TORCH_CHECK(slots.dim() == 1 && slots.size(0) == B && slots.scalar_type() == at::kLong && slots.is_contiguous(),
              "decode_layer: slots must be int64 [", B, "], got ", slots.sizes());
  TORCH_CHECK(block_tables.size(0) == B && context_lens.size(0) == B,
              "decode_layer: one block table and one context length per sequence");
  TORCH_CHECK(cos.sizes() == sin.sizes() && cos.dim() == 2 && cos.size(0) == B && cos.size(1) == D &&
                  cos.is_contiguous() && sin.is_contiguous() && cos.scalar_type() == at::kFloat,
              "decode_layer: cos and sin must be contiguous float32 [", B, ", ", D, "], got ", cos.sizes());
  const int64_t pool_slots = k_pool.size(0) * k_pool.size(1);
  const int64_t* sp = slots.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK_VALUE(0 <= sp[b] && sp[b] < pool_slots, "decode_layer: slots[", b, "] = ", sp[b],
                      " is outside the pool's ", pool_slots, " slots");
  }
}

}  // namespace

// RMSNorm over the last dimension: x [..., n] float32 contiguous, weight [n] → [..., n]. Rows in parallel.
// Bytes: reads x and the weight, writes x's size.
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  TORCH_CHECK(x.dim() >= 1 && x.scalar_type() == at::kFloat && x.is_contiguous() && x.device().is_cpu(),
              "rms_norm: x must be a contiguous float32 CPU tensor, got ", x.scalar_type(), " ", x.sizes());
  const int64_t n = x.size(-1);
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == n && weight.scalar_type() == at::kFloat &&
                  weight.is_contiguous() && weight.device().is_cpu(),
              "rms_norm: weight must be float32 [", n, "] on the CPU, got ", weight.sizes());
  at::Tensor y = at::empty_like(x);
  const int64_t rows = n ? x.numel() / n : 0;
  const float *xp = x.data_ptr<float>(), *wp = weight.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, rows, 64, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) rms_norm_row(xp + r * n, wp, yp + r * n, n, static_cast<float>(eps));
  });
  return y;
}

at::Tensor decode_layer(const at::Tensor& x, const at::Tensor& attn_norm, const at::Tensor& wqkv,
                        const std::string& wqkv_format, const at::Tensor& wo, const std::string& wo_format,
                        const at::Tensor& ffn_norm, const at::Tensor& w_gate_up, const std::string& gate_up_format,
                        const at::Tensor& w_down, const std::string& down_format, const at::Tensor& k_pool,
                        const at::Tensor& v_pool, const at::Tensor& block_tables, const at::Tensor& context_lens,
                        const at::Tensor& slots, const at::Tensor& cos, const at::Tensor& sin, int64_t num_heads,
                        int64_t num_kv_heads, double eps, double scale) {
  check_inputs(x, k_pool, v_pool, block_tables, context_lens, slots, cos, sin, num_heads, num_kv_heads);
  for (const std::string* format : {&wqkv_format, &wo_format, &gate_up_format, &down_format}) check_format(*format);
  const int64_t B = x.size(0), D = k_pool.size(3);
  const int64_t q_size = num_heads * D, kv_size = num_kv_heads * D;

  at::Tensor out = x.clone();  // [B, hidden], the residual stream leaving the layer (x itself is left as it is)
  const at::Tensor h = rms_norm(x, attn_norm, eps);  // [B, hidden]
  const at::Tensor qkv = project(h, wqkv, wqkv_format);            // [B, q_size + 2 · kv_size]
  check_width(qkv, q_size + 2 * kv_size, "wqkv");
  at::Tensor q = at::empty({B, num_heads, D}, x.options());  // [B, Hq, D] after RoPE
  float* k_slots = k_pool.data_ptr<float>();  // the pools as [num_blocks · block_size, Hkv, D]
  float* v_slots = v_pool.data_ptr<float>();
  const int64_t* sp = slots.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b) {
    const float* row = qkv.data_ptr<float>() + b * qkv.size(1);  // [q | k | v] of token b
    const float* cos_b = cos.data_ptr<float>() + b * D;
    const float* sin_b = sin.data_ptr<float>() + b * D;
    rope(row, q.data_ptr<float>() + b * q_size, num_heads, D, cos_b, sin_b);
    rope(row + q_size, k_slots + sp[b] * kv_size, num_kv_heads, D, cos_b, sin_b);  // k, stored where it lives
    std::memcpy(v_slots + sp[b] * kv_size, row + q_size + kv_size, kv_size * sizeof(float));
  }
  const at::Tensor attn = paged_decode(q, k_pool, v_pool, block_tables, context_lens, scale, 0);  // [B, Hq, D]
  const at::Tensor attn_out = project(attn.view({B, q_size}), wo, wo_format);  // [B, hidden]
  check_width(attn_out, out.size(1), "wo");
  add_into(out, attn_out);

  const at::Tensor h2 = rms_norm(out, ffn_norm, eps);
  const at::Tensor gate_up = project(h2, w_gate_up, gate_up_format);  // [B, 2 · ffn]
  const int64_t ffn = gate_up.size(1) / 2;
  check_width(gate_up, 2 * ffn, "w_gate_up (an even width: gate, then up)");
  const at::Tensor act = at::silu(gate_up.narrow(1, 0, ffn)).contiguous();  // [B, ffn]
  float* ap = act.data_ptr<float>();
  const float* gp = gate_up.data_ptr<float>();
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t i = 0; i < ffn; ++i) ap[b * ffn + i] *= gp[b * 2 * ffn + ffn + i];  // SiLU(g) · u
  }
  const at::Tensor down = project(act, w_down, down_format);  // [B, hidden]
  check_width(down, out.size(1), "w_down");
  add_into(out, down);
  return out;
}
