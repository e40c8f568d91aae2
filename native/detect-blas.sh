#!/bin/sh
# Prints 1 when OpenBLAS can be used for the addon (cblas.h found in the include folders
# binding.gyp lists, and a program calling cblas_sgemm links against -lopenblas), else 0.
# TESSERA_NO_BLAS=1 forces 0: the no-BLAS build (Tessera's own GEMM), for tests and benchmarks.
# Called by binding.gyp at configure time; a shell test because gyp has no feature detection.
if [ "${TESSERA_NO_BLAS:-0}" = 1 ]; then echo 0; exit 0; fi
CXX_="${CXX:-c++}"
tmp="${TMPDIR:-/tmp}/tessera-blas-$$"
printf '#include <cblas.h>\nint main(){float a=1,b=1,c=0;cblas_sgemm(CblasRowMajor,CblasNoTrans,CblasNoTrans,1,1,1,1.0f,&a,1,&b,1,0.0f,&c,1);return c==1?0:1;}\n' >"$tmp.cc"
if "$CXX_" -o "$tmp.out" "$tmp.cc" \
  -I/usr/include/x86_64-linux-gnu/openblas-pthread -I/usr/include/x86_64-linux-gnu/openblas-openmp \
  -I/usr/include/openblas -I/usr/include/x86_64-linux-gnu -lopenblas >/dev/null 2>&1; then
  echo 1
else
  echo 0
fi
rm -f "$tmp.cc" "$tmp.out"
