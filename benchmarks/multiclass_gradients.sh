#!/usr/bin/env bash
# Regenerates docs/results/multiclass/gradients.txt from the checkpoints the tables' runs leave in
# RUNS_DIR (default runs/):
#   uniloss reproduce fashion-variants --schedule short:4 --seeds 0 --runs-dir RUNS_DIR
#   uniloss reproduce mnist-pairs --schedule short:4 --seeds 0 --runs-dir RUNS_DIR
#   uniloss reproduce multiclass --schedule short --seeds 0 --runs-dir RUNS_DIR
#   uniloss reproduce fashion-variants --schedule short --seeds 0 --losses uniloss-t4 --runs-dir RUNS_DIR
# A few minutes on one CPU thread.
set -euo pipefail
runs=${1:-runs}
out=docs/results/multiclass/gradients.txt
g() { python benchmarks/multiclass_gradients.py "$@" | sed "s#$runs/#runs/#"; }
{
  echo "# bash benchmarks/multiclass_gradients.sh RUNS_DIR: python benchmarks/multiclass_gradients.py TASK CHECKPOINT LOSSES..."
  echo "# on fresh networks and on the checkpoints of the short:4 screens and the 30-epoch short runs (seed 0)."
  echo "# $(python -c 'from uniloss.experiments.reproduce import machine; print(machine())'), torch $(python -c 'import torch; print(torch.__version__)'), one thread, $(date -u +%F)."
  g fashion init uniloss
  g fashion "$runs/fashion-variants-short-4/uniloss-seed0/checkpoint.pt" uniloss uniloss-t2 uniloss-t4
  g fashion "$runs/fashion-variants-short-4/ce-seed0/checkpoint.pt" uniloss
  g pairs init uniloss uniloss-frac20 uniloss-top20
  g pairs "$runs/mnist-pairs-short-4/uniloss-frac20-seed0/checkpoint.pt" uniloss uniloss-frac20 uniloss-top20
  g fashion "$runs/multiclass-short/fashion-resnet20/uniloss-seed0/checkpoint.pt" uniloss uniloss-t4 uniloss-t8 uniloss-gs10
  g fashion "$runs/multiclass-short/fashion-resnet20/ce-seed0/checkpoint.pt" uniloss uniloss-t4 uniloss-t8 uniloss-gs10
  g fashion "$runs/fashion-variants-short/uniloss-t4-seed0/checkpoint.pt" uniloss-t4 uniloss uniloss-t8
} > "$out.tmp"
mv "$out.tmp" "$out"
echo "wrote $out"
