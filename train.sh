#!/usr/bin/env bash
# The main job, on a fresh Debian machine: install what is missing, prepare the data, build, train.
# Run it again and it reuses what exists (packages, data, build). Options after ./train.sh go to ./train
# and override the defaults below, e.g.  ./train.sh --steps 3000   for a longer run (see ./train --help).
# A second run does not replace runs/flash: add --resume to continue it or --overwrite to start afresh.
#
# The default run trains the small config of FLASH.md section 5 (with T = 256 and a batch of 4) for about
# 3 minutes on 2 cores, writes runs/flash/{metrics.jsonl,loss.png,ckpt_*.safetensors} (or --out-dir DIR), and prints
# validation losses (on a fixed sample of 8 x 4 windows) and text samples as it goes, and at the end the loss on
# the whole validation set (every token once: the figure the README reports).
set -euo pipefail
cd "$(dirname "$0")"

bash scripts/install_deps.sh
bash data/prepare.sh
make -j"$(nproc)" train
# The run's directory: runs/flash, or the last --out-dir given (so the closing line names where the files are).
out_dir=runs/flash
args=("$@")
for ((i = 0; i + 1 < ${#args[@]}; i++)); do
  if [ "${args[i]}" = "--out-dir" ]; then out_dir=${args[i + 1]}; fi
done
./train --model small --seq-len 256 --batch 4 --steps 720 --warmup 60 --lr 6e-3 --lr-min 6e-4 \
        --eval-interval 80 --eval-batches 8 --sample-interval 360 --sample-tokens 80 --ckpt-interval 240 \
        --out-dir runs/flash "$@"
echo "loss curve: $out_dir/loss.png   metrics: $out_dir/metrics.jsonl   checkpoints: $out_dir/"
