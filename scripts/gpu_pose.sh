#!/usr/bin/env bash
# The pose table (paper sec. 4.2, Table 1) at the paper's scale, in one command on a CUDA machine:
#
#   scripts/gpu_pose.sh
#
# runs `uniloss reproduce pose-paper`: experiment digits-pose-paper (single-stack hourglass of
# width 256, depth 4, stride-4 stem -> 16x16 heatmaps; all 20,000 training canvases; RMSProp
# lr 2.5e-4, batch 16, 50 epochs, lr / 4 after epochs 30 and 40), 9 losses (uniloss, mse-sigma-0.1
# ... mse-sigma-10, mse-exact) x 3 seeds, JOBS runs at a time on the one GPU, each a
# `uniloss train` process with one CPU thread. Finished runs are reused and interrupted ones
# resumed, so re-running the script after a crash continues. Writes docs/results/pose-paper/
# (results.json, results.md, curves.png) and the runs under runs/pose-paper/.
#
# Settings (environment variables): DEVICE (cuda), JOBS (4), SEEDS ("0 1 2"), RUNS (runs),
# OUT (docs/results/TABLE), TABLE (pose-paper; pose-mpii runs the paper's own MPII experiment
# where MPII is under DATA_DIR), EPOCHS and LIMIT (epochs per run, training samples per run:
# for checks only), DATA_DIR. A tiny check of the script on a CPU (a few minutes: 9 runs of one
# epoch on 32 canvases, each evaluating 2,500):
#
#   TABLE=pose DEVICE=cpu EPOCHS=1 LIMIT=32 SEEDS=0 RUNS=pose-check OUT=pose-check/table \
#       scripts/gpu_pose.sh
set -euo pipefail
cd "$(dirname "$0")/.."

TABLE=${TABLE:-pose-paper}
DEVICE=${DEVICE:-cuda}
JOBS=${JOBS:-4}
SEEDS=${SEEDS:-"0 1 2"}
RUNS=${RUNS:-runs}
OUT=${OUT:-docs/results/$TABLE}
PYTHON=${PYTHON:-python}

if [[ $DEVICE == cuda* ]]; then
    "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: set DEVICE=cpu for a check')"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi
"$PYTHON" -c "import torch, uniloss; print('torch', torch.__version__, 'uniloss from', uniloss.__file__)"

# shellcheck disable=SC2206
args=(reproduce "$TABLE" --device "$DEVICE" --jobs "$JOBS" --seeds $SEEDS --runs-dir "$RUNS" --out "$OUT")
[[ -n ${EPOCHS:-} ]] && args+=(--epochs "$EPOCHS")
[[ -n ${LIMIT:-} ]] && args+=(--limit-train "$LIMIT")
[[ -n ${DATA_DIR:-} ]] && args+=(--data-dir "$DATA_DIR")
echo "uniloss ${args[*]}"
start=$(date +%s)
"$PYTHON" -m uniloss.experiments.cli "${args[@]}"
echo "pose table done in $(( $(date +%s) - start )) s: $OUT/results.md"
