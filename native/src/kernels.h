// Tessera native kernels: the interface between the N-API layer (addon.cc), which validates
// arguments and splits work across threads, and the numeric code (kernels_impl.inc), which is
// compiled twice -- once for baseline x86-64 (SSE2) and once for AVX2 -- and selected at load
// time by CPU detection.
//
// Every function in KernelTable is SERIAL: it processes one range of rows/columns/heads on the
// calling thread. Parallelism lives entirely in addon.cc. Each output element is written by
// exactly one task and computed by a fixed sequence of IEEE-754 operations that depends on
// neither the thread count nor the instruction set, which is what makes results bitwise
// reproducible (see the determinism rules in kernels_impl.inc).
#pragma once

#include <cstddef>
#include <cstdint>

namespace tessera {

// C[M,N] (= init | +=) A[M,K] * B[K,N] with arbitrary element strides:
//   A(i,k) = A[i*rsa + k*csa], B(k,j) = B[k*rsb + j*csb], C(i,j) = C[i*ldc + j].
// If accumulate: C += A*B. Else C = bias_row + A*B (bias may be null: C = A*B).
// Each C(i,j) is computed as acc = start; for k in 0..K-1: acc = acc + A(i,k)*B(k,j), with the
// product rounded to float before the add (no FMA), in increasing k order.
struct GemmArgs {
  int64_t M, N, K;
  const float* A; int64_t rsa, csa;
  const float* B; int64_t rsb, csb;
  float* C; int64_t ldc;
  const float* bias;
  bool accumulate;
};

// Scratch owned by one thread of the pool; sized from KernelTable::pack_a_floats/pack_b_floats.
struct Workspace {
  float* pack_a;
  float* pack_b;
};

struct AttnArgs {
  float* out;        // [B,T,C]          (forward)
  float* att;        // [B,NH,T,T]       (forward output, backward input)
  float* datt;       // [B,NH,T,T]       (backward scratch)
  float* dinp;       // [B,T,3C]         (backward, accumulated)
  const float* dout; // [B,T,C]          (backward)
  const float* inp;  // [B,T,3C]
  int64_t B, T, C, NH;
};

// Grouped-query attention (Llama): q, out [B,T,NH,hd]; k, v [B,T,KV,hd]; NH a multiple of KV.
struct GqaArgs {
  float* out;        // [B,T,NH,hd]      (forward)
  float* att;        // [B,NH,T,T]       (forward output, backward input)
  float* datt;       // [B,NH,T,T]       (backward scratch)
  float* dq;         // [B,T,NH,hd]      (backward, accumulated)
  float* dk;         // [B,T,KV,hd]      (backward, accumulated)
  float* dv;         // [B,T,KV,hd]      (backward, accumulated)
  const float* dout; // [B,T,NH,hd]      (backward)
  const float* q;
  const float* k;
  const float* v;
  int64_t B, T, NH, KV, hd;
};

struct KernelTable {
  const char* isa;
  int64_t pack_a_floats;  // per-thread workspace sizes for gemm()
  int64_t pack_b_floats;

  // Serial fixed-order GEMM on the whole (sub)problem described by g.
  void (*gemm)(const GemmArgs& g, const Workspace& ws);

  // Row-range kernels: rows [n0, n1).
  void (*layernorm_fwd)(float* out, float* mean, float* rstd, const float* inp, const float* w,
                        const float* b, int64_t n0, int64_t n1, int64_t C);
  void (*layernorm_bwd_dinp)(float* dinp, const float* dout, const float* inp, const float* w,
                             const float* mean, const float* rstd, int64_t n0, int64_t n1, int64_t C);
  // Column-range kernel: columns [c0, c1), all N rows in increasing order.
  void (*layernorm_bwd_params)(float* dw, float* db, const float* dout, const float* inp,
                               const float* mean, const float* rstd, int64_t N, int64_t C,
                               int64_t c0, int64_t c1);
  // dbias[c0,c1) += sum over rows n (in order) of dout[n, c].
  void (*colsum_acc)(float* dbias, const float* dout, int64_t N, int64_t OC, int64_t c0, int64_t c1);

