// Tessera native kernels: the N-API layer.
//
// WHY HAND-WRITTEN: Tessera trains GPT-2 and Llama-family models in Node. No library offers the kernels it needs
// in usable form: fused (softmax + cross-entropy, causal attention storing its probabilities,
// layernorm backward), operating on caller-owned Float32Array views with accumulate-into-gradient
// semantics, multithreaded without fighting BLAS for the cores, and with a deterministic mode
// that is bitwise reproducible across runs, thread counts and x86-64 CPUs.
//
// This file: argument validation (every length is checked before any pointer is touched: a short
// buffer throws RangeError, a wrong type TypeError), the thread split of each kernel, and fast-
// mode matmul through OpenBLAS. The numeric code is in kernels_impl.inc.
//
// DETERMINISM RULES for this file (see kernels_impl.inc for the numeric ones):
//  - Each task writes a disjoint set of outputs; how many tasks there are and which thread runs
//    them never changes any output's value. Cross-row reductions are split by output column
//    (layernorm dweight/dbias, matmul dbias, embedding backward) or by a fixed-size chunk
//    (sumSquares: kSumSqChunk elements, partials combined in chunk order).
//  - Deterministic mode never calls BLAS. Fast mode calls single-threaded OpenBLAS on a fixed
//    static split of the output, so it is reproducible run to run for a fixed thread count
//    (not across thread counts or CPUs: OpenBLAS picks its kernel per CPU).
//
// State: none global and mutable. Each Node environment (main thread, worker_threads) gets its
// own Instance (thread pool + per-thread GEMM scratch), created at module load. The thread count
// and mode travel with every call (the `cfg` argument) from the JS Kernels object that owns them.
//
// Threading (measured on the 2-core reference machine, see bench/kernels.ts): one pool drives
// everything, and fast-mode matmuls call OpenBLAS single-threaded on each task's slice. A
// training-step-like sequence ran 1.98x faster than 1 thread this way, vs ~1.0-1.1x with OpenMP
// plus OpenBLAS's own threads (the two runtimes' idle spinning fight for the 2 cores) and
// 1.7-1.9x with this pool plus OpenBLAS's own threads. TESSERA_BLAS_THREADING=openblas (read
// once at load) selects that last variant, for re-measuring on other machines.
//
// Without OpenBLAS (TESSERA_NO_BLAS, set by binding.gyp when cblas.h or libopenblas is missing, or
// forced with TESSERA_NO_BLAS=1 at build time): fast mode runs Tessera's own blocked GEMM (the
// deterministic one: AVX2 where the CPU has it, see kernels_avx2.cc) on the same task split, so a
// no-BLAS build computes fast mode and deterministic mode bit for bit alike. info().blas says
// which build this is ('openblas' | 'none') and the JS side reports it once.
#define NAPI_VERSION 8
#include <node_api.h>

#ifndef TESSERA_NO_BLAS
#include <cblas.h>
#endif

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>
#include <vector>

#include "kernels.h"
#include "pool.h"

namespace tessera {
namespace {

// ---------------------------------------------------------------------------------------------
// Errors

struct JsError {
  enum Kind { kType, kRange, kPlain } kind;
  std::string msg;
};

[[noreturn]] void range_error(const std::string& m) { throw JsError{JsError::kRange, m}; }
[[noreturn]] void type_error(const std::string& m) { throw JsError{JsError::kType, m}; }

void check(napi_env env, napi_status st, const char* what) {
  if (st != napi_ok) {
    const napi_extended_error_info* info = nullptr;
    napi_get_last_error_info(env, &info);
    throw JsError{JsError::kPlain, std::string("tessera native: ") + what + " failed" +
                                       (info && info->error_message ? std::string(": ") + info->error_message : "")};
  }
}

// ---------------------------------------------------------------------------------------------
// Per-environment instance

constexpr int kMaxThreads = 256;

struct Instance {
  Pool pool;
  const KernelTable* auto_kt = nullptr;  // best table for this CPU
  bool blas_internal = false;            // TESSERA_BLAS_THREADING=openblas (benchmarks only)
  int64_t ws_floats_a = 0, ws_floats_b = 0;
  std::vector<float*> ws_mem;            // per tid: one allocation holding pack_a then pack_b
  std::vector<Workspace> ws;

  ~Instance() {
    for (float* p : ws_mem) std::free(p);
  }

  // Makes sure workspaces exist for tids [0, n).
  void ensure_workspaces(int n) {
    while ((int)ws.size() < n) {
      const size_t bytes = (size_t)(ws_floats_a + ws_floats_b) * sizeof(float);
      float* p = static_cast<float*>(std::aligned_alloc(64, (bytes + 63) / 64 * 64));
      if (!p) throw std::bad_alloc();
      ws_mem.push_back(p);
      ws.push_back(Workspace{p, p + ws_floats_a});
    }
  }
};

struct Cfg {
  int threads;
  bool det;
  const KernelTable* kt;
};

// ---------------------------------------------------------------------------------------------
// Argument parsing

struct F32 {
  float* p = nullptr;
  int64_t n = 0;
  const char* name = "";
  bool is_null = false;
};

struct I32 {
  int32_t* p = nullptr;
  int64_t n = 0;
  const char* name = "";
};

class Args {
 public:
  Args(napi_env env, napi_callback_info info, const char* fn) : env_(env), fn_(fn) {
    argc_ = kMax;
    check(env, napi_get_cb_info(env, info, &argc_, argv_, nullptr, nullptr), "napi_get_cb_info");
    check(env, napi_get_instance_data(env, reinterpret_cast<void**>(&inst_)), "napi_get_instance_data");
  }

  Instance& inst() { return *inst_; }
  const char* fn() const { return fn_; }

  napi_value at(size_t i) {
    if (i >= argc_) type_error(std::string(fn_) + ": missing argument " + std::to_string(i));
    return argv_[i];
  }

