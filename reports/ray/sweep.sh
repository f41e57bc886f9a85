#!/bin/sh
# Issue 17: a 4-repeat quick sweep (torch, deterministic, 1 thread a worker), first with the local
# executor (one cell after the other), then on a local Ray cluster of 2 CPUs (two 1-thread cells at a
# time); wall time of each and whether the histories are bit-identical (compare_sweeps.py).
#   sh reports/ray/sweep.sh            # torch (runs/ray-sweep)
#   sh reports/ray/sweep.sh tf         # TensorFlow (runs/ray-sweep-tf)
set -u
cd "$(dirname "$0")/../.."
fw=${1:-torch}
out=runs/ray-sweep
[ "$fw" = torch ] || out=runs/ray-sweep-$fw
rm -rf "$out"; mkdir -p "$out"
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2) family $(grep -m1 'cpu family' /proc/cpuinfo | cut -d: -f2) model $(grep -m1 '^model' /proc/cpuinfo | cut -d: -f2); load $(cut -d' ' -f1-3 /proc/loadavg)"
for executor in local ray; do
  extra=""
  [ "$executor" = ray ] && extra="--executor ray --ray-cpus 2"
  start=$(date +%s.%N)
  .venv/bin/twinbench train --framework "$fw" --profile quick --repeats 4 --threads 1 --deterministic \
      --out "$out/$executor" --quiet $extra > "$out/$executor.log" 2>&1
  rc=$?
  end=$(date +%s.%N)
  echo "$executor: exit $rc, wall $(echo "$end - $start" | bc) s, load $(cut -d' ' -f1-3 /proc/loadavg)"
done
.venv/bin/python reports/ray/compare_sweeps.py "$out/local" "$out/ray"
