#!/usr/bin/env bash
# Stage Apache TVM for the lent GPU machine in as many carried folders as the working tree leaves room for.
#
# A run on the GPU machine takes the working tree (tracked + untracked, not ignored) plus the ignored
# paths it names, 64 MiB in all. The TVM wheel is ~96 MiB and the tree ~28 MiB (it grows with the
# tuning logs and results), so ../shared/gpu/stage-tvm.sh's two halves no longer fit beside it. This
# splits the wheel into equal parts over the fewest folders of at most (64 MiB - tree - margin),
# .devcarry/a, b, ... (each with a stage.sh that copies its part to /tmp/devcarry), the last folder
# also holding apache-tvm-ffi, xgboost-cpu and install.sh. Then, on one warm machine, one run per folder in order:
#   bash .devcarry/a/stage.sh        (carry .devcarry/a)   ... and so on for every folder but the last
#   source .devcarry/<last>/install.sh && <command>   (carry .devcarry/<last>): installs into /tmp/site
# Later runs on that machine carry nothing: export PYTHONPATH=/tmp/site:$PWD.
# Usage, from the project root: dev/stage_gpu_tvm.sh [margin MiB, default 3]
set -euo pipefail
TVM_VERSION=0.27.0.post1
FFI_VERSION=0.1.14.post1   # 0.1.15.x segfaults in IR serialization with apache-tvm 0.27.0.post1
XGB_VERSION=3.4.1
margin_mib=${1:-3}
root=$(git rev-parse --show-toplevel)
cd "$root"
grep -qx '/.devcarry/' .gitignore || { echo ".devcarry/ must be ignored (.gitignore)" >&2; exit 1; }
cache=${DEVCARRY_CACHE:-$HOME/.cache/devcarry}
mkdir -p "$cache"
plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${plat[@]}" \
  -d "$cache" "apache-tvm==$TVM_VERSION" "apache-tvm-ffi==$FFI_VERSION" "xgboost-cpu==$XGB_VERSION"
tvm_whl=$(ls "$cache"/apache_tvm-"$TVM_VERSION"-*.whl)
small=("$cache"/apache_tvm_ffi-"$FFI_VERSION"-cp312-*.whl "$cache"/xgboost_cpu-"$XGB_VERSION"-*.whl)

mib=$((1024 * 1024))
tree_bytes=$( (git ls-files -z; git ls-files -z --others --exclude-standard) | xargs -0 stat -c %s 2>/dev/null \
  | awk '{s += $1} END {print s + 0}')
small_bytes=$(stat -c %s "${small[@]}" | awk '{s += $1} END {print s}')
wheel_bytes=$(stat -c %s "$tvm_whl")
room=$((64 * mib - tree_bytes - margin_mib * mib))
[ "$room" -gt $((small_bytes + 8 * mib)) ] || { echo "working tree ($((tree_bytes / mib)) MiB) leaves no room" >&2; exit 1; }
# fewest folders of at most `room`, the wheel in equal parts, the last folder also holding the small wheels
n=$(((wheel_bytes + small_bytes + room - 1) / room))
while part=$(((wheel_bytes + n - 1) / n)); [ $((part + small_bytes)) -gt "$room" ]; do n=$((n + 1)); done

rm -rf .devcarry && mkdir -p .devcarry
split -b "$part" -a 2 "$tvm_whl" .devcarry/tvm.part.
parts=(.devcarry/tvm.part.*)
letters=(a b c d e f g h i j)
[ "${#parts[@]}" -le "${#letters[@]}" ] || { echo "too many parts (${#parts[@]})" >&2; exit 1; }
for i in "${!parts[@]}"; do
  d=.devcarry/${letters[$i]}
  mkdir -p "$d" && mv "${parts[$i]}" "$d/"
done
last=.devcarry/${letters[$((${#parts[@]} - 1))]}
for i in $(seq 0 $((${#parts[@]} - 2))); do
  cat > ".devcarry/${letters[$i]}/stage.sh" <<'EOS'
mkdir -p /tmp/devcarry && cp "$(dirname "${BASH_SOURCE[0]}")"/tvm.part.* /tmp/devcarry/ && ls /tmp/devcarry
EOS
done
cp "${small[@]}" "$last/"
whl_name=$(basename "$tvm_whl")
sha=$(sha256sum "$tvm_whl" | cut -d' ' -f1)
cat > "$last/install.sh" <<EOS
# source me: reassembles the TVM wheel (the other parts staged in /tmp/devcarry by the earlier runs),
# installs it with apache-tvm-ffi and xgboost-cpu into /tmp/site, exports PYTHONPATH
_here="\$(cd "\$(dirname "\${BASH_SOURCE[0]}")" && pwd)"
if ! PYTHONPATH=/tmp/site python3 -c 'import tvm' 2>/dev/null; then
  mkdir -p /tmp/devcarry && cp "\$_here"/tvm.part.* /tmp/devcarry/
  cat /tmp/devcarry/tvm.part.* > /tmp/devcarry/$whl_name
  echo "$sha  /tmp/devcarry/$whl_name" | sha256sum -c --quiet \\
    || { echo "wheel checksum mismatch: parts staged: \$(ls /tmp/devcarry); expected ${#parts[@]}" >&2; return 1; }
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \\
    /tmp/devcarry/$whl_name "\$_here"/*.whl || return 1
fi
export PYTHONPATH=/tmp/site:\$PWD\${PYTHONPATH:+:\$PYTHONPATH}
python3 -c 'import tvm; print("tvm", tvm.__version__, "cuda enabled:", tvm.runtime.enabled("cuda"))'
EOS
echo "working tree $((tree_bytes / mib)) MiB; ${#parts[@]} folders:"
du -sh .devcarry/*
echo "runs, on one warm machine: $(for i in $(seq 0 $((${#parts[@]} - 2))); do printf 'bash .devcarry/%s/stage.sh; ' "${letters[$i]}"; done)then source $last/install.sh"