  Cfg cfg(size_t i) {
    const double d = number(i, "cfg");
    const int64_t v = (int64_t)d;
    Cfg c;
    c.threads = (int)(v & 0xffff);
    c.det = ((v >> 16) & 1) != 0;
    const int isa = (int)((v >> 17) & 3);
    if ((double)v != d || c.threads < 1 || c.threads > kMaxThreads || isa > 1)
      range_error(std::string(fn_) + ": bad config word");
    c.kt = isa == 1 ? &kernels_base : inst_->auto_kt;
    return c;
  }

  double number(size_t i, const char* name) {
    napi_value v = at(i);
    napi_valuetype t;
    check(env_, napi_typeof(env_, v, &t), "napi_typeof");
    if (t != napi_number) type_error(std::string(fn_) + ": " + name + " must be a number");
    double d;
    check(env_, napi_get_value_double(env_, v, &d), "napi_get_value_double");
    return d;
  }

  // A size argument: an integer in [0, 2^31).
  int64_t dim(size_t i, const char* name) {
    const double d = number(i, name);
    if (!(d >= 0 && d < 2147483648.0) || std::floor(d) != d)
      range_error(std::string(fn_) + ": " + name + " must be an integer in [0, 2^31), got " + fmt(d));
    return (int64_t)d;
  }

  F32 f32(size_t i, const char* name, bool nullable = false) {
    napi_value v = at(i);
    F32 r;
    r.name = name;
    napi_valuetype t;
    check(env_, napi_typeof(env_, v, &t), "napi_typeof");
    if (nullable && (t == napi_null || t == napi_undefined)) {
      r.is_null = true;
      return r;
    }
    bool is_ta = false;
    check(env_, napi_is_typedarray(env_, v, &is_ta), "napi_is_typedarray");
    napi_typedarray_type tt = napi_int8_array;
    size_t len = 0;
    void* data = nullptr;
    if (is_ta) check(env_, napi_get_typedarray_info(env_, v, &tt, &len, &data, nullptr, nullptr), "napi_get_typedarray_info");
    if (!is_ta || tt != napi_float32_array)
      type_error(std::string(fn_) + ": " + name + " must be a Float32Array" + (nullable ? " or null" : ""));
    r.p = static_cast<float*>(data);
    r.n = (int64_t)len;
    return r;
  }

  I32 i32(size_t i, const char* name) {
    napi_value v = at(i);
    bool is_ta = false;
    check(env_, napi_is_typedarray(env_, v, &is_ta), "napi_is_typedarray");
    napi_typedarray_type tt = napi_int8_array;
    size_t len = 0;
    void* data = nullptr;
    if (is_ta) check(env_, napi_get_typedarray_info(env_, v, &tt, &len, &data, nullptr, nullptr), "napi_get_typedarray_info");
    if (!is_ta || tt != napi_int32_array) type_error(std::string(fn_) + ": " + name + " must be an Int32Array");
    I32 r;
    r.p = static_cast<int32_t*>(data);
    r.n = (int64_t)len;
    r.name = name;
    return r;
  }

  // Throws RangeError unless a has at least `need` elements.
  template <class A>
  void need(const A& a, int64_t need, const char* expr) {
    if (a.n < need)
      range_error(std::string(fn_) + ": " + a.name + " has " + std::to_string(a.n) + " elements but needs " +
                  expr + " = " + std::to_string(need));
  }

  // Outputs must not overlap other arrays (results would silently depend on evaluation order).
  // `same_ok`: an exactly identical view (same start) is allowed, for in-place kernels.
  template <class A, class B>
  void disjoint(const A& out, const B& other, bool same_ok = false) {
    if (!out.p || !other.p || out.n == 0 || other.n == 0) return;
    const char* a0 = reinterpret_cast<const char*>(out.p);
    const char* a1 = a0 + out.n * 4;
    const char* b0 = reinterpret_cast<const char*>(other.p);
    const char* b1 = b0 + other.n * 4;
    if (a0 >= b1 || b0 >= a1) return;
    if (same_ok && a0 == b0) return;
    range_error(std::string(fn_) + ": " + out.name + " overlaps " + other.name +
                (same_ok ? " (only an identical view is allowed)" : " (they must not share memory)"));
  }

  static std::string fmt(double d) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.17g", d);
    return buf;
  }

