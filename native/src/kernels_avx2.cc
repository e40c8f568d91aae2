// AVX2 build of the Tessera kernels, selected at load time when the CPU supports AVX2.
// Hand-written because no library offers fused, deterministic kernels over caller-owned buffers.
//
// Deliberately "avx2" WITHOUT "fma": the deterministic contract requires that this build and
// the baseline build (kernels_base.cc) produce bitwise identical results, so every multiply-add
// is a separately rounded multiply and add (-ffp-contract=off). On Zen 3 the separate mul/add
// pipes make this as fast as FMA for the GEMM micro-kernel (measured ~98 vs ~99 GFLOP/s).
//
// Headers are included BEFORE the target pragma so no inline library code is compiled for
// AVX2 (which could otherwise be merged into, and break, baseline callers). Everything
// compiled under the pragma has internal linkage except the exported table.
#include <cstdint>

#include "kernels.h"

using tessera::AttnArgs;
using tessera::GemmArgs;
using tessera::GqaArgs;
using tessera::kAttnRowBlock;
using tessera::Workspace;

#pragma GCC push_options
#if defined(__x86_64__) || defined(__i386__)
#pragma GCC target("avx2")
#endif

#define TESSERA_VW 8
#define TESSERA_MR 6
#define TESSERA_NV 2
#define TESSERA_TABLE kernels_avx2
#define TESSERA_ISA_NAME "avx2"
#include "kernels_impl.inc"

#pragma GCC pop_options
