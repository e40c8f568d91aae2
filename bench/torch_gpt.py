#!/usr/bin/env python3
"""PyTorch baseline: the same GPT-2 as Tessera, trained with torch.optim.AdamW (CPU or CUDA).

Run with /usr/bin/python3 (Debian's python3-torch):
    /usr/bin/python3 bench/torch_gpt.py --threads 1 --steps 20 --warmup 3
On an NVIDIA GPU (bench/gpu/run.sh does this, fp32 and bf16 autocast):
    python3 bench/torch_gpt.py --device cuda --dtype bf16 --vocab 50257 --ctx 1024 --dim 768 \
        --layers 12 --heads 12 --batch 8 --steps 10

Model (identical to src/model/gpt.ts): learned position embeddings, pre-LN with bias (eps 1e-5),
causal multi-head attention with packed qkv (nn.Linear [3C, C]), tanh GELU MLP of width 4C,
final LayerNorm, lm_head tied to wte, no dropout, mean cross-entropy. AdamW lr 3e-4,
betas (0.9, 0.95), eps 1e-8, weight decay 0.1 on matrices and embeddings only (the `decay`
flag of params.ts); none of these hyperparameters changes the cost of a step.

Made as fast as eager PyTorch 1.13 on CPU fairly allows: fused addmm Linear layers, native
layer_norm / tanh-GELU / cross_entropy kernels, attention as batched matmuls with the scale and
causal mask fused into one baddbmm (an additive -inf mask; --attn masked selects the
masked_fill variant, about as fast; --attn sdpa uses F.scaled_dot_product_attention(is_causal=True)
on torch >= 2.0, which 1.13 lacks, and was no faster at this size on torch 2.x), AdamW with
foreach=True, zero_grad(set_to_none=True), no anomaly detection or profiling,
torch.set_num_interop_threads(1), the thread count applied to OpenMP *and* OpenBLAS (which
torch's set_num_threads does not reach: Debian's torch calls OpenBLAS for GEMM, and OpenBLAS
otherwise starts one thread per core), and OMP_WAIT_POLICY=PASSIVE (see below). Tokens are
random (seeded) and generated before timing; the timed loop is forward, backward, AdamW step.

On CUDA (--device cuda): the model and data live on the GPU; attention defaults to
F.scaled_dot_product_attention(is_causal=True) (flash attention), AdamW to fused=True; the
timed region is bracketed by torch.cuda.synchronize(). --dtype fp32 keeps full fp32 matmuls
(TF32 off unless --tf32: that is PyTorch's default, and the fair match for Tessera's fp32 WGSL);
--dtype bf16 runs forward and loss under torch.autocast(bfloat16) with fp32 master weights and
optimizer state (ordinary mixed precision).

Prints one JSON line: {"tokensPerSec", "stepMs", "threads", "torch", "params", ...}.
"""
import argparse
import contextlib
import json
import math
import os
import sys
import time


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--ctx", type=int, default=128)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps before timing")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32",
                   help="bf16: forward and loss under torch.autocast(bfloat16), fp32 weights and AdamW state")
    p.add_argument("--tf32", action="store_true", help="cuda fp32: let matmuls use TF32 tensor cores (off by default)")
    p.add_argument("--max-seconds", type=float, default=0.0,
                   help="stop timing once this many seconds passed (after at least 2 timed steps); 0 = off")
    p.add_argument("--name", default="", help="a label echoed in the JSON (bench/gpu/run.sh)")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--wd", type=float, default=0.1)
    p.add_argument("--attn", choices=["auto", "sdpa", "baddbmm", "masked"], default="auto",
                   help="auto = baddbmm on cpu (measured as fast as sdpa at ctx 128 on torch 2.x), sdpa on cuda; "
                        "sdpa needs torch >= 2.0")
    p.add_argument("--foreach", choices=["auto", "on", "off"], default="auto",
                   help="AdamW foreach implementation (auto: on, measured faster here; cuda: fused when available)")
    return p.parse_args()