 private:
  static constexpr size_t kMax = 20;
  napi_env env_;
  const char* fn_;
  size_t argc_;
  napi_value argv_[kMax];
  Instance* inst_ = nullptr;
};

// Checked product of sizes (each < 2^31); throws RangeError past 2^53.
int64_t mul(Args& a, std::initializer_list<int64_t> xs) {
  int64_t r = 1;
  for (int64_t x : xs) {
    if (__builtin_mul_overflow(r, x, &r) || r > (int64_t(1) << 53))
      range_error(std::string(a.fn()) + ": sizes overflow");
  }
  return r;
}

napi_value undefined(napi_env env) {
  napi_value u;
  napi_get_undefined(env, &u);
  return u;
}

// ---------------------------------------------------------------------------------------------
// Work splitting helpers

constexpr int64_t kGrain = 16384;  // elements of work per task, roughly

inline int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Runs fn(i0, i1, tid) over [0, n) in chunks of at least `grain` items.
template <class F>
void parallel_range(Instance& inst, int threads, int64_t n, int64_t grain, F&& fn) {
  if (n <= 0) return;
  if (grain < 1) grain = 1;
  int64_t ntasks = cdiv(n, grain);
  const int64_t maxtasks = (int64_t)threads * 4;
  if (ntasks > maxtasks) ntasks = maxtasks;
  const int64_t chunk = cdiv(n, ntasks);
  ntasks = cdiv(n, chunk);
  inst.pool.run(threads, ntasks, [&](int64_t t, int tid) {
    const int64_t i0 = t * chunk;
    const int64_t i1 = i0 + chunk < n ? i0 + chunk : n;
    fn(i0, i1, tid);
  });
}

// A task list of heterogeneous work items run as one pool job.
struct TaskList {
  struct Item {
    int kind;
    int64_t a0, a1;
  };
  std::vector<Item> items;
  void add(int kind, int64_t a0, int64_t a1) { items.push_back(Item{kind, a0, a1}); }
  // Splits [0, n) into `parts` pieces whose boundaries are multiples of `align`.
  void split(int kind, int64_t n, int64_t parts, int64_t align) {
    if (n <= 0) return;
    if (parts < 1) parts = 1;
    int64_t chunk = cdiv(cdiv(n, parts), align) * align;
    for (int64_t i = 0; i < n; i += chunk) add(kind, i, i + chunk < n ? i + chunk : n);
  }
};

// ---------------------------------------------------------------------------------------------
// GEMM: a sub-block [i0,i1) x [j0,j1) of C, with the deterministic kernel or OpenBLAS.

GemmArgs sub(const GemmArgs& g, int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
  GemmArgs s = g;
  s.M = i1 - i0;
  s.N = j1 - j0;
  s.A = g.A + i0 * g.rsa;
  s.B = g.B + j0 * g.csb;
  s.C = g.C + i0 * g.ldc + j0;
  if (g.bias) s.bias = g.bias + j0;
  return s;
}

#ifndef TESSERA_NO_BLAS
// CBLAS layout of a rows x cols matrix X(i,j) = X[i*rs + j*cs]: row-major (trans = false) or
// its transpose, with a leading dimension CBLAS accepts (>= the row length, even when a dimension
// is 1 and the stride says nothing). Every GEMM this file builds has one unit stride.
void blas_layout(int64_t rs, int64_t cs, int64_t rows, int64_t cols, bool* trans, int64_t* ld) {
  if (cs == 1 && (rows <= 1 || rs >= cols)) {
    *trans = false;
    *ld = rows <= 1 ? (cols > 1 ? cols : 1) : rs;
  } else {
    *trans = true;  // rs == 1 by construction
    *ld = cols <= 1 ? (rows > 1 ? rows : 1) : cs;
  }
}

// C (=|+=) A B through cblas_sgemm (row-major), on the calling thread. A bias is written into C
// first and accumulated onto (beta = 1); without one, beta = 0 (C is not read).
void blas_gemm(const GemmArgs& g) {
  if (g.M <= 0 || g.N <= 0) return;
  float beta = 1.0f;
  if (!g.accumulate) {
    if (g.bias || g.K <= 0) {
      for (int64_t i = 0; i < g.M; i++) {
        float* c = g.C + i * g.ldc;
        if (g.bias) std::memcpy(c, g.bias, (size_t)g.N * 4);
        else std::memset(c, 0, (size_t)g.N * 4);
      }
    } else {
      beta = 0.0f;
    }
  }
  if (g.K <= 0) return;
  bool ta, tb;
  int64_t lda, ldb;
  blas_layout(g.rsa, g.csa, g.M, g.K, &ta, &lda);
  blas_layout(g.rsb, g.csb, g.K, g.N, &tb, &ldb);
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, (int)g.M, (int)g.N,
              (int)g.K, 1.0f, g.A, (int)lda, g.B, (int)ldb, beta, g.C, (int)g.ldc);
}
#endif

// Adds the tasks for one GEMM to a task list: split the larger output dimension so that each
// thread gets about one block (few blocks amortize packing); kind is used to route them.
void split_gemm(TaskList& tl, int kind_rows, int kind_cols, const GemmArgs& g, int threads) {
  if (g.M <= 0 || g.N <= 0) return;
  if (g.M >= g.N || g.M >= 96 * threads) tl.split(kind_rows, g.M, threads, 48);
  else tl.split(kind_cols, g.N, threads, 64);
}

void run_gemm_task(const Cfg& cfg, Instance& inst, const GemmArgs& g, bool rows, int64_t a0, int64_t a1, int tid) {
  const GemmArgs s = rows ? sub(g, a0, a1, 0, g.N) : sub(g, 0, g.M, a0, a1);
#ifdef TESSERA_NO_BLAS
  (void)cfg.det;  // no BLAS: both modes run the fixed-order GEMM
  cfg.kt->gemm(s, inst.ws[tid]);
#else
  if (cfg.det) cfg.kt->gemm(s, inst.ws[tid]);
  else blas_gemm(s);
#endif
}

#ifndef TESSERA_NO_BLAS
void set_blas_threads(int n) {
  if (openblas_get_num_threads() != n) openblas_set_num_threads(n);
}
#endif

// True when this build uses a fixed-order GEMM for every matmul (always, without BLAS).
inline bool own_gemm(const Cfg& cfg) {
#ifdef TESSERA_NO_BLAS
  return true;
#else
  return cfg.det;
#endif
}

// Runs a set of GEMMs (plus extra column-sum tasks for dbias) as one pool job.
void run_gemms(const Cfg& cfg, Instance& inst, const std::vector<GemmArgs>& gs, float* dbias,
               const float* dout, int64_t N, int64_t OC) {
#ifndef TESSERA_NO_BLAS
  if (!cfg.det && inst.blas_internal) {
    // Benchmark-only alternative: one cblas call per GEMM, threaded by OpenBLAS itself.
    set_blas_threads(cfg.threads);
    for (const GemmArgs& g : gs) blas_gemm(g);
    set_blas_threads(1);
    if (dbias)
      parallel_range(inst, cfg.threads, OC, 64, [&](int64_t c0, int64_t c1, int) {
        cfg.kt->colsum_acc(dbias, dout, N, OC, c0, c1);
      });
    return;
  }
#endif
  TaskList tl;
  for (size_t i = 0; i < gs.size(); i++) split_gemm(tl, (int)(2 * i), (int)(2 * i + 1), gs[i], cfg.threads);
  const int kColsum = 1000;
  if (dbias) tl.split(kColsum, OC, cdiv(OC, 256) < cfg.threads ? cfg.threads : cdiv(OC, 256), 32);
  if (own_gemm(cfg)) inst.ensure_workspaces(cfg.threads);
  inst.pool.run(cfg.threads, (int64_t)tl.items.size(), [&](int64_t t, int tid) {
    const TaskList::Item& it = tl.items[t];
    if (it.kind == kColsum) {
      cfg.kt->colsum_acc(dbias, dout, N, OC, it.a0, it.a1);
      return;
    }
    run_gemm_task(cfg, inst, gs[it.kind / 2], it.kind % 2 == 0, it.a0, it.a1, tid);
  });
}

