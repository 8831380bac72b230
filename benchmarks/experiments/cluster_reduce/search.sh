#!/usr/bin/env bash
# Tile searches of stop 34 on the GPU machine: split-K tiles whose shares a second kernel adds up
# (names without C) beside the same tiles adding them up in a cluster's shared memory (C), on
# the batch-1 ResNet-50 layers, each layer's recorded tile included (tune.py --force keeps the
# faster). Usage: search.sh PART OUT_DIR   (PART 1 or 2; summaries and logs go to OUT_DIR)
set -u
part=$1; out=$2
run() {  # name, workloads, tiles
  python scripts/tune.py --algorithm register-reuse --force --workloads "$2" --tiles "$3" \
    --summary-json "$out/cluster-$1.json" > "$out/nvidia-h200-cluster-$1.log" 2>&1
  echo "$1: exit $?"
}
if [ "$part" = 1 ]; then
  run 1x1-14 resnet50_conv4_1x1_reduce_b1,resnet50_conv4_1x1_reduce_first_b1,resnet50_conv4_1x1_proj_s2_b1 \
    g32p224x1s16G,g32p224x1s8G,g32p224x1s8GC,g32p224x1s4G,g32p224x1s4GC,g32p64x1s4G,g32p64x1s4GC,g32p64x1s8GC
  run 3x3-14 resnet50_conv4_3x3_b1,resnet50_conv4_3x3_s2_b1 \
    g32p224x1s16GH,g32p224x1s8GH,g32p224x1s8GHC,g32p224x1s4GHC,g32p64x1s8GHC
  run 3x3-28 resnet50_conv3_3x3_b1,resnet50_conv3_3x3_s2_b1 \
    g32p64x1s4GH,g32p64x1s4GHC,g32p64x1s8GHC,g32p32x1s8GH,g32p32x1s8GHC,g32p224x1s8GHC
else
  run 1x1-7 resnet50_conv5_1x1_reduce_b1,resnet50_conv5_1x1_reduce_first_b1,resnet50_conv5_1x1_expand_b1 \
    g32p64x1s4G,g32p64x1s4GC,g32p64x1s8GC,g16p64x1s8GC
  run 1x1-28 resnet50_conv3_1x1_reduce_b1,resnet50_conv3_1x1_reduce_first_b1,resnet50_conv3_1x1_proj_s2_b1 \
    g32p64x1s4G,g32p64x1s4GC,g32p64x1s8GC,g32p64x4G,g32p224x1s8GC
  run 1x1-56 resnet50_conv2_1x1_reduce_first_b1 g32p32x2s4G,g32p32x2s4GC,g32p64x1s4GC
fi
cp tuning_logs/nvidia-h200/register_reuse.json "$out/register_reuse-after-part$part.json"
