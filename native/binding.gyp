# Tessera native kernels (N-API, no node-addon-api). Built by `npm install` through
#   node-gyp rebuild --directory=native --nodedir=/usr
# (--nodedir=/usr: use the system Node headers, never download them).
#
# Flags: -O3, never -ffast-math, and -ffp-contract=off everywhere: the deterministic mode needs
# every multiply and add rounded separately, in source order, on every CPU. No -march=native:
# the binary must run on any x86-64; AVX2 code is compiled separately (kernels_avx2.cc) and
# chosen at load time.
#
# OpenBLAS is optional: detect-blas.sh (a compile-and-link test, run at configure time) decides.
# Without it (or with TESSERA_NO_BLAS=1 in the environment of the build) the addon is built with
# TESSERA_NO_BLAS and every matmul runs Tessera's own blocked GEMM; info().blas says 'none'.
{
  "variables": {
    "tessera_blas%": "<!(sh detect-blas.sh)"
  },
  "targets": [
    {
      "target_name": "tessera_kernels",
      "sources": [
        "src/addon.cc",
        "src/pool.cc",
        "src/kernels_base.cc",
        "src/kernels_avx2.cc"
      ],
      "conditions": [
        [
          "tessera_blas==1",
          {
            "include_dirs": [
              "/usr/include/x86_64-linux-gnu/openblas-pthread",
              "/usr/include/x86_64-linux-gnu/openblas-openmp",
              "/usr/include/openblas",
              "/usr/include/x86_64-linux-gnu"
            ],
            "libraries": ["-lopenblas", "-lpthread"]
          },
          {
            "libraries": ["-lpthread"],
            "defines": ["TESSERA_NO_BLAS"]
          }
        ]
      ],
      "defines": ["NAPI_DISABLE_CPP_EXCEPTIONS"],
      "cflags!": ["-fno-exceptions", "-fno-omit-frame-pointer"],
      "cflags_cc!": ["-fno-exceptions"],
      "cflags": [
        "-O3",
        "-ffp-contract=off",
        "-fno-math-errno",
        "-fvisibility=hidden",
        "-Wall",
        "-Wextra",
        "-Wno-unused-parameter"
      ],
      "cflags_cc": ["-std=gnu++17", "-fexceptions"]
    }
  ]
}
