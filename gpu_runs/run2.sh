#!/bin/bash
# batch 2: conv5 batch-32 layers on register-reuse (over the old budget), split-K tiles; joined vs linked
source .devcarry/b/install.sh >/dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD TVM_FFI_DISABLE_TORCH_C_DLPACK=1 TVM_SPARSECONV_CACHE=/tmp/tsc_cache
t0=$(date +%s)
timeout 300 python3 benchmarks/experiments/register_reuse.py --sets resnet50_conv5_3x3_b32,resnet50_conv5_3x3_s2_b32,resnet50_conv5_1x1_proj_s2_b32 \
  --tiles g32p64x4s4G,g32p64x4s4,g32p128x2s4GH,g32p32x8GH,g32p64x4G --ignore-budget --workers 8 --repeats 20 --json $OUT/conv5-b32-splitk.json 2>&1 | grep -v Warning | tail -8
echo "conv5 done $(( $(date +%s) - t0 )) s"
timeout 200 python3 benchmarks/experiments/register_reuse.py --sets resnet50_conv5_1x1_reduce_b32,resnet50_conv5_1x1_expand_b32 \
  --tiles g32p128x2GHR80,g32p64x4G,g32p64x4 --link joined --repeats 20 --json $OUT/conv5-1x1-joined.json 2>&1 | grep -v Warning | tail -6
echo "joined done $(( $(date +%s) - t0 )) s"