GemmArgs make_gemm(int64_t M, int64_t N, int64_t K, const float* A, int64_t rsa, int64_t csa, const float* B,
                   int64_t rsb, int64_t csb, float* C, int64_t ldc, const float* bias, bool acc) {
  GemmArgs g;
  g.M = M; g.N = N; g.K = K;
  g.A = A; g.rsa = rsa; g.csa = csa;
  g.B = B; g.rsb = rsb; g.csb = csb;
  g.C = C; g.ldc = ldc;
  g.bias = bias;
  g.accumulate = acc;
  return g;
}

// ---------------------------------------------------------------------------------------------
// Kernels

napi_value MatmulForward(napi_env env, Args& a) {
  const Cfg cfg = a.cfg(0);
  F32 out = a.f32(1, "out"), inp = a.f32(2, "inp"), w = a.f32(3, "weight"), bias = a.f32(4, "bias", true);
  const int64_t N = a.dim(5, "N"), C = a.dim(6, "C"), OC = a.dim(7, "OC");
  a.need(out, mul(a, {N, OC}), "N*OC");
  a.need(inp, mul(a, {N, C}), "N*C");
  a.need(w, mul(a, {OC, C}), "OC*C");
  if (!bias.is_null) a.need(bias, OC, "OC");
  a.disjoint(out, inp); a.disjoint(out, w); a.disjoint(out, bias);
  const GemmArgs g = make_gemm(N, OC, C, inp.p, C, 1, w.p, 1, C, out.p, OC, bias.is_null ? nullptr : bias.p, false);
  run_gemms(cfg, a.inst(), {g}, nullptr, nullptr, 0, 0);
  return undefined(env);
}

napi_value MatmulBackward(napi_env env, Args& a) {
  const Cfg cfg = a.cfg(0);
  F32 dinp = a.f32(1, "dinp"), dw = a.f32(2, "dweight", true), db = a.f32(3, "dbias", true), dout = a.f32(4, "dout"),
      inp = a.f32(5, "inp"), w = a.f32(6, "weight");
  const int64_t N = a.dim(7, "N"), C = a.dim(8, "C"), OC = a.dim(9, "OC");
  a.need(dinp, mul(a, {N, C}), "N*C");
  if (!dw.is_null) a.need(dw, mul(a, {OC, C}), "OC*C");
  if (!db.is_null) a.need(db, OC, "OC");
  a.need(dout, mul(a, {N, OC}), "N*OC");
  a.need(inp, mul(a, {N, C}), "N*C");
  a.need(w, mul(a, {OC, C}), "OC*C");
  for (const F32* o : {&dinp, &dw, &db}) {
    a.disjoint(*o, dout); a.disjoint(*o, inp); a.disjoint(*o, w);
  }
  a.disjoint(dinp, dw); a.disjoint(dinp, db); a.disjoint(dw, db);
  std::vector<GemmArgs> gs;
  // dinp[N,C] += dout[N,OC] @ weight[OC,C]
  gs.push_back(make_gemm(N, C, OC, dout.p, OC, 1, w.p, C, 1, dinp.p, C, nullptr, true));
  // dweight[OC,C] += dout^T @ inp (skipped for a frozen weight: null dweight, only dinp flows)
  if (!dw.is_null) gs.push_back(make_gemm(OC, C, N, dout.p, 1, OC, inp.p, C, 1, dw.p, C, nullptr, true));
  run_gemms(cfg, a.inst(), gs, db.is_null ? nullptr : db.p, dout.p, N, OC);
  return undefined(env);
}

napi_value LayernormForward(napi_env env, Args& a) {
  const Cfg cfg = a.cfg(0);
  F32 out = a.f32(1, "out"), mean = a.f32(2, "mean"), rstd = a.f32(3, "rstd"), inp = a.f32(4, "inp"),
      w = a.f32(5, "weight"), b = a.f32(6, "bias");
  const int64_t N = a.dim(7, "N"), C = a.dim(8, "C");
  a.need(out, mul(a, {N, C}), "N*C");
  a.need(mean, N, "N");
  a.need(rstd, N, "N");
  a.need(inp, mul(a, {N, C}), "N*C");
  a.need(w, C, "C");
  a.need(b, C, "C");
  if (C == 0) range_error("layernormForward: C must be positive");
  a.disjoint(out, inp, true); a.disjoint(out, w); a.disjoint(out, b); a.disjoint(out, mean); a.disjoint(out, rstd);
  for (const F32* o : {&mean, &rstd}) { a.disjoint(*o, inp); a.disjoint(*o, w); a.disjoint(*o, b); }
  a.disjoint(mean, rstd);
  parallel_range(a.inst(), cfg.threads, N, cdiv(kGrain, C), [&](int64_t n0, int64_t n1, int) {
    cfg.kt->layernorm_fwd(out.p, mean.p, rstd.p, inp.p, w.p, b.p, n0, n1, C);
  });
  return undefined(env);
}