args = parse_args()
if args.threads < 1:
    sys.exit("--threads must be >= 1")
# Must be set before torch (and its BLAS) load. torch.set_num_threads reaches OpenMP (and MKL)
# but not OpenBLAS, which Debian's torch uses for GEMM and which otherwise starts a thread per core.
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(args.threads)
# OpenMP workers (torch's elementwise/reduction ops) spin after each parallel region by default,
# fighting OpenBLAS's own pthreads for the same cores: measured here at 2 threads on 2 cores,
# ~1.6k tokens/s with spinning vs ~4.0k with passive waiting. Override by setting it yourself.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

torch.set_num_interop_threads(1)
torch.set_num_threads(args.threads)
torch.autograd.set_detect_anomaly(False)
torch.autograd.profiler.profile(enabled=False)
if args.device == "cuda":
    if not torch.cuda.is_available():
        sys.exit("--device cuda: torch sees no CUDA device")
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    torch.backends.cudnn.allow_tf32 = args.tf32
DEVICE = torch.device(args.device)


def sync():
    if args.device == "cuda":
        torch.cuda.synchronize()


class Block(nn.Module):
    def __init__(self, C, NH, T, attn):
        super().__init__()
        self.C, self.NH, self.hs = C, NH, C // NH
        self.ln1 = nn.LayerNorm(C, eps=1e-5)
        self.qkv = nn.Linear(C, 3 * C)
        self.proj = nn.Linear(C, C)
        self.ln2 = nn.LayerNorm(C, eps=1e-5)
        self.fc = nn.Linear(C, 4 * C)
        self.fcproj = nn.Linear(4 * C, C)
        self.attn = attn
        self.scale = 1.0 / math.sqrt(self.hs)
        causal = torch.ones(T, T, dtype=torch.bool).tril()
        # Additive mask for baddbmm; boolean "future" mask for masked_fill.
        self.register_buffer("bias", torch.zeros(T, T).masked_fill(~causal, float("-inf")), persistent=False)
        self.register_buffer("future", ~causal, persistent=False)

    def attention(self, x):
        B, T, C = x.shape
        NH, hs = self.NH, self.hs
        qkv = self.qkv(x).view(B, T, 3, NH, hs).permute(2, 0, 3, 1, 4)  # [3, B, NH, T, hs]
        q = qkv[0].reshape(B * NH, T, hs)
        k = qkv[1].reshape(B * NH, T, hs)
        v = qkv[2].reshape(B * NH, T, hs)
        if self.attn == "sdpa":
            y = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], is_causal=True)
            return self.proj(y.transpose(1, 2).reshape(B, T, C))
        if self.attn == "baddbmm":
            # scale * q k^T + causal (-inf above the diagonal), in one kernel.
            att = torch.baddbmm(self.bias[:T, :T].expand(B * NH, T, T), q, k.transpose(1, 2), beta=1.0, alpha=self.scale)
        else:
            att = torch.bmm(q, k.transpose(1, 2)).mul_(self.scale).masked_fill_(self.future[:T, :T], float("-inf"))
        att = torch.softmax(att, dim=-1)
        y = torch.bmm(att, v).view(B, NH, T, hs).transpose(1, 2).reshape(B, T, C)
        return self.proj(y)

    def forward(self, x):
        x = x + self.attention(self.ln1(x))
        return x + self.fcproj(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self, V, T, C, L, NH, attn):
        super().__init__()
        self.wte = nn.Embedding(V, C)
        self.wpe = nn.Embedding(T, C)
        self.h = nn.ModuleList(Block(C, NH, T, attn) for _ in range(L))
        self.lnf = nn.LayerNorm(C, eps=1e-5)
        self.register_buffer("pos", torch.arange(T), persistent=False)
        # GPT-2 init, as Tessera: N(0, 0.02), residual projections / sqrt(2L), zero biases.
        for name, p in self.named_parameters():
            if p.dim() == 1:
                nn.init.ones_(p) if name.endswith("ln1.weight") or name.endswith("ln2.weight") or name == "lnf.weight" else nn.init.zeros_(p)
            else:
                std = 0.02 / math.sqrt(2 * L) if name.endswith("proj.weight") else 0.02
                nn.init.normal_(p, 0.0, std)

    def forward(self, idx, targets):
        B, T = idx.shape
        x = self.wte(idx) + self.wpe(self.pos[:T])
        for blk in self.h:
            x = blk(x)
        logits = F.linear(self.lnf(x), self.wte.weight)  # tied lm_head
        return F.cross_entropy(logits.view(B * T, -1), targets.view(B * T))


