// Baseline x86-64 (SSE2) build of the Tessera kernels: runs on any x86-64 CPU and produces
// results bitwise identical to the AVX2 build (see the determinism rules in kernels_impl.inc).
// Hand-written because no library offers fused, deterministic kernels over caller-owned buffers.
#include <cstdint>

#include "kernels.h"

using tessera::AttnArgs;
using tessera::GemmArgs;
using tessera::GqaArgs;
using tessera::kAttnRowBlock;
using tessera::Workspace;

#define TESSERA_VW 4
#define TESSERA_MR 6
#define TESSERA_NV 2
#define TESSERA_TABLE kernels_base
#define TESSERA_ISA_NAME "x86-64"
#include "kernels_impl.inc"
