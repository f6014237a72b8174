// kvlab's C++ CPU kernels, one declaration each: every source includes this, so a definition that drifts from its
// declaration fails to compile instead of failing to load. The ops are registered in cpu_gemv.cpp.
#pragma once

#include <ATen/core/Tensor.h>

#include <string>

// cpu_gemv.cpp: y = x @ w.T, x [M, K] and w [N, K] float32.
at::Tensor gemv(const at::Tensor& x, const at::Tensor& w);

// cpu_gemv_ggml.cpp: the same product reading the GGUF file's own Q4_1 / Q8_0 blocks.
at::Tensor gemv_q4_1(const at::Tensor& x, const at::Tensor& blocks);
at::Tensor gemv_q8_0(const at::Tensor& x, const at::Tensor& blocks);
std::string blocks_simd_path();

// cpu_paged_attention.cpp: paged decode attention reading K/V in place through the block table.
at::Tensor paged_decode(const at::Tensor& query, const at::Tensor& k_pool, const at::Tensor& v_pool,
                        const at::Tensor& block_tables, const at::Tensor& context_lens, double scale,
                        int64_t num_splits);
int64_t paged_decode_splits(int64_t batch, int64_t max_context);
std::string attention_simd_path();

// cpu_decode_layer.cpp: one decoder layer of a decode step in one call (the products and the attention above),
// and the RMSNorm both CPU forwards use.
at::Tensor decode_layer(const at::Tensor& x, const at::Tensor& attn_norm, const at::Tensor& wqkv,
                        const std::string& wqkv_format, const at::Tensor& wo, const std::string& wo_format,
                        const at::Tensor& ffn_norm, const at::Tensor& w_gate_up, const std::string& gate_up_format,
                        const at::Tensor& w_down, const std::string& down_format, const at::Tensor& k_pool,
                        const at::Tensor& v_pool, const at::Tensor& block_tables, const at::Tensor& context_lens,
                        const at::Tensor& slots, const at::Tensor& cos, const at::Tensor& sin, int64_t num_heads,
                        int64_t num_kv_heads, double eps, double scale);
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps);
