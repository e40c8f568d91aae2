#!/usr/bin/env bash
# Runs bench/gpu on a lent NVIDIA machine (bench/gpu/README.md has the device tool's call):
# Tessera's WebGPU training step and WGSL GEMM against PyTorch on the same GPU, in one go, within
# five minutes, with the results in $OUT:
#
#   gpu-bench.md    the table (also printed last)         gpu-bench.json  everything, one object
#   webgpu.json     the WebGPU half as measured           torch.jsonl     PyTorch's lines
#   log.txt         this script's log                     nvidia-smi.txt  the card as found
#
#   bash bench/gpu/run.sh            on the GPU machine (needs .gpubundle/ from pack.sh, carried)
#   bash bench/gpu/run.sh --dry-run  here: SwiftShader instead of a GPU, PyTorch on the CPU, tiny
#                                    shapes (bench/gpu/dry-run.sh runs it as the GPU machine would)
#
# What the machine has (device README, KINDS.md): python3 with PyTorch 2.11 (cu130), the NVIDIA
# driver and its Vulkan ICD (/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json), maybe no
# Vulkan loader, no Node, no network. The bundle brings Node, the app (dist + zod + webgpu's
# dawn.node) and the loader's .deb files. Never changes the card's settings.
set -uo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
dry=0
[ "${1:-}" = --dry-run ] && dry=1
OUT=${OUT:-$root/out/gpu-bench}
mkdir -p "$OUT"
bundle=${TESSERA_GPU_BUNDLE:-$root/.gpubundle}
work=$(mktemp -d "${TMPDIR:-/tmp}/tessera-gpu.XXXXXX")
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
# Five minutes in all, kept by giving each step at most what is left.
deadline=$((SECONDS + ${TESSERA_GPU_SECONDS:-290}))
status=0

log() { echo "[run.sh t+${SECONDS}s] $*" | tee -a "$OUT/log.txt" >&2; }
# Seconds a step may take: what it wants, or what is left before the deadline less a margin for the report.
slot() {
  local left=$((deadline - SECONDS - 20))
  ((left < $1)) && echo "$left" || echo "$1"
}
fail() {
  log "FAILED: $*"
  status=1
}

log "bench/gpu ($([ $dry = 1 ] && echo 'dry run: SwiftShader, tiny shapes' || echo 'GPU run')), work dir $work, out $OUT"
log "tree $(git rev-parse --short HEAD 2>/dev/null || echo '(no git)'); $(uname -srm)"
gpu_name=""
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,power.limit \
    --format=csv >>"$OUT/nvidia-smi.txt" 2>&1
  gpu_name=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
  log "GPU: ${gpu_name:-unknown}"
elif ((!dry)); then
  fail "nvidia-smi is not on PATH"
fi

# --- 1. Unpack the bundle (checked against its manifest) -----------------------------------
unpack_ok=1
if [ ! -f "$bundle/manifest.json" ]; then
  fail "no bundle at $bundle: run bash bench/gpu/pack.sh here and name .gpubundle in carry"
  unpack_ok=0
else
  log "bundle: $(grep -o '"commit": "[0-9a-f]*"' "$bundle/manifest.json"), $(du -sh "$bundle" | cut -f1)"
  if ! "$PY" - "$bundle" <<'EOF'; then
import hashlib, json, sys, pathlib
b = pathlib.Path(sys.argv[1])
m = json.loads((b / "manifest.json").read_text())
bad = [f for f, e in m["files"].items()
       if not (b / f).is_file() or hashlib.sha256((b / f).read_bytes()).hexdigest() != e["sha256"]]
if bad:
    sys.exit("bundle files missing or changed: " + ", ".join(bad))
EOF
    fail "the bundle does not match its manifest"
    unpack_ok=0
  fi
fi
node="$work/node"
if ((unpack_ok)); then
  if command -v xz >/dev/null 2>&1; then
    xz -dc "$bundle/node.xz" >"$node" && tar -C "$work" -xJf "$bundle/app.tar.xz" || unpack_ok=0
  else
    # No xz: Python's lzma and tarfile do the same.
    "$PY" -c "import lzma,shutil,sys,tarfile
shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], 'wb'))
tarfile.open(sys.argv[3], 'r:xz').extractall(sys.argv[4])" \
      "$bundle/node.xz" "$node" "$bundle/app.tar.xz" "$work" || unpack_ok=0
  fi
  chmod +x "$node" 2>/dev/null
  if ((unpack_ok)) && "$node" --version >/dev/null 2>&1; then
    log "unpacked Node $("$node" --version) and the app"
  else
    fail "could not unpack or start the bundled Node"
    unpack_ok=0
  fi
fi

# --- 2. Vulkan: the loader, and the NVIDIA driver's ICD ------------------------------------
adapter=auto
if ((dry)); then
  adapter=swiftshader
