#!/bin/bash
# batch 4: the network at batch 1 and the headline
source .devcarry/b/install.sh >/dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD TVM_FFI_DISABLE_TORCH_C_DLPACK=1 TVM_SPARSECONV_CACHE=/tmp/tsc_cache
t0=$(date +%s)
timeout 250 python3 scripts/bench.py --sweeps resnet50_network_s90_b1,resnet50_network_s95_b1 --baselines cudnn_fp32,cudnn_tf32 --repeats 30 --call-times --out $OUT/network-b1.json 2>&1 | grep -v Warning | tail -4
echo "b1 $(( $(date +%s) - t0 )) s"
timeout 150 python3 scripts/bench.py --sweeps headline --baselines cudnn_fp32,cudnn_tf32 --call-times --out $OUT/headline.json 2>&1 | grep -v Warning | tail -4
echo "headline $(( $(date +%s) - t0 )) s"