napi_value LayernormBackward(napi_env env, Args& a) {
  const Cfg cfg = a.cfg(0);
  F32 dinp = a.f32(1, "dinp"), dw = a.f32(2, "dweight"), db = a.f32(3, "dbias"), dout = a.f32(4, "dout"),
      inp = a.f32(5, "inp"), w = a.f32(6, "weight"), mean = a.f32(7, "mean"), rstd = a.f32(8, "rstd");
  const int64_t N = a.dim(9, "N"), C = a.dim(10, "C");
  a.need(dinp, mul(a, {N, C}), "N*C");
  a.need(dw, C, "C");
  a.need(db, C, "C");
  a.need(dout, mul(a, {N, C}), "N*C");
  a.need(inp, mul(a, {N, C}), "N*C");
  a.need(w, C, "C");
  a.need(mean, N, "N");
  a.need(rstd, N, "N");
  for (const F32* o : {&dinp, &dw, &db})
    for (const F32* i : {&dout, &inp, &w, &mean, &rstd}) a.disjoint(*o, *i);
  a.disjoint(dinp, dw); a.disjoint(dinp, db); a.disjoint(dw, db);
  if (N == 0 || C == 0) return undefined(env);
  // Rows for dinp, columns for dweight/dbias (each column summed over rows in order).
  TaskList tl;
  const int64_t row_tasks = cdiv(mul(a, {N, C}), 4 * kGrain);
  tl.split(0, N, row_tasks, 1);
  tl.split(1, C, cdiv(C, 64), 32);
  Instance& inst = a.inst();
  inst.pool.run(cfg.threads, (int64_t)tl.items.size(), [&](int64_t t, int) {
    const TaskList::Item& it = tl.items[t];
    if (it.kind == 0) cfg.kt->layernorm_bwd_dinp(dinp.p, dout.p, inp.p, w.p, mean.p, rstd.p, it.a0, it.a1, C);
    else cfg.kt->layernorm_bwd_params(dw.p, db.p, dout.p, inp.p, mean.p, rstd.p, N, C, it.a0, it.a1);
  });
  return undefined(env);
}

napi_value GeluForward(napi_env env, Args& a) {
  const Cfg cfg = a.cfg(0);
  F32 out = a.f32(1, "out"), inp = a.f32(2, "inp");
  const int64_t n = a.dim(3, "n");
  a.need(out, n, "n");
  a.need(inp, n, "n");
  a.disjoint(out, inp, true);
  parallel_range(a.inst(), cfg.threads, n, kGrain, [&](int64_t i0, int64_t i1, int) {
    cfg.kt->gelu_fwd(out.p, inp.p, i0, i1);
  });
  return undefined(env);
}

napi_value GeluBackward(napi_env env, Args& a) {
  const Cfg cfg = a.cfg(0);
  F32 dinp = a.f32(1, "dinp"), inp = a.f32(2, "inp"), dout = a.f32(3, "dout");
  const int64_t n = a.dim(4, "n");
  a.need(dinp, n, "n");
  a.need(inp, n, "n");
  a.need(dout, n, "n");
  a.disjoint(dinp, inp);
  a.disjoint(dinp, dout, true);
  parallel_range(a.inst(), cfg.threads, n, kGrain, [&](int64_t i0, int64_t i1, int) {
    cfg.kt->gelu_bwd(dinp.p, inp.p, dout.p, i0, i1);
  });
  return undefined(env);
}

struct AttnDims { int64_t B, T, C, NH; };

AttnDims attn_dims(Args& a, size_t i) {
  AttnDims d{a.dim(i, "B"), a.dim(i + 1, "T"), a.dim(i + 2, "C"), a.dim(i + 3, "NH")};
  if (d.NH < 1) range_error(std::string(a.fn()) + ": NH must be >= 1");
  if (d.C % d.NH != 0) range_error(std::string(a.fn()) + ": C must be divisible by NH");
  return d;
}

napi_value AttentionForward(napi_env env, Args& a) {
  const Cfg cfg = a.cfg(0);
  F32 out = a.f32(1, "out"), att = a.f32(2, "att"), inp = a.f32(3, "inp");
  const AttnDims d = attn_dims(a, 4);
  a.need(out, mul(a, {d.B, d.T, d.C}), "B*T*C");
  a.need(att, mul(a, {d.B, d.NH, d.T, d.T}), "B*NH*T*T");
  a.need(inp, mul(a, {d.B, d.T, 3, d.C}), "B*T*3C");
  a.disjoint(out, att); a.disjoint(out, inp); a.disjoint(att, inp);
  if (d.C == 0) return undefined(env);
  AttnArgs aa{out.p, att.p, nullptr, nullptr, nullptr, inp.p, d.B, d.T, d.C, d.NH};
  Instance& inst = a.inst();
  inst.ensure_workspaces(cfg.threads);
  inst.pool.run(cfg.threads, d.B * d.NH, [&](int64_t bh, int tid) { cfg.kt->attention_fwd(aa, bh, inst.ws[tid]); });
  return undefined(env);
}

napi_value AttentionBackward(napi_env env, Args& a) {
  const Cfg cfg = a.cfg(0);
  F32 dinp = a.f32(1, "dinp"), datt = a.f32(2, "datt"), dout = a.f32(3, "dout"), inp = a.f32(4, "inp"),
      att = a.f32(5, "att");
  const AttnDims d = attn_dims(a, 6);
  a.need(dinp, mul(a, {d.B, d.T, 3, d.C}), "B*T*3C");
  a.need(datt, mul(a, {d.B, d.NH, d.T, d.T}), "B*NH*T*T");
  a.need(dout, mul(a, {d.B, d.T, d.C}), "B*T*C");
  a.need(inp, mul(a, {d.B, d.T, 3, d.C}), "B*T*3C");
  a.need(att, mul(a, {d.B, d.NH, d.T, d.T}), "B*NH*T*T");
  for (const F32* o : {&dinp, &datt})
    for (const F32* i : {&dout, &inp, &att}) a.disjoint(*o, *i);
  a.disjoint(dinp, datt);
  if (d.C == 0) return undefined(env);
  AttnArgs aa{nullptr, att.p, datt.p, dinp.p, dout.p, inp.p, d.B, d.T, d.C, d.NH};
  Instance& inst = a.inst();
  inst.ensure_workspaces(cfg.threads);
  inst.pool.run(cfg.threads, d.B * d.NH, [&](int64_t bh, int tid) { cfg.kt->attention_bwd(aa, bh, inst.ws[tid]); });
  return undefined(env);
}

