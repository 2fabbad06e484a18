#!/usr/bin/env bash
# ResNet-20 on Fashion-MNIST with cross-entropy and with UniLoss on one CUDA GPU, in one command
# of at most 10 minutes (paper sec. 4.3's recipe; issue 5's GPU check):
#
#   scripts/gpu_multiclass.sh --stage     # on the development machine: copy the data into .data/
#   scripts/gpu_multiclass.sh             # on the GPU machine (its tree must carry .data/)
#
# Steps:
#  1. Fashion-MNIST is copied from ../shared/data into .data/ (git-ignored) when it is not there;
#     the device machine sees no ../shared, so stage it first and carry .data with the tree.
#  2. pip install --no-deps -e . (the machine's torch stays).
#  3. benchmarks/multiclass_steps.py: the training step of CE and of UniLoss in turn, bf16
#     autocast, channels-last, timed in blocks between synchronisations, plus the host
#     synchronisations one step makes -> $OUT/steps.json. UniLoss/CE step-time ratio: goal <= 1.05.
#  4. Both losses train one after the other with the paper's schedule, or, when its 200 epochs do
#     not fit the time left, schedule paper:E (the same recipe squeezed into E epochs, lr / 10 after
#     70% and 80% of them) with E from the measured step times; bf16 autocast; data, anchors and
#     augmentation on the GPU -> $OUT/runs/{ce,uniloss}/ (config.json, log.jsonl, final.json).
#  5. $OUT/summary.json and $OUT/summary.md: the card, test accuracy, epochs, mean epoch time of
#     each loss, the step-time ratio (benchmark and training) and the host syncs per step.
#
# Settings (environment variables): OUT (gpu-multiclass-out, or the device tool's $OUT), DEVICE
# (cuda), BUDGET_S (540: the whole script), EPOCHS (force E, e.g. 200), LIMIT (train on the first
# N samples: checks), BENCH_STEPS (200), THREADS (4 CPU threads), DATA_DIR (.data). A check on a
# CPU (a few minutes):
#
#   DEVICE=cpu EPOCHS=1 LIMIT=256 BENCH_STEPS=2 THREADS=2 OUT=gpu-check scripts/gpu_multiclass.sh
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)

