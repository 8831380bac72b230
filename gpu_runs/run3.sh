#!/bin/bash
# batch 3: register-reuse GPU tests, then the network at batch 32 with the new records
source .devcarry/b/install.sh >/dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD TVM_FFI_DISABLE_TORCH_C_DLPACK=1 TVM_SPARSECONV_CACHE=/tmp/tsc_cache
t0=$(date +%s)
timeout 150 python3 -m pytest -q -x tests/test_gpu.py -k "register_reuse" -p no:cacheprovider 2>&1 | tail -4
echo "tests $(( $(date +%s) - t0 )) s"
timeout 200 python3 scripts/bench.py --sweeps resnet50_network_s90_b1,resnet50_network_s95_b1,resnet50_network_s90_b32,resnet50_network_s95_b32 --compile-only --compile-workers 14 2>&1 | grep -v Warning | tail -3
echo "compiled $(( $(date +%s) - t0 )) s"
timeout 220 python3 scripts/bench.py --sweeps resnet50_network_s90_b32,resnet50_network_s95_b32 --baselines cudnn_fp32,cudnn_tf32 --repeats 30 --call-times --out $OUT/network-b32.json 2>&1 | grep -v Warning | tail -4
echo "b32 $(( $(date +%s) - t0 )) s"