def main():
    torch.manual_seed(args.seed)
    V, T, C, L, NH, B = args.vocab, args.ctx, args.dim, args.layers, args.heads, args.batch
    if C % NH:
        sys.exit("--dim must be divisible by --heads")
    attn = args.attn
    if attn == "auto":
        attn = "sdpa" if args.device == "cuda" and hasattr(F, "scaled_dot_product_attention") else "baddbmm"
    elif attn == "sdpa" and not hasattr(F, "scaled_dot_product_attention"):
        sys.exit(f"--attn sdpa needs torch >= 2.0 (this is {torch.__version__})")
    model = GPT(V, T, C, L, NH, attn).to(DEVICE)
    model.train()
    nparams = sum(p.numel() for p in model.parameters())
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    foreach = args.foreach != "off"
    groups = [{"params": decay, "weight_decay": args.wd}, {"params": no_decay, "weight_decay": 0.0}]
    fused = False
    if args.device == "cuda" and args.foreach == "auto":
        try:  # torch >= 2.0 on CUDA: one fused kernel per step
            opt = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.95), eps=1e-8, fused=True)
            fused, foreach = True, False
        except (TypeError, RuntimeError):
            fused = False
    if not fused:
        opt = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.95), eps=1e-8, foreach=foreach)
    autocast = (torch.autocast(device_type=args.device, dtype=torch.bfloat16) if args.dtype == "bf16"
                else contextlib.nullcontext())

    g = torch.Generator().manual_seed(args.seed)
    nbatches = 8
    data = torch.randint(0, V, (nbatches, B, T + 1), generator=g)
    inputs, targets = data[:, :, :-1].contiguous().to(DEVICE), data[:, :, 1:].contiguous().to(DEVICE)

    def step(i):
        with autocast:
            loss = model(inputs[i % nbatches], targets[i % nbatches])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    first_loss = None
    for i in range(args.warmup):
        l = step(i)
        if first_loss is None:
            first_loss = l.item()
    times = []
    sync()
    t_start = time.perf_counter()
    for i in range(args.steps):
        if args.max_seconds > 0 and i >= 2 and time.perf_counter() - t_start > args.max_seconds:
            break
        t0 = time.perf_counter()
        l = step(args.warmup + i)
        sync()
        times.append(time.perf_counter() - t0)
    total = time.perf_counter() - t_start
    steps = len(times)
    last_loss = l.item() if steps else None
    times.sort()
    print(json.dumps({
        "name": args.name,
        "tokensPerSec": round(B * T * steps / total, 1) if steps else None,
        "stepMs": round(1000 * total / steps, 2) if steps else None,
        "stepMsMedian": round(1000 * times[len(times) // 2], 2) if times else None,
        "threads": args.threads,
        "torch": torch.__version__,
        "device": args.device,
        "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else None,
        "dtype": args.dtype,
        "tf32": bool(args.tf32) if args.device == "cuda" else None,
        "peakMemGiB": round(torch.cuda.max_memory_allocated() / 2**30, 2) if args.device == "cuda" else None,
        "params": nparams,
        "config": {"vocab": V, "ctx": T, "dim": C, "layers": L, "heads": NH, "batch": B},
        "steps": steps, "warmup": args.warmup, "attn": attn, "foreach": foreach, "fused": fused,
        "ompWaitPolicy": os.environ.get("OMP_WAIT_POLICY"),
        "lossFirst": first_loss, "lossLast": last_loss,
    }))


if __name__ == "__main__":
    main()
