#!/usr/bin/env bash
# experiments/compare.sh: the comparison of docs/BASELINES.md §5, in one command.
#
# FLASH, FLASH-Quad (FLASH with one chunk, C = T), Transformer++, Performer and Combiner, small presets (matched
# parameters), at each T with the same tokens per step (batch = tokens / T), and at a T the same data, optimizer,
# schedule, seed and steps for every model; plus a masked-LM row (FLASH, non-causal, --objective mlm). Then a table
# per T (results.md) and two pictures (val_vs_time.png, step_time_vs_T.png) in --results-dir.
#
# Steps: --steps N, or derived from --budget: a probe times 3 steps of each (model, T), and the steps are the most
# that fit in what the probe left of the budget, counting each run's start, its evaluations and its final
# whole-set validation. The plan (steps) is kept in the out-dir, so a second invocation runs the same plan.
# Started again, it reuses finished runs (metrics.jsonl holds the whole-set record), resumes partial ones from
# their checkpoint (--resume) and starts the rest afresh. Each run keeps metrics.jsonl, params.txt, train.log (its
# stdout), compare_args.txt (its command) and its newest checkpoint; .gitignore lets only the first two be
# committed (the others are large or name this machine's paths).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)

usage() {
  cat <<'EOF'
usage: experiments/compare.sh [options]
  --budget TIME         time for the whole comparison, probe included: 2h (default), 90m, 600s or seconds
  --steps N             steps per run (instead of deriving them from --budget)
  --seq-lens "T ..."    context lengths (default "256 1024 4096")
  --tokens N            tokens per step at every T (default 4096; batch = N / T)
  --models "M ..."      of flash flash-quad transformer++ performer combiner (default: all five)
  --lr X                peak learning rate of every model (default 6e-3, as ./train.sh; floor X/10)
  --lr-for MODEL=X      a per-model peak learning rate (repeatable; the table reports each run's)
  --mlm-seq-len T       T of the masked-LM row (default 1024; 0: no masked-LM row)
  --mlm-models "M ..."  models of the masked-LM row, non-causal (default flash; any of the five)
  --evals N             evaluations of the validation sample per run (default 10)
  --eval-batches N      batches in that sample (default 2, i.e. 2 x tokens per step)
  --device cpu|cuda     cuda: only the archs with CUDA code (flash, flash-quad); says which it skipped
  --threads N           CPU threads per run (default: all)
  --data-dir DIR        train.bin, val.bin, tokenizer.json (default data/, made by data/prepare.sh)
  --out-dir DIR         the runs (default experiments/runs)
  --results-dir DIR     results.md and the pictures (default experiments)
  --smoke               the test's settings: tiny presets, T = 16 32, 64 tokens per step, at most 4 steps,
                        masked LM at T = 32, one thread, a 120 s budget
EOF
}
die() { echo "compare.sh: error: $*" >&2; exit 1; }

budget=2h; steps=0; seq_lens="256 1024 4096"; tokens=4096; models="flash flash-quad transformer++ performer combiner"
lr=6e-3; lr_for=(); mlm_T=1024; mlm_models="flash"; evals=10; eval_batches=2; device=cpu; threads=0
data_dir=$ROOT/data; out_dir=$ROOT/experiments/runs; results_dir=$ROOT/experiments; smoke=0; size=small; max_steps=0
while [ $# -gt 0 ]; do
  need() { [ $# -ge 2 ] || die "$1 needs a value (see --help)"; }
  case "$1" in
    --budget) need "$@"; budget=$2; shift 2 ;;
    --steps) need "$@"; steps=$2; shift 2 ;;
    --seq-lens) need "$@"; seq_lens=$2; shift 2 ;;
    --tokens) need "$@"; tokens=$2; shift 2 ;;
    --models) need "$@"; models=$2; shift 2 ;;
    --lr) need "$@"; lr=$2; shift 2 ;;
    --lr-for) need "$@"; lr_for+=("$2"); shift 2 ;;
    --mlm-seq-len) need "$@"; mlm_T=$2; shift 2 ;;
    --mlm-models) need "$@"; mlm_models=$2; shift 2 ;;
    --evals) need "$@"; evals=$2; shift 2 ;;
    --eval-batches) need "$@"; eval_batches=$2; shift 2 ;;
    --device) need "$@"; device=$2; shift 2 ;;
    --threads) need "$@"; threads=$2; shift 2 ;;
    --data-dir) need "$@"; data_dir=$2; shift 2 ;;
    --out-dir) need "$@"; out_dir=$2; shift 2 ;;
    --results-dir) need "$@"; results_dir=$2; shift 2 ;;
    --smoke) smoke=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