fi
unpack_debs_private() {
  local gl="$work/gl"
  mkdir -p "$gl"
  for f in "$bundle"/debs/*.deb; do dpkg-deb -x "$f" "$gl" || return 1; done
  export LD_LIBRARY_PATH="$gl/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  log "Vulkan loader: unpacked into $gl (LD_LIBRARY_PATH)"
}
if ((unpack_ok)); then
  if [ "${TESSERA_GPU_GL:-}" = private ]; then
    unpack_debs_private || fail "could not unpack the loader's .deb files"
  elif ldconfig -p 2>/dev/null | grep -q 'libvulkan\.so\.1'; then
    log "Vulkan loader: the system's ($(ldconfig -p | grep -m1 'libvulkan\.so\.1' | sed 's/.*=> //'))"
  elif [ "$(id -u)" = 0 ] && ((!dry)); then
    # The device README's recipe (seen working there): these packages unpacked into /.
    for f in "$bundle"/debs/*.deb; do dpkg -x "$f" /; done
    ldconfig
    log "Vulkan loader: unpacked the bundle's .deb files into / (device README recipe)"
  else
    unpack_debs_private || fail "could not unpack the loader's .deb files"
  fi
  if ((!dry)); then
    icd=""
    for c in /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json /usr/share/vulkan/icd.d/nvidia_icd.json \
      /etc/vulkan/icd.d/nvidia_icd.json; do
      [ -f "$c" ] && icd=$c && break
    done
    if [ -n "$icd" ]; then
      export VK_ICD_FILENAMES=$icd VK_DRIVER_FILES=$icd
      export __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
      log "Vulkan ICD: $icd ($(tr -d '\n ' <"$icd" | head -c 200))"
    else
      fail "no NVIDIA Vulkan ICD file found"
    fi
    for d in /usr/local/nvidia/lib64 /usr/local/nvidia/lib; do
      [ -d "$d" ] && export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$d"
    done
    export VK_LOADER_DEBUG=error,warn
  fi
fi

# --- 3. The WebGPU half ----------------------------------------------------------------------
tiny=()
((dry)) && tiny=(--tiny)
if ((unpack_ok)); then
  t=$(slot 150)
  log "WebGPU: training steps and GEMM (adapter $adapter, at most ${t}s)"
  timeout "$t" "$node" "$work/app/dist/bench/gpu/webgpu.js" measure --configs bench/gpu/configs.json "${tiny[@]}" \
    --adapter "$adapter" --out "$work/webgpu.json" 2>&1 | tee -a "$OUT/log.txt"
  rc=${PIPESTATUS[0]}
  ((rc == 0)) || fail "the WebGPU measurement exited $rc (124: timed out)"
fi
[ -f "$work/webgpu.json" ] && cp "$work/webgpu.json" "$OUT/"

# --- 4. The PyTorch half -------------------------------------------------------------------
plan=$("$PY" -c "import json,sys; p=json.load(open('bench/gpu/configs.json'))[sys.argv[1]]
for c in p['steps']: print(c['name'], c['vocab'], c['ctx'], c['dim'], c['layers'], c['heads'], c['batch'])
print('gemm', ','.join(p['gemm']))" "$([ $dry = 1 ] && echo tiny || echo full)")
tdev=cuda
((dry)) && tdev=cpu
: >"$work/torch.jsonl"
torch_line_error() { printf '{"name": "%s", "dtype": "%s", "error": "%s"}\n' "$1" "$2" "$3" >>"$work/torch.jsonl"; }
if ! "$PY" -c 'import torch' 2>/dev/null; then
  fail "$PY has no torch"
  torch_line_error torch - "no torch in $PY"
else
  while read -r name V T C L H B; do
    [ "$name" = gemm ] && continue
    for dt in fp32 bf16; do
      t=$(slot 60)
      ((t > 5)) || { fail "no time left for torch $name $dt"; torch_line_error "$name" "$dt" "no time left"; continue; }
      log "PyTorch $name $dt on $tdev (at most ${t}s)"
      steps=(--steps 30 --warmup 3 --max-seconds 10)
      ((dry)) && steps=(--steps 3 --warmup 1 --max-seconds 2)
      if ! timeout "$t" "$PY" bench/torch_gpt.py --device "$tdev" --dtype "$dt" --vocab "$V" --ctx "$T" --dim "$C" \
        --layers "$L" --heads "$H" --batch "$B" "${steps[@]}" --name "$name" </dev/null >>"$work/torch.jsonl" 2>>"$OUT/log.txt"; then
        fail "torch $name $dt"
        torch_line_error "$name" "$dt" "exited non-zero or timed out (log.txt)"
      fi
    done
  done <<<"$plan"
  shapes=$(grep '^gemm ' <<<"$plan" | cut -d' ' -f2)
  t=$(slot 60)
  if ((t > 5)); then
    log "PyTorch GEMM $shapes on $tdev (at most ${t}s)"
    reps=()
    ((dry)) && reps=(--reps 2 --inner 2)
    timeout "$t" "$PY" bench/gpu/torch_gemm.py --device "$tdev" --shapes "$shapes" "${reps[@]}" \
      >>"$work/torch.jsonl" 2>>"$OUT/log.txt" || { fail "torch gemm"; torch_line_error gemm - "exited non-zero or timed out"; }
  else
    fail "no time left for the torch GEMM"
  fi
fi
cp "$work/torch.jsonl" "$OUT/"

# --- 5. The report ---------------------------------------------------------------------------
if ((unpack_ok)); then
  "$node" "$work/app/dist/bench/gpu/webgpu.js" report --configs bench/gpu/configs.json "${tiny[@]}" \
    --webgpu "$work/webgpu.json" --torch "$work/torch.jsonl" --gpu-name "$gpu_name" --out "$OUT" 2>&1 |
    tee -a "$OUT/log.txt"
  ((PIPESTATUS[0] == 0)) || status=1
else
  log "no Node: the raw PyTorch lines are in torch.jsonl"
  cat "$work/torch.jsonl"
fi
rm -rf "$work"
log "done in ${SECONDS}s, exit $status; files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
exit $status
