#!/bin/sh
# The three arms' throughput at the seed's conditions on this CPU, in ONE run (issue 16): 224 px,
# batch 8, our model, synthetic input, NHWC eager (the only setting all three have), training and
# inference, fp32 and bf16 (mixed). On a CPU without bf16 instructions (Zen 2) bf16 is emulated at
# seconds a step: hence one step a window and a small peak matmul. Writes reports/keras-torch/bench-224px-b8/.
set -eu
cd "$(dirname "$0")/../.."
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2) family $(grep -m1 'cpu family' /proc/cpuinfo | cut -d: -f2) model $(grep -m1 '^model' /proc/cpuinfo | cut -d: -f2), bf16 instructions: $(grep -c -m1 avx512_bf16 /proc/cpuinfo), load $(cut -d' ' -f1-3 /proc/loadavg)"
.venv/bin/twinbench bench --frameworks tf,torch,keras-torch --models ours --modes train,infer --batch 8 \
    --input-size 224 --precision fp32,bf16 --layout nhwc --compile eager --warmup 1 --repeats 5 --steps 1 \
    --memory-steps 1 --peak-size 512 --no-save --out reports/keras-torch/bench-224px-b8
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