DATA_DIR=${DATA_DIR:-.data}
if [[ ! -f $DATA_DIR/fashion-mnist/train-images-idx3-ubyte.gz && -d ../shared/data/fashion-mnist ]]; then
    mkdir -p "$DATA_DIR/fashion-mnist"
    cp ../shared/data/fashion-mnist/*.gz "$DATA_DIR/fashion-mnist/"
fi
[[ ${1:-} == --stage ]] && { echo "staged $DATA_DIR/fashion-mnist: carry $DATA_DIR to the device machine"; exit 0; }

OUT=${OUT:-gpu-multiclass-out}
DEVICE=${DEVICE:-cuda}
BUDGET_S=${BUDGET_S:-540}
BENCH_STEPS=${BENCH_STEPS:-200}
THREADS=${THREADS:-4}
PYTHON=${PYTHON:-python}
mkdir -p "$OUT"
AMP=(--amp)
[[ $DEVICE == cpu ]] && AMP=()  # bf16 autocast is for the GPU

# No network on the device machine: build with the installed setuptools; failing that, run from src/.
"$PYTHON" -m pip install --quiet --no-deps --no-build-isolation -e . || export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
if [[ $DEVICE == cuda* ]]; then
    "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: set DEVICE=cpu for a check')"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt" || true
fi
"$PYTHON" -c "import torch, uniloss; print('torch', torch.__version__, 'uniloss from', uniloss.__file__)"

limit=()
[[ -n ${LIMIT:-} ]] && limit=(--limit-train "$LIMIT")
echo "== step time: CE vs UniLoss ($BENCH_STEPS steps each)"
"$PYTHON" benchmarks/multiclass_steps.py --device "$DEVICE" "${AMP[@]}" --steps "$BENCH_STEPS" \
    --block $(( BENCH_STEPS < 10 ? BENCH_STEPS : 10 )) --warmup $(( BENCH_STEPS < 10 ? 1 : 5 )) --threads "$THREADS" --data-dir "$DATA_DIR" "${limit[@]}" --json "$OUT/steps.json" | tee "$OUT/steps.md"

# Epochs that fit the time left: both runs one after the other, 15% margin, 40 s for start-ups.
fit_epochs() {
    "$PYTHON" - "$OUT/steps.json" "$(( BUDGET_S - ($(date +%s) - start) ))" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
left = float(sys.argv[2]) - 40
eval_s = r["eval_per_image_s"] * 16000  # validation + test after every epoch
per_epoch = sum(v["epoch_s"] + eval_s for v in r["variants"].values()) * 1.15
print(max(1, min(200, int(left / per_epoch))))
EOF
}
epochs=${EPOCHS:-$(fit_epochs)}
schedule=paper
(( epochs < 200 )) && schedule="paper:$epochs"
echo "== training: schedule $schedule ($(( BUDGET_S - ($(date +%s) - start) )) s left)"

for loss in ce uniloss; do
    left=$(( BUDGET_S - ($(date +%s) - start) - 10 ))
    (( left > 20 )) || { echo "no time left for $loss"; break; }
    rm -rf "$OUT/runs/$loss"
    timeout "$left" "$PYTHON" - train fashion-resnet20 --loss "$loss" --schedule "$schedule" --device "$DEVICE" \
        "${AMP[@]}" --threads "$THREADS" --data-dir "$DATA_DIR" --out "$OUT/runs/$loss" "${limit[@]}" <<'EOF' \
        > "$OUT/train-$loss.log" 2>&1 || echo "$loss stopped early (exit $?): see $OUT/train-$loss.log"
import sys, torch
torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick its fastest kernels
from uniloss.experiments.cli import main
sys.exit(main(sys.argv[1:]))
EOF
    tail -n 1 "$OUT/train-$loss.log"
done

"$PYTHON" - "$OUT" "$schedule" <<'EOF'
import json, os, statistics, sys
out, schedule = sys.argv[1], sys.argv[2]
steps = json.load(open(os.path.join(out, "steps.json")))
gpu = open(os.path.join(out, "gpu.txt")).read().strip() if os.path.exists(os.path.join(out, "gpu.txt")) else None
runs = {}
for loss in ("ce", "uniloss"):
    log = os.path.join(out, "runs", loss, "log.jsonl")
    if not os.path.exists(log):
        continue
    hist = [json.loads(line) for line in open(log) if line.strip()]
    config = json.load(open(os.path.join(out, "runs", loss, "config.json")))
    times = [h["epoch_time_s"] for h in hist[1:]] or [h["epoch_time_s"] for h in hist]  # epoch 1 warms up
    runs[loss] = {"epochs_done": len(hist), "epochs_planned": config["epochs"], "milestones": config["milestones"],
                  "test_accuracy": hist[-1]["test"]["accuracy"] if hist else None,
                  "best_val_accuracy": max(h["val"]["accuracy"] for h in hist) if hist else None,
                  "mean_epoch_time_s": statistics.mean(times) if times else None}
bench = {k: {"step_ms": v["step_s"]["median"] * 1e3, "ratio": v["ratio_median_of_rounds"],
             "host_syncs_per_step": v["host_syncs_per_step"]} for k, v in steps["variants"].items()}
summary = {"gpu": gpu or steps["machine"].get("gpu") or steps["machine"]["cpu"], "torch": steps["machine"]["torch"],
           "date": steps["machine"]["date"], "device": steps["device"], "amp": steps["amp"], "schedule": schedule,
           "benchmark": bench, "runs": runs}
if all(runs.get(k, {}).get("mean_epoch_time_s") for k in ("ce", "uniloss")):
    summary["training_epoch_time_ratio"] = runs["uniloss"]["mean_epoch_time_s"] / runs["ce"]["mean_epoch_time_s"]
json.dump(summary, open(os.path.join(out, "summary.json"), "w"), indent=2)
lines = [f"# Fashion-MNIST, ResNet-20, CE vs UniLoss on {summary['gpu']}", "",
         f"torch {summary['torch']}, {summary['date']}, device {summary['device']}, bf16 autocast {summary['amp']}, "
         f"schedule {schedule}", "", "| loss | epochs | test accuracy | best val accuracy | s/epoch |", "|---|---|---|---|---|"]
for loss, r in runs.items():
    lines.append(f"| {loss} | {r['epochs_done']}/{r['epochs_planned']} | {r['test_accuracy']:.4f} | "
                 f"{r['best_val_accuracy']:.4f} | {r['mean_epoch_time_s']:.2f} |")
lines += ["", "| step (benchmark) | ms | ratio to CE | host syncs/step |", "|---|---|---|---|"]
lines += [f"| {k} | {v['step_ms']:.2f} | {v['ratio']:.3f} | {v['host_syncs_per_step']} |" for k, v in bench.items()]
if "training_epoch_time_ratio" in summary:
    lines += ["", f"UniLoss/CE epoch time in training: {summary['training_epoch_time_ratio']:.3f}"]
open(os.path.join(out, "summary.md"), "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
echo "done in $(( $(date +%s) - start )) s; results in $OUT"
