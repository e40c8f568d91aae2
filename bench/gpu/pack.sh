#!/usr/bin/env bash
# Builds the bundle that bench/gpu/run.sh unpacks on a lent NVIDIA machine (no network, no Node,
# maybe no Vulkan loader): .gpubundle/ in the repository root, ignored by git, named in the
# device tool's `carry` (bench/gpu/README.md).
#
#   bash bench/gpu/pack.sh [--no-build] [--max-mib N]
#
# .gpubundle/
#   node.xz          Node 24 (node_modules/node's binary, xz -9; cached by the binary's sha256)
#   app.tar.xz       app/: the compiled entry bench/gpu/webgpu.js and only what it imports
#                    (dist modules, zod, webgpu with the linux-x64 dawn.node), from closure.ts
#   debs/*.deb       the Vulkan loader and GLVND libraries (libvulkan1 ...), Debian amd64, for a
#                    machine whose image has no loader (the device README's `.gl` recipe)
#   manifest.json    sha256 and size of each file, the git commit, Node's version
#
# Checks before it says done: the packed app loads under the packed Node (the whole static
# import graph and dawn.node), and the bundle is at most --max-mib (default 60) MiB, so that it
# and the working tree travel together under the device tool's 64 MiB.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
build=1
max_mib=60
while (($#)); do
  case "$1" in
    --no-build) build=0 ;;
    --max-mib) max_mib=$2; shift ;;
    *) echo "pack.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
node=node_modules/node/bin/node
[ -x "$node" ] || { echo "pack.sh: $node is missing (npm install)" >&2; exit 1; }
out=.gpubundle
mkdir -p "$out/debs"
t0=$SECONDS
say() { echo "pack: $* (t+$((SECONDS - t0))s)" >&2; }

if ((build)); then
  say "building (npm run build)"
  npm run --silent build
fi
[ -f dist/bench/gpu/webgpu.js ] || { echo "pack.sh: dist/bench/gpu/webgpu.js is missing: run npm run build" >&2; exit 1; }

# Node, compressed once per binary (xz -9 of 127 MB takes minutes on a loaded machine).
sum=$(sha256sum "$node" | cut -d' ' -f1)
if [ -f "$out/node.xz" ] && [ "$(cat "$out/node.sha256" 2>/dev/null)" = "$sum" ]; then
  say "node.xz is current (cached)"
else
  say "compressing Node $("$node" --version) (xz -9)"
  rm -f "$out/node.sha256"
  xz -9 -T2 -c "$node" >"$out/node.xz.part"
  mv "$out/node.xz.part" "$out/node.xz"
  echo "$sum" >"$out/node.sha256"
fi

# The app: the entry's import closure, pruned.
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/app"
say "collecting the import closure of dist/bench/gpu/webgpu.js"
"$node" dist/bench/gpu/closure.js dist/bench/gpu/webgpu.js --root "$root" --to "$stage/app" >"$stage/closure.json"
# The compiled modules are ES modules: Node reads that from the nearest package.json.
printf '{ "name": "tessera-gpubench", "private": true, "type": "module" }\n' >"$stage/app/package.json"
say "compressing the app ($(du -sh "$stage/app" | cut -f1))"
tar -C "$stage" -cf - app | xz -9 -T2 >"$out/app.tar.xz"

# The Vulkan loader and GLVND (what NVIDIA's ICD library needs), as .deb files: unpacked there.
debs=(libvulkan1 libglvnd0 libegl1 libgl1 libglx0 libopengl0 libgles2)
have=1
for d in "${debs[@]}"; do compgen -G "$out/debs/${d}_*.deb" >/dev/null || have=0; done
if ((have)); then
  say "debs are present"
else
  say "downloading ${debs[*]} (apt-get download)"
  (cd "$out/debs" && apt-get download -qq "${debs[@]}" 2>/dev/null) ||
    { echo "pack.sh: apt-get download failed (run apt-get update first?)" >&2; exit 1; }
fi

# Check the packed app loads under the packed Node, from a copy outside the repository.
say "checking the packed app"
chk="$stage/check"
mkdir -p "$chk"
xz -dc "$out/node.xz" >"$chk/node"
chmod +x "$chk/node"
tar -C "$chk" -xJf "$out/app.tar.xz"
(cd "$chk/app" && "../node" --input-type=module -e "
  const m = await import('webgpu');
  if (typeof m.create !== 'function') throw new Error('webgpu: no create()');
") || { echo "pack.sh: the packed webgpu package does not load" >&2; exit 1; }
# The entry with no arguments loads its whole static graph, prints its usage and exits 2.
set +e
(cd "$chk/app" && "../node" dist/bench/gpu/webgpu.js >/dev/null 2>"$chk/usage.txt")
rc=$?
set -e
if [ "$rc" != 2 ]; then
  echo "pack.sh: the packed entry does not load (exit $rc):" >&2
  cat "$chk/usage.txt" >&2
  exit 1
fi

# Manifest and size limit.
commit=$(git rev-parse HEAD 2>/dev/null || echo unknown)
dirty=$(git status --porcelain 2>/dev/null | grep -v '^??' | head -1 || true)
{
  printf '{\n  "commit": "%s",\n  "dirty": %s,\n  "node": "%s",\n  "closure": %s,\n  "files": {\n' \
    "$commit" "$([ -n "$dirty" ] && echo true || echo false)" "$("$node" --version)" "$(cat "$stage/closure.json")"
  first=1
  while IFS= read -r f; do
    ((first)) || printf ',\n'
    first=0
    printf '    "%s": { "bytes": %s, "sha256": "%s" }' "$f" "$(stat -c %s "$out/$f")" "$(sha256sum "$out/$f" | cut -d' ' -f1)"
  done < <(cd "$out" && find . -type f ! -name manifest.json ! -name node.sha256 ! -name '*.part' | sed 's|^\./||' | sort)
  printf '\n  }\n}\n'
} >"$out/manifest.json"
bytes=$(du -cb "$out"/node.xz "$out"/app.tar.xz "$out"/debs/*.deb "$out"/manifest.json | tail -1 | cut -f1)
mib=$(((bytes + 1048575) / 1048576))
if ((bytes > max_mib * 1048576)); then
  echo "pack.sh: the bundle is $mib MiB, over the $max_mib MiB limit" >&2
  exit 1
fi
say "done: $out is $mib MiB (limit $max_mib): $(ls "$out" | tr '\n' ' ')"
