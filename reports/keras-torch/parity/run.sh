#!/bin/sh
# The keras-torch arm's parity at the defaults (224 px, batch 2, calibrated random weights, the
# default checks), float32 and float64, against TF and against the torch port, and the port
# against TF for comparison. Each JSON beside this script; the printed tables in run.log.
set -u
cd "$(dirname "$0")/../../.."
. .venv/bin/activate
out=reports/keras-torch/parity
for arms in tf,keras-torch keras-torch,torch tf,torch; do
  for dtype in float32 float64; do
    name=$(echo "$arms" | tr , _)-$dtype
    echo "== twinbench parity --arms $arms --dtype $dtype ($(date -u +%H:%M:%S), load $(cut -d' ' -f1 /proc/loadavg))"
    twinbench parity --arms "$arms" --dtype "$dtype" --json "$out/$name.json" --quiet
    echo "exit $?"
  done
done