napi_value CrossEntropy(napi_env env, Args& a) {
  const Cfg cfg = a.cfg(0);
  F32 losses = a.f32(1, "losses"), dlogits = a.f32(2, "dlogits", true), logits = a.f32(3, "logits");
  I32 targets = a.i32(4, "targets");
  const int64_t N = a.dim(5, "N"), V = a.dim(6, "V");
  const float scale = (float)a.number(7, "dlossScale");
  a.need(losses, N, "N");
  if (!dlogits.is_null) a.need(dlogits, mul(a, {N, V}), "N*V");
  a.need(logits, mul(a, {N, V}), "N*V");
  a.need(targets, N, "N");
  if (V == 0 && N > 0) range_error("crossEntropyForwardBackward: V must be positive");
  a.disjoint(losses, logits); a.disjoint(losses, dlogits);
  a.disjoint(dlogits, logits, true);
  for (int64_t n = 0; n < N; n++)
    if (targets.p[n] >= V)
      range_error("crossEntropyForwardBackward: targets[" + std::to_string(n) + "] = " +
                  std::to_string(targets.p[n]) + " is out of range for V = " + std::to_string(V));
  float* dl = dlogits.is_null ? nullptr : dlogits.p;
  parallel_range(a.inst(), cfg.threads, N, cdiv(kGrain, V), [&](int64_t n0, int64_t n1, int) {
    cfg.kt->crossentropy(losses.p, dl, logits.p, targets.p, n0, n1, V, scale);
  });
  return undefined(env);
}

napi_value Softmax(napi_env env, Args& a) {
  const Cfg cfg = a.cfg(0);
  F32 probs = a.f32(1, "probs"), logits = a.f32(2, "logits");
  const int64_t N = a.dim(3, "N"), V = a.dim(4, "V");
  a.need(probs, mul(a, {N, V}), "N*V");
  a.need(logits, mul(a, {N, V}), "N*V");
  a.disjoint(probs, logits, true);
  if (V == 0) return undefined(env);
  parallel_range(a.inst(), cfg.threads, N, cdiv(kGrain, V), [&](int64_t n0, int64_t n1, int) {
    cfg.kt->softmax(probs.p, logits.p, n0, n1, V);
  });
  return undefined(env);
}

void check_tokens(Args& a, const I32& tokens, int64_t BT, int64_t rows, const char* table) {
  for (int64_t i = 0; i < BT; i++) {
    const int32_t t = tokens.p[i];
    if (t < 0 || t >= rows)
      range_error(std::string(a.fn()) + ": tokens[" + std::to_string(i) + "] = " + std::to_string(t) +
                  " is out of range for " + table + " with " + std::to_string(rows) + " rows");
  }
}

napi_value EmbeddingForward(napi_env env, Args& a) {
  const Cfg cfg = a.cfg(0);
  F32 out = a.f32(1, "out");
  I32 tokens = a.i32(2, "tokens");
  F32 wte = a.f32(3, "wte"), wpe = a.f32(4, "wpe");
  const int64_t B = a.dim(5, "B"), T = a.dim(6, "T"), C = a.dim(7, "C");
  const int64_t BT = mul(a, {B, T});
  a.need(out, mul(a, {BT, C}), "B*T*C");
  a.need(tokens, BT, "B*T");
  a.need(wpe, mul(a, {T, C}), "T*C");
  a.disjoint(out, wte); a.disjoint(out, wpe);
  if (C == 0 || BT == 0) return undefined(env);
  check_tokens(a, tokens, BT, wte.n / C, "wte");
  parallel_range(a.inst(), cfg.threads, BT, cdiv(kGrain, C), [&](int64_t n0, int64_t n1, int) {
    cfg.kt->embedding_fwd(out.p, tokens.p, wte.p, wpe.p, n0, n1, T, C);
  });
  return undefined(env);
}

napi_value EmbeddingBackward(napi_env env, Args& a) {
  const Cfg cfg = a.cfg(0);
  F32 dwte = a.f32(1, "dwte"), dwpe = a.f32(2, "dwpe"), dout = a.f32(3, "dout");
  I32 tokens = a.i32(4, "tokens");
  const int64_t B = a.dim(5, "B"), T = a.dim(6, "T"), C = a.dim(7, "C");
  const int64_t BT = mul(a, {B, T});
  a.need(dout, mul(a, {BT, C}), "B*T*C");
  a.need(tokens, BT, "B*T");
  a.need(dwpe, mul(a, {T, C}), "T*C");
  a.disjoint(dwte, dwpe); a.disjoint(dwte, dout); a.disjoint(dwpe, dout);
  if (C == 0 || BT == 0) return undefined(env);
  check_tokens(a, tokens, BT, dwte.n / C, "dwte");
  // Tasks own whole output rows: vocabulary ranges of dwte and position ranges of dwpe. Every
  // element sums its contributions in token order, within one task.
  const int64_t V = dwte.n / C;
  TaskList tl;
  const int64_t parts = mul(a, {BT, C}) >= 4 * kGrain ? 2 * (int64_t)cfg.threads : 1;
  tl.split(0, V, parts, 1);
  tl.split(1, T, parts, 1);
  Instance& inst = a.inst();
  inst.pool.run(cfg.threads, (int64_t)tl.items.size(), [&](int64_t t, int) {
    const TaskList::Item& it = tl.items[t];
    if (it.kind == 0) cfg.kt->embedding_bwd_wte(dwte.p, dout.p, tokens.p, BT, C, it.a0, it.a1);
    else cfg.kt->embedding_bwd_wpe(dwpe.p, dout.p, B, T, C, it.a0, it.a1);
  });
  return undefined(env);
}

napi_value Add(napi_env env, Args& a) {
  const Cfg cfg = a.cfg(0);
  F32 out = a.f32(1, "out"), x = a.f32(2, "a"), y = a.f32(3, "b");
  const int64_t n = a.dim(4, "n");
  a.need(out, n, "n");
  a.need(x, n, "n");
  a.need(y, n, "n");
  a.disjoint(out, x, true);
  a.disjoint(out, y, true);
  parallel_range(a.inst(), cfg.threads, n, 4 * kGrain, [&](int64_t i0, int64_t i1, int) {
    cfg.kt->add(out.p, x.p, y.p, i0, i1);
  });
  return undefined(env);
}

