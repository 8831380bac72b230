#!/bin/bash
# batch 5: register caps for the uncapped tiles that ran slower with the spliced FMAs
source .devcarry/b/install.sh >/dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD TVM_FFI_DISABLE_TORCH_C_DLPACK=1 TVM_SPARSECONV_CACHE=/tmp/tsc_cache
t0=$(date +%s)
timeout 200 python3 benchmarks/experiments/register_reuse.py --sets resnet50_conv3_1x1_reduce_b32,resnet50_conv3_1x1_expand_b32,resnet50_conv3_1x1_reduce_first_b32,resnet50_conv3_1x1_proj_s2_b32,resnet50_conv5_1x1_reduce_first_b32 \
  --tiles g32p64x4G,g32p64x4GR80,g32p64x4,g32p64x4R80,g32p128x2GR80 --workers 8 --repeats 20 --json $OUT/caps-b32.json 2>&1 | grep -v Warning | tail -7
echo "caps done $(( $(date +%s) - t0 )) s"