done
if [ $smoke = 1 ]; then
  # one thread: the tiny models' steps are too small to share, and the machine may be busy
  size=tiny; seq_lens="16 32"; tokens=64; mlm_T=32; max_steps=4; budget=120s; eval_batches=1; threads=1
fi

# ---- checking the options ----------------------------------------------------------------------------------
is_count() { [[ "$1" =~ ^[0-9]+$ ]] && [ "$1" -ge "${2:-1}" ]; }
[[ "$budget" =~ ^[0-9]{1,6}[hms]?$ ]] || die "--budget '$budget' is not a time: give 2h, 90m, 600s or seconds"
case "$budget" in
  *h) budget_s=$(( 10#${budget%h} * 3600 )) ;; *m) budget_s=$(( 10#${budget%m} * 60 )) ;;
  *s) budget_s=$(( 10#${budget%s} )) ;; *) budget_s=$(( 10#$budget )) ;;
esac
is_count "$budget_s" || die "--budget '$budget' is no time at all"
is_count "$steps" 0 || die "--steps '$steps' is not a whole number"
is_count "$tokens" || die "--tokens '$tokens' is not a positive whole number"
is_count "$evals" || die "--evals '$evals' is not a positive whole number"
is_count "$eval_batches" || die "--eval-batches '$eval_batches' is not a positive whole number"
is_count "$threads" 0 || die "--threads '$threads' is not a whole number"
is_count "$mlm_T" 0 || die "--mlm-seq-len '$mlm_T' is not a whole number"
[[ "$lr" =~ ^[0-9.]+([eE][-+]?[0-9]+)?$ ]] || die "--lr '$lr' is not a number"
[ "$device" = cpu ] || [ "$device" = cuda ] || die "--device must be cpu or cuda, got '$device'"
all_T=$seq_lens; [ "$mlm_T" = 0 ] || all_T="$all_T $mlm_T"
[ -n "$seq_lens" ] || die "--seq-lens is empty"
for T in $all_T; do
  is_count "$T" || die "T '$T' in --seq-lens or --mlm-seq-len is not a positive whole number"
  [ $((tokens % T)) = 0 ] || die "--tokens $tokens is not a multiple of T = $T (batch = tokens / T)"
done
known="flash flash-quad transformer++ performer combiner"
for m in $models $mlm_models; do
  [[ " $known " == *" $m "* ]] || die "unknown model '$m': use some of: $known"
done
for kv in "${lr_for[@]+"${lr_for[@]}"}"; do
  [[ " $known " == *" ${kv%%=*} "* && "${kv#*=}" =~ ^[0-9.]+([eE][-+]?[0-9]+)?$ ]] ||
    die "--lr-for '$kv': give MODEL=RATE with MODEL one of: $known"
done
for f in train.bin val.bin tokenizer.json; do
  [ -f "$data_dir/$f" ] || die "no $data_dir/$f: prepare the data with data/prepare.sh (or give --data-dir)"
done
command -v gnuplot >/dev/null || die "gnuplot is missing: bash scripts/install_deps.sh installs it"
[[ "$out_dir$results_dir$data_dir$ROOT" != *[[:space:]]* ]] ||
  die "the directories may not contain spaces (they go into ./train's options): '$out_dir', '$results_dir', '$data_dir'"
mkdir -p "$out_dir" "$results_dir" "$out_dir/plot"
out_dir=$(cd "$out_dir" && pwd); results_dir=$(cd "$results_dir" && pwd); data_dir=$(cd "$data_dir" && pwd)

make -s -C "$ROOT" train tokenizer/bpe build/compare_report >/dev/null ||
  die "building failed (run 'make train tokenizer/bpe build/compare_report' to see why)"
TRAIN=$ROOT/train

# ---- the models ----------------------------------------------------------------------------------------------
label_of() {
  case "$1" in
    flash) echo FLASH ;; flash-quad) echo FLASH-Quad ;; transformer++) echo Transformer++ ;;
    performer) echo Performer ;; combiner) echo Combiner ;;
  esac
}
# ./train's model options for model $1 at T = $2: the presets; FLASH-Quad is FLASH with one chunk of T.
model_args() {
  case "$1" in
    flash) echo "--model $size" ;;
    flash-quad) echo "--model $size --chunk $2" ;;
    *) echo "--model $1-$size" ;;
  esac
}
# The masked-LM row's model: the same shape, non-causal, through a JSON config (missing keys take the small
# preset's); under --smoke the tiny shape is given by options (the tiny FLASH preset's d, e, s and layers).
mlm_model_args() {
  local arch=$1 cfg="$out_dir/mlm_$1.json"
  [ "$arch" = flash-quad ] && arch=flash
  printf '{"arch": "%s", "causal": false}\n' "$arch" > "$cfg"
  local extra=""
  if [ $smoke = 1 ]; then
    extra="--d 16 --layers 2"
    [ "$arch" = flash ] && extra="$extra --e 32 --s 8 --chunk 4"
  fi
  [ "$1" = flash-quad ] && extra="$extra --chunk $mlm_T"
  echo "--model $cfg $extra"
}
# Which models this ./train and this device can run; the others are named and skipped.
help_text=$("$TRAIN" --help 2>&1 || true)
runnable=(); skipped=()
for m in $models; do
  if [ "$device" = cuda ] && [ "$m" != flash ] && [ "$m" != flash-quad ]; then
    skipped+=("$(label_of "$m") (no CUDA code)")
  elif [ "$m" != flash ] && [ "$m" != flash-quad ] && [[ "$help_text" != *"$m-$size"* ]]; then
    skipped+=("$(label_of "$m") (./train has no preset $m-$size yet)")
  else
    runnable+=("$m")
  fi