napi_value SumSquares(napi_env env, Args& a) {
  const Cfg cfg = a.cfg(0);
  F32 x = a.f32(1, "x");
  const int64_t n = x.n;
  const int64_t nchunks = cdiv(n, kSumSqChunk);
  std::vector<double> partial((size_t)nchunks, 0.0);
  parallel_range(a.inst(), cfg.threads, nchunks, 4, [&](int64_t k0, int64_t k1, int) {
    for (int64_t k = k0; k < k1; k++) {
      const int64_t i0 = k * kSumSqChunk, i1 = i0 + kSumSqChunk < n ? i0 + kSumSqChunk : n;
      partial[(size_t)k] = cfg.kt->sum_squares(x.p, i0, i1);
    }
  });
  double s = 0.0;
  for (double p : partial) s += p;  // chunk order
  napi_value r;
  check(env, napi_create_double(env, s, &r), "napi_create_double");
  return r;
}

napi_value Scale(napi_env env, Args& a) {
  const Cfg cfg = a.cfg(0);
  F32 x = a.f32(1, "x");
  const double s = a.number(2, "s");
  parallel_range(a.inst(), cfg.threads, x.n, 4 * kGrain, [&](int64_t i0, int64_t i1, int) {
    cfg.kt->scale(x.p, s, i0, i1);
  });
  return undefined(env);
}

// adamw(cfg, params, grads, m, v, lr, beta1, beta2, eps, weightDecay, 1-beta1, 1-beta2, 1/bc1, 1/bc2)
// The bias corrections are computed by the caller (JS Math.pow, which is the same software
// implementation on every machine, unlike libm's pow).
napi_value AdamW(napi_env env, Args& a) {
  const Cfg cfg = a.cfg(0);
  F32 p = a.f32(1, "params"), g = a.f32(2, "grads"), m = a.f32(3, "m"), v = a.f32(4, "v");
  const float lr = (float)a.number(5, "lr"), b1 = (float)a.number(6, "beta1"), b2 = (float)a.number(7, "beta2"),
              eps = (float)a.number(8, "eps"), wd = (float)a.number(9, "weightDecay");
  const float ib1 = (float)a.number(10, "invBiasCorrection1"), ib2 = (float)a.number(11, "invBiasCorrection2");
  const int64_t n = p.n;
  for (const F32* o : {&g, &m, &v})
    if (o->n != n)
      range_error(std::string("adamw: ") + o->name + " has " + std::to_string(o->n) +
                  " elements but params has " + std::to_string(n) + " (they must be equal-length slices)");
  a.disjoint(p, g); a.disjoint(p, m); a.disjoint(p, v); a.disjoint(m, v); a.disjoint(m, g); a.disjoint(v, g);
  parallel_range(a.inst(), cfg.threads, n, 2 * kGrain, [&](int64_t i0, int64_t i1, int) {
    cfg.kt->adamw(p.p, g.p, m.p, v.p, lr, b1, b2, eps, wd, ib1, ib2, i0, i1);
  });
  return undefined(env);
}

// sgemmBench(transA, transB, M, N, K, iters, threads): seconds of the fastest of `iters` calls of raw cblas_sgemm
// (C = A B, row-major) with OpenBLAS's own threading at `threads`. For benchmarks. In a no-BLAS build: the same
// product through Tessera's own GEMM on the pool at `threads` (the speed fast-mode matmuls then get).
napi_value SgemmBench(napi_env env, Args& a) {
  bool ta = false, tb = false;
  if (napi_get_value_bool(env, a.at(0), &ta) != napi_ok || napi_get_value_bool(env, a.at(1), &tb) != napi_ok)
    type_error("sgemmBench: transA and transB must be booleans");
  const int64_t M = a.dim(2, "M"), N = a.dim(3, "N"), K = a.dim(4, "K"), iters = a.dim(5, "iters");
  const int64_t threads = a.dim(6, "threads");
  if (threads < 1 || threads > kMaxThreads || iters < 1) range_error("sgemmBench: bad threads or iters");
  if (mul(a, {M, K}) > (int64_t(1) << 28) || mul(a, {K, N}) > (int64_t(1) << 28) || mul(a, {M, N}) > (int64_t(1) << 28))
    range_error("sgemmBench: matrices too large");
  std::vector<float> A((size_t)(M * K)), B((size_t)(K * N)), C((size_t)(M * N));
  uint32_t s = 12345;
  auto rnd = [&s] { s = s * 1664525u + 1013904223u; return (float)(s >> 8) / 16777216.0f - 0.5f; };
  for (float& x : A) x = rnd();
  for (float& x : B) x = rnd();
#ifdef TESSERA_NO_BLAS
  Instance& inst = a.inst();
  const Cfg cfg{(int)threads, true, inst.auto_kt};
  // A(i,k) and B(k,j) as stored by a row-major CBLAS call with these transposes.
  const std::vector<GemmArgs> gs{make_gemm(M, N, K, A.data(), ta ? 1 : K, ta ? M : 1, B.data(), tb ? 1 : N,
                                           tb ? K : 1, C.data(), N, nullptr, false)};
  auto call = [&] { run_gemms(cfg, inst, gs, nullptr, nullptr, 0, 0); };
#else
  const int prev = openblas_get_num_threads();
  openblas_set_num_threads((int)threads);
  auto call = [&] {
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, (int)M, (int)N, (int)K,
                1.0f, A.data(), (int)(ta ? M : K), B.data(), (int)(tb ? K : N), 0.0f, C.data(), (int)N);
  };
#endif
  call();
  double best = 1e30;  // the fastest call: on a shared machine, noise only ever adds time
  for (int64_t i = 0; i < iters; i++) {
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    call();
    clock_gettime(CLOCK_MONOTONIC, &t1);
    const double secs = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    if (secs < best) best = secs;
  }
