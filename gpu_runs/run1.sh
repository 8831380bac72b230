#!/bin/bash
# batch 1: correctness of the PTX-spliced FMAs, then ptx vs tir run time on record tiles
source .devcarry/b/install.sh >/dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD TVM_FFI_DISABLE_TORCH_C_DLPACK=1 TVM_SPARSECONV_CACHE=/tmp/tsc_cache
nvidia-smi --query-gpu=name,clocks.sm --format=csv,noheader
t0=$(date +%s)
timeout 240 python3 -m pytest -q -x tests/test_gpu.py -k "register_reuse" -p no:cacheprovider 2>&1 | tail -15
echo "tests $(( $(date +%s) - t0 )) s"
for fc in ptx tir; do
  timeout 170 python3 benchmarks/experiments/register_reuse.py --sets headline,resnet50_conv4_3x3_b32,resnet50_conv5_1x1_reduce_b32 \
    --tiles g32p128x2GHR72,g32p128x2GHR80 --fma-code $fc --repeats 20 --json $OUT/fma-$fc.json 2>&1 | grep -v Warning | tail -12
  echo "$fc done $(( $(date +%s) - t0 )) s"
done
