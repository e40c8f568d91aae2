#!/usr/bin/env python3
"""PyTorch matmul throughput on the shapes bench/gpu compares Tessera's WGSL GEMM on.

    python3 bench/gpu/torch_gemm.py --device cuda --shapes 4096x4096x4096,8192x3072x768

Each shape MxNxK is timed as nn.Linear computes it, out[M,N] = A[M,K] @ W[N,K]^T, in three
precisions: fp32 with TF32 off (plain fp32 FMA units: the measured ceiling for Tessera's fp32
kernels), tf32 (fp32 inputs on the tensor cores) and bf16. Inputs are random normal (never
zeros, which can run faster than real data); the first calls are untimed warm-up; on CUDA the
timed calls are bracketed by CUDA events, and the median of --reps trials of --inner calls each
is reported. Each result is checked against a float64 product of sampled rows (relErr).
Prints one JSON line per (shape, precision): {"name": "gemm", "M", "N", "K", "dtype", "gflops", ...}.
"""
import argparse
import json
import statistics
import sys
import time

import torch


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda")
    p.add_argument("--shapes", default="4096x4096x4096", help="comma-separated MxNxK")
    p.add_argument("--dtypes", default="fp32,tf32,bf16")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--inner", type=int, default=10)
    return p.parse_args()


def main():
    args = parse_args()
    dev = torch.device(args.device)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: torch sees no CUDA device")
    g = torch.Generator(device="cpu").manual_seed(7)
    for shape in args.shapes.split(","):
        M, N, K = (int(x) for x in shape.lower().split("x"))
        a32 = torch.randn(M, K, generator=g).to(dev)
        w32 = torch.randn(N, K, generator=g).to(dev)
        rows = torch.randint(0, M, (16,), generator=g)
        ref = (a32[rows].double() @ w32.double().T).cpu()
        for dtype in args.dtypes.split(","):
            if dtype != "fp32" and args.device == "cpu":
                continue  # tf32 and bf16 are the GPU's tensor-core modes
            if args.device == "cuda":
                torch.backends.cuda.matmul.allow_tf32 = dtype == "tf32"
            a, w = (a32.bfloat16(), w32.bfloat16()) if dtype == "bf16" else (a32, w32)
            out = torch.nn.functional.linear(a, w)  # warm-up (and handle creation)
            out = torch.nn.functional.linear(a, w)
            trials = []
            for _ in range(args.reps):
                if args.device == "cuda":
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record()
                    for _ in range(args.inner):
                        out = torch.nn.functional.linear(a, w)
                    end.record()
                    torch.cuda.synchronize()
                    trials.append(start.elapsed_time(end) / args.inner)
                else:
                    t0 = time.perf_counter()
                    for _ in range(args.inner):
                        out = torch.nn.functional.linear(a, w)
                    trials.append(1000 * (time.perf_counter() - t0) / args.inner)
            ms = statistics.median(trials)
            got = out[rows].double().cpu()
            rel = ((got - ref).norm() / ref.norm()).item()
            print(json.dumps({
                "name": "gemm", "M": M, "N": N, "K": K, "dtype": dtype, "device": args.device,
                "ms": round(ms, 4), "gflops": round(2 * M * N * K / (ms / 1000) / 1e9, 1),
                "relErr": rel, "torch": torch.__version__,
                "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else None,
            }), flush=True)
        if args.device == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = False


if __name__ == "__main__":
    main()
