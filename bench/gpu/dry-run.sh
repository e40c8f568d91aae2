#!/usr/bin/env bash
# The whole bench/gpu flow here, as the GPU machine would run it, so that a lent machine's few
# minutes are not spent on a broken script:
#
#   bash bench/gpu/dry-run.sh [--no-pack]
#
# 1. pack.sh builds .gpubundle/ (skipped with --no-pack);
# 2. the working tree is copied into a temporary folder the way the device tool sends it (tracked
#    and untracked-not-ignored files, plus the carried .gpubundle/), so nothing ignored here
#    (node_modules, dist) is there;
# 3. run.sh --dry-run runs in that copy with a PATH on which `node` is a stub that fails (and
#    without node_modules/.bin), so only the bundled Node can run; TESSERA_GPU_GL=private makes
#    it unpack the bundle's Vulkan loader .deb files and use them instead of this machine's;
# 4. its $OUT must hold the report, with a WebGPU step and a PyTorch step for every config.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
[ "${1:-}" = --no-pack ] || bash bench/gpu/pack.sh
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/repo" "$tmp/bin" "$tmp/out"
git ls-files -z -co --exclude-standard | tar --null -T - -cf - | tar -C "$tmp/repo" -xf -
cp -r .gpubundle "$tmp/repo/.gpubundle"
printf '#!/bin/sh\necho "dry-run: run.sh called node from PATH ($0)" >&2\nexit 97\n' >"$tmp/bin/node"
chmod +x "$tmp/bin/node"
path=$(tr ':' '\n' <<<"$PATH" | grep -v 'node_modules/.bin' | paste -sd:)
echo "dry-run: running bench/gpu/run.sh --dry-run in $tmp/repo" >&2
set +e
(cd "$tmp/repo" && env PATH="$tmp/bin:$path" OUT="$tmp/out" TESSERA_GPU_GL=private \
  PYTHON="${PYTHON:-/usr/bin/python3}" TMPDIR="$tmp" bash bench/gpu/run.sh --dry-run)
rc=$?
set -e
echo "dry-run: run.sh exited $rc; files: $(ls "$tmp/out" | tr '\n' ' ')" >&2
/usr/bin/python3 - "$tmp/out" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
r = json.loads((out / "gpu-bench.json").read_text())
names = [c["name"] for c in r["configs"]]
problems = []
for n in names:
    w = next((s for s in r.get("webgpu", []) if s["name"] == n), None)
    if not w or not (w.get("tokensPerSec") or 0) > 0:
        problems.append(f"no WebGPU result for {n}: {w}")
    for dt in ("fp32", "bf16"):
        t = next((t for t in r.get("torch", []) if t["name"] == n and t.get("dtype") == dt), None)
        if not t or not (t.get("tokensPerSec") or 0) > 0:
            problems.append(f"no PyTorch {dt} result for {n}: {t}")
if not r.get("gemm") or any("error" in g or not g.get("maxRelErr", 1) < 1e-4 for g in r["gemm"]):
    problems.append(f"WGSL GEMM: {r.get('gemm')}")
if not any(t["name"] == "gemm" for t in r.get("torch", [])):
    problems.append("no PyTorch GEMM line")
if "LD_LIBRARY_PATH" not in (out / "log.txt").read_text() and "unpacked into" not in (out / "log.txt").read_text():
    problems.append("the bundle's Vulkan loader was not used")
if problems:
    sys.exit("dry-run: FAILED\n" + "\n".join(problems))
print("dry-run: OK: report complete (" + ", ".join(names) + ", GEMM)")
PY
exit $rc