#ifndef TESSERA_NO_BLAS
  openblas_set_num_threads(prev);
#endif
  napi_value r;
  check(env, napi_create_double(env, best, &r), "napi_create_double");
  return r;
}

napi_value Info(napi_env env, Args& a) {
  Instance& inst = a.inst();
  napi_value obj, v;
  check(env, napi_create_object(env, &obj), "napi_create_object");
  auto set_str = [&](const char* k, const char* s) {
    check(env, napi_create_string_utf8(env, s ? s : "", NAPI_AUTO_LENGTH, &v), "napi_create_string_utf8");
    check(env, napi_set_named_property(env, obj, k, v), "napi_set_named_property");
  };
  set_str("isa", inst.auto_kt->isa);
#ifdef TESSERA_NO_BLAS
  set_str("blas", "none");
  set_str("blasConfig", "none: Tessera's own blocked GEMM (OpenBLAS was not found at build time)");
  set_str("blasCore", "");
  set_str("blasThreading", "pool");
#else
  set_str("blas", "openblas");
  set_str("blasConfig", openblas_get_config());
  set_str("blasCore", openblas_get_corename());
  set_str("blasThreading", inst.blas_internal ? "openblas" : "pool");
#endif
  return obj;
}

// The Llama family's kernels (RMSNorm, RoPE, SwiGLU, grouped-query attention).
#include "addon_llama.inc"

// ---------------------------------------------------------------------------------------------
// Registration

template <napi_value (*F)(napi_env, Args&)>
napi_value Wrap(napi_env env, napi_callback_info info, const char* name) {
  try {
    Args a(env, info, name);
    return F(env, a);
  } catch (const JsError& e) {
    if (e.kind == JsError::kRange) napi_throw_range_error(env, "ERR_TESSERA_RANGE", e.msg.c_str());
    else if (e.kind == JsError::kType) napi_throw_type_error(env, "ERR_TESSERA_TYPE", e.msg.c_str());
    else napi_throw_error(env, nullptr, e.msg.c_str());
  } catch (const std::bad_alloc&) {
    napi_throw_error(env, "ERR_TESSERA_OOM", (std::string(name) + ": out of memory").c_str());
  } catch (const std::exception& e) {
    napi_throw_error(env, nullptr, (std::string(name) + ": " + e.what()).c_str());
  }
  return nullptr;
}

#define TESSERA_FN(jsname, F) \
  {jsname, nullptr, [](napi_env env, napi_callback_info info) { return Wrap<F>(env, info, jsname); }, \
   nullptr, nullptr, nullptr, napi_enumerable, nullptr}

napi_value Init(napi_env env, napi_value exports) {
  Instance* inst = new (std::nothrow) Instance();
  if (!inst) {
    napi_throw_error(env, nullptr, "tessera native: out of memory");
    return nullptr;
  }
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  inst->auto_kt = __builtin_cpu_supports("avx2") ? &kernels_avx2 : &kernels_base;
#else
  inst->auto_kt = &kernels_avx2;  // not x86: the same generic vector code, 8 wide
#endif
  const char* bt = std::getenv("TESSERA_BLAS_THREADING");
  inst->blas_internal = bt && std::strcmp(bt, "openblas") == 0;
#ifndef TESSERA_NO_BLAS
  // All BLAS parallelism comes from our pool (see pool.h); OpenBLAS runs on the calling thread.
  openblas_set_num_threads(1);
#endif
  for (const KernelTable* kt : {&kernels_base, &kernels_avx2}) {
    if (kt->pack_a_floats > inst->ws_floats_a) inst->ws_floats_a = kt->pack_a_floats;
    if (kt->pack_b_floats > inst->ws_floats_b) inst->ws_floats_b = kt->pack_b_floats;
  }
  if (napi_set_instance_data(
          env, inst, [](napi_env, void* data, void*) { delete static_cast<Instance*>(data); }, nullptr) != napi_ok) {
    delete inst;
    napi_throw_error(env, nullptr, "tessera native: napi_set_instance_data failed");
    return nullptr;
  }
  const napi_property_descriptor props[] = {
      TESSERA_FN("matmulForward", MatmulForward),
      TESSERA_FN("matmulBackward", MatmulBackward),
      TESSERA_FN("layernormForward", LayernormForward),
      TESSERA_FN("layernormBackward", LayernormBackward),
      TESSERA_FN("geluForward", GeluForward),
      TESSERA_FN("geluBackward", GeluBackward),
      TESSERA_FN("attentionForward", AttentionForward),
      TESSERA_FN("attentionBackward", AttentionBackward),
      TESSERA_FN("crossEntropyForwardBackward", CrossEntropy),
      TESSERA_FN("softmax", Softmax),
      TESSERA_FN("embeddingForward", EmbeddingForward),
      TESSERA_FN("embeddingBackward", EmbeddingBackward),
      TESSERA_FN("add", Add),
      TESSERA_FN("sumSquares", SumSquares),
      TESSERA_FN("scale", Scale),
      TESSERA_FN("adamw", AdamW),
      TESSERA_FN("rmsnormForward", RmsnormForward),
      TESSERA_FN("rmsnormBackward", RmsnormBackward),
      TESSERA_FN("ropeForward", RopeForward),
      TESSERA_FN("ropeBackward", RopeBackward),
      TESSERA_FN("swigluForward", SwigluForward),
      TESSERA_FN("swigluBackward", SwigluBackward),
      TESSERA_FN("gqaForward", GqaForward),
      TESSERA_FN("gqaBackward", GqaBackward),
      TESSERA_FN("sgemmBench", SgemmBench),
      TESSERA_FN("info", Info),
  };
  if (napi_define_properties(env, exports, sizeof props / sizeof props[0], props) != napi_ok) return nullptr;
  return exports;
}

}  // namespace
}  // namespace tessera

NAPI_MODULE(NODE_GYP_MODULE_NAME, tessera::Init)
