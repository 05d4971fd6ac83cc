#!/usr/bin/env bash
# The main job, on a fresh Debian machine: install what is missing, prepare the data, build, train.
# Run it again and it reuses what exists (packages, data, build). Options after ./train.sh go to ./train
# and override the defaults below, e.g.  ./train.sh --steps 3000   for a longer run (see ./train --help).
# A second run does not replace runs/flash: add --resume to continue it or --overwrite to start afresh.
#
# The default run trains the small config of FLASH.md section 5 (with T = 256 and a batch of 4) for about
# 15 minutes on 2 cores, writes runs/flash/{metrics.jsonl,loss.png,ckpt_*.safetensors}, and prints
# validation losses and text samples as it goes.
set -euo pipefail
cd "$(dirname "$0")"

bash scripts/install_deps.sh
bash data/prepare.sh
make -j"$(nproc)" train
./train --model small --seq-len 256 --batch 4 --steps 720 --warmup 60 --lr 6e-3 --lr-min 6e-4 \
        --eval-interval 80 --eval-batches 8 --sample-interval 360 --sample-tokens 80 --ckpt-interval 240 \
        --out-dir runs/flash "$@"
echo "loss curve: runs/flash/loss.png   metrics: runs/flash/metrics.jsonl   checkpoints: runs/flash/"