done
mlm_runnable=()
if [ "$mlm_T" -gt 0 ]; then
  for m in $mlm_models; do
    if [ "$device" = cuda ] && [ "$m" != flash ] && [ "$m" != flash-quad ]; then
      skipped+=("$(label_of "$m") masked LM (no CUDA code)")
    elif [ "$m" != flash ] && [ "$m" != flash-quad ] && [[ "$help_text" != *"$m-$size"* ]]; then
      skipped+=("$(label_of "$m") masked LM (./train has no arch $m yet)")
    else
      mlm_runnable+=("$m")
    fi
  done
fi
[ ${#runnable[@]} -gt 0 ] || die "no model to run on --device $device (skipped: ${skipped[*]})"
echo "[compare] models: ${runnable[*]}; masked LM at T = $mlm_T: ${mlm_runnable[*]:-none}"
if [ ${#skipped[@]} -gt 0 ]; then printf -v list '%s, ' "${skipped[@]}"; echo "[compare] skipped: ${list%, }"; fi

lr_of() {
  local r=$lr kv
  for kv in "${lr_for[@]+"${lr_for[@]}"}"; do [ "${kv%%=*}" = "$1" ] && r=${kv#*=}; done
  echo "$r"
}
common_args=(--data-dir "$data_dir" --device "$device" --seed 1 --sample-interval 0)
[ "$threads" -gt 0 ] && common_args+=(--threads "$threads")

# Every (T, model, objective) of the plan, one per line.
plan_runs() {
  local T m
  for T in $seq_lens; do for m in "${runnable[@]}"; do echo "$T $m ar"; done; done
  for m in "${mlm_runnable[@]+"${mlm_runnable[@]}"}"; do echo "$mlm_T $m mlm"; done
}
args_for() {  # model options of (T, model, objective)
  if [ "$3" = mlm ]; then mlm_model_args "$2"; else model_args "$2" "$1"; fi
}

# ---- steps: given, kept from the plan of an earlier invocation, or derived from the budget by a probe ------------
plan_key="device=$device size=$size seq_lens=$seq_lens tokens=$tokens models=${runnable[*]} mlm=$mlm_T:${mlm_runnable[*]:-} budget=$budget_s evals=$evals eval_batches=$eval_batches max_steps=$max_steps"
plan_file=$out_dir/plan.txt
probe_file=$out_dir/probe.tsv  # T, model, objective, device, tokens, ms per step, seconds of a run's start
val_tokens=$("$ROOT/tokenizer/bpe" info "$data_dir/val.bin" | sed -n 's/.*: \([0-9]*\) tokens.*/\1/p')
is_count "$val_tokens" || die "cannot count the tokens of $data_dir/val.bin (tokenizer/bpe info)"
if [ "$steps" = 0 ] && [ -f "$plan_file" ] && [ "$(sed -n 1p "$plan_file")" = "$plan_key" ]; then
  steps=$(sed -n 2p "$plan_file")
  echo "[compare] steps per run: $steps (the plan in $plan_file)"
elif [ "$steps" = 0 ]; then
  t_start=$(date +%s.%N)
  touch "$probe_file"
  while read -r T m obj; do
    key="$T	$m	$obj	$device	$tokens"
    grep -q "^$key	" "$probe_file" && continue
    dir=$out_dir/probe/T${T}_${m}_$obj
    rm -rf "$dir"; mkdir -p "$dir"
    t0=$(date +%s.%N)
    # shellcheck disable=SC2046
    "$TRAIN" $(args_for "$T" "$m" "$obj") "${common_args[@]}" --objective "$obj" --seq-len "$T" \
      --batch $((tokens / T)) --steps 1000000 --stop-after 3 --eval-interval 1000000 --ckpt-interval 1000000 \
      --quiet --out-dir "$dir" > "$dir/train.log" 2>&1 ||
      die "the timing probe of $m at T = $T failed: $(tail -n 3 "$dir/train.log")"
    t1=$(date +%s.%N)
    # steps 2 and 3 (step 1 pays for first touches); the start is the rest of the wall time
    ms=$(sed -n 's/.*"step": \([0-9]*\),.*"ms": \([0-9.]*\),.*/\1 \2/p' "$dir/metrics.jsonl" |
         awk '$1 >= 2 { s += $2; n++ } END { if (n) printf "%.3f", s / n }')
    [ -n "$ms" ] || die "the timing probe of $m at T = $T wrote no step times (see $dir/train.log)"
    start_s=$(awk -v a="$t0" -v b="$t1" -v ms="$ms" 'BEGIN { s = b - a - 3 * ms / 1e3; printf "%.2f", (s > 0 ? s : 0) }')
    printf '%s\t%s\t%s\n' "$key" "$ms" "$start_s" >> "$probe_file"
    echo "[compare] probe: $m T = $T ($obj): $ms ms/step, $start_s s to start"
    rm -rf "$dir"
  done < <(plan_runs)
  rmdir "$out_dir/probe" 2>/dev/null || true
  probe_s=$(awk -v a="$t_start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.0f", b - a }')
  # Each run costs: its start, its steps, and forward passes (a third of a step each) over the evaluation
  # sample (--evals times --eval-batches batches) and over the whole validation set at the end.
  steps=$(plan_runs | while read -r T m obj; do grep "^$T	$m	$obj	$device	$tokens	" "$probe_file"; done |
    awk -F'\t' -v budget="$budget_s" -v used="$probe_s" -v val="$val_tokens" -v tok="$tokens" \
        -v ev="$evals" -v eb="$eval_batches" '
      { step_s += $6 / 1e3; fixed += $7 + $6 / 1e3 * (val / tok / 3 + ev * eb / 3) }
      END { s = int((budget - used - fixed) / step_s); print (s > 0 ? s : 0) }')
  [ "$steps" -gt 0 ] || die "--budget $budget leaves no step after the probe (${probe_s} s) and the runs' fixed" \
                            "costs: give a larger --budget, fewer --seq-lens or --models, or --steps"
  if [ "$max_steps" -gt 0 ] && [ "$steps" -gt "$max_steps" ]; then steps=$max_steps; fi
  printf '%s\n%s\n' "$plan_key" "$steps" > "$plan_file"
  echo "[compare] steps per run: $steps (what fits in $budget_s s after a ${probe_s} s probe; kept in $plan_file)"
fi
is_count "$steps" || die "steps per run is '$steps'"

# ---- the runs -------------------------------------------------------------------------------------------------
eval_interval=$(( steps / evals > 0 ? steps / evals : 1 ))
warmup=$(( steps / 10 > 0 ? steps / 10 : 1 ))
manifest=$out_dir/manifest.tsv
: > "$manifest"
trained=0; resumed=0; reused=0
finished() { [ -f "$1/metrics.jsonl" ] && grep -q '"whole_val_loss"' "$1/metrics.jsonl"; }
while read -r T m obj; do
  dir=$out_dir/T$T/$m; suffix=""
  if [ "$obj" = mlm ]; then dir=$dir-mlm; suffix=" (masked LM)"; fi
  run_lr=$(lr_of "$m")
  lr_min=$(awk -v x="$run_lr" 'BEGIN { printf "%.3g", x / 10 }')
  # shellcheck disable=SC2207
  cmd=("$TRAIN" $(args_for "$T" "$m" "$obj") "${common_args[@]}" --objective "$obj" --seq-len "$T"
       --batch $((tokens / T)) --steps "$steps" --warmup "$warmup" --lr "$run_lr" --lr-min "$lr_min"
       --eval-interval "$eval_interval" --eval-batches "$eval_batches" --ckpt-interval "$eval_interval"
       --keep-ckpts 1 --out-dir "$dir")
  what="$(label_of "$m")$suffix at T = $T"
  if [ -f "$dir/compare_args.txt" ] && [ "$(cat "$dir/compare_args.txt")" != "${cmd[*]}" ]; then
    die "$dir holds a run made with other settings (its command is in $dir/compare_args.txt, this one would be:" \
        "${cmd[*]}): give another --out-dir, or delete $dir to run it again"
  fi
  if finished "$dir"; then
    reused=$((reused + 1)); echo "[compare] $what: finished, reused ($dir)"
  elif [ -f "$dir/compare_args.txt" ] && compgen -G "$dir/ckpt_*.safetensors" >/dev/null; then
    echo "[compare] $what: resuming from its checkpoint ($dir)"
    "${cmd[@]}" --resume >> "$dir/train.log" 2>&1 || die "$what failed; see $dir/train.log: $(tail -n 3 "$dir/train.log")"
    resumed=$((resumed + 1))
  else
    rm -rf "$dir"; mkdir -p "$dir"  # never started, or stopped before its first checkpoint
    echo "${cmd[*]}" > "$dir/compare_args.txt"
    echo "[compare] $what: training $steps steps ($dir)"
    "${cmd[@]}" > "$dir/train.log" 2>&1 || die "$what failed; see $dir/train.log: $(tail -n 3 "$dir/train.log")"
    trained=$((trained + 1))
  fi
  finished "$dir" || die "$what ended without its whole-set validation (see $dir/train.log): delete $dir and run again"
  sed -n 's/^parameters: \([0-9]*\).*/\1/p' "$dir/train.log" | tail -n 1 > "$dir/params.txt"
  label="$(label_of "$m")$suffix"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$T" "$label" "$dir" "$obj" "$run_lr" "$tokens" "$steps" >> "$manifest"
done < <(plan_runs)

# ---- the table and the pictures --------------------------------------------------------------------------------
"$ROOT/build/compare_report" "$manifest" "$results_dir/results.md" "$out_dir/plot" || die "build/compare_report failed"
gnuplot "$out_dir/plot/plot.gp" || die "gnuplot failed on $out_dir/plot/plot.gp"
echo "[compare] runs: $trained trained, $resumed resumed, $reused reused (metrics in $out_dir/T*/*/metrics.jsonl)"
echo "[compare] results: $results_dir/results.md, $results_dir/val_vs_time.png, $results_dir/step_time_vs_T.png"