  // Element-range kernels: [i0, i1).
  void (*gelu_fwd)(float* out, const float* inp, int64_t i0, int64_t i1);
  void (*gelu_bwd)(float* dinp, const float* inp, const float* dout, int64_t i0, int64_t i1);
  void (*add)(float* out, const float* a, const float* b, int64_t i0, int64_t i1);
  // x *= s, the product formed in double and rounded once (exactly the reference's result).
  void (*scale)(float* x, double s, int64_t i0, int64_t i1);
  double (*sum_squares)(const float* x, int64_t i0, int64_t i1);
  void (*adamw)(float* p, const float* g, float* m, float* v, float lr, float beta1, float beta2,
                float eps, float wd, float inv_bc1, float inv_bc2, int64_t i0, int64_t i1);

  // Row-range kernels over [N,V] logits.
  void (*crossentropy)(float* losses, float* dlogits, const float* logits, const int32_t* targets,
                       int64_t n0, int64_t n1, int64_t V, float dloss_scale);
  void (*softmax)(float* probs, const float* logits, int64_t n0, int64_t n1, int64_t V);

  // Embeddings. Forward: rows [n0,n1) of the flattened [B*T] positions.
  void (*embedding_fwd)(float* out, const int32_t* tokens, const float* wte, const float* wpe,
                        int64_t n0, int64_t n1, int64_t T, int64_t C);
  // Backward, split so that tasks never share an output row: dwte rows of tokens in [v0, v1)
  // (positions scanned in order), and dwpe rows [t0, t1) (batch entries summed in order).
  void (*embedding_bwd_wte)(float* dwte, const float* dout, const int32_t* tokens, int64_t BT, int64_t C,
                            int64_t v0, int64_t v1);
  void (*embedding_bwd_wpe)(float* dwpe, const float* dout, int64_t B, int64_t T, int64_t C, int64_t t0,
                            int64_t t1);

  // Attention, one (batch, head) pair per call: bh = b*NH + h.
  void (*attention_fwd)(const AttnArgs& a, int64_t bh, const Workspace& ws);
  void (*attention_bwd)(const AttnArgs& a, int64_t bh, const Workspace& ws);

  // Llama family (llama_impl.inc). RMSNorm: rows [n0,n1) forward and dinp; dweight by columns
  // [c0,c1) over all N rows in increasing order.
  void (*rmsnorm_fwd)(float* out, float* rstd, const float* inp, const float* w, int64_t n0, int64_t n1,
                      int64_t C, double eps);
  void (*rmsnorm_bwd_dinp)(float* dinp, const float* dout, const float* inp, const float* w,
                           const float* rstd, int64_t n0, int64_t n1, int64_t C);
  void (*rmsnorm_bwd_params)(float* dw, const float* dout, const float* inp, const float* rstd, int64_t N,
                             int64_t C, int64_t c0, int64_t c1);
  // RoPE in place on rows [n0,n1) of x [B*T, nh, hd] (row n is position n % T); inverse = backward.
  void (*rope)(float* x, const float* cos, const float* sin, int64_t n0, int64_t n1, int64_t T, int64_t nh,
               int64_t hd, bool inverse);
  // SwiGLU, element range [i0, i1).
  void (*swiglu_fwd)(float* out, const float* gate, const float* up, int64_t i0, int64_t i1);
  void (*swiglu_bwd)(float* dgate, float* dup, const float* dout, const float* gate, const float* up,
                     int64_t i0, int64_t i1);
  // GQA forward for one (batch, query head) bh = b*NH + h; backward for one (batch, kv head)
  // bg = b*KV + g, which owns that kv head's dk, dv and its query heads' dq, datt.
  void (*gqa_fwd)(const GqaArgs& a, int64_t bh, const Workspace& ws);
  void (*gqa_bwd)(const GqaArgs& a, int64_t bg, const Workspace& ws);
};

extern const KernelTable kernels_base;  // kernels_base.cc: baseline x86-64
extern const KernelTable kernels_avx2;  // kernels_avx2.cc: AVX2 (no FMA: see kernels_impl.inc)

// Row-block size used by attention for causal blocking. Fixed (not per-ISA) so that every build
// sums exactly the same terms.
constexpr int64_t kAttnRowBlock = 64;

// Fixed chunk size (elements) for sumSquares partial sums: independent of the thread count.
constexpr int64_t kSumSqChunk = 16384;

}  // namespace tessera
