#!/usr/bin/env bash
# bench/bench_dist.sh: training tokens/s of the small model as one process (1 and 2 threads) and as 2 MPI ranks of
# 1 thread each (dist.h), the same global batch. The corpus is this repository's own text (any text does: the speed
# does not depend on it), tokenized with a 4096-token BPE so that the model is the small one of FLASH.md §5.
#   bench/bench_dist.sh [STEPS] [BATCH]      (default 8 steps of 4 × 256 tokens; the first step is not counted)
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-8}; BATCH=${2:-4}
command -v mpirun >/dev/null || { echo "bench_dist: no mpirun (apt-get install openmpi-bin libopenmpi-dev)"; exit 1; }
make -s train tokenizer/bpe >/dev/null
work=$(mktemp -d /tmp/flash_bench_dist.XXXXXX)
trap 'rm -rf "$work"' EXIT
cat README.md docs/*.md ./*.cpp ./*.h ./*.cu formats/* data/*.cpp tokenizer/*.cpp test/*.cpp > "$work/train.txt"
cp docs/FLASH.md "$work/val.txt"
tokenizer/bpe train --vocab-size 4096 --out "$work/tokenizer.json" "$work/train.txt" >/dev/null 2>&1
for s in train val; do tokenizer/bpe encode --tokenizer "$work/tokenizer.json" --out "$work/$s.bin" "$work/$s.txt" >/dev/null 2>&1; done

args="--model small --batch $BATCH --steps 1000 --stop-after $STEPS --eval-interval 100000 --sample-interval 0 --quiet
      --data-dir $work"
# the mean tokens/s of steps 2..STEPS, from metrics.jsonl
rate() { grep -o '"tok_per_s": [0-9.]*' "$1/metrics.jsonl" | tail -n +2 | awk '{s += $2; n++} END {printf "%.0f", s / n}'; }
./train $args --threads 1 --out-dir "$work/one_1" >/dev/null
./train $args --threads 2 --out-dir "$work/one_2" >/dev/null
mpirun --allow-run-as-root --oversubscribe -np 2 ./train $args --threads 1 --out-dir "$work/two_1" >/dev/null
echo "small model, global batch $BATCH x 256 tokens, mean of steps 2-$STEPS, $(nproc) cores:"
echo "  1 process, 1 thread:     $(rate "$work/one_1") tokens/s"
echo "  1 process, 2 threads:    $(rate "$work/one_2") tokens/s"
echo "  2 MPI ranks, 1 thread:   $(rate "$work/two_1") tokens/s"
